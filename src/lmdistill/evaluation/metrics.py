"""Multiple-choice metrics and their aggregation, as lm-evaluation-harness 0.4.13 computes them.

Per item (``ConfigurableTask.process_results``): ``acc = [argmax_i ll_i == gold]`` and
``acc_norm = [argmax_i (ll_i / len(choice_i)) == gold]`` with the choice length in characters; argmax takes the
first of equal values. Per task: the mean over items (micro). Per sub-group (BLiMP field and paradigm, MMLU
subject): the mean over its items; ``macro`` is the unweighted mean over the finest sub-groups.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmdistill.evaluation.tasks import Doc, TaskSpec

__all__ = ["aggregate", "score_item"]


def score_item(doc: Doc, lls: Sequence[float], metrics: Sequence[str]) -> dict[str, float]:
    """Metrics of one item from its choices' log-likelihoods.

    Args:
        doc (Doc): the item.
        lls (Sequence[float]): C log-likelihoods, one per choice.
        metrics (Sequence[str]): "acc" and/or "acc_norm".

    Returns:
        dict[str, float]: each metric, 1.0 or 0.0.
    """
    values = np.asarray(lls, dtype=np.float64)
    out = {}
    if "acc" in metrics:
        out["acc"] = float(int(np.argmax(values)) == doc.gold)
    if "acc_norm" in metrics:
        out["acc_norm"] = float(int(np.argmax(values / np.asarray(doc.choice_lengths, dtype=np.float64))) == doc.gold)
    return out


def _means(rows: list[dict[str, float]], metrics: Sequence[str]) -> dict[str, Any]:
    # "correct": each item's 0/1 outcome in item order, so two models scored on the same items can be compared
    # with a paired test (McNemar) rather than as independent samples
    return {
        **{m: sum(r[m] for r in rows) / len(rows) for m in metrics},
        "num_items": len(rows),
        "correct": {m: "".join("1" if r[m] else "0" for r in rows) for m in metrics},
    }


def aggregate(spec: TaskSpec, docs: Sequence[Doc], item_metrics: Sequence[dict[str, float]]) -> dict[str, Any]:
    """A task's result from its items' metrics.

    Args:
        spec (TaskSpec): the task.
        docs (Sequence[Doc]): its N items.
        item_metrics (Sequence[dict]): N dicts from :func:`score_item`.

    Returns:
        dict: ``task``, ``num_items``, each metric (mean over items, in [0, 1]), ``correct`` ({metric: a string of
        "0"/"1", one per item in item order}), ``chance`` (expected accuracy of
        a uniform guess); with sub-groups also
        ``groups`` ({key: {name: {metric: mean, "num_items": n, "correct": ...}}}, names sorted) and ``macro``
        ({metric: mean over the finest sub-groups}).

    Raises:
        ValueError: no items.
    """
    if not docs:
        raise ValueError(f"task {spec.name}: no items to evaluate")
    result: dict[str, Any] = {"task": spec.name, **_means(list(item_metrics), spec.metrics)}
    result["chance"] = sum(1 / len(d.continuations) for d in docs) / len(docs)
    if spec.group_keys:
        groups: dict[str, dict[str, Any]] = {}
        for key in spec.group_keys:
            members: dict[str, list[dict[str, float]]] = defaultdict(list)
            for doc, row in zip(docs, item_metrics, strict=True):
                members[dict(doc.groups)[key]].append(row)
            groups[key] = {name: _means(rows, spec.metrics) for name, rows in sorted(members.items())}
        finest = groups[spec.group_keys[-1]].values()
        result["groups"] = groups
        result["macro"] = {m: sum(g[m] for g in finest) / len(finest) for m in spec.metrics}
    return result
