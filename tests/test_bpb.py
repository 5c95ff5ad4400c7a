"""bits_per_byte against token-by-token loops written here (one forward per token), counts, windows and errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmdistill.config import SourceConfig
from lmdistill.data.corpus import load_documents
from lmdistill.evaluation.bpb import bits_per_byte, held_out_texts, rolling_windows

DOCS = [
    "The cat sat on the mat.",
    "It is raining today, said the man,\nand the river rose.",
    "Who should Derek hug after shocking Richard?",
]
LONG = (
    "The Fulton County Grand Jury said Friday an investigation of recent primary election produced no evidence "
    "that any irregularities took place. The jury further said in term-end presentments that the City Executive "
    "Committee, which had over-all charge of the election, deserves the praise and thanks of the City of Atlanta."
)


def next_token_nll(model, context: list[int], token: int) -> float:
    """-ln p(token | context) from one forward pass over exactly ``context``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context])).logits[0, -1].float()
    return -F.log_softmax(logits, -1)[token].item()


def direct_nll(model, tokenizer, doc: str, prefix_id: int) -> float:
    """Full-context reference: every token after the prefix and all the document tokens before it."""
    tokens = tokenizer(doc, add_special_tokens=False).input_ids
    return sum(next_token_nll(model, [prefix_id, *tokens[:i]], tokens[i]) for i in range(len(tokens)))


def sliding_context(tokens: list[int], prefix_id: int, i: int, window: int) -> list[int]:
    """lm-eval's rolling rule, token by token: the context that predicts ``tokens[i]``.

    Tokens are predicted in chunks of ``window``: chunk 0 after the prefix, each later chunk by the ``window``
    tokens ending just before the chunk's end (the last, short chunk included).
    """
    if i < window:
        return [prefix_id, *tokens[:i]]
    end = min(window * (i // window + 1), len(tokens))
    return tokens[end - window - 1 : i]


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    """A random 2-layer GPT-2 with a window of only 16 tokens, so that documents need several windows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tiny_tokenizer), n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2
    )
    return GPT2LMHeadModel(config).eval()


def test_matches_a_token_by_token_loop(tiny_llama, tiny_tokenizer):
    got = bits_per_byte(tiny_llama, tiny_tokenizer, DOCS, batch_size=2)
    want = sum(direct_nll(tiny_llama, tiny_tokenizer, d, tiny_tokenizer.bos_token_id) for d in DOCS)
    num_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    num_words = sum(len(d.split()) for d in DOCS)
    num_tokens = sum(len(tiny_tokenizer(d, add_special_tokens=False).input_ids) for d in DOCS)
    assert got["nll"] == pytest.approx(want, rel=1e-5)
    assert (got["num_bytes"], got["num_words"], got["num_tokens"], got["num_documents"]) == (
        num_bytes,
        num_words,
        num_tokens,
        3,
    )
    assert got["bits_per_byte"] == pytest.approx(want / (math.log(2) * num_bytes), rel=1e-5)
    assert got["bits_per_word"] == pytest.approx(want / (math.log(2) * num_words), rel=1e-5)
    assert got["nats_per_token"] == pytest.approx(want / num_tokens, rel=1e-5)
    assert got["byte_perplexity"] == pytest.approx(2 ** got["bits_per_byte"], rel=1e-9)
    assert "per_source" not in got


def test_eos_prefix(tiny_llama, tiny_tokenizer):
    firsts = []

    def fn(ids, mask):
        firsts.extend(ids[:, 0].tolist())
        return tiny_llama(input_ids=ids, attention_mask=mask).logits

    got = bits_per_byte(fn, tiny_tokenizer, DOCS[:1], prefix="eos")
    assert firsts == [tiny_tokenizer.eos_token_id]
    assert got["nll"] == pytest.approx(direct_nll(tiny_llama, tiny_tokenizer, DOCS[0], 2), rel=1e-5)


def test_rolling_windows_match_a_sliding_loop(tiny_gpt2, tiny_tokenizer):
    tokens = tiny_tokenizer(LONG, add_special_tokens=False).input_ids
    assert len(tokens) > 3 * 16 and len(tokens) % 16  # several full windows and a short last one
    seen = []

    def fn(ids, mask):
        seen.append(ids.shape)
        return tiny_gpt2(input_ids=ids, attention_mask=mask).logits

    fn.max_length = 16
    got = bits_per_byte(fn, tiny_tokenizer, [LONG], batch_size=3)
    want = sum(next_token_nll(tiny_gpt2, sliding_context(tokens, 1, i, 16), t) for i, t in enumerate(tokens))
    assert got["nll"] == pytest.approx(want, rel=1e-5)
    assert got["num_tokens"] == len(tokens)
    assert all(shape[1] <= 16 for shape in seen)
    # the HF model's own window (n_positions) is the default
    assert bits_per_byte(tiny_gpt2, tiny_tokenizer, [LONG])["nll"] == pytest.approx(want, rel=1e-5)


def test_every_token_is_predicted_exactly_once():
    tokens = list(range(100, 137))
    for window in (1, 2, 5, 16, 36, 37, 38, None):
        pieces = rolling_windows(tokens, 1, window)
        assert [t for _, targets in pieces for t in targets] == tokens
        for ids, targets in pieces:
            assert len(targets) <= len(ids) <= (window or len(tokens))
    assert rolling_windows([7, 8, 9], 1, 2) == [([1, 7], [7, 8]), ([7, 8], [9])]


def test_windows_equal_one_long_window_when_the_context_fits(tiny_llama, tiny_tokenizer):
    n = len(tiny_tokenizer(LONG, add_special_tokens=False).input_ids)
    one = bits_per_byte(tiny_llama, tiny_tokenizer, [LONG], max_length=None)["nll"]  # window 256 > n
    for window in (n, n + 7):
        assert bits_per_byte(tiny_llama, tiny_tokenizer, [LONG], max_length=window)["nll"] == pytest.approx(one)
    unlimited = bits_per_byte(lambda i, m: tiny_llama(input_ids=i, attention_mask=m).logits, tiny_tokenizer, [LONG])
    assert unlimited["nll"] == pytest.approx(one, rel=1e-5)
    assert one == pytest.approx(direct_nll(tiny_llama, tiny_tokenizer, LONG, 1), rel=1e-5)
    short = bits_per_byte(tiny_llama, tiny_tokenizer, [LONG], max_length=n // 3)
    assert short["num_tokens"] == n and short["nll"] != pytest.approx(one)  # less context, another total


def test_batching_and_padding_do_not_change_the_result(tiny_gpt2, tiny_tokenizer):
    docs = [*DOCS, LONG]
    one = bits_per_byte(tiny_gpt2, tiny_tokenizer, docs, batch_size=1)
    many = bits_per_byte(tiny_gpt2, tiny_tokenizer, docs[::-1], batch_size=16)
    assert many["nll"] == pytest.approx(one["nll"], rel=1e-5)


def test_per_source_sums_to_the_total(tiny_llama, tiny_tokenizer):
    texts = {"a": DOCS[:2], "b": [DOCS[2], LONG]}
    got = bits_per_byte(tiny_llama, tiny_tokenizer, texts, max_length=20)
    per = got["per_source"]
    assert list(per) == ["a", "b"]
    for key in ("num_bytes", "num_words", "num_tokens", "num_documents"):
        assert per["a"][key] + per["b"][key] == got[key]
    assert per["a"]["nll"] + per["b"]["nll"] == pytest.approx(got["nll"], rel=1e-12)
    alone = bits_per_byte(tiny_llama, tiny_tokenizer, texts["b"], max_length=20)
    assert per["b"]["bits_per_byte"] == pytest.approx(alone["bits_per_byte"], rel=1e-5)
    flat = bits_per_byte(tiny_llama, tiny_tokenizer, [*texts["a"], *texts["b"]], max_length=20)
    assert flat["nll"] == pytest.approx(got["nll"], rel=1e-5)


def test_bytes_and_words_of_non_ascii_text(tiny_llama, tiny_tokenizer):
    docs = ["naïve café — 東京", "  Grüße\n\tàç  "]
    # bytes: n a ï(2) v e, space, c a f é(2), space, —(3), space, 東(3) 京(3) = 23;
    #        2 spaces, G r ü(2) ß(2) e, newline, tab, à(2) ç(2), 2 spaces = 17
    # words: naïve café — 東京 (4); Grüße àç (2)
    got = bits_per_byte(tiny_llama, tiny_tokenizer, docs)
    assert (got["num_bytes"], got["num_words"]) == (23 + 17, 6)
    assert got["bits_per_byte"] == pytest.approx(got["nll"] / (math.log(2) * 40))
    assert got["bits_per_word"] == pytest.approx(got["nll"] / (math.log(2) * 6))
    assert got["nll"] == pytest.approx(sum(direct_nll(tiny_llama, tiny_tokenizer, d, 1) for d in docs), rel=1e-5)
    blank = bits_per_byte(tiny_llama, tiny_tokenizer, [" \n "])
    assert blank["num_words"] == 0 and math.isnan(blank["bits_per_word"]) and blank["bits_per_byte"] > 0


def test_errors(tiny_llama, tiny_tokenizer):
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(ValueError, match="at least one document"):
        bits_per_byte(tiny_llama, tiny_tokenizer, [])
    with pytest.raises(ValueError, match="at least one document"):
        bits_per_byte(tiny_llama, tiny_tokenizer, {})
    with pytest.raises(ValueError, match="source 'b': no documents"):
        bits_per_byte(tiny_llama, tiny_tokenizer, {"a": DOCS, "b": []})
    with pytest.raises(ValueError, match="document 1 is empty"):
        bits_per_byte(tiny_llama, tiny_tokenizer, ["ok", ""])
    with pytest.raises(ValueError, match="source 'a': document 0 is empty"):
        bits_per_byte(tiny_llama, tiny_tokenizer, {"a": [""]})
    with pytest.raises(TypeError, match="not one str"):
        bits_per_byte(tiny_llama, tiny_tokenizer, "one string")
    bare = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        bits_per_byte(tiny_llama, bare, DOCS)
    with pytest.raises(ValueError, match="prefix must be"):
        bits_per_byte(tiny_llama, tiny_tokenizer, DOCS, prefix="bot")
    with pytest.raises(ValueError, match="batch_size"):
        bits_per_byte(tiny_llama, tiny_tokenizer, DOCS, batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        bits_per_byte(tiny_llama, tiny_tokenizer, DOCS, max_length=0)
    with pytest.raises(ValueError, match="expected"):
        bits_per_byte(lambda i, m: tiny_llama(input_ids=i).logits[:, :-1], tiny_tokenizer, DOCS)


def test_held_out_texts_takes_whole_documents_in_order(data_root):
    got = held_out_texts(data_root, ["inaugural", SourceConfig(name="brown")], max_bytes_per_source=3000)
    assert list(got) == ["inaugural", "brown"]
    docs = load_documents(data_root, SourceConfig(name="inaugural"), "dev")
    kept = got["inaugural"]
    assert kept == docs[: len(kept)]
    size = sum(len(d.encode("utf-8")) for d in kept)
    assert size <= 3000 < size + len(docs[len(kept)].encode("utf-8"))
    brown = load_documents(data_root, SourceConfig(name="brown"), "dev")
    # a first document over the budget gives its first whole lines that fit: never an empty source
    assert len(brown[0].encode("utf-8")) > 3000 and len(got["brown"]) == 1
    head = got["brown"][0]
    lines = brown[0].split("\n")
    assert brown[0].startswith(head) and len(head.encode("utf-8")) <= 3000
    taken = head.count("\n") + 1
    assert head == "\n".join(lines[:taken]) and len("\n".join(lines[: taken + 1]).encode("utf-8")) > 3000
    assert held_out_texts(data_root, ["inaugural"], max_bytes_per_source=None)["inaugural"] == docs
    with pytest.raises(FileNotFoundError, match="(?i)did you mean"):
        held_out_texts(data_root, ["inagural"])
    with pytest.raises(ValueError, match="named twice"):
        held_out_texts(data_root, ["brown", "brown"])


def test_eval_command_reports_bits_per_byte_of_checkpoints(tmp_path, tiny_llama, tiny_tokenizer, data_root, capsys):
    """`lmdistill eval DIR --bits-per-byte SOURCES` = bits_per_byte on held_out_texts, written per model."""
    import json

    from lmdistill.cli import main

    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    code = main(["eval", str(folder), "--bits-per-byte", "inaugural,abc", "--bpb-bytes", "800",
                 "--output-dir", str(out), "--data-root", str(data_root)])  # fmt: skip
    assert code == 0
    assert "| tiny |" in capsys.readouterr().out
    saved = json.loads((out / "tiny" / "bits_per_byte.json").read_text())
    texts = held_out_texts(data_root, ["inaugural", "abc"], max_bytes_per_source=800)
    direct = bits_per_byte(tiny_llama, tiny_tokenizer, texts, max_length=256)
    assert saved["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-6)
    assert set(saved["per_source"]) == {"inaugural", "abc"} and saved["max_length"] == 256
