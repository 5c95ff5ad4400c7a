"""Evaluate one model on several zero-shot tasks with our scorer: items -> requests -> one scoring pass -> metrics.

All requests of all tasks go through one :func:`~lmdistill.evaluation.scoring.loglikelihood` call, so batches
are filled across tasks and identical inputs are scored once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from lmdistill.evaluation.metrics import aggregate, score_item
from lmdistill.evaluation.scoring import Request, loglikelihood
from lmdistill.evaluation.tasks import Doc, TaskSpec, load_docs, resolve_tasks, task_specs

__all__ = ["evaluate_tasks", "resolve_tasks", "task_specs"]

logger = logging.getLogger(__name__)


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str | TaskSpec] | str,
    *,
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: str | None = None,
    samples: bool = False,
    empty_context_prefix: str = "bos",
) -> dict[str, dict[str, Any]]:
    """Zero-shot results of one model on each task.

    Args:
        model (PreTrainedModel | LogitsFn): a causal LM or a logits function (see ``loglikelihood``).
        tokenizer (PreTrainedTokenizerBase): its tokenizer.
        tasks (Sequence[str | TaskSpec] | str): task names ("blimp,arc_easy") or specs.
        data_root (str | PathLike | None): the data root.
        limit (int | None): items per task, or per sub-task where a task has them (a BLiMP paradigm, an MMLU
            subject), as lm-eval's ``--limit``; None = all.
        batch_size (int): rows per forward pass.
        device (str | torch.device | None): where inputs go.
        progress (str | None): description of a tqdm bar.
        samples (bool): also return each item's log-likelihoods under ``"samples"``.
        empty_context_prefix (str): the token an empty context (BLiMP) is scored after: "bos" (lm-eval 0.4.13) or
            "eos" (lm-eval 0.3, the BabyLM 2023 pipeline).

    Returns:
        dict[str, dict]: task name -> :func:`~lmdistill.evaluation.metrics.aggregate`'s result, plus
        ``seconds`` (wall time of the task's share, pro rata by requests) and, with ``samples``, a list of
        ``{"lls": [...], "is_greedy": [...], "gold": int, **metrics}`` per item.

    Raises:
        KeyError, FileNotFoundError, ValueError: an unknown task, missing or malformed data (see ``load_docs``).
    """
    specs = resolve_tasks(tasks)
    docs: dict[str, list[Doc]] = {s.name: load_docs(s, data_root, limit) for s in specs}
    requests = [
        Request(ctx, cont)
        for s in specs
        for doc in docs[s.name]
        for ctx, cont in zip(doc.contexts, doc.continuations, strict=True)
    ]
    start = time.perf_counter()
    scored = loglikelihood(
        model,
        tokenizer,
        requests,
        batch_size=batch_size,
        device=device,
        progress=progress,
        prefix=empty_context_prefix,
    )
    seconds = time.perf_counter() - start
    results: dict[str, dict[str, Any]] = {}
    k = 0
    for spec in specs:
        items, sample_rows, first = [], [], k
        for doc in docs[spec.name]:
            n = len(doc.continuations)
            lls = [ll for ll, _ in scored[k : k + n]]
            greedy = [g for _, g in scored[k : k + n]]
            k += n
            items.append(score_item(doc, lls, spec.metrics))
            if samples:
                sample_rows.append({"lls": lls, "is_greedy": greedy, "gold": doc.gold, **items[-1]})
        result = aggregate(spec, docs[spec.name], items)
        result["seconds"] = round(seconds * (k - first) / max(1, len(requests)), 3)
        if samples:
            result["samples"] = sample_rows
        results[spec.name] = result
        logger.info("%s: %s over %d items", spec.name, _summary(result, spec), result["num_items"])
    return results


def _summary(result: dict[str, Any], spec: TaskSpec) -> str:
    return ", ".join(f"{m} {100 * result[m]:.1f}%" for m in spec.metrics)
