"""``lmdistill run``: one Baby Llama experiment from a recipe, stage by stage, resumable from its run folder.

data -> tokenizer -> teachers -> [teacher cache] -> baseline (no KD) -> distilled student -> zero-shot tasks ->
results.json -> report.

Run folder::

    RUN/recipe.yaml            resolved recipe (a resumed run must match it)
    RUN/tokenizer/             the shared BPE tokenizer (transformers folder)
    RUN/models/<name>/         per model: checkpoints/, final/ (HF folder), metrics.jsonl, tb/, eval.json
    RUN/teacher-cache/         with teachers.cache: the ensemble's top-k per block (lmdistill.teachers.cache)
    RUN/results.json, RUN/report.md, RUN/plots/*.png

Under ``accelerate launch`` every process runs this code: data preparation runs on rank 0 first, training is
split across the processes (see ``lmdistill.training``), and evaluation and the report run on rank 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedTokenizerBase

import lmdistill
from lmdistill.atomic import write_json, write_text
from lmdistill.config import ModelConfig, RecipeConfig, TrainConfig, from_dict, to_dict, to_yaml
from lmdistill.data.blocks import BlockDataset, dev_blocks
from lmdistill.data.corpus import file_sha256, load_corpus, source_files
from lmdistill.data.root import resolve_data_root
from lmdistill.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_fingerprint, train_tokenizer
from lmdistill.data.tokens import tokenize_documents
from lmdistill.distributed import process_state
from lmdistill.evaluation.blimp import blimp_summary
from lmdistill.evaluation.runner import evaluate_tasks, task_specs
from lmdistill.evaluation.scoring import hf_logits_fn
from lmdistill.losses.objective import DistillationObjective
from lmdistill.models import build_model, count_parameters, load_model
from lmdistill.teachers.cache import TeacherCache, cache_spec, ensure_cache
from lmdistill.teachers.ensemble import TeacherEnsemble
from lmdistill.training import evaluate_dev_loss, train

__all__ = [
    "CORPUS_NOTE",
    "RunFolderError",
    "build_teacher_cache",
    "default_cache_dir",
    "open_teacher_cache",
    "prepare_run",
    "run_experiment",
    "train_teachers",
    "validate_recipe_data",
]

log = logging.getLogger(__name__)

CORPUS_NOTE = (
    "The training text is a BabyLM-style mixture of public English sources (child-directed speech, fiction, news, "
    "dialogue, reviews), not the BabyLM corpus itself, which could not be obtained offline; numbers are not "
    "directly comparable with BabyLM leaderboards."
)


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (exists without --resume, or holds a different recipe)."""


@dataclass
class _Data:
    tokenizer: PreTrainedTokenizerBase
    train: BlockDataset
    dev: torch.Tensor
    info: dict[str, Any]


def default_cache_dir() -> Path:
    """Token cache folder: ``LMDISTILL_CACHE``, else ``~/.cache/lmdistill``."""
    return Path(os.environ.get("LMDISTILL_CACHE", Path.home() / ".cache" / "lmdistill"))


def _prepare_run_folder(recipe: RecipeConfig, run_dir: Path, resume: bool) -> None:
    """Refuse a run folder that holds another run (without --resume) or another recipe (with it)."""
    saved = run_dir / "recipe.yaml"
    if saved.exists():
        if not resume:
            raise RunFolderError(
                f"run folder {run_dir} already holds a run: resume it with --resume, or choose another --run-dir"
            )
        old = _flat(to_dict(from_dict(RecipeConfig, yaml.safe_load(saved.read_text()))))
        new = _flat(to_dict(recipe))
        diffs = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diffs:
            raise RunFolderError(
                f"{saved} differs from the recipe being resumed at: {', '.join(diffs)}; resume with the same recipe "
                "and overrides, or start a new run folder"
            )
    elif resume and run_dir.exists() and any(p.name != "tokenizer" for p in run_dir.iterdir()):
        raise RunFolderError(f"--resume: {run_dir} has no recipe.yaml, so it is not a run folder")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): d}


def _prepare_data(recipe: RecipeConfig, run_dir: Path, data_root: Path, cache_dir: Path) -> _Data:
    sources = recipe.data.sources
    train_docs = load_corpus(data_root, sources, "train")
    dev_docs = load_corpus(data_root, sources, "dev")
    tok_dir = run_dir / "tokenizer"
    # reuse only a tokenizer of this recipe: a failed first attempt may have left one for other settings
    if (run_dir / "recipe.yaml").exists() and (tok_dir / "tokenizer.json").exists():
        tokenizer = load_tokenizer(tok_dir)
    else:
        log.info(
            "training a %d-token BPE tokenizer on %d train documents", recipe.tokenizer.vocab_size, len(train_docs)
        )
        tokenizer = train_tokenizer(train_docs, recipe.tokenizer.vocab_size, recipe.tokenizer.min_frequency)
        save_tokenizer(tokenizer, tok_dir)
        tokenizer = load_tokenizer(tok_dir)
    tokenizer.model_max_length = recipe.data.block_size
    train_tokens = tokenize_documents(train_docs, tokenizer, cache_dir / "tokens", "train")
    dev_tokens = tokenize_documents(dev_docs, tokenizer, cache_dir / "tokens", "dev")
    blocks = BlockDataset(
        train_tokens, recipe.data.block_size, seed=recipe.seed, random_offset=recipe.data.random_offset
    )
    dev = dev_blocks(dev_tokens, recipe.data.block_size, recipe.data.dev_max_blocks)
    files = {str(p.relative_to(data_root)): file_sha256(p) for p in source_files(data_root, sources)}
    info = {
        "root": str(data_root),
        "files": files,
        "train_tokens": int(len(train_tokens)),
        "dev_tokens": int(len(dev_tokens)),
        "num_train_blocks": len(blocks),
        "num_dev_blocks": int(len(dev)),
        "vocab_size": len(tokenizer),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "corpus_note": CORPUS_NOTE,
    }
    log.info("data: %d train tokens (%d blocks), %d dev blocks", len(train_tokens), len(blocks), len(dev))
    return _Data(tokenizer, blocks, dev, info)


def _train_stage(
    name: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: _Data,
    recipe: RecipeConfig,
    run_dir: Path,
    objective: DistillationObjective,
    teacher: TeacherEnsemble | None,
    resume: bool,
) -> dict[str, Any]:
    stage = run_dir / "models" / name
    final = stage / "final"
    tok = data.tokenizer
    if (final / "config.json").exists():
        log.info("%s: already trained (%s)", name, final)
        model = load_model(final)
        record = _read_training_json(final)
        dev_losses, train_time = record.get("dev_losses", []), record.get("train_time_s")
    else:
        torch.manual_seed(recipe.seed)
        model = build_model(
            model_cfg,
            vocab_size=len(tok),
            block_size=recipe.data.block_size,
            bos_id=tok.bos_token_id,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
        )
        log.info("%s: %s, %s parameters", name, model_cfg.arch, f"{count_parameters(model):,}")
        result = train(
            model,
            data.train,
            data.dev,
            train_cfg,
            stage,
            objective=objective,
            teacher=teacher,
            tokenizer=tok,
            resume=resume,
            desc=name,
        )
        model = load_model(result.final_dir)
        dev_losses, train_time = result.dev_losses, result.train_time_s
    return {
        "model": model,
        "entry": {
            "arch": model.config.model_type,
            "num_parameters": count_parameters(model),
            "dev_loss": dev_losses[-1] if dev_losses else None,
            "dev_losses": dev_losses,
            "train_time_s": train_time,
            "metrics_file": f"models/{name}/metrics.jsonl",
        },
    }


def _read_training_json(final: Path) -> dict[str, Any]:
    path = final / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _pretrained_teacher(name: str, path: Path, data: _Data, device: torch.device) -> dict[str, Any]:
    """Load a teacher given by ``model.path`` (no training), check its tokenizer and measure its dev loss."""
    _check_teacher_tokenizer(name, path, data)
    model = load_model(path).to(device).eval()
    _check_shared_tokenizer({name: model}, len(data.tokenizer))
    dev_loss = evaluate_dev_loss(lambda ids: model(input_ids=ids.to(device)).logits, data.dev)
    entry = {
        "arch": model.config.model_type,
        "num_parameters": count_parameters(model),
        "dev_loss": dev_loss,
        "dev_losses": [],
        "train_time_s": None,
        "metrics_file": None,
        "path": str(path),
    }
    return {"model": model, "entry": entry}


def _check_teacher_tokenizer(name: str, path: Path, data: _Data) -> None:
    """A teacher checkpoint saved with a tokenizer must use exactly the run's tokenizer."""
    if not (path / "tokenizer.json").is_file():
        return
    if tokenizer_fingerprint(load_tokenizer(path)) != data.info["tokenizer_sha256"]:
        raise ValueError(
            f"teacher {name}: the tokenizer saved in {path} differs from this run's tokenizer: teachers and student "
            "must share one tokenizer (train the teacher in a run with the same data and tokenizer settings)"
        )


def _check_shared_tokenizer(models: dict[str, Any], vocab_size: int) -> None:
    for name, model in models.items():
        if model.config.vocab_size != vocab_size:
            raise ValueError(
                f"{name} has vocab_size={model.config.vocab_size} but the run's tokenizer has {vocab_size}: "
                "teachers and student must share one tokenizer"
            )


def _evaluate(name: str, model: Any, data: _Data, recipe: RecipeConfig, root: Path, run_dir: Path) -> dict:
    """Every task of the recipe on one model, through the same code as ``lmdistill eval``; cached per model."""
    cached = run_dir / "models" / name / "eval.json"
    done = json.loads(cached.read_text()) if cached.exists() else {}
    specs = task_specs(recipe.evaluation)
    missing = [s for s in specs if s.name not in done]
    if missing:
        done.update(
            evaluate_tasks(
                model,
                data.tokenizer,
                missing,
                data_root=root,
                limit=recipe.evaluation.limit,
                batch_size=recipe.evaluation.batch_size,
                progress=f"eval {name}",
            )
        )
        write_json(cached, done)
    return {s.name: done[s.name] for s in specs}


def prepare_run(recipe: RecipeConfig, run_dir: Path, data_root, resume: bool, cache_dir) -> tuple[Path, _Data]:
    """Check the run folder, prepare data and tokenizer (rank 0 first), record the recipe.

    Returns:
        tuple: the data root, and the run's data (tokenizer, training blocks, dev blocks, provenance info).

    Raises:
        RunFolderError: the folder holds another run (without ``resume``) or another recipe.
    """
    state = process_state()
    root = resolve_data_root(data_root)
    _prepare_run_folder(recipe, run_dir, resume)
    state.wait_for_everyone()  # before rank 0 writes recipe.yaml, which the check above reads
    with state.main_process_first():  # the other ranks then load rank 0's tokenizer and token cache
        data = _prepare_data(recipe, run_dir, root, Path(cache_dir) if cache_dir else default_cache_dir())
        if state.is_main_process:  # only now: a run that fails on bad data can simply be re-run
            write_text(run_dir / "recipe.yaml", to_yaml(recipe))
    return root, data


def train_teachers(recipe: RecipeConfig, run_dir: Path, data: _Data, resume: bool, results: dict) -> dict[str, Any]:
    """Train (or load, or find already trained in the run folder) every teacher, in order.

    Their results entries (parameters, dev loss, training time) go into ``results``; returns name -> model.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = DistillationObjective.language_modeling(recipe.loss.implementation)
    teachers = {}
    for t in recipe.teachers.members:
        if t.train is None:
            out = _pretrained_teacher(t.name, Path(t.model.path), data, device)
        else:
            out = _train_stage(t.name, t.model, t.train, data, recipe, run_dir, lm, None, resume)
        teachers[t.name] = out["model"]
        results[t.name] = {"role": "teacher", **out["entry"]}
    _check_shared_tokenizer(teachers, len(data.tokenizer))
    return teachers


def teacher_cache_dir(recipe: RecipeConfig, run_dir: Path) -> Path:
    """The recipe's cache folder: ``teachers.cache_dir``, else ``RUN/teacher-cache``."""
    return Path(recipe.teachers.cache_dir) if recipe.teachers.cache_dir else run_dir / "teacher-cache"


def open_teacher_cache(
    recipe: RecipeConfig,
    run_dir: Path,
    data: _Data,
    teachers: dict[str, Any],
    ensemble: TeacherEnsemble,
    overwrite: bool = False,
) -> TeacherCache:
    """The run's teacher cache (``ensure_cache`` with the recipe's settings): opened, or built first if missing."""
    spec = cache_spec(
        teachers,
        recipe.distillation.ensemble,
        data.info["tokenizer_sha256"],
        data.train,
        top_k=recipe.teachers.cache_top_k,
        dtype=recipe.teachers.cache_dtype,
        temperature=recipe.distillation.temperature,
        shard_blocks=recipe.teachers.cache_shard_blocks,
    )
    return ensure_cache(
        ensemble,
        data.train,
        spec,
        teacher_cache_dir(recipe, run_dir),
        batch_size=recipe.teachers.cache_batch_size,
        overwrite=overwrite,
    )


def build_teacher_cache(
    recipe: RecipeConfig,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> TeacherCache:
    """``lmdistill cache-teacher``: train the run's teachers if needed, then build (or finish) their cache.

    The run folder follows ``lmdistill run --resume``'s rules (it must hold this recipe, if any), so a later
    ``lmdistill run RECIPE --resume`` with the same recipe reads this cache.

    Args:
        recipe (RecipeConfig): the validated recipe (its ``teachers.cache_*`` settings say what to build).
        run_dir (str | Path): run folder.
        data_root (str | Path | None): data root (see ``resolve_data_root``).
        cache_dir (str | Path | None): token cache folder (default ``default_cache_dir()``).
        overwrite (bool): rebuild the cache from scratch.

    Returns:
        TeacherCache: the finished, verified cache.

    Raises:
        RunFolderError: the folder holds another recipe.
        CacheMismatchError: a cache for other teachers or settings is there (and ``overwrite`` is False).
        CacheCorruptError: a shard of the finished cache is truncated or corrupted.
    """
    run_dir = Path(run_dir)
    _, data = prepare_run(recipe, run_dir, data_root, True, cache_dir)
    teachers = train_teachers(recipe, run_dir, data, True, {})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ensemble = TeacherEnsemble(list(teachers.values()), rule=recipe.distillation.ensemble).to(device)
    return open_teacher_cache(recipe, run_dir, data, teachers, ensemble, overwrite=overwrite)


def run_experiment(
    recipe: RecipeConfig,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole Baby Llama experiment and write results.json, report.md and plots.

    Args:
        recipe (RecipeConfig): the validated recipe.
        run_dir (str | Path): run folder; created if missing.
        data_root (str | Path | None): data root (see ``resolve_data_root``).
        resume (bool): continue a run folder: finished stages are skipped, an unfinished one resumes from its
            latest checkpoint.
        cache_dir (str | Path | None): token cache folder (default ``default_cache_dir()``).

    Returns:
        dict: the results written to ``RUN/results.json``.

    Raises:
        RunFolderError: the folder exists without ``resume`` or holds another recipe.
        DataRootError, FileNotFoundError, ValueError: missing or empty data, tokenizer mismatch.
        NonFiniteLossError, TrainingInterrupted: from training (the last good checkpoint is kept).
    """
    from lmdistill.reporting.report import write_report

    start = time.time()
    run_dir = Path(run_dir)
    root, data = prepare_run(recipe, run_dir, data_root, resume, cache_dir)
    main_process = process_state().is_main_process
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {}
    teachers = train_teachers(recipe, run_dir, data, resume, results)
    lm = DistillationObjective.language_modeling(recipe.loss.implementation)

    ensemble = TeacherEnsemble(list(teachers.values()), rule=recipe.distillation.ensemble).to(device)
    if len(teachers) > 1:
        results["ensemble"] = {
            "role": "ensemble",
            "arch": "ensemble",
            "rule": recipe.distillation.ensemble,
            "members": list(teachers),
            "num_parameters": sum(r["num_parameters"] for r in results.values()),
            "dev_loss": evaluate_dev_loss(lambda ids: ensemble(ids.to(device)), data.dev),
            "dev_losses": [],
            "train_time_s": None,
            "metrics_file": None,
        }
    if recipe.baseline:
        out = _train_stage(
            "baseline", recipe.student.model, recipe.student.train, data, recipe, run_dir, lm, None, resume
        )
        results["baseline"] = {"role": "baseline", **out["entry"]}
        baseline_model = out["model"]
    kd = DistillationObjective.from_config(recipe.distillation, recipe.loss)
    student_teacher: TeacherEnsemble | TeacherCache = ensemble
    if recipe.teachers.cache and not (run_dir / "models" / "student" / "final" / "config.json").exists():
        student_teacher = open_teacher_cache(recipe, run_dir, data, teachers, ensemble)
    out = _train_stage(
        "student", recipe.student.model, recipe.student.train, data, recipe, run_dir, kd, student_teacher, resume
    )
    manifest = teacher_cache_dir(recipe, run_dir) / "manifest.json"
    if recipe.teachers.cache and manifest.is_file():
        m = json.loads(manifest.read_text())
        out["entry"]["teacher_cache"] = {
            k: m[k] for k in ("top_k", "dtype", "bytes_per_token", "total_bytes", "build_time_s")
        }
    results["student"] = {"role": "student", **out["entry"]}
    student_model = out["model"]

    if not main_process:  # evaluation and the report are rank 0's
        return {"models": results}
    logits_fns = {name: hf_logits_fn(m.to(device)) for name, m in teachers.items()}
    if "ensemble" in results:
        logits_fns["ensemble"] = ensemble  # (input_ids, attention_mask) -> averaged logits at T = 1
    if recipe.baseline:
        logits_fns["baseline"] = hf_logits_fn(baseline_model.to(device))
    logits_fns["student"] = hf_logits_fn(student_model.to(device))
    for name, fn in logits_fns.items():
        if recipe.evaluation.tasks:
            results[name]["eval"] = _evaluate(name, fn, data, recipe, root, run_dir)
            if "blimp" in results[name]["eval"]:
                results[name]["blimp"] = blimp_summary(results[name]["eval"]["blimp"])

    payload = {
        "recipe_name": recipe.name,
        "recipe": to_dict(recipe),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - start, 1),
        "versions": _versions(),
        "data": data.info,
        "models": results,
    }
    write_json(run_dir / "results.json", payload)
    write_report(run_dir)
    return payload


def _versions() -> dict[str, str]:
    import accelerate
    import tokenizers
    import transformers

    return {
        "lmdistill": lmdistill.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "platform": platform.platform(),
    }


def validate_recipe_data(recipe: RecipeConfig, data_root: str | Path | None = None) -> list[str]:
    """Check that every corpus file a recipe names exists under the data root; return the problems found."""
    try:
        root = resolve_data_root(data_root)
    except FileNotFoundError as err:
        return [str(err)]
    problems = []
    for s in recipe.data.sources:
        for split in ("train", "dev"):
            path = root / "corpus" / s.name / f"{split}.txt"
            if not path.is_file():
                problems.append(f"missing corpus file: {path}")
    return problems
