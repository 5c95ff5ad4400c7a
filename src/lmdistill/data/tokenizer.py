"""Byte-level BPE tokenizer: training (``tokenizers``), saving, loading and fingerprinting.

Special tokens have fixed ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3. The tokenizer never adds them by
itself (there is no post-processor): the token cache puts ``</s>`` after every document and evaluation prepends
``<s>`` explicitly, so ``add_special_tokens=True`` and ``False`` encode the same way. Being byte-level, it never
produces ``<unk>``; the token exists because ``transformers`` expects one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmdistill.atomic import atomic_dir

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_ROLES",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_fingerprint",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
"""In id order: 0, 1, 2, 3."""


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,  # else decode() turns "a ." into "a." and breaks round trips
    )


def train_tokenizer(documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``documents``.

    The 256 byte symbols and the four special tokens are always in the vocabulary, so any text encodes; merges
    are learnt up to ``vocab_size`` (fewer when the text runs out of pairs seen ``min_frequency`` times).
    Training is deterministic for the same documents and settings. The caller sets ``model_max_length``.

    Args:
        documents (Iterable[str]): training text, e.g. the train split's documents (never the dev split).
        vocab_size (int): vocabulary size, special tokens included; at least 260.
        min_frequency (int): a pair must occur this often to be merged.

    Returns:
        PreTrainedTokenizerFast: with ``<pad>``/``<s>``/``</s>``/``<unk>`` at ids 0-3 and no post-processor.

    Raises:
        ValueError: ``vocab_size`` is below 260 or ``min_frequency`` below 1.
        RuntimeError: the special tokens did not get ids 0-3.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256} (256 bytes + specials), got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # the trainer puts special tokens first; guard library changes
        raise RuntimeError(f"special tokens {SPECIAL_TOKENS} got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    logger.info("trained byte-level BPE: %d tokens (asked for %d)", tokenizer.get_vocab_size(), vocab_size)
    return _wrap(tokenizer)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike[str]) -> Path:
    """Save ``tokenizer`` to ``out_dir`` atomically (written beside it, then renamed over it).

    Args:
        tokenizer (PreTrainedTokenizerFast): the tokenizer to save.
        out_dir (str | PathLike): folder to write; an existing one is replaced whole.

    Returns:
        Path: ``out_dir``, loadable with ``transformers.AutoTokenizer.from_pretrained``.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
    logger.info("saved tokenizer (%d tokens) to %s", len(tokenizer), out_dir)
    return out_dir


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder written by `save_tokenizer` (or any local ``save_pretrained`` folder).

    Args:
        path (str | PathLike): the folder holding ``tokenizer.json``.

    Returns:
        PreTrainedTokenizerFast: the tokenizer.

    Raises:
        FileNotFoundError: ``path`` has no ``tokenizer.json`` (it is never looked up on the Hub).
        ValueError: ``tokenizer.json`` (or another file of the folder) is not a valid tokenizer: truncated, not JSON,
            or not what ``tokenizers`` writes (names the file).
    """
    path = Path(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path}: expected {file}; train one first (the pipeline's tokenizer step) or fix the path"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # JSON errors, KeyError, and the Rust parser's plain Exception
        raise ValueError(_invalid(path, err)) from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ValueError(f"{path} loads as a {type(tokenizer).__name__}, not a fast tokenizer built on {file}")
    return tokenizer


def _invalid(folder: Path, err: BaseException) -> str:
    """One line: which file of a tokenizer folder that failed to load is not valid, why, and what is expected."""
    culprit = folder / "tokenizer.json"
    try:  # is tokenizer.json itself broken, or another file of the folder (tokenizer_config.json, ...)?
        json.loads(culprit.read_text(encoding="utf-8"))
        Tokenizer.from_file(str(culprit))
    except Exception as bad:  # the same kinds of errors, on tokenizer.json alone
        err = bad
    else:
        culprit = folder
    reason = " ".join(str(err).split())[:200] or "no detail"
    return (
        f"{culprit} is not a valid tokenizer ({type(err).__name__}: {reason}); expected the tokenizer.json and "
        "tokenizer_config.json that save_tokenizer (save_pretrained) writes: replace the folder with a saved "
        "tokenizer, or delete it so that the run trains its tokenizer again"
    )


SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")
"""The special-token roles that ``tokenizer_fingerprint`` covers (the token cache writes ``<s>``/``</s>`` by role)."""


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Hex SHA-256 identifying the tokenizer's vocabulary, merges, special tokens and pipeline.

    Computed from ``tokenizer.backend_tokenizer.to_str()`` as canonical JSON, without the ``padding`` and
    ``truncation`` settings, which ``transformers`` changes while encoding and which do not change the ids, plus
    which token plays each role of ``SPECIAL_ROLES`` (two tokenizers with one vocabulary but another ``eos_token``
    end documents with other ids). Teachers and students must share a fingerprint; token caches are keyed by it.

    Args:
        tokenizer (PreTrainedTokenizerFast): a fast tokenizer.

    Returns:
        str: 64 hex digits.

    Raises:
        ValueError: ``tokenizer`` is not a fast tokenizer (it has no ``backend_tokenizer`` to fingerprint).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"cannot fingerprint tokenizer {getattr(tokenizer, 'name_or_path', '') or '(unnamed)'}: it is a "
            f"{type(tokenizer).__name__}, not a fast tokenizer; load it from a folder with tokenizer.json "
            "(AutoTokenizer.from_pretrained(..., use_fast=True)) so that its vocabulary, merges and special tokens "
            "can be compared"
        )
    spec = json.loads(backend.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    spec["special_token_roles"] = {role: _token_text(getattr(tokenizer, role, None)) for role in SPECIAL_ROLES}
    canonical = json.dumps(spec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _token_text(token: object) -> str | None:
    """A special token's text (``AddedToken`` or str), None when the role is unset."""
    return None if token is None else str(getattr(token, "content", token))
