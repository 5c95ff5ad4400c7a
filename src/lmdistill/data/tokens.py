"""Token caches: documents -> one flat token array on disk (``.npy``), memory-mapped, keyed by content.

The array is every document as ``<s> ids </s>`` (no padding), document after document: the document-start token
``<s>`` is what an empty context is scored after at evaluation (lm-eval's prefix token), so its embedding is
trained, and ``</s>`` ends each document. The
file ``<name>-<key>.npy`` is keyed by the tokenizer fingerprint and the documents' text, so a changed corpus,
budget, cleaning rule or tokenizer gives a new file and a repeated run reuses the old one. A JSON sidecar
``<name>-<key>.json`` records the counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from lmdistill.atomic import atomic_path, write_json
from lmdistill.data.tokenizer import tokenizer_fingerprint

__all__ = ["cache_key", "read_sidecar", "token_dtype", "tokenize_documents"]

logger = logging.getLogger(__name__)

_CACHE_VERSION = (
    "tokens-v2"  # v2: <s> before each document  # bump when the array layout changes, to invalidate old caches
)
_BATCH_SIZE = 256  # documents per batch encode


def token_dtype(tokenizer: PreTrainedTokenizerFast) -> np.dtype:
    """``uint16`` when every id fits (vocabulary of at most 65,536), else ``uint32``."""
    return np.dtype(np.uint16) if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def cache_key(documents: Sequence[str], tokenizer: PreTrainedTokenizerFast) -> str:
    """First 16 hex digits of SHA-256 over the cache version, tokenizer fingerprint and documents (length-prefixed).

    Args:
        documents (Sequence[str]): the documents, in order.
        tokenizer (PreTrainedTokenizerFast): the tokenizer that will encode them.

    Returns:
        str: 16 hex digits.
    """
    digest = hashlib.sha256(f"{_CACHE_VERSION}\n{tokenizer_fingerprint(tokenizer)}\n".encode())
    for doc in documents:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))  # length prefix: ["ab", "c"] != ["a", "bc"]
        digest.update(data)
    return digest.hexdigest()[:16]


def _encode_batch(tokenizer: PreTrainedTokenizerFast, batch: list[str]) -> list[list[int]]:
    """Ids of each text in ``batch``, without special tokens (the Rust backend, in parallel, no length warnings)."""
    return [encoding.ids for encoding in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False)]


def tokenize_documents(
    documents: Sequence[str], tokenizer: PreTrainedTokenizerFast, cache_dir: Path, name: str
) -> np.ndarray:
    """Encode ``documents`` into one flat token array, each as ``<s> ids </s>``, cached on disk.

    A cache hit (``<cache_dir>/<name>-<key>.npy`` exists) is opened without tokenizing. Writes are atomic: a
    half-written file keeps a temporary name and is never taken for a cache.

    Args:
        documents (Sequence[str]): documents, e.g. from `lmdistill.data.corpus.load_corpus`.
        tokenizer (PreTrainedTokenizerFast): the tokenizer; its ``bos_token_id`` starts and its ``eos_token_id``
            ends each document (without a BOS token, documents are only ended).
        cache_dir (Path): folder for the ``.npy`` and ``.json`` files (created if missing).
        name (str): file name prefix, e.g. "train" or "dev".

    Returns:
        np.ndarray: (N,) read-only memory map, ``uint16`` (or ``uint32`` for vocabularies above 65,536), where
        N = number of tokens + 2 x number of documents (1 x without a BOS token).

    Raises:
        ValueError: the tokenizer has no eos token.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; train it with lmdistill.data.tokenizer.train_tokenizer")
    cache_dir = Path(cache_dir)
    key = cache_key(documents, tokenizer)
    path = cache_dir / f"{name}-{key}.npy"
    meta_path = path.with_suffix(".json")
    dtype = token_dtype(tokenizer)
    doc_start = () if tokenizer.bos_token_id is None else (tokenizer.bos_token_id,)
    if path.is_file():
        tokens = np.load(path, mmap_mode="r")
        logger.info("token cache hit: %s (%d tokens, %d documents)", path, tokens.shape[0], len(documents))
    else:
        chunks: list[np.ndarray] = []
        with tqdm(total=len(documents), desc=f"tokenize {name}", unit="doc", disable=None) as bar:
            for start in range(0, len(documents), _BATCH_SIZE):
                batch = list(documents[start : start + _BATCH_SIZE])
                flat = [
                    i for ids in _encode_batch(tokenizer, batch) for i in (*doc_start, *ids, tokenizer.eos_token_id)
                ]
                chunks.append(np.asarray(flat, dtype=dtype))
                bar.update(len(batch))
        num_tokens = sum(chunk.shape[0] for chunk in chunks)
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(num_tokens,))
            offset = 0
            for chunk in chunks:
                out[offset : offset + chunk.shape[0]] = chunk
                offset += chunk.shape[0]
            out.flush()
            del out
        tokens = np.load(path, mmap_mode="r")
        logger.info("tokenized %d documents into %d tokens: %s", len(documents), num_tokens, path)
    if not meta_path.is_file():  # also restores a sidecar lost to a crash between the two writes
        meta = {"num_tokens": int(tokens.shape[0]), "num_documents": len(documents), "dtype": str(tokens.dtype)}
        write_json(meta_path, {**meta, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "key": key})
    return tokens


def read_sidecar(path: Path) -> dict:
    """Return the JSON sidecar of a token cache file ``path`` (``.npy`` or ``.json``)."""
    return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
