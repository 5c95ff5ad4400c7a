"""Corpus reading: per-source line cleaning rules, documents, word budgets and data hashes.

Files are ``<data root>/corpus/<source>/{train,dev}.txt``: one sentence, utterance or paragraph per line,
documents separated by blank (or whitespace-only) lines. A line that only becomes empty through cleaning (a
CHILDES ``xxx.`` line, a movie review's ``&nbsp ;``) is dropped; it does not split its document.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from lmdistill.config import SourceConfig
from lmdistill.registry import Registry, did_you_mean

__all__ = [
    "CLEANERS",
    "cleaning_rule",
    "corpus_path",
    "count_words",
    "file_sha256",
    "load_corpus",
    "load_documents",
    "source_files",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "dev"]

CLEANERS: Registry[Callable[[str], str]] = Registry("cleaning rule")
"""Per-line cleaning rules: ``str -> str``, no trailing newline in or out; "" means "drop this line"."""


def _squeeze(line: str) -> str:
    """Strip both ends and collapse runs of whitespace to one space."""
    return " ".join(line.split())


# --- undoing pre-tokenised spacing (Brown, movie_reviews) ----------------------------------------------------

_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?%)\]}])")  # "word ," -> "word,"; ") ." -> ")."
_SPACE_AFTER_OPEN = re.compile(r"([(\[{$]) +")  # "( x" -> "(x"; "$ 5" -> "$5"
_SPACE_BEFORE_CLITIC = re.compile(r" +(n't|'s|'re|'ve|'ll|'d|'m)(?![\w'])", re.IGNORECASE)  # "do n't", "it 's"


def _detokenize(line: str) -> str:
    """Attach punctuation, brackets and clitics to their words (the quotes are handled before this)."""
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    line = _SPACE_AFTER_OPEN.sub(r"\1", line)
    return _SPACE_BEFORE_CLITIC.sub(r"\1", line)


def _pair_quotes(line: str, quote: str) -> str:
    """Glue stand-alone ``quote`` tokens to the text they enclose: ``a " b c " d`` -> ``a "b c" d``.

    Quotes pair left to right. With an odd count one quote belongs to a quotation spanning lines: if the line
    ends with a quote (and does not start with one) the first quote closes, else the last one opens (or closes,
    at the end of the line).
    """
    tokens = line.split(" ")
    where = [i for i, token in enumerate(tokens) if token == quote]
    opening: dict[int, bool] = {}  # token index -> True for an opening quote, False for a closing one
    if len(where) % 2:
        if where[-1] == len(tokens) - 1 and where[0] != 0:
            opening[where[0]], where = False, where[1:]
        else:
            opening[where[-1]], where = where[-1] != len(tokens) - 1, where[:-1]
    opening.update({i: k % 2 == 0 for k, i in enumerate(where)})
    out: list[str] = []
    for i, token in enumerate(tokens):
        if out and (opening.get(i) is False or opening.get(i - 1) is True):  # closing quote, or after an opening one
            out[-1] += token
        else:
            out.append(token)
    return " ".join(out)


_BROWN_OPEN = re.compile(r"`` *")  # `` -> opening "
_BROWN_CLOSE = re.compile(r" *''")  # '' -> closing "
_DOUBLED = re.compile(r"([?!;:]) \1$")  # NLTK's Brown repeats a line-final ? ! ; or : ("? ?")
_ABBREV_STOP = re.compile(r"(?<=\w\.) \.(?= |$)")  # "Sr. ." (abbreviation + full stop) -> "Sr."
_INCHES = re.compile(r"(?<=\d)'' ''")  # 1/8'' '' (an inch mark, then a stray quote token) -> 1/8"


@CLEANERS.register("brown")
def clean_brown(line: str) -> str:
    """Undo Brown's tokenised spacing: two backticks / two apostrophes -> ``"``; ``a , b ( c ) ?`` -> ``a, b (c)?``.

    Line-final ``? ?``, ``! !``, ``; ;`` and ``: :`` (doubled by NLTK) and ``Sr. .`` lose the repeat; stand-alone
    ``'`` quotes are paired and glued like the double ones; ``4' 10'' ''`` (feet, inches) -> ``4' 10"``.
    """
    line = _INCHES.sub('"', _pair_quotes(_squeeze(line), "'"))
    line = _BROWN_CLOSE.sub('"', _BROWN_OPEN.sub('"', line))
    return _detokenize(_ABBREV_STOP.sub("", _DOUBLED.sub(r"\1", line)))


_NBSP = re.compile(r"&nbsp *;?")
_BACKTICK_QUOTE = re.compile(r"` *(\S(?:[^`]*?\S)?) *'(?![\w'])")  # `x ... ' -> 'x ...' (earliest closing)
_CP1252_STRIPPED = {"\x12": "'", "\x05": "...", "\x16": "-"}  # cp1252 0x92/0x85/0x96 with the high bit lost
_CTRL_OPEN = re.compile("\x13 *")  # cp1252 0x93 (left double quote), high bit lost
_CTRL_CLOSE = re.compile(" *\x14")  # cp1252 0x94 (right double quote), high bit lost
_LONE_APOSTROPHE = re.compile(r" +'(?= |$)")  # "bros . ' first" (a possessive) -> "bros.' first"


@CLEANERS.register("movie_reviews")
def clean_movie_reviews(line: str) -> str:
    r"""Undo the reviews' tokenised spacing (case left lower): ``" a , b " ( c ) .`` -> ``"a, b" (c).``.

    Also backtick-opened single quotes -> ``'x ...'``, Brown-style quote pairs -> ``"``, ``&nbsp ;`` dropped, and
    the control characters left by cp1252 punctuation that lost its high bit mapped back (``\x12`` -> ``'``,
    ``\x13``/``\x14`` -> ``"``, ``\x16`` -> ``-``, ``\x05`` -> ``...``).
    """
    line = _squeeze(_NBSP.sub(" ", line))
    line = _BROWN_CLOSE.sub('"', _BROWN_OPEN.sub('"', line))  # a few reviews use Brown's `` ''
    line = _BACKTICK_QUOTE.sub(r"'\1'", line).replace("`", "'")
    line = _pair_quotes(line, '"')
    line = _detokenize(_LONE_APOSTROPHE.sub("'", line))
    for char, repl in _CP1252_STRIPPED.items():
        line = line.replace(char, repl)
    return _CTRL_CLOSE.sub('"', _CTRL_OPEN.sub('"', line))


# --- speech, news and web text -------------------------------------------------------------------------------

_CHAT_JOINERS = re.compile(r"[_+]")  # Big_Bird, peek_a_boo (multi-word), kitty+cat (compound)
_CHAT_MARKERS = re.compile(r"(?<![\w'])(?:xxx|yyy|www)(?![\w'])")  # unintelligible / untranscribed speech
_NO_WORD = re.compile(r"^\W*$")


@CLEANERS.register("childes")
def clean_childes(line: str) -> str:
    """CHILDES (CHAT) utterances: ``_``/``+`` joiners -> spaces, ``xxx``/``yyy``/``www`` markers dropped.

    A line with no word left (``xxx.``) becomes "" and is dropped.
    """
    line = _squeeze(_CHAT_MARKERS.sub(" ", _CHAT_JOINERS.sub(" ", line)))
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    return "" if _NO_WORD.match(line) else line


@CLEANERS.register("none")
@CLEANERS.register("tinyshakespeare")
def clean_none(line: str) -> str:
    """Strip trailing whitespace only (Shakespeare's verse lines and speaker names are kept as they are)."""
    return line.rstrip()


_MOJIBAKE_APOSTROPHE = re.compile(r"(?<=\w)\ufffd\ufffd?(?=(?:s|t|re|ve|ll|d|m)\b)")  # man��s, don�t
_MOJIBAKE_DASH = re.compile(r" ?\ufffdX ?")  # remembered�Xnot  (an em dash)
_MOJIBAKE_ELLIPSIS = re.compile(r"\ufffdK")


@CLEANERS.register("state_union")
@CLEANERS.register("inaugural")
def clean_speeches(line: str) -> str:
    """Speeches: squeeze whitespace and repair the mojibake quotes and dashes (``America��s`` -> ``America's``).

    ``��`` elsewhere is a double quote, ``�X`` an em dash, ``�K`` an ellipsis, ``�@`` (a wide space) a space.
    """
    line = _MOJIBAKE_APOSTROPHE.sub("'", _squeeze(line.replace("\ufffd@", " ")))
    line = _MOJIBAKE_DASH.sub("\u2014", line)
    line = _MOJIBAKE_ELLIPSIS.sub("...", line)
    return line.replace("\ufffd\ufffd", '"')


_DEGREES = re.compile(r"(?<=\d)\ufffd(?=C\b)")  # 460�C


@CLEANERS.register("abc")
def clean_abc(line: str) -> str:
    """ABC news: squeeze whitespace, ``460�C`` -> ``460°C``, drop the stray ``Â`` of mis-decoded text."""
    return _DEGREES.sub("\u00b0", _squeeze(line.replace("\u00c2", "")))


@CLEANERS.register("webtext")
def clean_webtext(line: str) -> str:
    r"""Web text: squeeze whitespace (two spaces after full stops), ``don�t`` and ``\x91`` -> apostrophes."""
    return _MOJIBAKE_APOSTROPHE.sub("'", _squeeze(line.replace("\x91", "'")))


# --- documents -----------------------------------------------------------------------------------------------


def cleaning_rule(source: SourceConfig) -> str:
    """Name of the cleaning rule for ``source``: its ``cleaning``, else the rule named after it, else "none"."""
    if source.cleaning is not None:
        return source.cleaning
    return source.name if source.name in CLEANERS else "none"


def corpus_path(data_root: Path, name: str, split: Split) -> Path:
    """Return ``<data_root>/corpus/<name>/<split>.txt``, checking that it exists.

    Raises:
        FileNotFoundError: naming the path, the data root and the sources that do exist.
    """
    path = Path(data_root) / "corpus" / name / f"{split}.txt"
    if not path.is_file():
        corpus = Path(data_root) / "corpus"
        known = sorted(p.name for p in corpus.iterdir() if p.is_dir()) if corpus.is_dir() else []
        raise FileNotFoundError(
            f"corpus file not found: {path} (data root {data_root}). Each source needs "
            f"<data root>/corpus/<source>/{{train,dev}}.txt; fix the source name or point --data-root / "
            f"LMDISTILL_DATA at the data folder.{did_you_mean(name, known)} Sources here: {', '.join(known) or 'none'}"
        )
    return path


def load_documents(data_root: Path, source: SourceConfig, split: Split) -> list[str]:
    """Read, clean and budget one source's split.

    Words are whitespace-separated tokens after cleaning. Documents are taken in file order until the budget
    (``max_words`` for train, ``dev_max_words`` for dev) is reached; the last one is cut at a line boundary, so
    the total exceeds the budget by less than one line.

    Args:
        data_root (Path): folder holding ``corpus/``.
        source (SourceConfig): source name, word budgets and cleaning rule.
        split (str): "train" or "dev".

    Returns:
        list[str]: documents, each its cleaned lines joined with a newline.

    Raises:
        KeyError: unknown cleaning rule (with a "did you mean").
        FileNotFoundError: the split file is missing (names the path and the data root).
        ValueError: the file holds no words after cleaning, or is not UTF-8 (names the path and the line).
    """
    rule = cleaning_rule(source)
    clean = CLEANERS.get(rule)
    path = corpus_path(data_root, source.name, split)
    budget = source.max_words if split == "train" else source.dev_max_words
    documents: list[str] = []
    lines: list[str] = []
    num_words = 0
    try:
        with open(path, encoding="utf-8") as f:
            for raw in f:
                if not raw.strip():  # a blank line in the file ends the document
                    if lines:
                        documents.append("\n".join(lines))
                        lines = []
                    continue
                line = clean(raw.rstrip("\n"))
                if not line.strip():  # emptied by cleaning: drop the line, keep the document going
                    continue
                lines.append(line)
                num_words += len(line.split())
                if budget is not None and num_words >= budget:
                    break
    except UnicodeDecodeError as err:
        raise ValueError(_not_utf8(path, err)) from None
    if lines:
        documents.append("\n".join(lines))
    if num_words == 0:
        raise ValueError(f"corpus file {path} holds no words after cleaning with rule {rule!r}; is it empty?")
    logger.info("%s/%s: %d documents, %d words (rule %r)", source.name, split, len(documents), num_words, rule)
    return documents


def _not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    """``"corpus file PATH, line N: not valid UTF-8 ..."``: the first line of ``path`` that does not decode."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                where = (
                    f"line {number}: not valid UTF-8 (byte 0x{raw[bad.start]:02x} at byte {bad.start + 1} of the line)"
                )
                break
        else:  # not reached: a decode error is on some line
            where = f"not valid UTF-8 ({err.reason})"
    return (
        f"corpus file {path}, {where}; corpus files must be UTF-8 text: re-encode it (e.g. "
        f"`iconv -f cp1252 -t utf-8`) or fix that line"
    )


def load_corpus(data_root: Path, sources: Sequence[SourceConfig], split: Split) -> list[str]:
    """All documents of all ``sources`` for ``split``, source by source in order (see `load_documents`)."""
    return [doc for source in sources for doc in load_documents(data_root, source, split)]


def source_files(
    data_root: Path, sources: Sequence[SourceConfig], splits: Sequence[Split] = ("train", "dev")
) -> list[Path]:
    """Paths of the corpus files a run reads, source by source, so that their hashes can be recorded.

    Raises:
        FileNotFoundError: a file is missing (see `corpus_path`).
    """
    return [corpus_path(data_root, source.name, split) for source in sources for split in splits]


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def count_words(documents: Iterable[str]) -> int:
    """Number of whitespace-separated words in ``documents``."""
    return sum(len(doc.split()) for doc in documents)
