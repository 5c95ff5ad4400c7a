"""Resumable training state: checkpoint folders and the metrics log of a training stage.

A checkpoint ``checkpoints/step-N/`` holds the Hugging Face weights, the objective's learned projections, the
optimizer and scheduler, every process's RNG state and the training time so far, written atomically and only from
finite weights; the newest ``KEEP_CHECKPOINTS`` are kept. A resume takes the newest checkpoint that loads whole,
falling back to older ones (with a warning naming the broken file). ``metrics.jsonl`` (and TensorBoard) get one
record per logged step and per dev loss; the file is only ever appended to: a resume appends a
``{"event": "resume", "step": N}`` marker, and ``metric_records`` replays the file into the records that count.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from lmdistill.atomic import atomic_dir, remove_stale_temporaries, write_json
from lmdistill.losses.objective import DistillationObjective

__all__ = [
    "KEEP_CHECKPOINTS",
    "OBJECTIVE_FILE",
    "CheckpointError",
    "MetricsLog",
    "any_process",
    "checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "metric_records",
    "non_finite",
    "read_records",
    "remove_stale_writes",
    "resume_checkpoint",
    "save_checkpoint",
    "save_objective",
]

log = logging.getLogger(__name__)
_CKPT = re.compile(r"^step-(\d+)$")
KEEP_CHECKPOINTS = 2
OBJECTIVE_FILE = "objective.safetensors"  # the feature terms' learned projections, beside the weights


class CheckpointError(RuntimeError):
    """No checkpoint of a stage can be loaded (each one tried is named with the file that failed and why)."""


def any_process(accelerator, flag: bool) -> bool:
    """True when ``flag`` is True on any process (one all-reduce; no communication with a single process)."""
    if accelerator.num_processes == 1:
        return flag
    return accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item() > 0


def checkpoints(out_dir: Path) -> list[Path]:
    """The ``checkpoints/step-N/`` folders of a stage, newest first."""
    folder = out_dir / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.glob("step-*") if (m := _CKPT.match(p.name)))
    return [p for _, p in reversed(found)]


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest ``checkpoints/step-N/`` folder of a stage, or None."""
    found = checkpoints(out_dir)
    return found[0] if found else None


def remove_stale_writes(out_dir: Path) -> list[str]:
    """Remove what killed writes of this stage left: ``checkpoints/.step-N.*.tmp``, ``.final.*.tmp`` (and ``.old``).

    Only the training stage's own names are touched (not a cache's or an evaluation's temporaries). Call it on the
    main process before anything reads the checkpoints.

    Returns:
        list[str]: what was removed or restored, one line each.
    """
    return [
        *remove_stale_temporaries(out_dir / "checkpoints", r"step-\d+"),
        *remove_stale_temporaries(out_dir, "final"),
    ]


def non_finite(named: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (the first ``limit``, then ``"..."``)."""
    bad = []
    for name, tensor in named:
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
            if len(bad) == limit:
                return [*bad, "..."]
            bad.append(name)
    return bad


def save_objective(objective: DistillationObjective, folder: Path) -> None:
    """The objective's trained modules (feature projections), if it has any, as ``objective.safetensors``."""
    state = {k: v.detach().contiguous().cpu() for k, v in objective.state_dict().items()}
    if state:
        save_file(state, folder / OBJECTIVE_FILE)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir, step, model, optimizer, scheduler, accelerator, objective, train_time) -> Path:
    """``checkpoints/step-N/`` (atomically): weights, projections, optimizer, scheduler, each process's RNG.

    The caller checks first that the weights are finite (``non_finite``). Older checkpoints beyond the newest
    ``KEEP_CHECKPOINTS`` up to ``step`` are removed; newer ones (left by a run that resumed from an older checkpoint
    because they did not load) are left alone: they are rewritten when the run gets there again.
    """
    path = out_dir / "checkpoints" / f"step-{step:07d}"
    weights = accelerator.get_state_dict(model)  # every rank takes part (FSDP gathers the shards); DDP: a no-op
    rng_states = gather_object([_rng_state()]) if accelerator.num_processes > 1 else [_rng_state()]
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return path
    with atomic_dir(path) as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        save_objective(objective, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({**rng_states[0], "ranks": rng_states}, tmp / "rng.pt")
        write_json(tmp / "state.json", {"step": step, "train_time_s": train_time})
    upto = [p for p in checkpoints(out_dir) if int(_CKPT.match(p.name).group(1)) <= step]
    for p in upto[KEEP_CHECKPOINTS:]:
        shutil.rmtree(p)
    accelerator.wait_for_everyone()
    return path


def _read(folder: Path, name: str, reader) -> Any:
    """``reader(folder / name)``; a missing or unreadable file is a ``CheckpointError`` naming it and why."""
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{name}: missing")
    try:
        return reader(path)
    except Exception as err:  # torn or corrupt files fail in many ways (safetensors, zip, pickle, JSON, OS errors)
        size = path.stat().st_size
        raise CheckpointError(f"{name} ({size} bytes): {type(err).__name__}: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    """The gist of an error: its first line, cut after the first sentence when long (torch adds paragraphs)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else "(no message)"
    return line.split(". ", 1)[0] + "." if len(line) > 120 and ". " in line else line


def _torch_file(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def _state_json(path: Path) -> dict:
    info = json.loads(path.read_text())
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        raise ValueError(f"no integer 'step' in {info!r:.80}")
    return info


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator, objective) -> tuple[int, float]:
    """Restore a checkpoint; returns its step and the training time spent up to it (seconds).

    Every file is read and checked (whole, finite weights, the step its folder is named after) before anything is
    restored, so a broken checkpoint leaves the model, optimizer and RNG as they were.

    Raises:
        CheckpointError: a file is missing, torn or corrupt, or holds NaN/inf weights (message: the file and why).
        RuntimeError: the weights do not fit the model.
    """
    info = _read(path, "state.json", _state_json)
    if (m := _CKPT.match(path.name)) and int(m.group(1)) != info["step"]:
        raise CheckpointError(f"state.json: step {info['step']} in the folder of step {int(m.group(1))}")
    projections = None
    if objective.state_dict():
        projections = _read(path, OBJECTIVE_FILE, lambda p: load_file(p, device=str(accelerator.device)))
    state = _read(path, "model.safetensors", load_file)
    for name, tensors in (("model.safetensors", state), (OBJECTIVE_FILE, projections or {})):
        if bad := non_finite(tensors.items()):
            raise CheckpointError(f"{name}: NaN or inf in {', '.join(bad)}")
    optimizer_state = _read(path, "optimizer.pt", _torch_file)
    scheduler_state = _read(path, "scheduler.pt", _torch_file)
    rng = _read(path, "rng.pt", _torch_file)
    ranks = (rng.get("ranks") or [rng]) if isinstance(rng, dict) else None
    if not ranks or not all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor) for r in ranks):
        raise CheckpointError("rng.pt: no torch RNG state in it")

    if projections is not None:
        objective.load_state_dict(projections)
    missing, unexpected = accelerator.unwrap_model(model).load_state_dict(state, strict=False)
    tied = accelerator.unwrap_model(model).config.tie_word_embeddings
    if unexpected or [k for k in missing if not (tied and k.endswith(("lm_head.weight", "decoder.weight")))]:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing={missing} unexpected={unexpected}")
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    rank, world = accelerator.process_index, accelerator.num_processes
    if len(ranks) == world:
        _set_rng_state(ranks[rank])
    else:  # a checkpoint of another world size: the same data order, other dropout masks
        log.warning(
            "checkpoint %s was written by %d process(es), resumed by %d: dropout masks differ", path, len(ranks), world
        )
        _set_rng_state(ranks[0])
        if rank:
            torch.manual_seed(torch.initial_seed() + 7919 * rank)
    return info["step"], float(info.get("train_time_s") or 0.0)


def resume_checkpoint(
    out_dir: Path, model, optimizer, scheduler, accelerator, objective, desc: str = "train"
) -> tuple[Path | None, int, float]:
    """Restore the newest checkpoint of ``out_dir`` that loads, trying older ones when a newer one fails.

    Every process tries the same folder; if it fails on any of them, all go on to the next older one.

    Returns:
        tuple[Path | None, int, float]: the folder restored (None when there is no checkpoint: a fresh start), its
        step and the training time up to it.

    Raises:
        CheckpointError: there are checkpoints but none loads; names each one tried and why it failed.
    """
    found = checkpoints(out_dir)
    failures = []
    for i, path in enumerate(found):
        try:
            step, time_before = load_checkpoint(path, model, optimizer, scheduler, accelerator, objective)
            reason = None
        except CheckpointError as err:
            reason = str(err)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:  # does not fit the model or optimizer
            reason = f"{type(err).__name__}: {_first_line(err)}"
        if not any_process(accelerator, reason is not None):
            return path, step, time_before
        reason = reason or "failed on another process"
        failures.append(f"{path.name} ({reason})")
        older = found[i + 1].name if i + 1 < len(found) else None
        log.warning(
            "%s: checkpoint %s cannot be loaded: %s; %s",
            desc,
            path,
            reason,
            f"trying the older {older}" if older else "no older checkpoint to try",
        )
    if failures:
        raise CheckpointError(
            f"{desc}: no checkpoint in {out_dir / 'checkpoints'} can be loaded: {'; '.join(failures)}. Nothing was "
            "changed: repair or move the broken folders aside (moving checkpoints/ away starts the stage over)"
        )
    return None, 0, 0.0


class MetricsLog:
    """Metrics as append-only JSONL (a resume appends a ``resume`` marker) and TensorBoard scalars."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        if not enabled:
            return
        earlier = self.path.is_file() and self.path.stat().st_size > 0
        if earlier:
            with self.path.open("rb") as f:
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
            with self.path.open("a") as f:
                if torn:  # a killed append left half a line: end it, so that the marker stands on its own line
                    f.write("\n")
                # the records after resume_step belong to steps that are redone: readers drop them (metric_records)
                f.write(json.dumps({"event": "resume", "step": resume_step}) + "\n")
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the events of the redone steps itself (purge_step)
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1 if earlier or resume_step else None)

    def write(self, record: dict) -> None:
        """Append one record (rank 0 only) and its numbers as TensorBoard scalars (``train/`` or ``dev/``)."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        prefix = "dev/" if record.get("event") == "dev" else "train/"
        for key, value in record.items():
            if key not in ("step", "event", "window_steps") and isinstance(value, (int, float)):
                self.tb.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.enabled:
            self.tb.close()


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a metrics JSONL file as written (none if it is missing); torn or non-JSON lines skipped.

    This is the raw log, resume markers and redone steps included: ``metric_records`` gives the records that count.
    """
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _step_of(record: dict) -> float:
    step = record.get("step")
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else -math.inf


def metric_records(path: Path) -> list[dict]:
    """The effective records of a metrics JSONL file: what an uninterrupted run would have logged.

    The file is replayed in order: a ``{"event": "resume", "step": N}`` marker drops the records after step ``N``
    seen so far (those steps were redone after the resume), and of two records of one kind (training, ``dev``, ...)
    for one step the later one counts. Markers are not returned. A missing file gives ``[]``.

    Args:
        path (Path): a ``metrics.jsonl`` written by ``MetricsLog``.

    Returns:
        list[dict]: the records in file order (so in step order), without resume markers.
    """
    kept: list[dict] = []
    for record in read_records(path):
        if record.get("event") == "resume":
            resumed_at = _step_of(record)
            kept = [r for r in kept if _step_of(r) <= resumed_at]
        else:
            kept.append(record)
    keys = [(r.get("event", "train"), _step_of(r)) if _step_of(r) > -math.inf else i for i, r in enumerate(kept)]
    last = {key: i for i, key in enumerate(keys)}
    return [r for i, r in enumerate(kept) if last[keys[i]] == i]
