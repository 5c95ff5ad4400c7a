"""loglikelihood(context, continuation) against a direct per-item forward of the model (no batching, no sharing)."""

import logging

import pytest
import torch
import torch.nn.functional as F

from lmdistill.evaluation.scoring import Request, encode_requests, hf_logits_fn, loglikelihood

REQUESTS = [
    Request("Question: Which is a mammal?\nAnswer:", " a whale"),
    Request("Question: Which is a mammal?\nAnswer:", " a shark"),
    Request("Question: Which is a mammal?\nAnswer: ", "a trout"),  # the trailing space moves to the continuation
    Request("The cat sat on the", " mat"),
    Request("The cat sat on the", " hat"),  # one-token continuations after one context share a row
    Request("", " Who should Derek hug after shocking Richard?"),
    Request("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
]


def reference(model, tokenizer, request: Request) -> tuple[float, bool]:
    """Tokenize as lm-eval's HF backend, run the model on this one sequence, sum the continuation's log-probs."""
    context, continuation = request.context, request.continuation
    if context:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = tokenizer(context).input_ids
        cont = tokenizer(context + continuation).input_ids[len(ctx) :]
    else:
        ctx, cont = [tokenizer.bos_token_id], tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor(ctx + cont)
    with torch.no_grad():
        log_probs = F.log_softmax(model(input_ids=ids[None, :-1]).logits[0].float(), -1)  # (T, V)
    scored = log_probs[-len(cont) :]
    targets = ids[-len(cont) :]
    return scored.gather(-1, targets[:, None]).sum().item(), bool((scored.argmax(-1) == targets).all())


def test_matches_a_direct_forward_per_request(tiny_llama, tiny_tokenizer):
    got = loglikelihood(tiny_llama, tiny_tokenizer, REQUESTS, batch_size=3)
    for request, (value, greedy) in zip(REQUESTS, got, strict=True):
        want, want_greedy = reference(tiny_llama, tiny_tokenizer, request)
        assert value == pytest.approx(want, abs=1e-4), request
        assert greedy == want_greedy
    assert all(v < 0 for v, _ in got)


def test_space_belongs_to_the_continuation(tiny_tokenizer):
    (ctx_a, cont_a), (ctx_b, cont_b) = encode_requests(
        tiny_tokenizer, [REQUESTS[2], Request(REQUESTS[2].context.rstrip(), " a trout")]
    )
    assert (ctx_a, cont_a) == (ctx_b, cont_b)
    assert tiny_tokenizer.decode(cont_a) == " a trout"


def test_batching_order_and_the_logits_fn_path_agree(tiny_llama, tiny_tokenizer):
    fast = loglikelihood(tiny_llama, tiny_tokenizer, REQUESTS, batch_size=64)
    one = loglikelihood(tiny_llama, tiny_tokenizer, REQUESTS, batch_size=1)
    backwards = loglikelihood(tiny_llama, tiny_tokenizer, REQUESTS[::-1], batch_size=2)[::-1]
    fn = hf_logits_fn(tiny_llama)
    plain = loglikelihood(lambda ids, mask: fn(ids, mask), tiny_tokenizer, REQUESTS, max_length=fn.max_length)
    for other in (one, backwards, plain):
        assert [v for v, _ in other] == pytest.approx([v for v, _ in fast], abs=1e-4)
        assert [g for _, g in other] == [g for _, g in fast]


def test_identical_inputs_are_one_row(tiny_llama, tiny_tokenizer):
    rows = []

    def counting(ids, mask):
        rows.append(ids.shape[0])
        return tiny_llama(input_ids=ids, attention_mask=mask).logits

    one_token = [Request("The cat sat on", c) for c in (" the", " of", " and", " to")]
    assert all(len(c) == 1 for _, c in encode_requests(tiny_tokenizer, one_token))
    loglikelihood(counting, tiny_tokenizer, one_token)
    assert rows == [1]


def test_too_long_pairs_are_cut_from_the_left_with_a_warning(tiny_llama, tiny_tokenizer, caplog):
    request = Request("It is raining today , said the man , and the river", " rose.")
    ctx, cont = encode_requests(tiny_tokenizer, [request])[0]
    window = len(cont) + 3
    with caplog.at_level(logging.WARNING, logger="lmdistill.evaluation.scoring"):
        ((got, _),) = loglikelihood(tiny_llama, tiny_tokenizer, [request], max_length=window)
    assert "cut from the left" in caplog.text
    kept = torch.tensor((ctx + cont)[-(window + 1) :])
    with torch.no_grad():
        logits = tiny_llama(input_ids=kept[None, :-1]).logits[0].float()
    want = -F.cross_entropy(logits[-len(cont) :], kept[-len(cont) :], reduction="sum").item()
    assert got == pytest.approx(want, abs=1e-4)
