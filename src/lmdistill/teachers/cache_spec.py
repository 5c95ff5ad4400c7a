"""The identity of a teacher cache: what it was built for (``CacheSpec``), fingerprints, and its errors.

A cache is valid for one spec: the teachers' weights, the tokenizer, the token data, block size, k, dtype,
temperature and ensemble rule (``lmdistill.teachers.cache`` describes the folder).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmdistill.data.blocks import BlockDataset
from lmdistill.vocabulary import embedding_rows, kept_columns

__all__ = [
    "CACHE_DTYPES",
    "CACHE_FORMAT",
    "MANIFEST",
    "SEMANTICS",
    "SPEC_FILE",
    "CacheCorruptError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheSpec",
    "array_fingerprint",
    "cache_spec",
    "model_fingerprint",
    "sha256_file",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_DTYPES = ("float16", "float32")
MANIFEST = "manifest.json"
SPEC_FILE = "spec.json"
SEMANTICS = (
    "per training block b = tokens[b*T:(b+1)*T] on the fixed grid: log_probs = the top_k largest values of "
    "log_softmax(z / temperature) over the vocabulary, sorted, where z is the teacher ensemble's combined logits; "
    "ids = their token ids; log_tail = log(1 - sum(exp(log_probs))) computed in float32 before rounding"
)


class CacheMismatchError(ValueError):
    """The cache was built for other teachers, data or settings than the run that opens it."""


class CacheIncompleteError(FileNotFoundError):
    """The folder holds no finished cache (no manifest): the build was interrupted or never run."""


class CacheCorruptError(RuntimeError):
    """A shard or cache file is unreadable, truncated, missing, lacks a key or does not match its checksum.

    The message names the file (a shard, ``manifest.json`` or ``spec.json``) and what was expected.
    """


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Hex SHA-256 over a model's parameters and buffers (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def array_fingerprint(tokens: np.ndarray) -> str:
    """Hex SHA-256 of a token array's dtype, length and bytes."""
    digest = hashlib.sha256(f"{np.asarray(tokens).dtype}|{len(tokens)}|".encode())
    digest.update(np.ascontiguousarray(tokens).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; a run may read a cache only if every field matches its own."""

    teachers: dict[str, str]
    """Teacher name -> ``model_fingerprint`` of its weights, in ensemble order."""
    ensemble: str
    """The ensemble rule ("logits" or "probs")."""
    tokenizer_sha256: str
    """The run tokenizer's fingerprint."""
    tokens_sha256: str
    """``array_fingerprint`` of the training token array."""
    num_tokens: int
    """Length of the training token array."""
    block_size: int
    """T, tokens per block."""
    num_blocks: int
    """Blocks on the fixed grid: ``num_tokens // block_size``."""
    vocab_size: int
    """V of the teachers' combined logits (the run tokenizer's length)."""
    top_k: int
    """k, tokens kept per position."""
    dtype: str
    """Storage dtype of the log-probabilities ("float16" or "float32")."""
    temperature: float
    """The distillation temperature the log-probabilities are computed at."""
    shard_blocks: int
    """Blocks per shard (the last shard may hold fewer)."""
    semantics: str = SEMANTICS
    """What the stored arrays mean, in words."""
    format: int = CACHE_FORMAT
    """Layout version of this module."""

    @property
    def num_shards(self) -> int:
        """Number of shards: ``ceil(num_blocks / shard_blocks)``."""
        return math.ceil(self.num_blocks / self.shard_blocks)

    @property
    def id_dtype(self) -> np.dtype:
        """uint16 when every id fits, else int32."""
        return np.dtype(np.uint16) if self.vocab_size <= 1 << 16 else np.dtype(np.int32)

    def shard_range(self, shard: int) -> range:
        """Block indices of ``shard``."""
        return range(shard * self.shard_blocks, min((shard + 1) * self.shard_blocks, self.num_blocks))

    def differences(self, other: CacheSpec) -> list[str]:
        """``"field: cache X, run Y"`` for each field that differs (teachers compared one by one)."""
        diffs = []
        mine, theirs = asdict(self), asdict(other)
        for key in mine:
            if key == "teachers":
                names = list(dict.fromkeys([*mine[key], *theirs[key]]))
                for name in names:
                    a, b = mine[key].get(name), theirs[key].get(name)
                    if a != b:
                        diffs.append(f"teacher {name}: cache {_short(a)}, run {_short(b)}")
                if list(mine[key]) != list(theirs[key]) and not diffs:
                    diffs.append(f"teacher order: cache {list(mine[key])}, run {list(theirs[key])}")
            elif mine[key] != theirs[key]:
                diffs.append(f"{key}: cache {_short(mine[key])}, run {_short(theirs[key])}")
        return diffs

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheSpec:
        """Inverse of ``asdict``; unknown keys are ignored (the manifest holds more than the spec).

        Raises:
            KeyError: a required field is missing (the message lists them).
        """
        fields = cls.__dataclass_fields__
        missing = [
            n for n, f in fields.items() if n not in data and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in fields})


def _short(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}"
    return repr(value)


def cache_spec(
    teachers: dict[str, nn.Module],
    ensemble_rule: str,
    tokenizer_sha256: str,
    blocks: BlockDataset,
    *,
    top_k: int,
    dtype: str,
    temperature: float,
    shard_blocks: int,
    vocab_size: int | None = None,
) -> CacheSpec:
    """The ``CacheSpec`` of a run: fingerprints of its teachers and tokens plus the cache settings.

    Args:
        teachers (dict[str, nn.Module]): name -> teacher, in ensemble order (their weights are hashed).
        ensemble_rule (str): "logits" or "probs" (``TeacherEnsemble``).
        tokenizer_sha256 (str): the run tokenizer's fingerprint (``tokenizer_fingerprint``).
        blocks (BlockDataset): the training blocks (the token array is hashed).
        top_k (int): tokens kept per position, in [1, V].
        dtype (str): "float16" or "float32", storage of the log-probabilities.
        temperature (float): the distillation temperature T > 0.
        shard_blocks (int): blocks per shard, >= 1.
        vocab_size (int | None): V, the columns of the ensemble's logits (``TeacherEnsemble.vocab_size``, the run
            tokenizer's length; a "shared" teacher's padding rows are not part of it); None: the teachers'
            embedding rows, which must then be equal.

    Returns:
        CacheSpec: what a cache for this run must hold.

    Raises:
        ValueError: ``blocks`` uses random offsets, or k / dtype / temperature / shard size out of range.
        VocabularyMismatchError: without ``vocab_size``, teachers with different embedding rows.
    """
    if blocks.random_offset:
        raise ValueError(
            "a teacher cache needs data.random_offset: false: the cache holds one distribution per block of the fixed "
            "block grid, and a random offset cuts different blocks every epoch"
        )
    if not teachers:
        raise ValueError("a teacher cache needs at least one teacher")
    if vocab_size is None:
        (first, model), *others = teachers.items()
        vocab_size = embedding_rows(model)
        for name, m in others:
            kept_columns(name, embedding_rows(m), vocab_size, "exact", first, "embedding rows")
    if not 1 <= top_k <= vocab_size:
        raise ValueError(f"cache top_k must be in [1, V={vocab_size}], got {top_k}")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
    if temperature <= 0 or shard_blocks < 1:
        raise ValueError(f"need temperature > 0 and shard_blocks >= 1, got {temperature} and {shard_blocks}")
    return CacheSpec(
        teachers={name: model_fingerprint(m) for name, m in teachers.items()},
        ensemble=ensemble_rule,
        tokenizer_sha256=tokenizer_sha256,
        tokens_sha256=array_fingerprint(blocks.tokens),
        num_tokens=int(len(blocks.tokens)),
        block_size=blocks.block_size,
        num_blocks=len(blocks),
        vocab_size=vocab_size,
        top_k=int(top_k),
        dtype=dtype,
        temperature=float(temperature),
        shard_blocks=int(shard_blocks),
    )
