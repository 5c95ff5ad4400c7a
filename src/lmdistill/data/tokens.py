"""Token caches: documents -> one flat token array on disk (``.npy``), memory-mapped, keyed by content.

The array is every document as ``<s> ids </s>`` (no padding), document after document: the document-start token
``<s>`` is what an empty context is scored after at evaluation (lm-eval's prefix token), so its embedding is
trained, and ``</s>`` ends each document. The
file ``<name>-<key>.npy`` is keyed by the tokenizer fingerprint and the documents' text, so a changed corpus,
budget, cleaning rule or tokenizer gives a new file and a repeated run reuses the old one. A JSON sidecar
``<name>-<key>.json`` records the counts.

The array is written with ordinary file writes (not through a memory map: a memory-mapped write to a full disk
kills the process with SIGBUS), so a full disk is an ``OSError`` (ENOSPC) that names the file and the space the
write needed (``disk_full_error``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from lmdistill.atomic import atomic_path, write_json
from lmdistill.data.tokenizer import tokenizer_fingerprint

__all__ = [
    "cache_key",
    "disk_full_error",
    "is_disk_full",
    "raise_disk_full",
    "read_sidecar",
    "token_dtype",
    "tokenize_documents",
]

logger = logging.getLogger(__name__)

_CACHE_VERSION = (
    "tokens-v2"  # v2: <s> before each document  # bump when the array layout changes, to invalidate old caches
)
_BATCH_SIZE = 256  # documents per batch encode


def _size(num_bytes: int) -> str:
    """``"1,234,567 bytes (1.2 MiB)"``."""
    value, unit = float(num_bytes), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{num_bytes:,} bytes" if unit == "bytes" else f"{num_bytes:,} bytes ({value:.1f} {unit})"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` reports a full disk: an ``OSError`` with errno ENOSPC, or a library error wrapping one.

    ``safetensors`` reports it as ``SafetensorError("... No space left on device (os error 28)")``, without errno.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return f"os error {errno.ENOSPC}" in text or "No space left on device" in text


def disk_full_error(path: str | Path, needed_bytes: int, hint: str = "") -> OSError:
    """An ``OSError`` (errno ENOSPC) naming ``path``, the bytes its write needed and the bytes free on its disk.

    Args:
        path (str | Path): the file being written.
        needed_bytes (int): the size of the whole write.
        hint (str): where the user can point the write elsewhere, e.g. "set LMDISTILL_CACHE to a folder on
            another disk".

    Returns:
        OSError: ``OSError(ENOSPC, message)``; ``str()`` gives ``"[Errno 28] no space left on device ..."``.
    """
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} are free there"
    except OSError:
        free = "the free space could not be read"
    return OSError(
        errno.ENOSPC,
        f"no space left on device while writing {path}: the write needs {_size(int(needed_bytes))} and {free}; "
        f"free some space{' or ' + hint if hint else ''}, then run again (finished files are kept)",
    )


@contextmanager
def raise_disk_full(path: str | Path, needed_bytes: int, hint: str = "") -> Iterator[None]:
    """Turn a full-disk error raised in the block into ``disk_full_error(path, needed_bytes, hint)``."""
    try:
        yield
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(path, needed_bytes, hint) from None
        raise


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
    tokens = _open_cached(path) if path.is_file() else None
    if tokens is not None:
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
        _write_npy(path, chunks, dtype, num_tokens)
        meta_path.unlink(missing_ok=True)  # a sidecar left beside a corrupt file that was just replaced
        tokens = np.load(path, mmap_mode="r")
        logger.info("tokenized %d documents into %d tokens: %s", len(documents), num_tokens, path)
    if not meta_path.is_file():  # also restores a sidecar lost to a crash between the two writes
        meta = {"num_tokens": int(tokens.shape[0]), "num_documents": len(documents), "dtype": str(tokens.dtype)}
        with raise_disk_full(meta_path, 1024, _CACHE_HINT):
            write_json(meta_path, {**meta, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "key": key})
    return tokens


_CACHE_HINT = "set LMDISTILL_CACHE (or pass cache_dir) to a folder on a disk with more room"


def _open_cached(path: Path) -> np.ndarray | None:
    """The cached array at ``path``, or None (with a warning naming it) when the file is not a readable 1-D array."""
    try:
        tokens = np.load(path, mmap_mode="r")
        if tokens.ndim == 1:
            return tokens
        problem = f"a {tokens.ndim}-D array, expected 1-D"
    except (OSError, ValueError, EOFError) as err:  # truncated, a bad header, not an .npy file
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    logger.warning("token cache file %s is not a readable token array (%s); tokenizing again", path, problem)
    return None


def _write_npy(path: Path, chunks: Sequence[np.ndarray], dtype: np.dtype, num_tokens: int) -> None:
    """Write ``chunks`` end to end as one 1-D ``.npy`` array at ``path``, atomically, with plain file writes.

    Raises:
        OSError: the disk is full (ENOSPC): the message names ``path`` and the bytes the file needs.
    """
    header = io.BytesIO()  # the same header as np.save / open_memmap write
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (num_tokens,)}
    np.lib.format.write_array_header_1_0(header, fields)
    needed = len(header.getvalue()) + num_tokens * dtype.itemsize
    with raise_disk_full(path, needed, _CACHE_HINT), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.getvalue())
            for chunk in chunks:
                f.write(np.ascontiguousarray(chunk, dtype=dtype).data)


def read_sidecar(path: Path) -> dict:
    """Return the JSON sidecar of a token cache file ``path`` (``.npy`` or ``.json``).

    Raises:
        FileNotFoundError: there is no sidecar.
        ValueError: the sidecar is not valid JSON (names the file).
    """
    sidecar = Path(path).with_suffix(".json")
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"token cache sidecar {sidecar} is not valid JSON ({err}); delete it to write it again"
        ) from None
