"""Method ``babyllama``: ensemble distillation from scratch (Timiryasov & Tastet 2023, arXiv:2308.02019).

Its recipe section (``BabyLlamaRecipe``: teachers, student, baseline) and its stages, top to bottom::

    corpus -> tokenizer -> teachers (trained in order, or loaded) -> [teacher cache] -> ensemble dev loss
    -> baseline (no KD) -> distilled student -> zero-shot tasks of every model -> results.json -> report

The student learns ``alpha * CE + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)`` from the teachers' averaged
logits (``lmdistill.losses.objective``). Run folder::

    RUN/recipe.yaml, RUN/invocations.jsonl    (lmdistill.methods.runfolder)
    RUN/tokenizer/                            the shared BPE tokenizer (transformers folder)
    RUN/models/<name>/                        checkpoints/, final/ (HF folder), metrics.jsonl, tb/, eval.json
    RUN/teacher-cache/                        with teachers.cache: the ensemble's top-k per block
    RUN/results.json, RUN/report.md, RUN/plots/*.png

Under ``accelerate launch`` every process runs this code: data preparation runs on rank 0 first, training is
split across the processes (``lmdistill.training``), and evaluation and the report run on rank 0 only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lmdistill.distributed import default_device, process_state
from lmdistill.evaluation.blimp import blimp_summary
from lmdistill.evaluation.scoring import hf_logits_fn
from lmdistill.losses.objective import DistillationObjective
from lmdistill.methods.babyllama_recipe import (
    DESCRIPTION,
    NAME,
    BabyLlamaRecipe,
    Recipe,
    RecipeConfig,
    StudentConfig,
    TeacherConfig,
    TeachersConfig,
    normalize_recipe,
    validate_data,
)
from lmdistill.methods.runfolder import Invocation, results_payload, run_recorded, write_results
from lmdistill.methods.stages import (
    CorpusData,
    check_model_path,
    check_vocab_size,
    evaluate_model,
    evaluation_data_problems,
    prepare_corpus_run,
    pretrained_model_stage,
    train_model_stage,
)
from lmdistill.teachers.cache import TeacherCache, cache_spec, ensure_cache, model_fingerprint, read_manifest
from lmdistill.teachers.ensemble import TeacherEnsemble
from lmdistill.training import evaluate_dev_loss

__all__ = [
    "DESCRIPTION",
    "NAME",
    "BabyLlamaRecipe",
    "Recipe",
    "RecipeConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersConfig",
    "build_teacher_cache",
    "normalize_recipe",
    "open_teacher_cache",
    "prepare",
    "run",
    "teacher_ensemble",
    "train_teachers",
    "validate_data",
]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------ stages


def prepare(
    recipe: BabyLlamaRecipe, run_dir: Path, data_root: Any, resume: bool, cache_dir: Any
) -> tuple[Path, CorpusData]:
    """Check the run folder, prepare corpus, tokenizer and blocks (rank 0 first), record recipe and data files."""
    return prepare_corpus_run(recipe, run_dir, data_root, resume, cache_dir)


def train_teachers(
    recipe: BabyLlamaRecipe, run_dir: Path, data: CorpusData, resume: bool, results: dict
) -> dict[str, Any]:
    """Train (or load, or find already trained in the run folder) every teacher, in order.

    Their results entries (parameters, dev loss, training time) go into ``results``; returns name -> model.
    Every teacher given by ``model.path`` is checked first (the path, that it carries the run's tokenizer and that
    its embedding rows fit its ``vocab_rows``, whether it is used as it is or trained further), so that a bad path
    or another vocabulary fails before any teacher trains and the run folder can simply be run again.
    """
    for t in recipe.teachers.members:
        if t.model.path is not None:
            check_model_path(t.name, t.model, data, t.vocab_rows)
    lm = DistillationObjective.language_modeling(recipe.loss.implementation, compile=recipe.loss.compile)
    teachers = {}
    for t in recipe.teachers.members:
        if t.train is None:
            out = pretrained_model_stage(t.name, t.model, data, default_device(), t.vocab_rows)
        else:
            out = train_model_stage(t.name, t.model, t.train, data, recipe.seed, run_dir, lm, None, resume)
        check_vocab_size(t.name, out["model"], data, t.vocab_rows)
        teachers[t.name] = out["model"]
        results[t.name] = {"role": "teacher", **out["entry"]}
    return teachers


def teacher_ensemble(recipe: BabyLlamaRecipe, teachers: dict[str, Any], data: CorpusData) -> TeacherEnsemble:
    """The recipe's ensemble of ``teachers`` (name -> model) over the run tokenizer's V columns (``vocab_rows``)."""
    vocab_rows = {t.name: t.vocab_rows for t in recipe.teachers.members}
    return TeacherEnsemble(
        list(teachers.values()),
        rule=recipe.distillation.ensemble,
        vocab_size=len(data.tokenizer),
        vocab_rows=[vocab_rows[name] for name in teachers],
        names=list(teachers),
    )


def teacher_cache_dir(recipe: BabyLlamaRecipe, run_dir: Path) -> Path:
    """The recipe's cache folder: ``teachers.cache_dir``, else ``RUN/teacher-cache``."""
    return Path(recipe.teachers.cache_dir) if recipe.teachers.cache_dir else run_dir / "teacher-cache"


def open_teacher_cache(
    recipe: BabyLlamaRecipe,
    run_dir: Path,
    data: CorpusData,
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
        vocab_size=ensemble.vocab_size,
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
    recipe: BabyLlamaRecipe,
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
        recipe (BabyLlamaRecipe): the validated recipe (its ``teachers.cache_*`` settings say what to build).
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
    _, data = prepare(recipe, run_dir, data_root, True, cache_dir)
    teachers = train_teachers(recipe, run_dir, data, True, {})
    ensemble = teacher_ensemble(recipe, teachers, data).to(default_device())
    return open_teacher_cache(recipe, run_dir, data, teachers, ensemble, overwrite=overwrite)


def run(
    recipe: BabyLlamaRecipe,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole Baby Llama experiment and write results.json, report.md and plots.

    Args:
        recipe (BabyLlamaRecipe): the validated recipe.
        run_dir (str | Path): run folder; created if missing.
        data_root (str | Path | None): data root (see ``resolve_data_root``).
        resume (bool): continue a run folder: finished stages are skipped, an unfinished one resumes from its
            latest checkpoint.
        cache_dir (str | Path | None): token cache folder (default ``default_cache_dir()``).

    Returns:
        dict: the results written to ``RUN/results.json``.

    Raises:
        RunFolderError: the folder holds a run (without ``resume``), another recipe or other data files, or another
            process runs in it (``RUN/.lock``).
        DataRootError, FileNotFoundError, ValueError: missing or empty data, tokenizer mismatch.
        NonFiniteLossError, TrainingInterrupted: from training (the last good checkpoint is kept).
    """
    from lmdistill.reporting.report import write_report

    run_dir = Path(run_dir)
    return run_recorded(
        run_dir,
        lambda invocation: _run_stages(recipe, run_dir, invocation, data_root, resume, cache_dir),
        write_report,
    )


def _run_stages(
    recipe: BabyLlamaRecipe, run_dir: Path, invocation: Invocation, data_root: Any, resume: bool, cache_dir: Any
) -> dict[str, Any]:
    root, data = prepare(recipe, run_dir, data_root, resume, cache_dir)
    if problems := evaluation_data_problems(recipe.evaluation, root):  # before hours of training, not after
        raise FileNotFoundError("; ".join(problems))
    main_process = process_state().is_main_process
    device = default_device()
    results: dict[str, Any] = {}
    teachers = train_teachers(recipe, run_dir, data, resume, results)
    lm = DistillationObjective.language_modeling(recipe.loss.implementation, compile=recipe.loss.compile)

    ensemble = teacher_ensemble(recipe, teachers, data).to(device)
    if len(teachers) > 1:
        results["ensemble"] = {
            "role": "ensemble",
            "family": "causal_lm",
            "arch": "ensemble",
            "rule": recipe.distillation.ensemble,
            "members": list(teachers),
            "num_parameters": sum(r["num_parameters"] for r in results.values()),
            "dev_loss": evaluate_dev_loss(lambda b: ensemble(b.input_ids.to(device)), data.dev),
            "dev_losses": [],
            "train_time_s": None,
            "metrics_file": None,
        }
    models: dict[str, Any] = dict(teachers)
    if recipe.baseline:
        out = train_model_stage(
            "baseline", recipe.student.model, recipe.student.train, data, recipe.seed, run_dir, lm, None, resume
        )
        results["baseline"] = {"role": "baseline", **out["entry"]}
        models["baseline"] = out["model"]
    kd = DistillationObjective.from_config(recipe.distillation, recipe.loss)
    student_teacher: TeacherEnsemble | TeacherCache = ensemble
    if recipe.teachers.cache and not (run_dir / "models" / "student" / "final" / "config.json").exists():
        student_teacher = open_teacher_cache(recipe, run_dir, data, teachers, ensemble)
    out = train_model_stage(
        "student", recipe.student.model, recipe.student.train, data, recipe.seed, run_dir, kd, student_teacher, resume
    )
    manifest = teacher_cache_dir(recipe, run_dir) / "manifest.json"
    if recipe.teachers.cache and manifest.is_file():
        m = read_manifest(teacher_cache_dir(recipe, run_dir))
        out["entry"]["teacher_cache"] = {
            k: m[k] for k in ("top_k", "dtype", "bytes_per_token", "total_bytes", "build_time_s")
        }
    results["student"] = {"role": "student", **out["entry"]}
    models["student"] = out["model"]

    if not main_process:  # evaluation and the report are rank 0's
        return {"models": results}
    fingerprints = {name: model_fingerprint(m) for name, m in models.items()}
    # every model is scored over the run's V tokens (a "shared" teacher's padding rows are dropped)
    scorers = {name: hf_logits_fn(m.to(device), vocab_size=len(data.tokenizer)) for name, m in models.items()}
    if "ensemble" in results:
        scorers["ensemble"] = ensemble  # (input_ids, attention_mask) -> averaged logits at T = 1
        fingerprints["ensemble"] = f"{recipe.distillation.ensemble}:" + ",".join(fingerprints[n] for n in teachers)
    for name in results:
        if recipe.evaluation.tasks:
            tasks = evaluate_model(
                name, scorers[name], fingerprints[name], data.tokenizer, recipe.evaluation, root, run_dir
            )
            results[name]["eval"] = tasks
            if "blimp" in tasks:
                results[name]["blimp"] = blimp_summary(tasks["blimp"])
    payload = results_payload(recipe, invocation, data.info, results)
    write_results(run_dir, payload)
    return payload
