"""Offline teacher: the ensemble's top-k distribution per training block, computed once, stored in checked shards.

Layout of a cache folder::

    spec.json                  what the cache was built for (written first; a resumed build must match it)
    shard-00000.safetensors    blocks [0, S): log_probs (S, T, k), ids (S, T, k), log_tail (S, T)
    shard-00000.json           that shard's byte count, SHA-256 and the spec it was built for, written after the
                               shard (it marks it done, for that spec only)
    ...
    manifest.json              spec + every shard's checksum + sizes; written last, when every shard is done

Each training block ``b`` is ``tokens[b * T : (b + 1) * T]`` on the fixed block grid (no random offset), and its
cached distribution is ``log softmax(z / T_kd)`` of the ensemble's combined logits z (``TeacherEnsemble``) at the
distillation temperature ``T_kd``: the top-k log-probabilities (sorted, stored as ``dtype``), their ids (uint16
when V <= 65,536, else int32) and the log of the remaining mass (float32). At k = 64 with float16 that is
64 x (2 + 2) + 4 = 260 bytes per token. The loss reads it through ``lmdistill.losses.topk`` (what it computes is
documented there).

A build is split into shards that are written atomically (temporary file, then rename) and each marked done by a
sidecar holding its checksum and the spec it was built under, so an interrupted build resumes at the first missing
shard, and several processes (ranks) build disjoint shards (shard ``s`` belongs to rank ``s % world_size``). A shard
whose sidecar records another spec (or none) is built again, so shards left by a build for other settings are never
taken into this one, even when ``spec.json`` is gone; temporaries (``.shard-*.tmp``) left by a killed build are
removed when a build starts or resumes (once a minute old). A full disk while writing a shard is an ``OSError``
(ENOSPC) naming the shard and the space it needs.

Opening a cache compares its manifest with the run (teacher weights, tokenizer, token data, block size, k, dtype,
temperature, ensemble rule) and every shard's size and SHA-256 with the manifest. An unreadable manifest or shard
is a ``CacheCorruptError`` that names the file and what was expected.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lmdistill.data.blocks import BlockDataset
from lmdistill.distributed import process_state
from lmdistill.losses.topk import TopKTeacher
from lmdistill.teachers.cache_build import build_cache, finalize_cache, start_build
from lmdistill.teachers.cache_spec import (
    CACHE_DTYPES,
    CACHE_FORMAT,
    MANIFEST,
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheSpec,
    array_fingerprint,
    cache_spec,
    model_fingerprint,
    sha256_file,
)
from lmdistill.teachers.ensemble import TeacherEnsemble

__all__ = [
    "CACHE_DTYPES",
    "CacheCorruptError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheSpec",
    "TeacherCache",
    "array_fingerprint",
    "build_cache",
    "cache_spec",
    "ensure_cache",
    "finalize_cache",
    "model_fingerprint",
    "read_manifest",
]

log = logging.getLogger(__name__)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of the finished cache in ``folder``, checked for the keys a reader needs.

    Raises:
        CacheIncompleteError: no manifest (an unfinished or missing build).
        CacheCorruptError: the manifest is not valid JSON, not a mapping, or lacks ``shards`` or a spec field (the
            message names the manifest and the keys).
        CacheMismatchError: the manifest is of another cache format.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        done = len(list(folder.glob("shard-*.json"))) if folder.is_dir() else 0
        raise CacheIncompleteError(
            f"no finished teacher cache in {folder} (no {MANIFEST}; {done} shards built): build it with "
            "`lmdistill cache-teacher RECIPE`, which resumes an interrupted build"
        )
    fix = (
        f"delete {path} and run the build again (it finishes the cache from the shards already built, checking "
        "each), or rebuild it with `lmdistill cache-teacher RECIPE --overwrite`"
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheCorruptError(f"teacher cache manifest {path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(manifest, dict):
        raise CacheCorruptError(
            f"teacher cache manifest {path}: expected a JSON object, got {type(manifest).__name__}; {fix}"
        )
    if "format" in manifest and manifest["format"] != CACHE_FORMAT:
        raise CacheMismatchError(f"{path}: cache format {manifest.get('format')}, this version reads {CACHE_FORMAT}")
    missing = [k for k in ("shards", "format") if k not in manifest]
    try:
        CacheSpec.from_json(manifest)
    except KeyError as err:
        missing += str(err.args[0]).removeprefix("missing ").split(", ")
    if missing:
        raise CacheCorruptError(
            f"teacher cache manifest {path} has no {', '.join(repr(k) for k in missing)} "
            f"key{'s' if len(missing) > 1 else ''} (expected the spec fields and 'shards', the list of shard "
            f"files with their sizes and SHA-256); {fix}"
        )
    try:
        expected = CacheSpec.from_json(manifest).num_shards
    except (TypeError, ZeroDivisionError):
        expected = None
    if expected is None or not isinstance(manifest["shards"], list) or len(manifest["shards"]) != expected:
        want = f"{expected} shards" if expected else "ceil(num_blocks / shard_blocks) shards"
        raise CacheCorruptError(
            f"teacher cache manifest {path}: 'shards' should be a list of {want}, got {manifest['shards']!r:.60}; "
            f"{fix}"
        )
    return manifest


def _open_shard(path: Path) -> Any:
    """``safe_open`` of a shard, checked for its three arrays; ``CacheCorruptError`` naming the file otherwise."""
    fix = "rebuild the cache with `lmdistill cache-teacher RECIPE --overwrite`"
    try:
        handle = safe_open(str(path), framework="np")
    except (SafetensorError, OSError, ValueError) as err:
        raise CacheCorruptError(
            f"teacher cache shard {path} is not a readable safetensors file ({err}: truncated or corrupted); {fix}"
        ) from None
    keys = set(handle.keys())
    if keys != {"log_probs", "ids", "log_tail"}:
        raise CacheCorruptError(
            f"teacher cache shard {path} holds {sorted(keys)}, expected log_probs, ids and log_tail; {fix}"
        )
    return handle


class TeacherCache:
    """A finished cache, opened for reading: the offline teacher of a distillation run.

    Use ``TeacherCache.open``; ``lookup(block_indices)`` gives the ``TopKTeacher`` of a batch.

    Attributes:
        folder (Path): the cache folder.
        spec (CacheSpec): what it holds.
        manifest (dict): the manifest (spec, shards, sizes, build time).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.spec = CacheSpec.from_json(manifest)
        self._shards = [_open_shard(folder / s["file"]) for s in manifest["shards"]]

    @classmethod
    def open(cls, folder: str | Path, expected: CacheSpec | None = None, *, verify: bool = True) -> TeacherCache:
        """Open the cache in ``folder``, checking it against the run and its shards against their checksums.

        Args:
            folder (str | Path): the cache folder.
            expected (CacheSpec | None): the run's spec (``cache_spec``); None skips the comparison.
            verify (bool): check every shard's size and SHA-256 against the manifest (reads every byte once).

        Raises:
            CacheIncompleteError: no manifest (an unfinished or missing build).
            CacheMismatchError: the manifest differs from ``expected``; the message lists each field that differs.
            CacheCorruptError: a shard is missing, has the wrong size (truncated) or the wrong checksum.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        if expected is not None:
            diffs = CacheSpec.from_json(manifest).differences(expected)
            if diffs:
                raise CacheMismatchError(
                    f"teacher cache {folder} does not match this run: {'; '.join(diffs)}. Rebuild it with "
                    "`lmdistill cache-teacher RECIPE --overwrite`"
                )
        for shard in manifest["shards"]:
            cls._check_shard(folder, shard, verify)
        return cls(folder, manifest)

    @staticmethod
    def _check_shard(folder: Path, shard: dict[str, Any], verify: bool) -> None:
        if not isinstance(shard, dict) or not {"file", "bytes", "sha256"} <= shard.keys():
            raise CacheCorruptError(
                f"teacher cache manifest {folder / MANIFEST}: a 'shards' entry lacks 'file', 'bytes' or 'sha256' "
                f"({str(shard)[:80]}); rebuild the cache with `lmdistill cache-teacher RECIPE --overwrite`"
            )
        path = folder / shard["file"]
        if not path.is_file():
            raise CacheCorruptError(f"teacher cache shard {path} is missing (listed in {folder / MANIFEST})")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise CacheCorruptError(
                f"teacher cache shard {path} has {size:,} bytes, the manifest says {shard['bytes']:,} (truncated or "
                "overwritten); rebuild the cache with `lmdistill cache-teacher RECIPE --overwrite`"
            )
        if verify and sha256_file(path) != shard["sha256"]:
            raise CacheCorruptError(
                f"teacher cache shard {path} does not match its SHA-256 in the manifest (corrupted); rebuild the "
                "cache with `lmdistill cache-teacher RECIPE --overwrite`"
            )

    @property
    def temperature(self) -> float:
        """The temperature the cached log-probabilities are at."""
        return self.spec.temperature

    def lookup(self, block_indices: Sequence[int] | np.ndarray | torch.Tensor) -> TopKTeacher:
        """The cached teacher of a batch of blocks.

        Args:
            block_indices: (B,) indices of blocks on the fixed grid (``start // block_size``).

        Returns:
            TopKTeacher: (B, T, k) float32 log-probabilities and int64 ids, (B, T) float32 log tail, on the CPU.

        Raises:
            IndexError: an index outside ``[0, num_blocks)``.
        """
        rows = {"log_probs": [], "ids": [], "log_tail": []}
        for b in np.asarray(block_indices, dtype=np.int64).tolist():
            if not 0 <= b < self.spec.num_blocks:
                raise IndexError(f"block {b} is outside the cache's {self.spec.num_blocks} blocks")
            shard, row = divmod(b, self.spec.shard_blocks)
            handle = self._shards[shard]
            for key in rows:
                rows[key].append(handle.get_slice(key)[row : row + 1])
        return TopKTeacher(
            log_probs=torch.from_numpy(np.concatenate(rows["log_probs"]).astype(np.float32)),
            ids=torch.from_numpy(np.concatenate(rows["ids"]).astype(np.int64)),
            log_tail=torch.from_numpy(np.concatenate(rows["log_tail"]).astype(np.float32)),
            temperature=self.spec.temperature,
            vocab_size=self.spec.vocab_size,
        )

    def to(self, device: torch.device | str) -> TeacherCache:
        """No-op (lookups return CPU tensors that the trainer moves); present so a cache stands in for an ensemble."""
        return self


def ensure_cache(
    ensemble: TeacherEnsemble,
    blocks: BlockDataset,
    spec: CacheSpec,
    folder: str | Path,
    *,
    batch_size: int = 32,
    overwrite: bool = False,
    verify: bool = True,
) -> TeacherCache:
    """Open the cache in ``folder``, building (or finishing) it first when it has no manifest.

    Works in one process and under ``accelerate launch``: every rank builds its own shards, rank 0 writes the
    manifest, and all ranks open the finished cache.

    Args:
        ensemble (TeacherEnsemble): the teachers, on this process's device.
        blocks (BlockDataset): the training blocks.
        spec (CacheSpec): the run's spec (``cache_spec``).
        folder (str | Path): the cache folder.
        batch_size (int): blocks per teacher forward pass while building.
        overwrite (bool): rebuild from scratch even when a cache (for any spec) is there.
        verify (bool): check every shard's checksum when opening a cache that was already there (a cache built by
            this call was hashed as it was written; sizes are always checked).

    Raises:
        CacheMismatchError: a finished or partial cache for other settings is there and ``overwrite`` is False.
        CacheCorruptError: a shard of the finished cache is truncated or corrupted.
    """
    folder = Path(folder)
    state = process_state()
    if (folder / MANIFEST).is_file() and not overwrite:
        return TeacherCache.open(folder, spec, verify=verify)
    start = time.perf_counter()
    if state.is_main_process:
        start_build(folder, spec, overwrite)
    state.wait_for_everyone()
    build_cache(
        ensemble,
        blocks,
        spec,
        folder,
        batch_size=batch_size,
        rank=state.process_index,
        world_size=state.num_processes,
        progress=state.is_local_main_process,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = finalize_cache(folder, spec, build_time_s=round(time.perf_counter() - start, 3))
        log.info(
            "teacher cache: %d shards, %.1f bytes per token, built in %.1f s (%s)",
            len(manifest["shards"]),
            manifest["bytes_per_token"],
            manifest["build_time_s"],
            folder,
        )
    state.wait_for_everyone()
    # every shard was hashed from disk as it was written (its sidecar; the manifest copies them): no second pass
    return TeacherCache.open(folder, spec, verify=False)
