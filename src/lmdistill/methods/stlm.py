"""Method ``stlm``: a pretrained teacher of another vocabulary, adapted, then distilled by response + feature KD.

The Super Tiny Language Models KD plan (Cheng et al. 2024, arXiv:2405.14159): the teacher gets a new embedding
and LM head in the student's vocabulary (``lmdistill.methods.adaptation``), then students learn
``alpha * CE + (1 - alpha) * T^2 * D(p_t^T, p_s^T)`` with D forward or reverse KL, optionally plus the hint loss
``w * ||F_t - phi(F_s)||^2`` (FitNets, Romero et al. 2015) through a learned projection phi. Stages, top to bottom::

    corpus -> student tokenizer -> teacher in its own vocabulary: evaluated
    -> teacher adapted with each init (frozen body, new embedding/head trained with CE): evaluated
    -> the chosen adapted teacher's top-k cache -> per seed: baseline and each KD variant -> evaluated
    -> results.json -> report.md, plots

Response KD always reads the teacher from its top-k cache (the teacher's forward pass dominates the cost). A hint
variant also needs the teacher's hidden state at ``hint.teacher_layer``: it runs the teacher's first
``teacher_layer + 1`` blocks online at every step (``lmdistill.teachers.partial``), (l + 1) / N of a forward
pass, rather than caching (B, T, H) states (``H * 2`` bytes per token in float16: 1,152 for SmolLM2, 4.4x the
top-k cache at k = 64). Every model is evaluated on bits per byte of held-out corpus text (comparable across
tokenizers) and on the zero-shot tasks.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
from pathlib import Path
from typing import Any

from lmdistill.atomic import write_json
from lmdistill.distributed import default_device, process_state
from lmdistill.evaluation.blimp import blimp_summary
from lmdistill.evaluation.scoring import hf_logits_fn
from lmdistill.losses.objective import DistillationObjective
from lmdistill.methods.adaptation import adapt_teacher_stage, load_teacher, teacher_stage_name
from lmdistill.methods.runfolder import Invocation, results_payload, run_recorded, write_results
from lmdistill.methods.stages import (
    CorpusData,
    evaluate_model,
    evaluation_data_problems,
    prepare_corpus_run,
    train_model_stage,
)
from lmdistill.methods.stlm_recipe import (
    DESCRIPTION,
    NAME,
    ORIGINAL,
    AdaptationConfig,
    BitsPerByteConfig,
    HintConfig,
    Recipe,
    StlmRecipe,
    StlmStudentConfig,
    VariantConfig,
    normalize_recipe,
    stage_name,
    validate_data,
)
from lmdistill.models import count_parameters
from lmdistill.teachers.cache import TeacherCache, cache_spec, ensure_cache, model_fingerprint, read_manifest
from lmdistill.teachers.ensemble import TeacherEnsemble
from lmdistill.teachers.partial import truncated_teacher

__all__ = [
    "DESCRIPTION",
    "NAME",
    "AdaptationConfig",
    "BitsPerByteConfig",
    "HintConfig",
    "Recipe",
    "StlmRecipe",
    "StlmStudentConfig",
    "VariantConfig",
    "adapt_teacher_run",
    "adapt_teachers",
    "normalize_recipe",
    "run",
    "validate_data",
]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------ stages


def adapt_teachers(
    recipe: StlmRecipe, run_dir: Path, data: CorpusData, resume: bool, results: dict[str, Any]
) -> dict[str, Any]:
    """Adapt the teacher with each of ``teacher.inits`` (stages ``teacher-<init>``); their entries into ``results``."""
    teachers = {}
    for init in recipe.teacher.inits:
        out = adapt_teacher_stage(recipe.teacher, init, data, recipe.seed, run_dir, resume)
        teachers[teacher_stage_name(init)] = out["model"]
        results[teacher_stage_name(init)] = out["entry"]
    return teachers


def chosen_teacher(recipe: StlmRecipe, results: dict[str, Any]) -> str:
    """The adapted teacher the students learn from: ``teacher.use``, or the lowest final dev loss."""
    if recipe.teacher.use != "best":
        return teacher_stage_name(recipe.teacher.use)
    names = [teacher_stage_name(i) for i in recipe.teacher.inits]
    return min(names, key=lambda n: results[n]["dev_loss"] if results[n]["dev_loss"] is not None else math.inf)


def _bits_per_byte(
    name: str, model: Any, tokenizer: Any, fingerprint: str, texts: dict[str, list[str]], cfg: BitsPerByteConfig,
    prefix_id: int | None, run_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Bits per byte of ``texts`` for one model, cached in ``RUN/models/<name>/bpb.json`` by weights and text."""
    from lmdistill.evaluation.bpb import bits_per_byte

    cached = run_dir / "models" / name / "bpb.json"
    key = {
        "weights_sha256": fingerprint,
        "split": cfg.split,
        "max_bytes_per_source": cfg.max_bytes_per_source,
        "max_length": cfg.max_length,
        "prefix_id": prefix_id,
        "documents": {k: len(v) for k, v in texts.items()},
    }
    if cached.exists():
        stored = json.loads(cached.read_text())
        if stored.get("key") == key:
            return stored["result"]
    result = bits_per_byte(
        model, tokenizer, texts, max_length=cfg.max_length, batch_size=cfg.batch_size, device=default_device(),
        progress=f"bits/byte {name}",
    )  # fmt: skip
    write_json(cached, {"key": key, "result": result})
    return result


def _with_prefix(tokenizer: Any, token: str | None) -> Any:
    """The tokenizer with ``bos_token`` set to ``token`` (the teacher's equivalent of the run's ``<s>``)."""
    if token is not None and token in tokenizer.get_vocab():
        tokenizer.bos_token = token
    return tokenizer


def _evaluate(
    name: str, model: Any, tokenizer: Any, recipe: StlmRecipe, root: Path, run_dir: Path, texts: dict,
    dev_texts: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Tasks and bits per byte of one model: an entry's ``eval``, ``blimp`` and ``bits_per_byte`` keys.

    With ``dev_texts`` (a teacher's) also ``dev_blocks_bits_per_byte``, the adaptation curve's scale.
    """
    fingerprint = model_fingerprint(model)  # once: it hashes every weight
    prefix_id = tokenizer.bos_token_id
    out: dict[str, Any] = {}
    if recipe.evaluation.tasks:
        tasks = evaluate_model(
            name, hf_logits_fn(model.to(default_device())), fingerprint, tokenizer, recipe.evaluation, root, run_dir
        )
        out["eval"] = tasks
        if "blimp" in tasks:
            out["blimp"] = blimp_summary(tasks["blimp"])
    cfg = recipe.bits_per_byte
    out["bits_per_byte"] = _bits_per_byte(name, model, tokenizer, fingerprint, texts, cfg, prefix_id, run_dir)
    if dev_texts is not None:
        dev = {"dev_blocks": dev_texts}
        scored = _bits_per_byte(f"{name}/dev-blocks", model, tokenizer, fingerprint, dev, cfg, prefix_id, run_dir)
        out["dev_blocks_bits_per_byte"] = scored["bits_per_byte"]
    return out


def _original_teacher(recipe: StlmRecipe, root: Path, run_dir: Path, texts: dict, dev_texts: list[str]) -> dict:
    """The teacher as given, in its own vocabulary: parameters, tasks, bits per byte (held-out text, dev blocks)."""
    model, tokenizer = load_teacher(recipe.teacher)
    tokenizer = _with_prefix(tokenizer, recipe.teacher.special_tokens.get("<s>"))
    entry: dict[str, Any] = {
        "role": "teacher",
        "stage": "original",
        "family": "causal_lm",
        "arch": model.config.model_type,
        "num_parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "path": str(recipe.teacher.model.path),
        "dev_loss": None,
        "dev_losses": [],
        "train_time_s": None,
        "metrics_file": None,
    }
    entry.update(_evaluate(ORIGINAL, model, tokenizer, recipe, root, run_dir, texts, dev_texts))
    del model
    gc.collect()
    return entry


def dev_block_bytes(data: CorpusData) -> tuple[list[str], int, int]:
    """The dev blocks as text (special tokens dropped), their UTF-8 bytes, and the next-token positions scored.

    ``dev_loss * positions / (ln 2 * bytes)`` turns a dev loss (nats per token, the run's tokenizer) into bits per
    byte of the same text; the positions that predict ``<s>``/``</s>`` count in the loss but have no bytes.
    """
    texts = [data.tokenizer.decode(block.tolist(), skip_special_tokens=True) for block in data.dev]
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    positions = int(data.dev.shape[0] * (data.dev.shape[1] - 1))
    return texts, num_bytes, positions


def _teacher_cache(recipe: StlmRecipe, run_dir: Path, data: CorpusData, name: str, model: Any) -> TeacherCache:
    ensemble = TeacherEnsemble([model]).to(default_device())
    spec = cache_spec(
        {name: model},
        "logits",
        data.info["tokenizer_sha256"],
        data.train,
        top_k=recipe.cache_top_k,
        dtype=recipe.cache_dtype,
        temperature=recipe.distillation.temperature,
        shard_blocks=recipe.cache_shard_blocks,
    )
    return ensure_cache(ensemble, data.train, spec, run_dir / "teacher-cache", batch_size=recipe.cache_batch_size)


def _objective(recipe: StlmRecipe, variant: VariantConfig) -> DistillationObjective:
    """The recipe's objective with the variant's divergence and hint term (alpha = 1 for the baseline)."""
    if not variant.kd:
        return DistillationObjective.language_modeling(recipe.loss.implementation, compile=recipe.loss.compile)
    features = [recipe.hint.feature()] if variant.hint else []
    cfg = dataclasses.replace(recipe.distillation, divergence=variant.divergence, features=features)
    return DistillationObjective.from_config(cfg, recipe.loss)


def run(
    recipe: StlmRecipe,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) a whole STLM experiment and write results.json, report.md and plots.

    Args:
        recipe (StlmRecipe): the validated recipe.
        run_dir (str | Path): run folder; created if missing.
        data_root (str | Path | None): data root (see ``resolve_data_root``).
        resume (bool): continue a run folder (finished stages are skipped, an unfinished one resumes).
        cache_dir (str | Path | None): token cache folder.

    Returns:
        dict: the results written to ``RUN/results.json``.

    Raises:
        RunFolderError: the folder holds another run (without ``resume``) or another recipe, or is in use.
        FileNotFoundError: a missing teacher, corpus file or evaluation data.
        ValueError: a special token missing from a tokenizer; errors of training.
    """
    from lmdistill.reporting.stlm_report import write_stlm_report

    run_dir = Path(run_dir)
    return run_recorded(
        run_dir,
        lambda invocation: _run_stages(recipe, run_dir, invocation, data_root, resume, cache_dir),
        write_stlm_report,
    )


def adapt_teacher_run(
    recipe: StlmRecipe,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``lmdistill adapt-teacher``: prepare the run's data and tokenizer, adapt the teacher with each init.

    The run folder follows ``lmdistill run --resume``'s rules, so ``lmdistill run`` on the same recipe and folder
    reuses the adapted teachers. Returns the adapted teachers' results entries by stage name.
    """
    run_dir = Path(run_dir)
    _, data = prepare_corpus_run(recipe, run_dir, data_root, True, cache_dir)
    results: dict[str, Any] = {}
    adapt_teachers(recipe, run_dir, data, True, results)
    return results


def _run_stages(
    recipe: StlmRecipe, run_dir: Path, invocation: Invocation, data_root: Any, resume: bool, cache_dir: Any
) -> dict[str, Any]:
    from lmdistill.evaluation.bpb import held_out_texts

    if process_state().num_processes > 1:
        raise ValueError("the stlm method runs in one process (its teacher stages are not split across processes)")
    root, data = prepare_corpus_run(recipe, run_dir, data_root, resume, cache_dir)
    if problems := evaluation_data_problems(recipe.evaluation, root):
        raise FileNotFoundError("; ".join(problems))
    sources = [s.name for s in recipe.data.sources]
    texts = held_out_texts(root, sources, split=recipe.bits_per_byte.split,
                           max_bytes_per_source=recipe.bits_per_byte.max_bytes_per_source)  # fmt: skip
    dev_texts, dev_bytes, dev_positions = dev_block_bytes(data)
    results: dict[str, Any] = {ORIGINAL: _original_teacher(recipe, root, run_dir, texts, dev_texts)}

    teachers = adapt_teachers(recipe, run_dir, data, resume, results)
    for name, model in teachers.items():
        results[name].update(_evaluate(name, model, data.tokenizer, recipe, root, run_dir, texts, dev_texts))
    chosen = chosen_teacher(recipe, results)
    results[chosen]["chosen"] = True
    teacher = teachers[chosen]
    for name in list(teachers):
        if name != chosen:
            del teachers[name]
    gc.collect()

    cache = None
    feature_teacher = None
    for seed in recipe.seeds:
        for variant in recipe.variants:
            name = stage_name(variant, seed)
            done = (run_dir / "models" / name / "final" / "config.json").exists()
            kd_teacher = None
            features = None
            if variant.kd and not done:
                cache = cache or _teacher_cache(recipe, run_dir, data, chosen, teacher)
                kd_teacher = cache
                if variant.hint:
                    if feature_teacher is None:
                        feature_teacher = TeacherEnsemble([truncated_teacher(teacher, recipe.hint.teacher_layer)])
                    features = feature_teacher
            out = train_model_stage(
                name, recipe.student.model, recipe.student.train, data, seed, run_dir, _objective(recipe, variant),
                kd_teacher, resume, feature_teacher=features,
            )  # fmt: skip
            entry = {"role": "baseline" if not variant.kd else "student", "variant": variant.name, "seed": seed}
            entry.update(out["entry"])
            entry.update(_evaluate(name, out["model"], data.tokenizer, recipe, root, run_dir, texts))
            results[name] = entry
    manifest = run_dir / "teacher-cache" / "manifest.json"
    info = dict(data.info)
    info.update({"dev_blocks_bytes": dev_bytes, "dev_blocks_positions": dev_positions, "chosen_teacher": chosen})
    if manifest.is_file():
        m = read_manifest(run_dir / "teacher-cache")
        info["teacher_cache"] = {k: m[k] for k in ("top_k", "dtype", "bytes_per_token", "total_bytes", "build_time_s")}
    info["bits_per_byte_text"] = {
        "split": recipe.bits_per_byte.split,
        "documents": {k: len(v) for k, v in texts.items()},
        "bytes": {k: sum(len(t.encode("utf-8")) for t in v) for k, v in texts.items()},
    }
    payload = results_payload(recipe, invocation, info, results)
    write_results(run_dir, payload)
    return payload
