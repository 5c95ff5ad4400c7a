"""Accuracies as ``results.json`` holds them, with their item counts, 95% intervals and comparisons, as table cells.

Where the numbers come from (a model's entry in ``results.json`` ``models``):

- BLiMP overall: ``blimp.overall`` (else ``eval.blimp.acc``) on ``eval.blimp.num_items`` (else
  ``blimp.num_pairs``) pairs; a BLiMP field or paradigm: ``blimp.per_field`` / ``blimp.per_paradigm`` on
  ``eval.blimp.groups.field|paradigm.<name>.num_items`` pairs (no count, hence no interval, without ``eval``);
- another task's ``acc`` / ``acc_norm``: ``eval.<task>.<metric>`` on ``eval.<task>.num_items`` items.

Per-item correctness, which makes a comparison of two models on the same items paired, is read where present
from ``correct.<metric>`` beside each ``num_items`` (``eval.<task>.correct.acc``,
``eval.blimp.groups.field.<name>.correct.acc``, ...): a string of ``"0"``/``"1"``, one character per item in
the task's item order (a list of 0/1 or booleans is accepted too), else from ``eval.<task>.samples`` (one dict
per item with each metric, as ``evaluate_tasks(..., samples=True)`` returns). A list that does not have
``num_items`` entries or whose mean is not the accuracy is ignored (the comparison is then unpaired).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmdistill.reporting.stats import Difference, compare_accuracies, wilson_interval

__all__ = [
    "CONFIDENCE",
    "MISSING",
    "NOISE",
    "SIGNIFICANT",
    "Accuracy",
    "best_index",
    "blimp_accuracy",
    "compare",
    "format_accuracy",
    "format_difference",
    "read_correct",
    "task_accuracy",
]

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
MISSING = "—"
NOISE = "~"  # a difference inside the item-sampling noise
SIGNIFICANT = "*"  # a difference significant at the 5% level


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Accuracy:
    """One accuracy of one model.

    Attributes:
        value (float): the accuracy in [0, 1].
        n (int | None): the number of items it averages over; None where results.json does not say.
        correct (tuple[int, ...] | None): 1/0 per item in the task's item order, where recorded.
    """

    value: float
    n: int | None = None
    correct: tuple[int, ...] | None = None

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        """The Wilson score interval of the accuracy, or None without an item count."""
        return wilson_interval(self.value, self.n, confidence) if self.n else None


def read_correct(raw: Any, n: int | None, value: float) -> tuple[int, ...] | None:
    """Per-item correctness from a results.json field: a "0"/"1" string or a list of 0/1 (or booleans).

    Args:
        raw (Any): the field's value (None when absent).
        n (int | None): the number of items it must hold.
        value (float): the accuracy it must average to.

    Returns:
        tuple[int, ...] | None: 1/0 per item, or None when absent or inconsistent with ``n`` or ``value``.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        if set(raw) - {"0", "1"}:
            logger.warning("ignoring per-item correctness that is not a string of 0 and 1")
            return None
        items = tuple(int(ch) for ch in raw)
    elif isinstance(raw, Sequence) and all(isinstance(x, (bool, int, float)) and x in (0, 1) for x in raw):
        items = tuple(int(x) for x in raw)
    else:
        logger.warning("ignoring per-item correctness that is neither a 0/1 string nor a 0/1 list")
        return None
    if not items or (n is not None and len(items) != n) or abs(sum(items) / len(items) - value) > 1e-9:
        logger.warning("ignoring per-item correctness inconsistent with its accuracy or item count")
        return None
    return items


def _accuracy(value: Any, n: Any, correct: Any) -> Accuracy | None:
    if not _number(value) or not 0.0 <= value <= 1.0:
        return None
    n = int(n) if _number(n) and n >= 1 and float(n).is_integer() else None
    return Accuracy(float(value), n, read_correct(correct, n, value))


def _samples(result: Mapping[str, Any], metric: str) -> list[Any] | None:
    samples = result.get("samples")
    if isinstance(samples, list) and samples and all(isinstance(s, dict) and metric in s for s in samples):
        return [s[metric] for s in samples]
    return None


def task_accuracy(tasks: Mapping[str, Any] | None, task: str, metric: str = "acc") -> Accuracy | None:
    """One task's accuracy from a model's ``eval`` entry (task name -> result).

    Args:
        tasks (Mapping[str, dict] | None): the model's ``eval``.
        task (str): e.g. "arc_easy".
        metric (str): "acc" or "acc_norm".

    Returns:
        Accuracy | None: None where the task or metric is missing.
    """
    result = (tasks or {}).get(task) or {}
    correct = (result.get("correct") or {}).get(metric)
    if correct is None:
        correct = _samples(result, metric)
    return _accuracy(result.get(metric), result.get("num_items"), correct)


def blimp_accuracy(model: Mapping[str, Any], level: str | None = None, name: str | None = None) -> Accuracy | None:
    """A model's BLiMP accuracy overall, or of one field or paradigm.

    Args:
        model (Mapping): the model's entry in results.json ``models``.
        level (str | None): None (overall), "field" or "paradigm".
        name (str | None): the field or paradigm, with ``level``.

    Returns:
        Accuracy | None: None where the model has no such BLiMP number.
    """
    summary = model.get("blimp") or {}
    result = (model.get("eval") or {}).get("blimp") or {}
    if level is None:
        if "overall" not in summary:
            return task_accuracy(model.get("eval"), "blimp")
        n = result.get("num_items", summary.get("num_pairs"))
        correct = (result.get("correct") or {}).get("acc")
        if correct is None:
            correct = _samples(result, "acc")
        return _accuracy(summary["overall"], n, correct)
    group = ((result.get("groups") or {}).get(level) or {}).get(name) or {}
    value = (summary.get(f"per_{level}") or {}).get(name, group.get("acc"))
    return _accuracy(value, group.get("num_items"), (group.get("correct") or {}).get("acc"))


def compare(first: Accuracy, second: Accuracy, paired: bool = True) -> Difference | None:
    """``first - second`` with its interval and test (see :func:`~lmdistill.reporting.stats.compare_accuracies`).

    Args:
        first (Accuracy): the first model's accuracy.
        second (Accuracy): the second's, on the same task.
        paired (bool): use per-item correctness where both have it (only for models scored on the same items,
            i.e. of one run).

    Returns:
        Difference | None: None where an item count is missing.
    """
    if not first.n or not second.n:
        return None
    both = paired and first.correct is not None and second.correct is not None
    return compare_accuracies(
        first.value,
        first.n,
        second.value,
        second.n,
        first.correct if both else None,
        second.correct if both else None,
        CONFIDENCE,
    )


def best_index(accuracies: Sequence[Accuracy | None], paired: bool = True) -> int | None:
    """The index of the highest accuracy when it differs significantly from the runner-up's, else None.

    Args:
        accuracies (Sequence[Accuracy | None]): one per model (None: missing).
        paired (bool): as in :func:`compare`.

    Returns:
        int | None: None with fewer than two accuracies, a tie at the top, a missing item count or a
        difference inside the noise.
    """
    ranked = sorted(((a.value, i, a) for i, a in enumerate(accuracies) if a is not None), key=lambda r: -r[0])
    if len(ranked) < 2 or ranked[0][0] == ranked[1][0]:
        return None
    difference = compare(ranked[0][2], ranked[1][2], paired)
    return ranked[0][1] if difference is not None and difference.significant else None


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _signed(value: float) -> str:
    text = f"{100 * value:+.1f}"
    return "+0.0" if text == "-0.0" else text


def format_accuracy(accuracy: Accuracy | None, bold: bool = False) -> str:
    """``51.6 [48.9, 54.3]``: the accuracy and its 95% Wilson interval in %; ``51.6`` without an item count.

    Args:
        accuracy (Accuracy | None): the accuracy (None: an em dash).
        bold (bool): bold the accuracy (not its interval).

    Returns:
        str: the table cell.
    """
    if accuracy is None:
        return MISSING
    value = f"**{_pct(accuracy.value)}**" if bold else _pct(accuracy.value)
    interval = accuracy.interval()
    return value if interval is None else f"{value} [{_pct(interval[0])}, {_pct(interval[1])}]"


def format_difference(difference: Difference | None) -> str:
    """``+1.2 [-1.5, +3.9] ~``: the difference in points, its 95% interval, and ``*`` (significant) or ``~``.

    Args:
        difference (Difference | None): the comparison (None: an em dash).

    Returns:
        str: the table cell.
    """
    if difference is None:
        return MISSING
    mark = SIGNIFICANT if difference.significant else NOISE
    return f"{_signed(difference.diff)} [{_signed(difference.low)}, {_signed(difference.high)}] {mark}"
