"""Corpus cleaning and budgets, tokenizer training/saving, and the token cache (small slices of the real data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from lmdistill.config import SourceConfig
from lmdistill.data import tokens as tokens_module
from lmdistill.data.corpus import (
    CLEANERS,
    cleaning_rule,
    count_words,
    file_sha256,
    load_corpus,
    load_documents,
    source_files,
)
from lmdistill.data.tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from lmdistill.data.tokens import read_sidecar, tokenize_documents

# --- cleaning rules on hand-written lines ----------------------------------------------------------------------

CLEANING_CASES = [
    ("none", "  Hello  world \t ", "  Hello  world"),
    ("tinyshakespeare", "First Citizen: ", "First Citizen:"),
    (
        "tinyshakespeare",
        "Before we proceed any further, hear me speak.",
        "Before we proceed any further, hear me speak.",
    ),
    (
        "brown",
        "`` You mean some of the defendants made statements admitting this '' ? ?",
        '"You mean some of the defendants made statements admitting this"?',
    ),
    (
        "brown",
        "Bellows made the disclosure , he said ( and laughed ) ; ;",
        "Bellows made the disclosure, he said (and laughed);",
    ),
    ("brown", "They reside at 4911 Miles Dr. .", "They reside at 4911 Miles Dr."),
    ("brown", "`` It's ' See Joe , see Jim ' '' , he says .", "\"It's 'See Joe, see Jim'\", he says."),
    ("brown", "I do n't know what he 's doing : nothing ! !", "I don't know what he's doing: nothing!"),
    ("brown", "$ 4,800 of pay per year -- or more .", "$4,800 of pay per year -- or more."),
    ("brown", "he was only 4' 10'' '' tall , with 1/8'' '' brass", 'he was only 4\' 10" tall, with 1/8" brass'),
    (
        "movie_reviews",
        ' " quest for camelot " is warner bros . \' first feature-length , fully-animated attempt . ',
        '"quest for camelot" is warner bros.\' first feature-length, fully-animated attempt.',
    ),
    ("movie_reviews", "my watch ( six ) is a clear indication ? ", "my watch (six) is a clear indication?"),
    ("movie_reviews", 'in " road trip , " plays billy . . . ', 'in "road trip," plays billy...'),
    ("movie_reviews", "here's the `plot . ' ", "here's the 'plot.'"),
    ("movie_reviews", "``high fidelity'' is about pop music . ", '"high fidelity" is about pop music.'),
    ("movie_reviews", "&nbsp ; is the movie any good ? &nbsp ; ", "is the movie any good?"),
    ("movie_reviews", "today\x12s films , \x13suspend disbelief . \x14 ", 'today\'s films, "suspend disbelief."'),
    ("movie_reviews", ' " quest for camelot " \'s worst error', '"quest for camelot"\'s worst error'),
    ("movie_reviews", 'i like that in a woman . " ', 'i like that in a woman."'),  # closes a quote opened above
    ("movie_reviews", " \" you don't beg , you insist . ", "\"you don't beg, you insist."),  # opens a quote
    ("childes", "what do you think of Big_Bird.", "what do you think of Big Bird."),
    ("childes", "peek_a_boo.", "peek a boo."),
    ("childes", "is that a kitty+cat?", "is that a kitty cat?"),
    ("childes", "xxx what have we.", "what have we."),
    ("childes", "it's a bunny xxx sweetie.", "it's a bunny sweetie."),
    ("childes", "that's a fox in a box.", "that's a fox in a box."),
    ("childes", "xxx.", ""),
    ("childes", "yyy!", ""),
    (
        "state_union",
        "  test America��s resolve�Xand ��Most Americans,�� he said�K ",
        'test America\'s resolve\u2014and "Most Americans," he said...',
    ),
    ("inaugural", "our nation��s security", "our nation's security"),
    ("abc", "heated to 460�C  in the lab Â ", "heated to 460\u00b0C in the lab"),
    ("webtext", "KING ARTHUR: Whoa there!  [clop clop clop] ", "KING ARTHUR: Whoa there! [clop clop clop]"),
    ("webtext", "dialog boxes don�t close", "dialog boxes don't close"),
]


@pytest.mark.parametrize(("rule", "line", "expected"), CLEANING_CASES)
def test_cleaning_rule(rule: str, line: str, expected: str) -> None:
    assert CLEANERS.get(rule)(line) == expected


def test_every_source_has_a_rule_and_defaults() -> None:
    for name in ("brown", "movie_reviews", "childes", "tinyshakespeare", "webtext", "abc", "state_union", "inaugural"):
        assert name in CLEANERS
        assert cleaning_rule(SourceConfig(name)) == name
    assert cleaning_rule(SourceConfig("my_corpus")) == "none"
    assert cleaning_rule(SourceConfig("brown", cleaning="none")) == "none"


def test_unknown_cleaning_rule_suggests(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="Did you mean: brown"):
        load_documents(tmp_path, SourceConfig("brown", cleaning="browm"), "train")


# --- documents and budgets from files --------------------------------------------------------------------------


def _write(root: Path, name: str, split: str, text: str) -> Path:
    path = root / "corpus" / name / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_documents_split_on_blank_lines_only(tmp_path: Path) -> None:
    _write(tmp_path, "childes", "train", "a b.\n\n\nc_d.\nxxx.\ne.\n  \nf.\n")
    assert load_documents(tmp_path, SourceConfig("childes"), "train") == ["a b.", "c d.\ne.", "f."]


def test_budget_cuts_at_a_line(tmp_path: Path) -> None:
    _write(tmp_path, "toy", "dev", "one two three\nfour five\n\nsix seven\neight\n")
    assert load_documents(tmp_path, SourceConfig("toy", dev_max_words=4), "dev") == ["one two three\nfour five"]
    assert load_documents(tmp_path, SourceConfig("toy", dev_max_words=6), "dev") == [
        "one two three\nfour five",
        "six seven",
    ]
    assert load_documents(tmp_path, SourceConfig("toy", max_words=1), "dev")[-1] == "six seven\neight"  # train only


def test_missing_file_names_path_and_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_documents(tmp_path, SourceConfig("brown"), "dev")
    assert str(tmp_path / "corpus" / "brown" / "dev.txt") in str(err.value)
    assert f"data root {tmp_path}" in str(err.value)


@pytest.mark.parametrize(("name", "text"), [("brown", ""), ("childes", "xxx.\n\nyyy.\n")])
def test_empty_file_names_path(tmp_path: Path, name: str, text: str) -> None:
    path = _write(tmp_path, name, "train", text)
    with pytest.raises(ValueError, match="no words") as err:
        load_documents(tmp_path, SourceConfig(name), "train")
    assert str(path) in str(err.value)


def test_source_files_and_sha256(tmp_path: Path) -> None:
    paths = [_write(tmp_path, name, split, f"{name} {split}\n") for name in ("a", "b") for split in ("train", "dev")]
    assert source_files(tmp_path, [SourceConfig("a"), SourceConfig("b")]) == paths
    assert source_files(tmp_path, [SourceConfig("b")], splits=("dev",)) == [paths[3]]
    assert file_sha256(paths[0]) == hashlib.sha256(b"a train\n").hexdigest()
    assert file_sha256(paths[0], chunk_size=3) == file_sha256(paths[0])


def test_real_pretokenised_sources_are_cleaned(data_root: Path) -> None:
    for name in ("brown", "movie_reviews"):
        docs = load_documents(data_root, SourceConfig(name, max_words=20_000), "train")
        text = "\n".join(docs)
        for artefact in (" ,", " .", " ;", " ?", " )", "( ", "``", "''", " n't"):
            assert artefact not in text, (name, artefact)


def test_real_word_budgets(data_root: Path) -> None:
    for name in ("brown", "childes", "tinyshakespeare", "state_union"):
        for split, budget in (("train", 5_000), ("dev", 2_000)):
            source = SourceConfig(name, max_words=budget, dev_max_words=budget)
            docs = load_documents(data_root, source, split)
            last_line_words = len(docs[-1].split("\n")[-1].split())
            assert budget <= count_words(docs) < budget + last_line_words, (name, split)
    small = load_documents(data_root, SourceConfig("brown", max_words=2_000), "train")
    large = load_documents(data_root, SourceConfig("brown", max_words=4_000), "train")
    assert large[: len(small) - 1] == small[:-1] and large[len(small) - 1].startswith(small[-1])  # documents in order


def test_real_missing_source_suggests(data_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Did you mean: brown"):
        load_corpus(data_root, [SourceConfig("browm")], "train")


# --- tokenizer -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(data_root: Path) -> list[str]:
    sources = [SourceConfig("brown", max_words=15_000), SourceConfig("childes", max_words=5_000)]
    return load_corpus(data_root, sources, "train")


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str]):
    return train_tokenizer(corpus, vocab_size=600)


TEXTS = [
    "The jury said it did not find any evidence that the election was held unfairly.",
    'She asked, "Where are you going?" and he laughed (quietly).\nA second line, with  two spaces.',
    "what do you think of Big Bird?",
]


def test_tokenizer_vocab_specials_and_round_trip(tokenizer) -> None:
    assert len(tokenizer) == 600
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == SPECIAL_TOKENS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    for text in [*TEXTS, "caf\u00e9 \u00fcber \u65e5\u672c"]:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]  # no post-processor
        assert tokenizer.unk_token_id not in ids and all(i >= len(SPECIAL_TOKENS) for i in ids)
        assert tokenizer.decode(ids) == text


def test_tokenizer_is_deterministic(tokenizer, corpus: list[str]) -> None:
    again = train_tokenizer(corpus, vocab_size=600)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(train_tokenizer(corpus, vocab_size=601)) != tokenizer_fingerprint(tokenizer)


def test_tokenizer_save_load(tokenizer, tmp_path: Path) -> None:
    out = save_tokenizer(tokenizer, tmp_path / "tok")
    save_tokenizer(tokenizer, out)  # overwriting an existing folder works
    plain = AutoTokenizer.from_pretrained(str(out))
    ours = load_tokenizer(out)
    for loaded in (plain, ours):
        assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)
        assert loaded(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]
        assert loaded.eos_token_id == 2 and loaded.decode(loaded(TEXTS[1])["input_ids"]) == TEXTS[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary folders left


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], vocab_size=100)


# --- token cache -----------------------------------------------------------------------------------------------


def _slow_path(documents: list[str], tokenizer) -> np.ndarray:
    ids = [
        i
        for doc in documents
        for i in (tokenizer.bos_token_id, *tokenizer.encode(doc, add_special_tokens=False), tokenizer.eos_token_id)
    ]
    return np.asarray(ids, dtype=np.int64)


def test_token_cache_matches_slow_path(tokenizer, corpus: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tokens_module, "_BATCH_SIZE", 3)  # several batches
    docs = corpus[:10]
    arr = tokenize_documents(docs, tokenizer, tmp_path, "train")
    assert arr.dtype == np.uint16 and arr.ndim == 1 and not arr.flags.writeable
    np.testing.assert_array_equal(np.asarray(arr, dtype=np.int64), _slow_path(docs, tokenizer))
    eos = np.flatnonzero(np.asarray(arr) == tokenizer.eos_token_id)
    lengths = [len(tokenizer.encode(d, add_special_tokens=False)) + 2 for d in docs]
    np.testing.assert_array_equal(eos, np.cumsum(lengths) - 1)  # one eos right after each document
    bos = np.flatnonzero(np.asarray(arr) == tokenizer.bos_token_id)
    np.testing.assert_array_equal(bos, np.concatenate([[0], eos[:-1] + 1]))  # <s> starts every document
    (npy,) = tmp_path.glob("train-*.npy")
    assert np.array_equal(np.load(npy, mmap_mode="r"), arr)
    meta = read_sidecar(npy)
    assert meta["num_tokens"] == arr.shape[0] and meta["num_documents"] == 10 and meta["dtype"] == "uint16"
    assert json.loads(npy.with_suffix(".json").read_text())["tokenizer_fingerprint"] == tokenizer_fingerprint(
        tokenizer
    )
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_token_cache_hit_and_keys(tokenizer, corpus: list[str], tmp_path: Path, monkeypatch, caplog) -> None:
    docs = corpus[:10]
    first = tokenize_documents(docs, tokenizer, tmp_path, "dev")
    (npy,) = tmp_path.glob("dev-*.npy")
    mtime = npy.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("tokenized again on a cache hit")

    monkeypatch.setattr(tokens_module, "_encode_batch", boom)
    with caplog.at_level("INFO", logger="lmdistill.data.tokens"):
        second = tokenize_documents(list(docs), tokenizer, tmp_path, "dev")
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(first, second)
    assert npy.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="tokenized again"):  # other documents -> another key -> a miss
        tokenize_documents([*docs[:9], docs[9] + " x"], tokenizer, tmp_path, "dev")
    with pytest.raises(AssertionError, match="tokenized again"):  # same text, other document boundaries
        tokenize_documents(["\n".join(docs[:2]), *docs[2:]], tokenizer, tmp_path, "dev")


def test_stale_tmp_is_not_a_cache(tokenizer, corpus: list[str], tmp_path: Path, monkeypatch) -> None:
    docs = corpus[:5]
    name = tokenize_documents(docs, tokenizer, tmp_path / "a", "train")
    (npy,) = (tmp_path / "a").glob("*.npy")
    stale_dir = tmp_path / "b"
    stale_dir.mkdir()
    for stale in (f".{npy.name}.abc123.tmp", f"{npy.name}.tmp"):  # as left by a crash mid-write
        (stale_dir / stale).write_bytes(b"\x93NUMPY garbage")
    calls = []
    real = tokens_module._encode_batch
    monkeypatch.setattr(
        tokens_module, "_encode_batch", lambda tok, batch: calls.append(len(batch)) or real(tok, batch)
    )
    again = tokenize_documents(docs, tokenizer, stale_dir, "train")
    assert calls == [5]
    np.testing.assert_array_equal(again, name)


# --- tokenizer checks: special-token roles, slow tokenizers; a damaged token cache ----------------------------


def test_fingerprint_covers_special_token_roles(tokenizer, corpus: list[str], tmp_path: Path) -> None:
    import copy

    other = copy.deepcopy(tokenizer)
    other.eos_token = "<unk>"  # the same vocabulary and merges, but documents end with another id
    assert other.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    assert tokenizer_fingerprint(no_bos) != tokenizer_fingerprint(tokenizer)
    docs = corpus[:3]
    a = tokenize_documents(docs, tokenizer, tmp_path, "train")
    b = tokenize_documents(docs, other, tmp_path, "train")  # not a cache hit on the first array
    assert len(list(tmp_path.glob("train-*.npy"))) == 2
    assert np.count_nonzero(np.asarray(b) == 3) == 3 and np.count_nonzero(np.asarray(a) == 3) == 0
    out = save_tokenizer(other, tmp_path / "tok")
    assert tokenizer_fingerprint(load_tokenizer(out)) == tokenizer_fingerprint(other)  # roles survive a round trip


def test_fingerprint_of_a_slow_tokenizer_is_a_clear_error() -> None:
    class SlowTokenizer:  # what a tokenizer without a ``tokenizers`` backend looks like to the fingerprint
        name_or_path = "teachers/old-bert"

    with pytest.raises(ValueError, match=r"cannot fingerprint tokenizer teachers/old-bert: it is a SlowTokenizer"):
        tokenizer_fingerprint(SlowTokenizer())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_token_cache_file_is_tokenized_again(tokenizer, corpus, tmp_path: Path, caplog, damage) -> None:
    docs = corpus[:5]
    first = np.array(tokenize_documents(docs, tokenizer, tmp_path, "train"))
    (npy,) = tmp_path.glob("train-*.npy")
    npy.write_bytes(npy.read_bytes()[:-7] if damage == "truncate" else b"not an npy file at all")
    with caplog.at_level("WARNING", logger="lmdistill.data.tokens"):
        again = tokenize_documents(docs, tokenizer, tmp_path, "train")
    assert f"token cache file {npy} is not a readable token array" in caplog.text and "tokenizing again" in caplog.text
    np.testing.assert_array_equal(again, first)
    assert read_sidecar(npy)["num_tokens"] == len(first)
