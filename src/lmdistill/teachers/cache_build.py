"""Building a teacher cache: shard by shard, each written atomically and marked done by a sidecar with its spec.

An interrupted build resumes at the first missing shard; several processes build disjoint shards (shard ``s``
belongs to rank ``s % world_size``); ``finalize_cache`` writes the manifest once every shard is done.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from lmdistill.atomic import atomic_path, write_json
from lmdistill.data.blocks import BlockDataset
from lmdistill.data.tokens import raise_disk_full
from lmdistill.losses.topk import topk_teacher
from lmdistill.teachers.cache_spec import (
    MANIFEST,
    SPEC_FILE,
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheSpec,
    sha256_file,
)
from lmdistill.teachers.ensemble import TeacherEnsemble

__all__ = ["STALE_TEMP_AGE_S", "build_cache", "finalize_cache", "start_build"]

log = logging.getLogger(__name__)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def _read_json(path: Path, what: str) -> Any:
    """Parsed JSON of a cache file; ``CacheCorruptError`` naming it when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheCorruptError(f"{what} {path} is not valid JSON ({err})") from None


def _sidecar_problem(folder: Path, shard: int, spec: CacheSpec) -> tuple[str, dict[str, Any] | None]:
    """Why the sidecar of ``shard`` does not mark it done for ``spec`` ("" when it does), and its record."""
    sidecar = folder / f"{_shard_name(shard)}.json"
    if not sidecar.is_file():
        return "no sidecar", None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"its sidecar {sidecar.name} is not valid JSON", None
    if not isinstance(record, dict) or not {"bytes", "sha256", "first_block", "num_blocks"} <= record.keys():
        return f"its sidecar {sidecar.name} lacks the shard's size and checksum", None
    if not isinstance(record.get("spec"), dict):
        return f"its sidecar {sidecar.name} records no spec (left by an older version or another build)", None
    try:
        diffs = CacheSpec.from_json(record["spec"]).differences(spec)
    except (KeyError, TypeError) as err:
        return f"its sidecar {sidecar.name} records an incomplete spec ({err})", None
    if diffs:
        return f"it was built for other settings ({'; '.join(diffs)})", None
    return "", record


def _shard_done(folder: Path, shard: int, spec: CacheSpec) -> bool:
    """The shard's sidecar records ``spec`` and the shard file matches its recorded size and checksum."""
    path = folder / f"{_shard_name(shard)}.safetensors"
    if not (folder / f"{_shard_name(shard)}.json").is_file() or not path.is_file():
        return False
    problem, record = _sidecar_problem(folder, shard, spec)
    if problem:
        log.warning("teacher cache: %s is not taken into this build: %s; building it again", path, problem)
        return False
    if path.stat().st_size != record["bytes"] or sha256_file(path) != record["sha256"]:
        log.warning("teacher cache: %s does not match its checksum; building it again", path)
        return False
    return True


_TEMP = re.compile(r"^\.shard-(\d+)\.(?:safetensors|json)\..*\.tmp$")  # atomic_path: .<name>.<random>.tmp
STALE_TEMP_AGE_S = 60.0
"""A shard temporary untouched for this long is not being written (a write fills it within seconds of creating it)."""


def _remove_stale_temporaries(folder: Path, spec: CacheSpec, rank: int, world_size: int) -> None:
    """Delete the ``.shard-*.tmp`` files a killed build left behind.

    Each rank deletes only its own shards' temporaries (another rank may be writing its own right now); rank 0 also
    deletes those of shards outside this build and of names it cannot parse. A temporary modified in the last
    ``STALE_TEMP_AGE_S`` seconds is left alone: another process building the same folder may be writing it.
    """
    stale = []
    now = time.time()
    for tmp in folder.glob(".shard-*.tmp") if folder.is_dir() else []:
        match = _TEMP.match(tmp.name)
        shard = int(match.group(1)) if match else None
        if not (
            (shard is not None and shard < spec.num_shards and shard % world_size == rank)
            or (rank == 0 and (shard is None or shard >= spec.num_shards))
        ):
            continue
        try:
            if now - tmp.stat().st_mtime < STALE_TEMP_AGE_S:
                continue
            tmp.unlink()
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            continue
        stale.append(tmp.name)
    if stale:
        log.info(
            "teacher cache: removed %d temporary file(s) left by an interrupted build in %s: %s",
            len(stale),
            folder,
            ", ".join(sorted(stale)[:3]) + (", ..." if len(stale) > 3 else ""),
        )


def start_build(folder: Path, spec: CacheSpec, overwrite: bool) -> None:
    """Create ``folder`` with ``spec.json``, or check that an earlier (partial) build used the same spec."""
    spec_path = folder / SPEC_FILE
    if spec_path.exists() and overwrite:
        shutil.rmtree(folder)
    if spec_path.exists():
        data = _read_json(spec_path, "teacher cache spec")
        try:
            old = CacheSpec.from_json(data)
        except (KeyError, TypeError, AttributeError) as err:
            raise CacheCorruptError(
                f"teacher cache spec {spec_path}: not a cache spec ({err}); delete it (the shards' sidecars record "
                "their own spec, so finished shards of this spec are kept) or rebuild with `lmdistill cache-teacher "
                "RECIPE --overwrite`"
            ) from None
        diffs = old.differences(spec)
        if diffs:
            raise CacheMismatchError(
                f"teacher cache {folder} was built for other settings: {'; '.join(diffs)}. Delete the folder or "
                "rebuild it with `lmdistill cache-teacher RECIPE --overwrite`"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, asdict(spec))


@torch.no_grad()
def build_cache(
    ensemble: TeacherEnsemble,
    blocks: BlockDataset,
    spec: CacheSpec,
    folder: str | Path,
    *,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> list[int]:
    """Build this rank's missing shards of the cache in ``folder`` (resuming an interrupted build).

    With several processes, call it on every rank (rank 0 first writes ``spec.json``; the caller puts a barrier
    between that and the other ranks, as ``ensure_cache`` does), then ``finalize_cache`` on rank 0.

    Args:
        ensemble (TeacherEnsemble): the teachers, on the device to run them on.
        blocks (BlockDataset): the training blocks (no random offset).
        spec (CacheSpec): from ``cache_spec`` for these teachers and blocks.
        folder (str | Path): the cache folder.
        batch_size (int): blocks per teacher forward pass.
        rank (int): this process's rank; it builds shards ``s`` with ``s % world_size == rank``.
        world_size (int): number of processes building together.
        overwrite (bool): delete an existing cache for other settings instead of raising (rank 0 only).
        progress (bool): show a progress bar.

    Returns:
        list[int]: the shards this call built (shards already done are skipped).

    Raises:
        CacheMismatchError: the folder holds a (partial) cache for another spec and ``overwrite`` is False.
    """
    folder = Path(folder)
    if rank == 0:
        start_build(folder, spec, overwrite)
    _remove_stale_temporaries(folder, spec, rank, world_size)
    mine = [s for s in range(spec.num_shards) if s % world_size == rank]
    todo = [s for s in mine if not _shard_done(folder, s, spec)]
    if len(todo) < len(mine):
        log.info(
            "teacher cache: %d of this rank's %d shards already built; resuming", len(mine) - len(todo), len(mine)
        )
    bar = tqdm(
        total=sum(len(spec.shard_range(s)) for s in todo),
        desc=f"cache teachers (rank {rank})",
        unit="block",
        disable=None if progress else True,
    )
    device = ensemble.device
    value_dtype = np.dtype(spec.dtype)
    for shard in todo:
        indices = np.asarray(spec.shard_range(shard))
        parts: dict[str, list[np.ndarray]] = {"log_probs": [], "ids": [], "log_tail": []}
        for i in range(0, len(indices), batch_size):
            starts = indices[i : i + batch_size] * spec.block_size
            ids = blocks.batch(starts).to(device)
            logits = ensemble(ids, temperature=spec.temperature)
            top = topk_teacher(logits, spec.top_k, spec.temperature)
            parts["log_probs"].append(top.log_probs.cpu().numpy().astype(value_dtype))
            parts["ids"].append(top.ids.cpu().numpy().astype(spec.id_dtype))
            parts["log_tail"].append(top.log_tail.float().cpu().numpy())
            bar.update(len(starts))
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        path = folder / f"{_shard_name(shard)}.safetensors"
        needed = sum(a.nbytes for a in arrays.values()) + 1024  # + the safetensors header (a few hundred bytes)
        with raise_disk_full(path, needed, _DISK_HINT), atomic_path(path) as tmp:
            save_file(arrays, str(tmp))  # no metadata: safetensors writes it in hash order, and shards must be stable
        sidecar = folder / f"{_shard_name(shard)}.json"
        with raise_disk_full(sidecar, 4096, _DISK_HINT):
            write_json(
                sidecar,
                {
                    "shard": shard,
                    "first_block": int(indices[0]),
                    "num_blocks": len(indices),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                    "rank": rank,
                    "spec": asdict(spec),
                },
            )
    bar.close()
    return todo


_DISK_HINT = "set teachers.cache_dir to a folder on a disk with more room"


def finalize_cache(folder: str | Path, spec: CacheSpec, build_time_s: float | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` from the shards' sidecars once every shard is done (rank 0, after all ranks built).

    Returns:
        dict: the manifest.

    Raises:
        CacheIncompleteError: a shard has no sidecar for ``spec`` yet (names the first missing ones).
    """
    folder = Path(folder)
    shards, missing = [], []
    for s in range(spec.num_shards):
        problem, record = _sidecar_problem(folder, s, spec)
        if problem:
            missing.append(_shard_name(s) if problem == "no sidecar" else f"{_shard_name(s)}: {problem}")
            continue
        shards.append(
            {
                "file": f"{_shard_name(s)}.safetensors",
                **{k: record[k] for k in ("first_block", "num_blocks", "bytes", "sha256")},
                "rank": record.get("rank"),
            }
        )
    if missing:
        raise CacheIncompleteError(
            f"teacher cache {folder}: {len(missing)} of {spec.num_shards} shards are not built "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); run the build again to finish it"
        )
    total = sum(s["bytes"] for s in shards)
    manifest = {
        **asdict(spec),
        "id_dtype": str(spec.id_dtype),
        "shards": shards,
        "total_bytes": total,
        "bytes_per_token": total / max(spec.num_blocks * spec.block_size, 1),
        "build_time_s": build_time_s,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(folder / MANIFEST, manifest)
    return manifest
