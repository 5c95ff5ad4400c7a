"""Resumable training state: checkpoint folders and the metrics log of a training stage.

A checkpoint ``checkpoints/step-N/`` holds the Hugging Face weights, the objective's learned projections, the
optimizer and scheduler, every process's RNG state and the training time so far, written atomically; the newest
``KEEP_CHECKPOINTS`` are kept. ``metrics.jsonl`` (and TensorBoard) get one record per logged step and per dev loss.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from lmdistill.atomic import atomic_dir, write_json
from lmdistill.losses.objective import DistillationObjective

__all__ = [
    "KEEP_CHECKPOINTS",
    "OBJECTIVE_FILE",
    "MetricsLog",
    "latest_checkpoint",
    "load_checkpoint",
    "read_records",
    "save_checkpoint",
    "save_objective",
]

log = logging.getLogger(__name__)
_CKPT = re.compile(r"^step-(\d+)$")
KEEP_CHECKPOINTS = 2
OBJECTIVE_FILE = "objective.safetensors"  # the feature terms' learned projections, beside the weights


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest ``checkpoints/step-N/`` folder of a stage, or None."""
    folder = out_dir / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.glob("step-*") if (m := _CKPT.match(p.name)))
    return found[-1][1] if found else None


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
    """``checkpoints/step-N/`` (atomically): weights, projections, optimizer, scheduler, each process's RNG."""
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
    old = sorted(p for p in (out_dir / "checkpoints").glob("step-*") if _CKPT.match(p.name))[:-KEEP_CHECKPOINTS]
    for p in old:
        shutil.rmtree(p)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator, objective) -> tuple[int, float]:
    """Restore a checkpoint; returns its step and the training time spent up to it (seconds)."""
    if objective.state_dict():
        if not (path / OBJECTIVE_FILE).is_file():
            raise RuntimeError(f"checkpoint {path} has no {OBJECTIVE_FILE} for the objective's feature projections")
        objective.load_state_dict(load_file(path / OBJECTIVE_FILE, device=str(accelerator.device)))
    state = load_file(path / "model.safetensors")
    missing, unexpected = accelerator.unwrap_model(model).load_state_dict(state, strict=False)
    tied = accelerator.unwrap_model(model).config.tie_word_embeddings
    if unexpected or [k for k in missing if not (tied and k.endswith(("lm_head.weight", "decoder.weight")))]:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing={missing} unexpected={unexpected}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    ranks = rng.get("ranks") or [rng]
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
    info = json.loads((path / "state.json").read_text())
    return int(info["step"]), float(info.get("train_time_s") or 0.0)


class MetricsLog:
    """Metrics as JSONL (truncated to the resumed step) and TensorBoard scalars."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        if not enabled:
            return
        kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]  # drop steps to redo
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        """Append one record (rank 0 only) and its numbers as TensorBoard scalars (``train/`` or ``dev/``)."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        prefix = "dev/" if record.get("event") == "dev" else "train/"
        for key, value in record.items():
            if key not in ("step", "event") and isinstance(value, (int, float)):
                self.tb.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.enabled:
            self.tb.close()


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a metrics JSONL file (none if it is missing); a torn or non-JSON line is skipped."""
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
