"""Zero-shot task results across models: a Markdown table and a parallel-coordinates figure (models x tasks).

The figure follows the parallel-coordinates plots of Timiryasov & Tastet (arXiv:2308.02019): one axis per task,
one line per model, accuracy in %, with each task's chance level marked; here each point also has its 95% Wilson
interval as an error bar. Table cells show each accuracy with that interval, and the best in a column is bold only
where it differs significantly from the runner-up (see :mod:`lmdistill.reporting.stats`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmdistill.atomic import atomic_path
from lmdistill.reporting.accuracy import Accuracy, best_index, format_accuracy, task_accuracy

__all__ = [
    "TASKS_PLOT",
    "bold_cells",
    "column_header",
    "items_line",
    "plot_tasks",
    "task_accuracies",
    "task_cells",
    "task_columns",
    "task_table",
]

TASKS_PLOT = "plots/tasks.png"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def task_columns(evals: Mapping[str, Mapping[str, Any]], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(task, metric)`` columns for the tasks of some models' results: acc, then acc_norm where reported.

    Args:
        evals (Mapping[str, Mapping[str, dict]]): model name -> task name -> task result.
        skip (tuple[str, ...]): tasks to leave out (e.g. "blimp" where it has its own columns).

    Returns:
        list[tuple[str, str]]: columns in order of first appearance.
    """
    columns: list[tuple[str, str]] = []
    for tasks in evals.values():
        for task, result in tasks.items():
            for metric in ("acc", "acc_norm"):
                if task not in skip and metric in result and (task, metric) not in columns:
                    columns.append((task, metric))
    return columns


def column_header(task: str, metric: str) -> str:
    """``"arc_easy"`` for acc, ``"arc_easy (norm)"`` for acc_norm."""
    return task if metric == "acc" else f"{task} (norm)"


def task_accuracies(tasks: Mapping[str, Any] | None, columns: list[tuple[str, str]]) -> list[Accuracy | None]:
    """One model's accuracy (with its item count, per-item correctness where recorded) per column.

    Args:
        tasks (Mapping[str, dict] | None): task name -> task result of one model.
        columns (list[tuple[str, str]]): ``(task, metric)`` columns, see :func:`task_columns`.

    Returns:
        list[Accuracy | None]: None where the model has no such result.
    """
    return [task_accuracy(tasks, task, metric) for task, metric in columns]


def task_cells(
    tasks: Mapping[str, Any] | None, columns: list[tuple[str, str]], bold: frozenset[int] = frozenset()
) -> list[str]:
    """Accuracy cells of one model, ``61.2 [51.4, 70.2]`` (%, 95% Wilson interval), an em dash where missing.

    Args:
        tasks (Mapping[str, dict] | None): task name -> task result of one model.
        columns (list[tuple[str, str]]): ``(task, metric)`` columns.
        bold (frozenset[int]): indices of the columns where this model's accuracy is bold.

    Returns:
        list[str]: one cell per column.
    """
    return [format_accuracy(a, i in bold) for i, a in enumerate(task_accuracies(tasks, columns))]


def items_line(evals: Mapping[str, Mapping[str, Any]], skip: tuple[str, ...] = ()) -> str:
    """``arc_easy 20 (chance 25%); mmlu 1,140 (chance 25%)``: items per task (the counts of each model that differ).

    Args:
        evals (Mapping[str, Mapping[str, dict]]): model name -> task name -> task result.
        skip (tuple[str, ...]): tasks to leave out.

    Returns:
        str: one entry per task in order of first appearance.
    """
    parts = []
    tasks = list(dict.fromkeys(t for results in evals.values() for t in results if t not in skip))
    for task in tasks:
        counts = list(dict.fromkeys(r[task].get("num_items") for r in evals.values() if task in r))
        shown = "/".join(f"{c:,}" if isinstance(c, int) else "?" for c in counts)
        chance = next((r[task]["chance"] for r in evals.values() if _number(r.get(task, {}).get("chance"))), None)
        parts.append(
            f"{task} {shown}"
            + (" (differs per model)" if len(counts) > 1 else "")
            + (f" (chance {100 * chance:.0f}%)" if chance is not None else "")
        )
    return "; ".join(parts)


def bold_cells(rows: list[list[Accuracy | None]], paired: bool = True) -> list[frozenset[int]]:
    """Per row, the columns whose accuracy is the column's best and distinguishable from the runner-up.

    Args:
        rows (list[list[Accuracy | None]]): one list of accuracies per model, one entry per column.
        paired (bool): compare on per-item correctness where recorded (models of one run: the same items).

    Returns:
        list[frozenset[int]]: per row, the column indices to bold.
    """
    bold: list[set[int]] = [set() for _ in rows]
    for j in range(len(rows[0]) if rows else 0):
        best = best_index([row[j] for row in rows], paired)
        if best is not None:
            bold[best].add(j)
    return [frozenset(b) for b in bold]


def task_table(evals: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per model, one column per (task, metric), accuracy in % with its 95% interval.

    The best accuracy in a column is bold only when it differs significantly from the runner-up's (McNemar's
    mid-p test on per-item correctness where recorded, else Newcombe's unpaired interval; see
    :mod:`lmdistill.reporting.stats`).

    Args:
        evals (Mapping[str, Mapping[str, dict]]): model name -> task name -> task result.

    Returns:
        str: the table, a line on item counts and chance levels, and how to read the cells.
    """
    columns = task_columns(evals)
    accuracies = [task_accuracies(tasks, columns) for tasks in evals.values()]
    bold = bold_cells(accuracies)
    rows = [
        [name, *(format_accuracy(a, j in b) for j, a in enumerate(accs))]
        for name, accs, b in zip(evals, accuracies, bold, strict=True)
    ]
    header = ["model", *(column_header(t, m) for t, m in columns)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return (
        "\n".join(lines)
        + f"\n\nItems (n): {items_line(evals)}. Accuracy in % with its 95% Wilson score interval over the n items "
        "(item sampling only, not the variation between training runs). Bold: best in its column, only where it "
        "differs significantly from the runner-up (5% level).\n"
    )


def plot_tasks(evals: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Draw the parallel-coordinates figure: x = tasks (acc, and acc_norm where reported), y = accuracy in %.

    Each point has its 95% Wilson interval as an error bar (where the item count is recorded); the models' points
    are spread a little along x so that their bars do not hide each other.

    Args:
        evals (Mapping[str, Mapping[str, dict]]): model name -> task name -> task result.
        path (str | PathLike): PNG file, written atomically.
        title (str): figure title.

    Returns:
        Path: ``path``.
    """
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = task_columns(evals)
    fig = Figure(figsize=(max(6.0, 1.6 * len(columns) + 3), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cycle = mpl.colormaps["tab10"]
    xs = range(len(columns))
    spread = 0.25 / max(1, len(evals) - 1)
    for k, (name, tasks) in enumerate(evals.items()):
        accuracies = task_accuracies(tasks, columns)
        shifted = [x + (k - (len(evals) - 1) / 2) * spread for x in xs]
        ys = [100 * a.value if a is not None else float("nan") for a in accuracies]
        ax.plot(shifted, ys, marker="o", ms=4, color=cycle(k % 10), label=name)
        bars = [(x, y, a.interval()) for x, y, a in zip(shifted, ys, accuracies, strict=True) if a and a.n]
        if bars:
            ax.errorbar(
                [x for x, _, _ in bars],
                [y for _, y, _ in bars],
                yerr=[[y - 100 * iv[0] for _, y, iv in bars], [100 * iv[1] - y for _, y, iv in bars]],
                fmt="none",
                ecolor=cycle(k % 10),
                elinewidth=1,
                capsize=3,
            )
    chance = [
        next((100 * r[t]["chance"] for r in evals.values() if t in r and "chance" in r[t]), float("nan"))
        for t, _ in columns
    ]
    ax.scatter(xs, chance, marker="_", s=400, color="grey", label="chance", zorder=3)
    for x in xs:
        ax.axvline(x, color="grey", lw=0.5, alpha=0.5)
    ax.set_xticks(list(xs), [column_header(t, m) for t, m in columns])
    ax.set(ylabel="accuracy (%); error bars: 95% interval", title=title or "Zero-shot accuracy per task")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return path
