import logging
import math

import pytest
import torch
import torch.nn.functional as F

from lmdistill.evaluation.scoring import hf_logits_fn, score_texts

TEXTS = [
    "The cat sat.",
    "Who should Derek hug after shocking Richard?",
    "A",
    "Several defendants in the Summerdale police burglary trial made statements indicating their guilt.",
    "",
    "It is raining today , said the man .",
    "The disclosure by Charles Bellows startled observers.",
]


def reference_score(model, tokenizer, text: str) -> float:
    """[bos] + ids alone (batch of 1, no padding), summed -cross_entropy of every text token."""
    ids = torch.tensor([tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].float()  # (T, V)
    return -F.cross_entropy(logits[:-1], ids[1:], reduction="sum").item()


def test_score_texts_matches_unbatched_reference(tiny_llama, tiny_tokenizer):
    fn = hf_logits_fn(tiny_llama)
    got = score_texts(fn, tiny_tokenizer, TEXTS, batch_size=3)  # mixed lengths, padded batches
    want = [reference_score(tiny_llama, tiny_tokenizer, t) for t in TEXTS]
    assert got == pytest.approx(want, abs=1e-4)
    assert got[TEXTS.index("")] == 0.0
    assert all(s < 0 for t, s in zip(TEXTS, got, strict=True) if t)


def test_batch_size_and_order_do_not_change_scores(tiny_llama, tiny_tokenizer):
    fn = hf_logits_fn(tiny_llama)
    one = score_texts(fn, tiny_tokenizer, TEXTS, batch_size=1)
    many = score_texts(fn, tiny_tokenizer, TEXTS, batch_size=64)
    rev = score_texts(fn, tiny_tokenizer, TEXTS[::-1], batch_size=2)
    assert many == pytest.approx(one, abs=1e-4)
    assert rev[::-1] == pytest.approx(one, abs=1e-4)
    assert score_texts(fn, tiny_tokenizer, []) == []


def test_eos_is_the_prefix_without_bos(tiny_llama, tiny_tokenizer):
    seen = []

    def logits_fn(ids, mask):
        seen.append(ids[:, 0].tolist())
        return tiny_llama(input_ids=ids, attention_mask=mask).logits

    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>")
    assert tokenizer.bos_token_id is None
    score_texts(logits_fn, tokenizer, ["The cat sat."])
    assert seen == [[tokenizer.eos_token_id]]


def test_long_texts_are_cut_from_the_left_with_a_warning(tiny_llama, tiny_tokenizer, caplog):
    text = TEXTS[3]
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    window = 8
    assert len(ids) > window
    fn = hf_logits_fn(tiny_llama)
    with caplog.at_level(logging.WARNING, logger="lmdistill.evaluation.scoring"):
        (got,) = score_texts(fn, tiny_tokenizer, [text], max_length=window)
    assert "cut from the left" in caplog.text
    # The harness keeps the last window + 1 tokens: window inputs, the last window tokens scored.
    kept = torch.tensor(ids[-(window + 1) :])
    with torch.no_grad():
        logits = tiny_llama(input_ids=kept[None, :-1]).logits[0]
    want = -F.cross_entropy(logits.float(), kept[1:], reduction="sum").item()
    assert got == pytest.approx(want, abs=1e-4)


def test_text_of_exactly_the_window_is_not_cut(tiny_llama, tiny_tokenizer, caplog):
    text = TEXTS[1]
    n = len(tiny_tokenizer(text, add_special_tokens=False).input_ids)
    fn = hf_logits_fn(tiny_llama)
    with caplog.at_level(logging.WARNING):
        (got,) = score_texts(fn, tiny_tokenizer, [text], max_length=n)
    assert caplog.text == ""
    assert got == pytest.approx(reference_score(tiny_llama, tiny_tokenizer, text), abs=1e-4)


def test_uniform_logits_give_minus_n_log_v(tiny_tokenizer):
    vocab = len(tiny_tokenizer)

    def uniform(ids, mask):
        return torch.zeros(*ids.shape, vocab)

    got = score_texts(uniform, tiny_tokenizer, TEXTS[:3], batch_size=2)
    lengths = [len(tiny_tokenizer(t, add_special_tokens=False).input_ids) for t in TEXTS[:3]]
    assert got == pytest.approx([-n * math.log(vocab) for n in lengths], rel=1e-6)


def test_hf_logits_fn_reads_window_and_bad_arguments_fail(tiny_llama, tiny_tokenizer):
    fn = hf_logits_fn(tiny_llama)
    assert fn.max_length == tiny_llama.config.max_position_embeddings
    assert not tiny_llama.training
    with pytest.raises(ValueError, match="batch_size"):
        score_texts(fn, tiny_tokenizer, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        score_texts(lambda ids, mask: torch.zeros(ids.shape[0], 3), tiny_tokenizer, ["a b"])


def test_the_empty_context_prefix_is_a_setting(tiny_tokenizer):
    """BLiMP's empty context: after <s> as lm-eval 0.4.13 (and as every training document starts), or after </s>
    as lm-eval 0.3 / the BabyLM 2023 pipeline."""
    from lmdistill.evaluation.scoring import Request, encode_requests, prefix_token_id

    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    assert prefix_token_id(tiny_tokenizer) == bos and prefix_token_id(tiny_tokenizer, "eos") == eos
    ((ctx, cont),) = encode_requests(tiny_tokenizer, [Request("", " The cat sat.")])
    ((ctx_eos, cont_eos),) = encode_requests(tiny_tokenizer, [Request("", " The cat sat.")], prefix="eos")
    assert ctx == [bos] and ctx_eos == [eos] and cont == cont_eos
    with pytest.raises(ValueError, match="'bos' or 'eos'"):
        prefix_token_id(tiny_tokenizer, "pad")
