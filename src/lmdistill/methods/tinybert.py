"""Method ``tinybert``: multi-loss KD (embedding, hidden, attention, logit) against logit-only KD and no KD.

The experiment of Barakat & Huang ("Knowledge Distillation on Large Language Models"), after TinyBERT's general
distillation (Jiao et al. 2020, arXiv:1909.10351): a pretrained teacher, a smaller student built from scratch in the
teacher's vocabulary, and three arms from the same initialisation and data order:

- ``baseline``: the student's own MLM (or LM) cross-entropy, no teacher;
- ``logit_only``: ``alpha * CE + (1 - alpha) * T^2 * D(p_t^T, p_s^T)`` on the logits (Hinton; alpha = 0 by default);
- ``multi_loss``: the same plus ``MSE(E_s W_e, E_t)`` (embeddings), ``MSE(H_s^m W_h, H_t^g(m))`` (hidden states,
  layer map ``g``) and the MSE of the pre-softmax attention scores of mapped layers (TinyBERT eqs. 7-10).

Stages, top to bottom::

    corpus -> the teacher's tokenizer -> sequences, masked once by seed (masked LM) or blocks (causal LM)
    -> teacher: loaded; a masked LM without an MLM head gets one trained on its frozen body; its head scored
    -> per seed: each variant trained, with per-layer gradient norms every N steps (a pre-step hook) and the logit
       loss on fixed train and held-out probe batches every M steps
    -> downstream: teacher and every student fine-tuned as classifiers (e-SNLI), per fine-tuning seed
    -> results.json -> report.md, plots

The teacher runs online at every step (its hidden states and attention scores are needed); the logits of masked
LMs are computed at the masked positions only (``logits_at="supervised"``). Resumable: finished stages are kept.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmdistill.data.batches import Batch, ExampleSource
from lmdistill.data.blocks import dev_block_indices
from lmdistill.data.corpus import file_sha256, load_corpus
from lmdistill.data.mlm import MaskingConfig, causal_examples, mlm_examples, mlm_sequences
from lmdistill.diagnostics import GradientNorms, LogitLossProbe, mean_gradient_norms, read_probes
from lmdistill.distributed import process_state
from lmdistill.losses.divergences import get_divergence
from lmdistill.losses.objective import DistillationObjective
from lmdistill.methods.finetune import finetune_classifier, pair_examples, read_pairs
from lmdistill.methods.runfolder import Invocation, results_payload, run_recorded, write_results
from lmdistill.methods.stages import corpus_file_hashes, prepare_run, read_training_json
from lmdistill.methods.tinybert_recipe import (
    DESCRIPTION,
    NAME,
    TEACHER,
    DiagnosticsConfig,
    DownstreamConfig,
    Recipe,
    TinyBertRecipe,
    TinyDataConfig,
    TinyLossConfig,
    TinyStudentConfig,
    TinyTeacherConfig,
    TinyVariantConfig,
    normalize_recipe,
    stage_name,
    validate_data,
)
from lmdistill.models import build_model, count_parameters, load_model, load_model_tokenizer
from lmdistill.models.adapt import freeze_all_but_head, trainable_parameters, untie_output_embedding
from lmdistill.models.families import get_family, head_rows
from lmdistill.teachers.ensemble import TeacherEnsemble, freeze
from lmdistill.training import total_steps, train
from lmdistill.training_state import metric_records

__all__ = [
    "DESCRIPTION",
    "NAME",
    "DiagnosticsConfig",
    "DownstreamConfig",
    "Recipe",
    "TinyBertRecipe",
    "TinyData",
    "TinyDataConfig",
    "TinyLossConfig",
    "TinyStudentConfig",
    "TinyTeacherConfig",
    "TinyVariantConfig",
    "masked_token_scores",
    "normalize_recipe",
    "prepare_data",
    "run",
    "validate_data",
]

log = logging.getLogger(__name__)
HEAD_STAGE = "teacher-head"


# --------------------------------------------------------------------------------------------------------- data


@dataclass
class TinyData:
    """The run's tokenizer (the teacher's), training and held-out examples, and their provenance."""

    tokenizer: Any
    train: list[dict[str, list[int]]]
    dev: list[dict[str, list[int]]]
    info: dict[str, Any]


def _evenly(items: list, n: int | None) -> list:
    """``n`` items evenly spaced over ``items`` (every source in proportion), all when n is None or larger."""
    if n is None or n >= len(items):
        return list(items)
    return [items[int(i)] for i in dev_block_indices(len(items), n)]


def prepare_data(recipe: TinyBertRecipe, root: Path, run_dir: Path) -> TinyData:
    """Tokenize the corpus with the teacher's tokenizer (saved to ``RUN/tokenizer``) and build the examples.

    Masked LM: each document's tokens in ``[CLS] ... [SEP]`` sequences of ``data.max_length`` (a document's last
    one shorter), masked once (``lmdistill.data.mlm``; training sequences by ``seed``, held-out ones by ``seed +
    1``). Causal LM: ``bos ... eos`` documents packed into blocks of ``max_length``. Training sequences are
    ``max_train_sequences`` evenly spaced over all of them, held-out ones ``dev_max_sequences`` over the dev split.

    Raises:
        FileNotFoundError, ValueError: a missing or empty corpus file; a tokenizer without the tokens needed.
    """
    cfg: TinyDataConfig = recipe.data
    model_cfg = recipe.teacher.model
    tokenizer = load_model_tokenizer(model_cfg.path, gguf_file=model_cfg.gguf_file)
    tokenizer.save_pretrained(run_dir / "tokenizer")
    splits = {}
    for split in ("train", "dev"):
        documents = load_corpus(root, cfg.sources, split)
        ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
        if recipe.family == "masked_lm":
            for token in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
                if getattr(tokenizer, token) is None:
                    raise ValueError(f"teacher tokenizer {model_cfg.path}: no {token[:-3]} for masked LM sequences")
            sequences = mlm_sequences(ids, tokenizer.cls_token_id, tokenizer.sep_token_id, cfg.max_length)
            keep = cfg.max_train_sequences if split == "train" else cfg.dev_max_sequences
            sequences = _evenly(sequences, keep)
            masking = MaskingConfig(cfg.mask_probability, cfg.mask_fraction, cfg.random_fraction)
            examples = mlm_examples(
                sequences,
                seed=recipe.seed + (split == "dev"),
                mask_id=tokenizer.mask_token_id,
                special_ids=tokenizer.all_special_ids,
                vocab_size=len(tokenizer),
                config=masking,
            )
        else:
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            examples = causal_examples(ids, tokenizer.bos_token_id, tokenizer.eos_token_id, cfg.max_length)
            examples = _evenly(examples, cfg.max_train_sequences if split == "train" else cfg.dev_max_sequences)
        splits[split] = examples
    lengths = [len(e["input_ids"]) for e in splits["train"]]
    supervised = sum(sum(1 for y in e["labels"] if y != -100) for e in splits["train"])
    info = {
        "root": str(root),
        "files": corpus_file_hashes(root, cfg.sources),
        "vocab_size": len(tokenizer),
        "num_train_sequences": len(splits["train"]),
        "num_dev_sequences": len(splits["dev"]),
        "train_tokens": int(sum(lengths)),
        "mean_sequence_length": float(np.mean(lengths)),
        "train_supervised_tokens": int(supervised),
        "masking": None
        if recipe.family != "masked_lm"
        else {"probability": cfg.mask_probability, "mask": cfg.mask_fraction, "random": cfg.random_fraction},
    }
    log.info("data: %d training sequences (%d tokens), %d held-out", len(splits["train"]), sum(lengths),
             len(splits["dev"]))  # fmt: skip
    return TinyData(tokenizer, splits["train"], splits["dev"], info)


def _data_files(recipe: TinyBertRecipe, root: Path) -> dict[str, str | None]:
    """SHA-256 of every data file the recipe reads (corpus and downstream task), by path relative to the root."""
    files = corpus_file_hashes(root, recipe.data.sources)
    if recipe.downstream is not None:
        task = recipe.downstream.task
        for split in (recipe.downstream.train_split, recipe.downstream.test_split):
            name = f"rationale/{task}/{task}_{split}.json"
            files[name] = file_sha256(root / name) if (root / name).is_file() else None
    return files


def _batches(examples: list[dict], rows: list[int], batch_size: int, pad_id: int) -> list[Batch]:
    source = ExampleSource(examples, batch_size, pad_id, shuffle=False)
    return [source.collate(np.asarray(rows[i : i + batch_size])) for i in range(0, len(rows), batch_size)]


# ------------------------------------------------------------------------------------------------------ teacher


@torch.no_grad()
def masked_token_scores(model: Any, batches: list[Batch], family_name: str) -> dict[str, float]:
    """CE (nats) and top-1 accuracy of ``model`` at the supervised positions of ``batches`` (masked or next tokens)."""
    family = get_family(family_name)
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, count = 0.0, 0, 0
    for batch in batches:
        batch = batch.to(device)
        with head_rows(family.output_head(model), family.supervised(batch.labels)):
            logits = family.forward(model, batch).logits.float()
        targets = family.supervised_targets(batch.labels).flatten()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(-1) == targets).sum())
        count += int(targets.numel())
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "tokens": count}


def _load_teacher(cfg: TinyTeacherConfig) -> Any:
    model = load_model(cfg.model.path, family=cfg.model.family, gguf_file=cfg.model.gguf_file)
    return model.float()


def teacher_stage(
    recipe: TinyBertRecipe, data: TinyData, dev: list[Batch], run_dir: Path, resume: bool
) -> tuple[Any, dict[str, Any]]:
    """The teacher, with a trained MLM head when ``teacher.head`` is set (stage ``RUN/models/teacher-head``).

    The head is trained on the frozen body's features (``train_head_on_features``); ``teacher.head.batch_size`` is
    masked positions per step there.

    Returns:
        tuple: the frozen teacher (eval mode) and its results entry (parameters, the head's training and its
        masked-token loss and accuracy on the held-out sequences).
    """
    cfg = recipe.teacher
    entry: dict[str, Any] = {"role": "teacher", "family": recipe.family, "path": str(cfg.model.path)}
    if cfg.head is None:
        model = _load_teacher(cfg)
    else:
        stage = run_dir / "models" / HEAD_STAGE
        final = stage / "final"
        if (final / "config.json").exists():
            model = load_model(final, family="masked_lm")
            training = read_training_json(final)
        else:
            model = _load_teacher(cfg)
            if cfg.head_decoder == "own":
                untie_output_embedding(model)
            trained = freeze_all_but_head(model)
            log.info("%s: training %s parameters (%s) on the frozen body", HEAD_STAGE,
                     f"{trainable_parameters(model):,}", ", ".join(trained))  # fmt: skip
            training = train_head_on_features(model, data, dev, cfg.head, stage, recipe.seed)
            model = load_model(final, family="masked_lm")
        body = {id(p) for p in model.base_model.parameters()}
        entry["head"] = {
            "decoder": cfg.head_decoder,
            "trained_parameters": sum(p.numel() for p in dict.fromkeys(model.parameters()) if id(p) not in body),
            "dev_losses": training.get("dev_losses", []),
            "train_time_s": training.get("train_time_s"),
            "steps": training.get("steps"),
            "positions": training.get("positions"),
            "curve": training.get("curve", []),
        }
    model = freeze(model)
    entry["num_parameters"] = count_parameters(model)
    entry["arch"] = model.config.model_type
    entry["held_out"] = masked_token_scores(model, dev, recipe.family)
    return model, entry


@torch.no_grad()
def _masked_features(model: Any, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """The body's last hidden states (N, H) at the supervised positions of ``batches``, and their targets (N,)."""
    device = next(model.parameters()).device
    features, targets = [], []
    for batch in batches:
        batch = batch.to(device)
        out = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        keep = batch.labels != -100
        features.append(out.last_hidden_state[keep])
        targets.append(batch.labels[keep])
    return torch.cat(features), torch.cat(targets)


def train_head_on_features(
    model: Any, data: TinyData, dev: list[Batch], cfg: Any, stage: Path, seed: int
) -> dict[str, Any]:
    """Train the masked LM's head (what lies outside its frozen body) on the body's features, computed once.

    The body is frozen, so its last hidden states at the masked positions of every training sequence are computed
    in one pass and the head is trained on them: a step costs the head's matmuls only, so many more steps fit than
    with a forward pass of the body per step. A step draws ``cfg.batch_size`` masked positions (seeded) from all of
    them; AdamW with ``cfg.lr``, ``cfg.weight_decay``, linear warm-up and cosine decay over ``cfg.max_steps`` (or
    ``cfg.epochs`` passes over the positions). The held-out loss is logged every ``cfg.eval_every_steps`` (and at
    the end) to ``stage/metrics.jsonl``; the model is written to ``stage/final`` with the tokenizer. The stage is
    minutes long and is redone whole if interrupted.

    Returns:
        dict: ``dev_losses`` (the last held-out loss), ``train_time_s``, ``steps``, ``positions`` (training rows).
    """
    import math
    import time

    from transformers import get_cosine_schedule_with_warmup

    from lmdistill.atomic import atomic_dir, write_json

    start = time.time()
    model.eval()  # no dropout in the features; the head has none that matters (BERT's head has no dropout)
    source = ExampleSource(data.train, 64, data.tokenizer.pad_token_id, shuffle=False)
    rows = list(range(len(data.train)))
    train_batches = [source.collate(np.asarray(rows[i : i + 64])) for i in range(0, len(rows), 64)]
    features, targets = _masked_features(model, train_batches)
    dev_features, dev_targets = _masked_features(model, dev)
    head = [p for p in model.parameters() if p.requires_grad]
    steps = cfg.max_steps or cfg.epochs * math.ceil(len(targets) / cfg.batch_size)
    optimizer = torch.optim.AdamW(head, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, steps), steps)
    generator = torch.Generator().manual_seed(seed)
    every = cfg.eval_every_steps or max(1, steps // 10)
    stage.mkdir(parents=True, exist_ok=True)
    records = []

    def head_logits(x: torch.Tensor) -> torch.Tensor:  # what the model maps a body output to
        for module in model.children():
            if module is not model.base_model:
                return module(x)
        raise ValueError(f"{type(model).__name__} has no head outside its body")

    @torch.no_grad()
    def dev_loss() -> float:
        return float(torch.nn.functional.cross_entropy(head_logits(dev_features), dev_targets))

    for step in range(1, steps + 1):
        idx = torch.randint(0, len(targets), (cfg.batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(head_logits(features[idx]), targets[idx])
        loss.backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(head, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % every == 0 or step == steps:
            records.append({"step": step, "loss": float(loss.detach()), "dev_loss": dev_loss()})
            log.info("%s: step %d/%d, loss %.4f, held-out %.4f", HEAD_STAGE, step, steps, float(loss.detach()),
                     records[-1]["dev_loss"])  # fmt: skip
    with open(stage / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    training = {
        "dev_losses": [records[-1]["dev_loss"]],
        "train_time_s": time.time() - start,
        "steps": steps,
        "positions": int(len(targets)),
        "curve": records,
    }
    with atomic_dir(stage / "final") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        data.tokenizer.save_pretrained(tmp)
        write_json(tmp / "training.json", training)
    return training


# ----------------------------------------------------------------------------------------------------- students


def variant_objective(recipe: TinyBertRecipe, variant: TinyVariantConfig) -> DistillationObjective:
    """The objective of one arm: CE only (baseline), or ``alpha`` CE + the variant's terms."""
    logits_at = "supervised" if recipe.family == "masked_lm" else "all"
    loss = recipe.distillation
    if not variant.kd:
        return DistillationObjective.language_modeling(
            recipe.loss.implementation, recipe.family, logits_at, compile=recipe.loss.compile
        )
    uses_logits = "logit" in variant.losses
    return DistillationObjective(
        alpha=loss.alpha if uses_logits else 1.0,
        temperature=loss.temperature,
        divergence=loss.divergence,
        implementation=recipe.loss.implementation,
        chunk_size=recipe.loss.chunk_size,
        compile=recipe.loss.compile,
        features=loss.features(variant.losses),
        family=recipe.family,
        logits_at=logits_at,
    )


def student_stage(
    recipe: TinyBertRecipe,
    variant: TinyVariantConfig,
    seed: int,
    data: TinyData,
    dev: list[Batch],
    teacher: Any,
    probe: LogitLossProbe,
    run_dir: Path,
    resume: bool,
) -> dict[str, Any]:
    """Train one student arm as ``RUN/models/<variant>-s<seed>`` (or read it), with its diagnostics; its entry."""
    name = stage_name(variant, seed)
    stage = run_dir / "models" / name
    final = stage / "final"
    tok = data.tokenizer
    diag = recipe.diagnostics
    probe.path = stage / "probes.jsonl"
    if (final / "config.json").exists():
        training = read_training_json(final)
        model = load_model(final)
    else:
        torch.manual_seed(seed)  # the same initialisation for every variant of this seed
        positions = max(recipe.data.max_length, recipe.downstream.max_length if recipe.downstream else 0)
        model = build_model(recipe.student.model, vocab_size=len(tok), block_size=positions,
                            bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)  # fmt: skip
        source = ExampleSource(data.train, recipe.student.train.batch_size, tok.pad_token_id, seed=seed)
        steps = total_steps(source, recipe.student.train)
        if not probe.has_step(0):
            probe(0, model)

        student = model

        def on_step(step: int) -> None:
            if step % diag.probe_every == 0 or step == steps:
                probe(step, student)

        objective = variant_objective(recipe, variant)
        ensemble = TeacherEnsemble([teacher]) if variant.kd else None
        log.info("%s: %s parameters, terms %s", name, f"{count_parameters(model):,}", variant.losses or ["ce"])
        result = train(model, source, dev, recipe.student.train, stage, objective=objective, teacher=ensemble,
                       tokenizer=tok, resume=resume, desc=name, on_step=on_step,
                       pre_step_hooks=[GradientNorms(diag.grad_norm_every)])  # fmt: skip
        training = {"dev_losses": result.dev_losses, "train_time_s": result.train_time_s, "steps": result.steps}
        model = load_model(result.final_dir)
    records = metric_records(stage / "metrics.jsonl") if (stage / "metrics.jsonl").exists() else []
    probes = read_probes(stage / "probes.jsonl")
    entry = {
        "role": "student" if variant.kd else "baseline",
        "variant": variant.name,
        "seed": seed,
        "losses": list(variant.losses),
        "family": recipe.family,
        "arch": model.config.model_type,
        "num_parameters": count_parameters(model),
        "dev_loss": training["dev_losses"][-1] if training.get("dev_losses") else None,
        "dev_losses": training.get("dev_losses", []),
        "train_time_s": training.get("train_time_s"),
        "steps": training.get("steps"),
        "metrics_file": f"models/{name}/metrics.jsonl",
        "probes_file": f"models/{name}/probes.jsonl",
        "final_probe": probes[-1] if probes else None,
        "grad_norms": mean_gradient_norms(records),
        "held_out": masked_token_scores(model, dev, recipe.family),
    }
    del model
    gc.collect()
    return entry


# --------------------------------------------------------------------------------------------------- downstream


def downstream_stage(
    recipe: TinyBertRecipe, data: TinyData, root: Path, run_dir: Path, models: dict[str, Any], resume: bool
) -> dict[str, Any]:
    """Fine-tune the teacher and every student on the downstream task per seed: accuracies by model name."""
    cfg: DownstreamConfig = recipe.downstream
    task_dir = root / "rationale" / cfg.task
    limit = None if cfg.max_train is None else cfg.max_train
    rows = read_pairs(task_dir / f"{cfg.task}_{cfg.train_split}.json", limit, cfg.num_labels)
    test_rows = read_pairs(task_dir / f"{cfg.task}_{cfg.test_split}.json", cfg.max_test, cfg.num_labels)
    tok = data.tokenizer
    examples = pair_examples(rows, tok, cfg.max_length)
    train_examples, dev_examples = examples[: -cfg.dev_examples], examples[-cfg.dev_examples :]
    test_examples = pair_examples(test_rows, tok, cfg.max_length)
    out: dict[str, Any] = {
        "task": cfg.task,
        "num_train": len(train_examples),
        "num_dev": len(dev_examples),
        "num_test": len(test_examples),
        "majority_test": max(np.bincount([r["label"] for r in test_rows], minlength=cfg.num_labels))
        / max(len(test_rows), 1),
        "models": {},
    }
    for name, path in models.items():
        accs = []
        for seed in cfg.seeds:
            record = finetune_classifier(
                f"{cfg.task} {name} s{seed}", path, train_examples, dev_examples, test_examples, cfg.train, seed,
                run_dir / "downstream" / f"{name}-s{seed}", num_labels=cfg.num_labels, pad_id=tok.pad_token_id,
                resume=resume,
            )  # fmt: skip
            accs.append(record["accuracy"])
        out["models"][name] = {"accuracies": accs, "seeds": list(cfg.seeds)}
    return out


# --------------------------------------------------------------------------------------------------------- run


def run(
    recipe: TinyBertRecipe,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole TinyBERT-style comparison and write results.json, report.md and plots.

    Args:
        recipe (TinyBertRecipe): the validated recipe.
        run_dir (str | Path): run folder; created if missing.
        data_root (str | Path | None): data root (see ``resolve_data_root``).
        resume (bool): continue a run folder (finished stages are skipped, an unfinished one resumes).
        cache_dir (str | Path | None): unused (the sequences are rebuilt from the corpus in seconds).

    Returns:
        dict: the results written to ``RUN/results.json``.

    Raises:
        RunFolderError: the folder holds another run (without ``resume``) or another recipe, or is in use.
        FileNotFoundError: a missing teacher, corpus file or downstream task file.
        ValueError: errors of the data or of training.
    """
    from lmdistill.reporting.tinybert_report import write_tinybert_report

    run_dir = Path(run_dir)
    return run_recorded(
        run_dir, lambda invocation: _run_stages(recipe, run_dir, invocation, data_root, resume), write_tinybert_report
    )


def _run_stages(
    recipe: TinyBertRecipe, run_dir: Path, invocation: Invocation, data_root: Any, resume: bool
) -> dict[str, Any]:
    if process_state().num_processes > 1:
        raise ValueError("the tinybert method runs in one process (its probes and fine-tunes are not split)")
    root, data = prepare_run(
        recipe, run_dir, data_root, resume, lambda r: prepare_data(recipe, r, run_dir),
        lambda r: _data_files(recipe, r),
    )  # fmt: skip
    if problems := validate_data(recipe, root):
        raise FileNotFoundError("; ".join(problems))
    pad = data.tokenizer.pad_token_id
    dev = _batches(data.dev, list(range(len(data.dev))), 32, pad)
    teacher, teacher_entry = teacher_stage(recipe, data, dev, run_dir, resume)
    results: dict[str, Any] = {TEACHER: teacher_entry}

    diag = recipe.diagnostics
    n_probe = diag.probe_batches * diag.probe_batch_size
    probe_rows = {
        "train": [int(i) for i in dev_block_indices(len(data.train), min(n_probe, len(data.train)))],
        "held_out": list(range(min(n_probe, len(data.dev)))),
    }
    probe = LogitLossProbe(
        {
            "train": _batches(data.train, probe_rows["train"], diag.probe_batch_size, pad),
            "held_out": _batches(data.dev, probe_rows["held_out"], diag.probe_batch_size, pad),
        },
        teacher,
        get_family(recipe.family),
        get_divergence(recipe.distillation.divergence),
        recipe.distillation.temperature,
        run_dir / "probes.jsonl",
    )
    for seed in recipe.seeds:
        for variant in recipe.variants:
            results[stage_name(variant, seed)] = student_stage(
                recipe, variant, seed, data, dev, teacher, probe, run_dir, resume
            )
    info = dict(data.info)
    info["probe_rows"] = {k: len(v) for k, v in probe_rows.items()}
    payload_extra: dict[str, Any] = {}
    if recipe.downstream is not None:
        del teacher, probe
        gc.collect()
        models = {TEACHER: str(_teacher_folder(recipe, run_dir))}
        models.update({name: str(run_dir / "models" / name / "final") for name in results if name != TEACHER})
        payload_extra["downstream"] = downstream_stage(recipe, data, root, run_dir, models, resume)
    payload = results_payload(recipe, invocation, info, results)
    payload.update(payload_extra)
    write_results(run_dir, payload)
    return payload


def _teacher_folder(recipe: TinyBertRecipe, run_dir: Path) -> Path | str:
    """The teacher's weights for fine-tuning: its own folder.

    The MLM head is not needed there, and the folder keeps the pretrained pooler that a masked-LM checkpoint lacks.
    """
    from lmdistill.models.paths import resolve_model_path

    return resolve_model_path(recipe.teacher.model.path)
