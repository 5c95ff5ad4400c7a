"""One explicit training loop, on HF Accelerate, for plain LM training (teachers, baseline) and distillation.

Read top to bottom: set up (optimizer, cosine schedule, resume) -> for each epoch, for each batch: student
forward, teacher forward (no grad) or cache lookup, objective, backward, clip, step -> dev loss at each epoch
end -> final checkpoint. Checkpoints are Hugging Face folders plus optimizer, scheduler and RNG state, written
atomically; a run resumed from one gives the same weights as an uninterrupted run (same seed, same machine).

Several processes (``accelerate launch --num_processes N``; DDP, or FSDP / DeepSpeed from an Accelerate config):
every process draws the same global batch of ``batch_size`` blocks and takes its own contiguous slice of
``batch_size / N`` blocks, so the loss curve is that of one process with the same global batch (gradients are
averaged across processes, every block has the same number of tokens). Rank 0 writes checkpoints, metrics and the
final folder; logged terms and the dev loss are averaged over all processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from lmdistill.atomic import atomic_dir, write_json
from lmdistill.config import TrainConfig
from lmdistill.data.blocks import BlockDataset
from lmdistill.distributed import on_cpu
from lmdistill.losses.objective import DistillationObjective, causal_lm_ce
from lmdistill.teachers.cache import TeacherCache
from lmdistill.teachers.ensemble import TeacherEnsemble

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingInterrupted", "evaluate_dev_loss", "total_steps", "train"]

log = logging.getLogger(__name__)
_CKPT = re.compile(r"^step-(\d+)$")
KEEP_CHECKPOINTS = 2
OBJECTIVE_FILE = "objective.safetensors"  # the feature terms' learned projections, beside the weights


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stopped without saving, the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was saved at the last completed step; ``checkpoint`` is its folder."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a finished training stage produced."""

    final_dir: Path
    """HF checkpoint folder of the final weights (with the tokenizer)."""
    steps: int
    """Optimizer steps taken."""
    dev_losses: list[float] = field(default_factory=list)
    """Dev CE (nats per token) at each epoch end."""
    train_time_s: float = 0.0
    """Wall time of this call (a resumed run counts only its own part)."""


def total_steps(blocks: BlockDataset, cfg: TrainConfig) -> int:
    """Optimizer steps of the whole schedule: full batches over all epochs, capped by ``max_steps``."""
    steps = sum(blocks.num_batches(e, cfg.batch_size) for e in range(cfg.epochs))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


@torch.no_grad()
def evaluate_dev_loss(logits_fn: Callable[[Tensor], Tensor], dev: Tensor, batch_size: int = 32) -> float:
    """Mean next-token CE (nats per token) of ``logits_fn`` over dev blocks (N, T); every block weighs equally."""
    total, count = 0.0, 0
    for i in range(0, len(dev), batch_size):
        ids = dev[i : i + batch_size]
        logits = logits_fn(ids)  # (b, T, V), on the model's device
        total += causal_lm_ce(logits, ids.to(logits.device)).item() * len(ids)
        count += len(ids)
    return total / max(count, 1)


def _latest_checkpoint(out_dir: Path) -> Path | None:
    folder = out_dir / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.glob("step-*") if (m := _CKPT.match(p.name)))
    return found[-1][1] if found else None


def _save_objective(objective: DistillationObjective, folder: Path) -> None:
    """The objective's trained modules (feature projections), if it has any, as ``objective.safetensors``."""
    state = {k: v.detach().contiguous().cpu() for k, v in objective.state_dict().items()}
    if state:
        save_file(state, folder / OBJECTIVE_FILE)


def _save_checkpoint(out_dir, step, model, optimizer, scheduler, accelerator, objective) -> Path:
    path = out_dir / "checkpoints" / f"step-{step:07d}"
    weights = accelerator.get_state_dict(model)  # every rank takes part (FSDP gathers the shards); DDP: a no-op
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return path
    with atomic_dir(path) as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        _save_objective(objective, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        write_json(tmp / "state.json", {"step": step})
    old = sorted(p for p in (out_dir / "checkpoints").glob("step-*") if _CKPT.match(p.name))[:-KEEP_CHECKPOINTS]
    for p in old:
        shutil.rmtree(p)
    accelerator.wait_for_everyone()
    return path


def _load_checkpoint(path: Path, model, optimizer, scheduler, accelerator, objective) -> int:
    if objective.state_dict():
        if not (path / OBJECTIVE_FILE).is_file():
            raise RuntimeError(f"checkpoint {path} has no {OBJECTIVE_FILE} for the objective's feature projections")
        objective.load_state_dict(load_file(path / OBJECTIVE_FILE, device=str(accelerator.device)))
    state = load_file(path / "model.safetensors")
    missing, unexpected = accelerator.unwrap_model(model).load_state_dict(state, strict=False)
    tied = accelerator.unwrap_model(model).config.tie_word_embeddings
    if unexpected or [k for k in missing if not (tied and k.endswith("lm_head.weight"))]:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing={missing} unexpected={unexpected}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(json.loads((path / "state.json").read_text())["step"])


class _MetricsLog:
    """Metrics as JSONL (truncated to the resumed step) and TensorBoard scalars."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        if not enabled:
            return
        kept = [r for r in _read_records(self.path) if r.get("step", 0) <= resume_step]  # drop steps to redo
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        prefix = "dev/" if record.get("event") == "dev" else "train/"
        for key, value in record.items():
            if key not in ("step", "event") and isinstance(value, (int, float)):
                self.tb.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


class _InterruptFlag:
    """First Ctrl-C sets a flag checked at the next step boundary; a second one interrupts at once."""

    def __init__(self) -> None:
        self.set = False
        self._previous = None

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        log.warning("Ctrl-C: finishing this step, saving a checkpoint, then stopping (press again to abort)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    model: PreTrainedModel,
    blocks: BlockDataset,
    dev: Tensor,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    objective: DistillationObjective,
    teacher: TeacherEnsemble | TeacherCache | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    resume: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``blocks`` with ``objective`` (and ``teacher`` for distillation).

    Args:
        model (PreTrainedModel): the causal LM to train (student, baseline or teacher).
        blocks (BlockDataset): training blocks (B, T) with per-epoch order.
        dev (Tensor): (N, T) fixed dev blocks; their CE is measured at each epoch end.
        cfg (TrainConfig): optimisation settings.
        out_dir (Path): stage folder: ``checkpoints/step-N/``, ``final/``, ``metrics.jsonl``, ``tb/``.
        objective (DistillationObjective): CE-only for LM training, CE + divergence (+ features) for distillation.
        teacher (TeacherEnsemble | TeacherCache | None): frozen teachers run at every step, or their cached top-k
            distribution per block (``lmdistill.teachers.cache``; needs blocks without random offsets); needed when
            ``objective.needs_teacher``.
        tokenizer: saved beside the final weights.
        resume (bool): continue from the latest checkpoint in ``out_dir`` when there is one.
        desc (str): progress-bar label.
        on_step (Callable[[int], None] | None): called after each optimizer step with the step number.

    Returns:
        TrainResult: final folder, steps, dev losses per epoch, wall time.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (message names the step and the last good checkpoint).
        TrainingInterrupted: Ctrl-C; a checkpoint of the last completed step was saved.
        ValueError: the objective needs a teacher and none was given; a cache with random block offsets or with
            feature terms; a batch that does not split evenly over processes and accumulation steps; the fused path
            under several processes.
    """
    if objective.needs_teacher and teacher is None:
        raise ValueError("this objective distils (alpha < 1) but no teacher was given")
    cached = isinstance(teacher, TeacherCache)
    if cached and blocks.random_offset:
        raise ValueError("a teacher cache holds the fixed block grid: train on blocks without random_offset")
    if cached and objective.feature_teachers:
        raise ValueError("a teacher cache holds no hidden states or attentions: it cannot serve feature terms")
    start_time = time.time()
    mixed_precision = cfg.mixed_precision
    if mixed_precision != "no" and not torch.cuda.is_available():
        log.warning("mixed_precision=%s needs a GPU; training in float32 on the CPU", mixed_precision)
        mixed_precision = "no"
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=on_cpu())
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % (cfg.grad_accum_steps * world):
        raise ValueError(
            f"batch_size={cfg.batch_size} must split evenly into grad_accum_steps={cfg.grad_accum_steps} x "
            f"{world} processes"
        )
    if world > 1 and objective.implementation == "fused":
        raise ValueError(
            "loss.implementation=fused runs the model past its DDP wrapper: use 'chunked' with several processes"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    num_steps = total_steps(blocks, cfg)
    if num_steps == 0:
        raise ValueError(f"{len(blocks)} training blocks give no full batch of {cfg.batch_size}: lower batch_size")
    local = cfg.batch_size // world  # this process's rows of each global batch
    micro = local // cfg.grad_accum_steps

    model.to(accelerator.device)
    if teacher is not None:
        teacher.to(accelerator.device)
        objective.setup(model, [] if cached else teacher.teachers)  # feature terms: layer maps, projections
    # the objective's projections (if any) are trained with the student and saved with its checkpoints
    params = [*model.parameters(), *objective.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, num_steps), num_steps)
    # the scheduler stays unprepared: Accelerate would step it once per process, our batches are split, not added
    model, optimizer = accelerator.prepare(model, optimizer)

    step, last_ckpt = 0, None
    if resume and (last_ckpt := _latest_checkpoint(out_dir)) is not None:
        step = _load_checkpoint(last_ckpt, model, optimizer, scheduler, accelerator, objective)
        log.info("%s: resumed from %s (step %d of %d)", desc, last_ckpt, step, num_steps)
    metrics = _MetricsLog(out_dir, step, accelerator.is_main_process)
    dev_losses = [r["dev_loss"] for r in _read_records(metrics.path) if r.get("event") == "dev"]
    bar = tqdm(total=num_steps, initial=step, desc=desc, disable=None if accelerator.is_main_process else True)
    model.train()

    def dev_logits(ids: Tensor) -> Tensor:
        return accelerator.unwrap_model(model)(input_ids=ids.to(accelerator.device)).logits

    def dev_loss_all_ranks() -> float:
        """Dev CE over every dev block; with several processes each takes every N-th block, then they average."""
        if world == 1:
            return evaluate_dev_loss(dev_logits, dev)
        mine = dev[rank::world]
        local_sum = evaluate_dev_loss(dev_logits, mine) * len(mine) if len(mine) else 0.0
        total = accelerator.reduce(torch.tensor([local_sum, float(len(mine))], device=accelerator.device), "sum")
        return (total[0] / total[1].clamp_min(1)).item()

    def optimizer_step(starts) -> dict[str, float]:
        """One optimizer step over a global batch (its start positions): this process's rows in micro-batches.

        Returns the loss terms averaged over the micro-batches and the processes.
        """
        local_starts = starts[rank * local : (rank + 1) * local]
        terms_sum: dict[str, float] = {}
        for i in range(cfg.grad_accum_steps):
            part = local_starts[i * micro : (i + 1) * micro]
            ids = blocks.batch(part).to(accelerator.device)
            last = i == cfg.grad_accum_steps - 1
            with accelerator.no_sync(model) if not last else contextlib.nullcontext(), accelerator.autocast():
                student = objective.student_forward(model, ids)  # logits (b, T, V), or hidden states when fused
                teacher_logits = teacher_outputs = None
                if objective.needs_teacher and cached:
                    teacher_logits = teacher.lookup(part // blocks.block_size).to(accelerator.device)
                elif objective.needs_teacher:
                    teacher_logits, teacher_outputs = teacher.forward_features(
                        ids,
                        temperature=objective.temperature,
                        hidden_states=objective.needs_hidden_states,
                        attentions=objective.needs_attentions,
                    )
                loss, terms = objective(student, ids, teacher_logits, teacher_outputs=teacher_outputs)
                if _any_process(accelerator, not math.isfinite(terms["loss"])):  # all processes stop, or none
                    raise NonFiniteLossError(
                        f"{desc}: loss is {terms['loss']} at step {step + 1} (terms {terms}, rank {rank}); stopped. "
                        f"Last good checkpoint: {last_ckpt or 'none saved yet'}"
                    )
                accelerator.backward(loss / cfg.grad_accum_steps)
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v / cfg.grad_accum_steps
            del student, teacher_logits, teacher_outputs, loss  # free (b, T, V) logits before the next micro-batch
        if world > 1:
            for p in objective.parameters():  # the projections live outside the DDP wrapper: average them here
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, "mean")
            names = sorted(terms_sum)
            means = accelerator.reduce(torch.tensor([terms_sum[k] for k in names], device=accelerator.device), "mean")
            terms_sum = dict(zip(names, means.tolist(), strict=True))
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return terms_sum

    window: dict[str, list[float]] = {}  # loss terms since the last metrics line, logged as their mean
    try:
        with _InterruptFlag() as interrupt:
            done_before = 0  # optimizer steps in the epochs before `epoch`
            for epoch in range(cfg.epochs):
                epoch_steps = blocks.num_batches(epoch, cfg.batch_size)
                if step >= done_before + epoch_steps:
                    done_before += epoch_steps
                    continue
                for starts in blocks.epoch_batch_starts(epoch, cfg.batch_size, skip=step - done_before):
                    terms = optimizer_step(starts)
                    step += 1
                    for k, v in terms.items():
                        window.setdefault(k, []).append(v)
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms['loss']:.3f}")
                    if bar.disable and step % max(1, num_steps // 10) == 0:  # no TTY: a log line every 10%
                        log.info("%s: step %d/%d, loss %.4f", desc, step, num_steps, terms["loss"])
                    if step % cfg.log_every_steps == 0 or step == num_steps:
                        metrics.write(
                            {
                                "step": step,
                                "epoch": round(epoch + (step - done_before) / epoch_steps, 4),
                                **{k: round(sum(v) / len(v), 6) for k, v in window.items()},
                                "lr": scheduler.get_last_lr()[0],
                                "tokens": step * cfg.batch_size * blocks.block_size,
                            }
                        )
                        window.clear()
                    if on_step is not None:
                        on_step(step)
                    if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < num_steps:
                        last_ckpt = _save_checkpoint(
                            out_dir, step, model, optimizer, scheduler, accelerator, objective
                        )
                    if _any_process(accelerator, interrupt.set):  # Ctrl-C may reach processes at different steps
                        path = _save_checkpoint(out_dir, step, model, optimizer, scheduler, accelerator, objective)
                        raise TrainingInterrupted(f"{desc}: interrupted at step {step}; checkpoint {path}", path)
                    if step >= num_steps:
                        break
                done_before += epoch_steps
                model.eval()
                dev_loss = dev_loss_all_ranks()
                model.train()
                dev_losses.append(dev_loss)
                metrics.write({"event": "dev", "step": step, "epoch": epoch + 1, "dev_loss": dev_loss})
                log.info("%s: epoch %d, step %d, dev loss %.4f", desc, epoch + 1, step, dev_loss)
                if step >= num_steps:
                    break
    finally:
        bar.close()
        metrics.close()

    final_dir = out_dir / "final"
    train_time = time.time() - start_time
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_dir(final_dir) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            _save_objective(objective, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_json(
                tmp / "training.json",
                {"steps": step, "dev_losses": dev_losses, "train_time_s": train_time, "num_processes": world},
            )
    accelerator.wait_for_everyone()
    return TrainResult(final_dir, step, dev_losses, train_time)


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True when ``flag`` is True on any process (one all-reduce; no communication with a single process)."""
    if accelerator.num_processes == 1:
        return flag
    return accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item() > 0


def _read_records(path: Path) -> list[dict]:
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
