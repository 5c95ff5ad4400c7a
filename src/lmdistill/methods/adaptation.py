"""The teacher-adaptation stage: a pretrained teacher of another vocabulary, made to speak the run's tokenizer.

``lmdistill adapt-teacher RECIPE`` runs it alone; the ``stlm`` method runs it before distilling. For each
initialisation of the recipe's ``teacher.inits`` (``lmdistill.models.adapt``): load the teacher, replace its input
embedding and LM head by new ones in the student's vocabulary, freeze the body, and train the new parts on the
corpus with cross-entropy. The result, ``RUN/models/teacher-<init>/final/``, is an ordinary Hugging Face checkpoint
with the run's tokenizer beside it: any same-vocabulary recipe takes it as ``model.path``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from lmdistill.atomic import write_json
from lmdistill.losses.objective import DistillationObjective
from lmdistill.methods.stages import CorpusData, read_training_json
from lmdistill.methods.stlm_recipe import AdaptationConfig
from lmdistill.models import count_parameters, load_model, load_model_tokenizer
from lmdistill.models.adapt import adapt_vocabulary, freeze_body, trainable_parameters
from lmdistill.training import train
from lmdistill.training_state import metric_records

__all__ = ["AdaptationConfig", "adapt_teacher_stage", "adaptation_curve", "load_teacher", "teacher_stage_name"]

log = logging.getLogger(__name__)


def teacher_stage_name(init: str) -> str:
    """The run sub-folder of the teacher adapted with ``init``: ``teacher-<init>``."""
    return f"teacher-{init}"


def load_teacher(cfg: AdaptationConfig) -> tuple[Any, Any]:
    """The teacher as given (its own vocabulary) and its tokenizer, float32, eval mode."""
    model = load_model(cfg.model.path, family=cfg.model.family, gguf_file=cfg.model.gguf_file)
    tokenizer = load_model_tokenizer(cfg.model.path, gguf_file=cfg.model.gguf_file)
    return model.float().eval(), tokenizer


def adapt_teacher_stage(
    cfg: AdaptationConfig, init: str, data: CorpusData, seed: int, run_dir: Path, resume: bool
) -> dict[str, Any]:
    """Adapt the teacher with ``init`` as the stage ``RUN/models/teacher-<init>/`` (or load its ``final/``).

    Returns:
        dict: ``model`` (the adapted teacher) and ``entry`` (results.json's record: parameters, trained
        parameters, the FVT mapping's counts, dev losses, the curve, training time).

    Raises:
        FileNotFoundError: the teacher's path or GGUF file is missing.
        ValueError: a ``special_tokens`` entry names a token missing from either tokenizer.
    """
    name = teacher_stage_name(init)
    stage = run_dir / "models" / name
    final = stage / "final"
    record_path = stage / "adaptation.json"
    if (final / "config.json").exists():
        log.info("%s: already adapted (%s)", name, final)
        model = load_model(final)
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        training = read_training_json(final)
    else:
        teacher, teacher_tok = load_teacher(cfg)
        vocab_before = len(teacher_tok)
        model, mapping = adapt_vocabulary(
            teacher, teacher_tok, data.tokenizer, init, special_tokens=cfg.special_tokens, seed=seed
        )
        trained = freeze_body(model, train_final_norm=cfg.train_final_norm)
        record = {
            "init": init,
            "teacher_path": str(cfg.model.path),
            "gguf_file": cfg.model.gguf_file,
            "teacher_vocab_size": vocab_before,
            "vocab_size": len(data.tokenizer),
            "tied": bool(getattr(model.config, "tie_word_embeddings", False)),
            "trained_parameters": trainable_parameters(model),
            "trained_tensors": trained,
            "rows": mapping.summary() if mapping is not None else None,
        }
        write_json(record_path, record)
        log.info(
            "%s: %s of %s parameters trained (%s)",
            name,
            f"{record['trained_parameters']:,}",
            f"{count_parameters(model):,}",
            ", ".join(trained),
        )
        torch.manual_seed(seed)
        lm = DistillationObjective.language_modeling()
        result = train(model, data.train, data.dev, cfg.train, stage, objective=lm, tokenizer=data.tokenizer,
                       resume=resume, desc=name)  # fmt: skip
        model = load_model(result.final_dir)
        training = {"dev_losses": result.dev_losses, "train_time_s": result.train_time_s}
    entry = {
        "role": "teacher",
        "stage": "adapted",
        "family": "causal_lm",
        "arch": model.config.model_type,
        "num_parameters": count_parameters(model),
        "dev_loss": training["dev_losses"][-1] if training.get("dev_losses") else None,
        "dev_losses": training.get("dev_losses", []),
        "train_time_s": training.get("train_time_s"),
        "metrics_file": f"models/{name}/metrics.jsonl",
        "adaptation": {k: v for k, v in record.items() if k != "trained_tensors"},
        "curve": adaptation_curve(stage / "metrics.jsonl"),
    }
    return {"model": model.eval(), "entry": entry}


def adaptation_curve(metrics_file: Path) -> list[dict[str, float]]:
    """The dev loss against adaptation tokens: ``[{"step", "tokens", "dev_loss"}]``.

    Points come every ``eval_every_steps`` (``dev_step`` events) and at each epoch's end (``dev``).
    """
    if not metrics_file.exists():
        return []
    points = {}
    for r in metric_records(metrics_file):
        if r.get("event") in ("dev_step", "dev"):
            points[r["step"]] = {"step": r["step"], "tokens": r.get("tokens"), "dev_loss": r["dev_loss"]}
    return [points[s] for s in sorted(points)]
