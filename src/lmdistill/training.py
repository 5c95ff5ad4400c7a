"""One explicit training loop, on HF Accelerate, for every method: plain training (teachers, baselines) and KD.

Read top to bottom: set up (optimizer, cosine schedule, resume) -> for each epoch, for each global batch: this
process's micro-batches -> student forward, teacher forward (no grad) or cache lookup, objective, backward ->
pre-step hooks (they can read the gradients) -> clip, step -> dev loss at each epoch end -> final checkpoint.
Checkpoints are Hugging Face folders plus optimizer, scheduler and every process's RNG state, written atomically
and only from finite weights; a run resumed from one gives the same weights as an uninterrupted run (same seed, same
machine). A resume first clears the temporaries of killed writes, then takes the newest checkpoint that loads (an
older one when the newest is broken); metrics.jsonl is only appended to (``training_state.metric_records`` reads it).

Normalisation: the loss of one optimizer step is the mean over the supervised tokens of the whole global batch,
across micro-batches and processes. Each micro-batch's mean loss is weighted by its share of the global batch's
supervised tokens, so gradient accumulation and several processes equal one process with the whole batch even
when lengths differ (padded examples), and every logged term is that same global token mean.

Several processes (``accelerate launch --num_processes N``; DDP, or FSDP / DeepSpeed from an Accelerate config):
every process draws the same global batch of ``batch_size`` rows and takes its own contiguous slice of
``batch_size / N`` rows; gradients are averaged across processes (the loss is scaled so that the average is the
global token mean); each process draws its own dropout masks. Rank 0 writes checkpoints, metrics and the final
folder.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from lmdistill.atomic import atomic_dir, write_json
from lmdistill.config.sections import TrainConfig
from lmdistill.data.batches import Batch, BlockSource, ExampleSource, dev_batches
from lmdistill.data.blocks import BlockDataset
from lmdistill.distributed import on_cpu
from lmdistill.losses.chunked import IGNORE_INDEX, token_cross_entropy
from lmdistill.losses.objective import DistillationObjective
from lmdistill.models.families import FAMILIES, ModelFamily
from lmdistill.teachers.cache import TeacherCache
from lmdistill.teachers.ensemble import TeacherEnsemble
from lmdistill.training_state import (
    CheckpointError,
    MetricsLog,
    any_process,
    metric_records,
    non_finite,
    remove_stale_writes,
    resume_checkpoint,
    save_checkpoint,
    save_objective,
)

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "StepInfo",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate_dev_loss",
    "total_steps",
    "train",
]

log = logging.getLogger(__name__)
Source = BlockSource | ExampleSource


class NonFiniteLossError(RuntimeError):
    """The loss or the weights became NaN or inf; training stopped without saving, the last good checkpoint is kept."""


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
    """Training wall time over every invocation (a resumed run adds the time before its checkpoint)."""


def _as_source(data: Source | BlockDataset, cfg: TrainConfig) -> Source:
    return BlockSource(data, cfg.batch_size) if isinstance(data, BlockDataset) else data


def total_steps(data: Source | BlockDataset, cfg: TrainConfig) -> int:
    """Optimizer steps of the whole schedule: full global batches over all epochs, capped by ``max_steps``."""
    source = _as_source(data, cfg)
    steps = sum(source.num_batches(e) for e in range(cfg.epochs))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


@torch.no_grad()
def dev_loss_sums(
    logits_fn: Callable[[Batch], Tensor], dev: Sequence[Batch], family: ModelFamily = FAMILIES["causal_lm"]
) -> tuple[float, int]:
    """Summed CE (nats) and the number of supervised tokens of ``logits_fn`` over dev batches."""
    total, count = 0.0, 0
    for batch in dev:
        logits = family.positions(logits_fn(batch))  # (b, T, V), on the model's device
        targets = family.targets(batch.labels).to(logits.device)
        per_token = token_cross_entropy(logits.flatten(0, -2), targets.flatten())
        total += float(per_token.sum())
        count += int((targets != IGNORE_INDEX).sum())
    return total, count


def evaluate_dev_loss(
    logits_fn: Callable[[Batch], Tensor],
    dev: Tensor | Sequence[Batch],
    batch_size: int = 32,
    family: ModelFamily = FAMILIES["causal_lm"],
) -> float:
    """Mean CE (nats per supervised token) of ``logits_fn`` over the dev data.

    Args:
        logits_fn (Callable[[Batch], Tensor]): a batch -> its (b, T, V) logits (on any device).
        dev (Tensor | Sequence[Batch]): (N, T) dev blocks (labels = inputs), or batches.
        batch_size (int): blocks per forward pass, for a tensor.
        family (ModelFamily): aligns labels with logits (causal LMs: next token).

    Returns:
        float: the token-weighted mean CE; 0.0 when nothing is supervised.
    """
    total, count = dev_loss_sums(logits_fn, dev_batches(dev, batch_size), family)
    return total / max(count, 1)


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


@dataclass
class StepInfo:
    """What a pre-step hook sees, between backward and the optimizer step.

    The step's gradients are complete (accumulated, reduced across processes) and not yet clipped.

    Attributes:
        step (int): the optimizer step about to be taken (1-based).
        model (torch.nn.Module): the student, unwrapped from DDP (read ``p.grad`` of its parameters).
        objective (DistillationObjective): its learned modules (projections) have gradients too.
        terms (dict[str, float]): the step's loss terms (global token means).
    """

    step: int
    model: torch.nn.Module
    objective: DistillationObjective
    terms: dict[str, float]


PreStepHook = Callable[[StepInfo], "dict[str, float] | None"]
"""Called between backward and the optimizer step; the metrics it returns are logged with the step's terms."""


def train(
    model: PreTrainedModel,
    data: Source | BlockDataset,
    dev: Tensor | Sequence[Batch],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    objective: DistillationObjective,
    teacher: TeacherEnsemble | TeacherCache | None = None,
    feature_teacher: TeacherEnsemble | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    resume: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
    pre_step_hooks: Sequence[PreStepHook] = (),
) -> TrainResult:
    """Train ``model`` on ``data`` with ``objective`` (and ``teacher`` for distillation).

    Args:
        model (PreTrainedModel): the model to train (student, baseline or teacher), of ``objective.family``.
        data (BlockSource | ExampleSource | BlockDataset): global batches (a ``BlockDataset`` is read as a
            ``BlockSource`` of ``cfg.batch_size`` blocks).
        dev (Tensor | Sequence[Batch]): (N, T) fixed dev blocks, or dev batches; their mean CE per supervised token is
            measured at each epoch end.
        cfg (TrainConfig): optimisation settings (``batch_size`` is the global batch).
        out_dir (Path): stage folder: ``checkpoints/step-N/``, ``final/``, ``metrics.jsonl``, ``tb/``.
        objective (DistillationObjective): CE-only for plain training, CE + divergence (+ features) for distillation.
        teacher (TeacherEnsemble | TeacherCache | None): frozen teachers run at every step, or their cached top-k
            distribution per block (``lmdistill.teachers.cache``; needs blocks without random offsets); needed when
            ``objective.needs_teacher``.
        feature_teacher (TeacherEnsemble | None): with a cached ``teacher``, the frozen teachers (possibly cut
            after their matched layers, ``lmdistill.teachers.partial``) whose hidden states or attentions the
            feature terms read at every step; their logits are not used.
        tokenizer: saved beside the final weights.
        resume (bool): continue from the newest checkpoint in ``out_dir`` that loads (a broken one is named in a
            warning and the next older one tried).
        desc (str): progress-bar label.
        on_step (Callable[[int], None] | None): called after each optimizer step with the step number.
        pre_step_hooks (Sequence[PreStepHook]): called with a ``StepInfo`` after backward, before clipping and the
            optimizer step; the metrics they return are logged (e.g. per-layer gradient norms).

    Returns:
        TrainResult: final folder, steps, dev losses per epoch, training time over every invocation.

    Raises:
        NonFiniteLossError: the loss, or the weights about to be saved, became NaN/inf (message names the step and
            the last good checkpoint, which is finite; nothing non-finite is ever saved).
        CheckpointError: ``resume`` and there are checkpoints, but none loads (message names each and why).
        TrainingInterrupted: Ctrl-C; a checkpoint of the last completed step was saved.
        ValueError: the objective needs a teacher and none was given; a cache with random block offsets, with
            feature terms or with examples instead of blocks; a batch that does not split evenly over processes and
            accumulation steps; the fused path under several processes.
    """
    source = _as_source(data, cfg)
    if objective.needs_teacher and teacher is None:
        raise ValueError("this objective distils (alpha < 1) but no teacher was given")
    cached = isinstance(teacher, TeacherCache)
    if cached and not isinstance(source, BlockSource):
        raise ValueError("a teacher cache holds blocks of the block grid: train on a BlockSource")
    if cached and source.random_offset:
        raise ValueError("a teacher cache holds the fixed block grid: train on blocks without random_offset")
    if cached and objective.feature_teachers and feature_teacher is None:
        raise ValueError(
            "a teacher cache holds no hidden states or attentions: feature terms need feature_teacher (the teachers "
            "run online for their features)"
        )
    if feature_teacher is not None and not cached:
        raise ValueError("feature_teacher is for a cached teacher; an online teacher gives its own features")
    if cached and objective.logits_at == "supervised":
        raise ValueError("logits_at='supervised' needs an online teacher (a cache holds every position's top-k)")
    start_time = time.time()
    mixed_precision = cfg.mixed_precision
    if mixed_precision != "no" and not torch.cuda.is_available():
        log.warning("mixed_precision=%s needs a GPU; training in float32 on the CPU", mixed_precision)
        mixed_precision = "no"
    accum = cfg.grad_accum_steps
    # gradient_accumulation_steps: accelerate.accumulate() syncs (and DeepSpeed steps) once per global batch
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=on_cpu(), gradient_accumulation_steps=accum)
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.batch_size % (accum * world):
        raise ValueError(
            f"batch_size={cfg.batch_size} must split evenly into grad_accum_steps={accum} x {world} processes"
        )
    if world > 1 and objective.implementation == "fused":
        raise ValueError(
            "loss.implementation=fused runs the model past its DDP wrapper: use 'chunked' with several processes"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:  # what writes killed mid-way (SIGKILL, OOM) left, before anything reads them
        for action in remove_stale_writes(out_dir):
            log.warning("%s: %s (left by an interrupted write)", desc, action)
    accelerator.wait_for_everyone()
    num_steps = total_steps(source, cfg)
    if num_steps == 0:
        raise ValueError(f"the training data give no full batch of {cfg.batch_size}: lower batch_size")
    local = cfg.batch_size // world  # this process's rows of each global batch
    micro = local // accum
    dev = dev_batches(dev)
    family = objective.family

    model.to(accelerator.device)
    if teacher is not None:
        teacher.to(accelerator.device)
        if feature_teacher is not None:
            feature_teacher.to(accelerator.device)
        feature_models = [] if cached else teacher.teachers
        if feature_teacher is not None:
            feature_models = feature_teacher.teachers
        objective.setup(model, feature_models)  # feature terms: layer maps, projections
    # the objective's projections (if any) are trained with the student and saved with its checkpoints
    # frozen parameters (an adapted teacher's body) are neither optimised nor decayed
    trainable = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    if not trainable:
        raise ValueError(f"{desc}: the model has no parameter with requires_grad=True: nothing to train")
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, num_steps), num_steps)
    # the scheduler stays unprepared: Accelerate would step it once per process, our batches are split, not added
    model, optimizer = accelerator.prepare(model, optimizer)
    # after prepare: FSDP replaces the parameters by flat shards, so clip what the prepared model holds
    clipped = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]

    step, last_ckpt, time_before = 0, None, 0.0
    if resume:  # the newest checkpoint that loads (warnings name the broken ones); none at all: a fresh start
        last_ckpt, step, time_before = resume_checkpoint(
            out_dir, model, optimizer, scheduler, accelerator, objective, desc
        )
    if last_ckpt is not None:
        log.info("%s: resumed from %s (step %d of %d)", desc, last_ckpt, step, num_steps)
    elif rank:
        torch.manual_seed(torch.initial_seed() + 7919 * rank)  # every process its own dropout masks
    metrics = MetricsLog(out_dir, step, accelerator.is_main_process)  # appends a resume marker to an earlier log
    # dev losses up to the resumed step only: later ones belong to steps that are redone (every rank reads the file)
    dev_by_epoch = {
        r["epoch"]: r["dev_loss"]
        for r in metric_records(metrics.path)
        if r.get("event") == "dev" and r.get("step", math.inf) <= step
    }
    bar = tqdm(total=num_steps, initial=step, desc=desc, disable=None if accelerator.is_main_process else True)
    model.train()

    def train_time() -> float:
        return time_before + time.time() - start_time

    def dev_logits(batch: Batch) -> Tensor:
        inner = accelerator.unwrap_model(model)
        return family.forward(inner, batch.to(accelerator.device)).logits

    def dev_loss_all_ranks() -> float:
        """Dev CE over every dev batch; with several processes each takes every N-th batch, then they add up."""
        total, count = dev_loss_sums(dev_logits, dev[rank::world], family)
        if world > 1:
            sums = accelerator.reduce(torch.tensor([total, float(count)], device=accelerator.device), "sum")
            total, count = sums[0].item(), int(sums[1].item())
        return total / max(count, 1)

    def run_dev(epoch: int) -> None:
        """The dev loss after ``epoch`` (1-based), logged once."""
        model.eval()
        dev_loss = dev_loss_all_ranks()
        model.train()
        dev_by_epoch[epoch] = dev_loss
        record = {"event": "dev", "step": step, "epoch": epoch, "dev_loss": dev_loss}
        if tokens_per_step:
            record["tokens"] = step * tokens_per_step
        metrics.write(record)
        log.info("%s: epoch %d, step %d, dev loss %.4f", desc, epoch, step, dev_loss)

    def run_dev_step() -> None:
        """The dev loss at this step (``eval_every_steps``), logged as a ``dev_step`` event with the tokens seen."""
        model.eval()
        dev_loss = dev_loss_all_ranks()
        model.train()
        record = {"event": "dev_step", "step": step, "dev_loss": dev_loss}
        if tokens_per_step:
            record["tokens"] = step * tokens_per_step
        metrics.write(record)

    def optimizer_step(rows) -> dict[str, float]:
        """One optimizer step over a global batch (its row ids): this process's rows in micro-batches.

        Each micro-batch's mean loss is weighted by its supervised tokens over the global batch's, so the step
        minimises the global token mean; returns the terms as global token means.
        """
        mine = rows[rank * local : (rank + 1) * local]
        parts = [source.collate(mine[i * micro : (i + 1) * micro]) for i in range(accum)]
        counts = [objective.num_supervised(p.labels) for p in parts]
        total = float(sum(counts))
        if world > 1:
            total = accelerator.reduce(torch.tensor(total, device=accelerator.device), "sum").item()
        terms_sum: dict[str, float] = {}
        for part, count in zip(parts, counts, strict=True):
            batch = part.to(accelerator.device)
            share = count / max(total, 1.0)  # this micro-batch's share of the global batch's supervised tokens
            with accelerator.accumulate(model), accelerator.autocast():
                student = objective.student_forward(model, batch)  # logits (b, T, V), or hidden states when fused
                teacher_logits = teacher_outputs = None
                if objective.needs_teacher and cached:
                    teacher_logits = teacher.lookup(batch.index.numpy()).to(accelerator.device)
                    if feature_teacher is not None and objective.feature_teachers:
                        _, teacher_outputs = feature_teacher.forward_features(
                            batch.input_ids,
                            batch.attention_mask,
                            hidden_states=objective.needs_hidden_states,
                            attentions=objective.needs_attentions,
                        )
                elif objective.needs_teacher:
                    teacher_logits, teacher_outputs = teacher.forward_features(
                        batch.input_ids,
                        batch.attention_mask,
                        temperature=objective.temperature,
                        hidden_states=objective.needs_hidden_states,
                        attentions=objective.needs_attentions,
                        keep=family.supervised(batch.labels) if objective.logits_at == "supervised" else None,
                    )
                loss, terms = objective(
                    student, batch.labels, teacher_logits, batch.attention_mask, teacher_outputs=teacher_outputs
                )
                if any_process(accelerator, not math.isfinite(terms["loss"])):  # all processes stop, or none
                    raise NonFiniteLossError(
                        f"{desc}: loss is {terms['loss']} at step {step + 1} (terms {terms}, rank {rank}); stopped. "
                        f"Last good checkpoint: {last_ckpt or 'none saved yet'}"
                    )
                # accelerate divides by grad_accum_steps (DeepSpeed scales the same way) and DDP averages over
                # processes: scale back so that the summed gradient is that of the global token mean
                accelerator.backward(loss * (share * accum * world))
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v * share
            del student, teacher_logits, teacher_outputs, loss  # free (b, T, V) logits before the next micro-batch
        if world > 1:
            for p in objective.parameters():  # the projections live outside the DDP wrapper: average them here
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, "mean")
            names = sorted(terms_sum)
            sums = accelerator.reduce(torch.tensor([terms_sum[k] for k in names], device=accelerator.device), "sum")
            terms_sum = dict(zip(names, sums.tolist(), strict=True))
        info = StepInfo(step + 1, accelerator.unwrap_model(model), objective, terms_sum)
        for hook in pre_step_hooks:
            terms_sum.update(hook(info) or {})
        if cfg.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(clipped, cfg.max_grad_norm)
            terms_sum["grad_norm"] = float(norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return terms_sum

    def check_finite(at_step: int) -> None:
        """Before any save: NaN/inf weights (a finite loss can still give a NaN gradient) stop the run unsaved."""
        named = [*model.named_parameters(), *((f"objective.{n}", p) for n, p in objective.named_parameters())]
        bad = non_finite(named)
        if any_process(accelerator, bool(bad)):  # all processes stop, or none
            raise NonFiniteLossError(
                f"{desc}: NaN or inf in the weights after step {at_step} ({', '.join(bad) or 'on another process'}, "
                f"rank {rank}); stopped, nothing saved. Last good checkpoint: {last_ckpt or 'none saved yet'}"
            )

    def save(at_step: int) -> Path:
        check_finite(at_step)
        return save_checkpoint(out_dir, at_step, model, optimizer, scheduler, accelerator, objective, train_time())

    # loss terms since the last metrics line, logged as their mean over `window_steps` steps: after a resume, the
    # steps of this invocation only (those between the last record and the checkpoint were never logged)
    window: dict[str, list[float]] = {}
    window_steps = 0
    tokens_per_step = source.tokens_per_batch() if isinstance(source, BlockSource) else None
    try:
        if cfg.eval_every_steps and step == 0:
            run_dev_step()  # where the curve starts
        with _InterruptFlag() as interrupt:
            done_before = 0  # optimizer steps in the epochs before `epoch`
            for epoch in range(cfg.epochs):
                epoch_steps = source.num_batches(epoch)
                end = min(done_before + epoch_steps, num_steps)  # the step that ends this epoch
                for rows in source.epoch_batches(epoch, skip=max(0, step - done_before)) if step < end else ():
                    terms = optimizer_step(rows)
                    step += 1
                    window_steps += 1
                    for k, v in terms.items():
                        window.setdefault(k, []).append(v)
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms['loss']:.3f}")
                    if bar.disable and step % max(1, num_steps // 10) == 0:  # no TTY: a log line every 10%
                        log.info("%s: step %d/%d, loss %.4f", desc, step, num_steps, terms["loss"])
                    if step % cfg.log_every_steps == 0 or step == num_steps:
                        record = {
                            "step": step,
                            "epoch": round(epoch + (step - done_before) / epoch_steps, 4),
                            **{k: round(sum(v) / len(v), 6) for k, v in window.items()},
                            "lr": scheduler.get_last_lr()[0],
                            "window_steps": window_steps,
                        }
                        if tokens_per_step:
                            record["tokens"] = step * tokens_per_step
                        metrics.write(record)
                        window.clear()
                        window_steps = 0
                    if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and step < num_steps:
                        run_dev_step()
                    if on_step is not None:
                        on_step(step)
                    if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < num_steps:
                        last_ckpt = save(step)
                    if step >= end:
                        break  # the epoch's dev loss comes before an interrupt is honoured
                    if any_process(accelerator, interrupt.set):  # Ctrl-C may reach processes at different steps
                        path = save(step)
                        raise TrainingInterrupted(f"{desc}: interrupted at step {step}; checkpoint {path}", path)
                if step == end and (epoch + 1) not in dev_by_epoch:
                    run_dev(epoch + 1)  # also after a resume from a checkpoint written at the epoch's last step
                done_before += epoch_steps
                if step >= num_steps:
                    break
                if any_process(accelerator, interrupt.set):
                    path = save(step)
                    raise TrainingInterrupted(f"{desc}: interrupted at step {step}; checkpoint {path}", path)
    finally:
        bar.close()
        metrics.close()

    dev_losses = [dev_by_epoch[e] for e in sorted(dev_by_epoch)]
    final_dir = out_dir / "final"
    total_time = train_time()
    check_finite(step)
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_dir(final_dir) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            save_objective(objective, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_json(
                tmp / "training.json",
                {"steps": step, "dev_losses": dev_losses, "train_time_s": total_time, "num_processes": world},
            )
    accelerator.wait_for_everyone()
    return TrainResult(final_dir, step, dev_losses, total_time)
