"""Task fine-tuning of a sequence classifier (TinyBERT's second stage, in the small) and its test accuracy.

A model folder (a distilled masked LM, a teacher's body) is loaded as ``AutoModelForSequenceClassification`` with a
new classification head (and, when the folder has none, a new pooler), trained with the ordinary training loop on
padded sentence pairs, and scored on a test split by the argmax of its logits. Used by the ``tinybert`` method's
downstream check on e-SNLI.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmdistill.atomic import write_json
from lmdistill.config.sections import TrainConfig
from lmdistill.data.batches import ExampleSource
from lmdistill.losses.objective import DistillationObjective
from lmdistill.models import load_model
from lmdistill.teachers.cache import model_fingerprint
from lmdistill.training import train

__all__ = ["accuracy", "finetune_classifier", "pair_examples", "read_pairs"]

log = logging.getLogger(__name__)


def read_pairs(path: Path, limit: int | None = None, num_labels: int = 3) -> list[dict[str, Any]]:
    """Premise-hypothesis pairs of a JSON-lines file (e-SNLI, ANLI in distilling step-by-step's format).

    Args:
        path (Path): ``<task>_<split>.json``, one JSON object per line with ``premise``, ``hypothesis``, ``label``.
        limit (int | None): the first N (null = all).
        num_labels (int): labels must be in 0..num_labels - 1.

    Returns:
        list[dict]: ``{"premise", "hypothesis", "label"}`` in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not JSON, lacks a key, or has a label out of range (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                row = {
                    "premise": str(item["premise"]),
                    "hypothesis": str(item["hypothesis"]),
                    "label": int(item["label"]),
                }
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{number}: expected premise, hypothesis and label ({err})") from None
            if not 0 <= row["label"] < num_labels:
                raise ValueError(f"{path}:{number}: label {row['label']} is outside 0..{num_labels - 1}")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def pair_examples(rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Tokenized classifier examples ``{"input_ids", "labels"}`` (labels: the class id), ``[CLS] p [SEP] h [SEP]``.

    Token type ids are not kept (the models see type 0 throughout; the [SEP] marks the boundary).
    """
    encoded = tokenizer(
        [r["premise"] for r in rows], [r["hypothesis"] for r in rows], truncation=True, max_length=max_length
    )["input_ids"]
    return [{"input_ids": ids, "labels": int(r["label"])} for ids, r in zip(encoded, rows, strict=True)]


@torch.no_grad()
def accuracy(model: Any, examples: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 64) -> float:
    """Share of examples whose argmax class equals the label."""
    model.eval()
    device = next(model.parameters()).device
    source = ExampleSource(examples, batch_size, pad_id, shuffle=False)
    correct = 0
    for start in range(0, len(examples), batch_size):
        batch = source.collate(list(range(start, min(start + batch_size, len(examples)))))
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        correct += int((logits.argmax(-1).cpu() == batch.labels).sum())
    return correct / max(len(examples), 1)


def finetune_classifier(
    name: str,
    model_path: str | Path,
    train_examples: Sequence[dict[str, Any]],
    dev_examples: Sequence[dict[str, Any]],
    test_examples: Sequence[dict[str, Any]],
    train_cfg: TrainConfig,
    seed: int,
    out_dir: Path,
    *,
    num_labels: int,
    pad_id: int,
    resume: bool = True,
) -> dict[str, Any]:
    """Fine-tune the model at ``model_path`` as a classifier and score it, as the stage ``out_dir`` (resumable).

    The result, ``out_dir/accuracy.json``, is kept with the fingerprint of the weights it scored; a finished stage is
    not redone. The classifier's weights are not kept (only the accuracy is needed): ``out_dir/final`` is removed
    once scored.

    Returns:
        dict: ``{"accuracy", "dev_loss", "train_time_s", "seed", "num_test"}``.
    """
    result_path = out_dir / "accuracy.json"
    if result_path.exists():
        stored = json.loads(result_path.read_text())
        if stored.get("num_test") == len(test_examples):
            return stored
    torch.manual_seed(seed)
    model = load_model(model_path, family="classifier", num_labels=num_labels)
    source = ExampleSource(train_examples, train_cfg.batch_size, pad_id, seed=seed)
    dev_source = ExampleSource(dev_examples, 64, pad_id, shuffle=False)
    dev = [dev_source.collate(list(range(i, min(i + 64, len(dev_examples))))) for i in range(0, len(dev_examples), 64)]
    objective = DistillationObjective.language_modeling(family="classifier")
    result = train(model, source, dev, train_cfg, out_dir, objective=objective, resume=resume, desc=name)
    model = load_model(result.final_dir, family="classifier")
    record = {
        "accuracy": accuracy(model, test_examples, pad_id),
        "dev_loss": result.dev_losses[-1] if result.dev_losses else None,
        "train_time_s": result.train_time_s,
        "seed": seed,
        "num_test": len(test_examples),
        "weights_sha256": model_fingerprint(model),
        "source": str(model_path),
    }
    write_json(result_path, record)
    for folder in (result.final_dir, out_dir / "checkpoints"):  # the accuracy is what is kept
        shutil.rmtree(folder, ignore_errors=True)
    log.info("%s: accuracy %.4f on %d test examples", name, record["accuracy"], len(test_examples))
    return record
