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

import hashlib
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from torch import nn
from tqdm.auto import tqdm

from lmdistill.atomic import atomic_path, write_json
from lmdistill.data.blocks import BlockDataset
from lmdistill.data.tokens import raise_disk_full
from lmdistill.distributed import process_state
from lmdistill.losses.topk import TopKTeacher, topk_teacher
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


def _sha256_file(path: Path) -> str:
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
    """V of the teachers."""
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

    Returns:
        CacheSpec: what a cache for this run must hold.

    Raises:
        ValueError: ``blocks`` uses random offsets, or k / dtype / temperature / shard size out of range.
    """
    if blocks.random_offset:
        raise ValueError(
            "a teacher cache needs data.random_offset: false: the cache holds one distribution per block of the fixed "
            "block grid, and a random offset cuts different blocks every epoch"
        )
    vocab = {getattr(m.config, "vocab_size", None) for m in teachers.values()}
    if len(vocab) != 1:
        raise ValueError(f"teachers have different vocabulary sizes {sorted(map(str, vocab))}")
    vocab_size = int(vocab.pop())
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
    if path.stat().st_size != record["bytes"] or _sha256_file(path) != record["sha256"]:
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


def _start_build(folder: Path, spec: CacheSpec, overwrite: bool) -> None:
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
        _start_build(folder, spec, overwrite)
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
                    "sha256": _sha256_file(path),
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
        if verify and _sha256_file(path) != shard["sha256"]:
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
        _start_build(folder, spec, overwrite)
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
