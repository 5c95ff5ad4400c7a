"""Zero-shot task results across models: a Markdown table and a parallel-coordinates figure (models x tasks).

The figure follows the parallel-coordinates plots of Timiryasov & Tastet (arXiv:2308.02019): one axis per task,
one line per model, accuracy in %, with each task's chance level marked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmdistill.atomic import atomic_path

__all__ = ["TASKS_PLOT", "plot_tasks", "task_columns", "task_table"]

TASKS_PLOT = "plots/tasks.png"
MISSING = "—"


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


def task_cells(tasks: Mapping[str, Any] | None, columns: list[tuple[str, str]]) -> list[str]:
    """Accuracy cells (%, one decimal) of one model, an em dash where missing."""
    tasks = tasks or {}
    cells = []
    for task, metric in columns:
        value = tasks.get(task, {}).get(metric)
        cells.append(f"{100 * value:.1f}" if isinstance(value, (int, float)) else MISSING)
    return cells


def task_table(evals: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per model, one column per (task, metric), accuracy in %, best per column in bold.

    Args:
        evals (Mapping[str, Mapping[str, dict]]): model name -> task name -> task result.

    Returns:
        str: the table, a line on item counts, and the chance levels.
    """
    columns = task_columns(evals)
    rows = [[name, *task_cells(tasks, columns)] for name, tasks in evals.items()]
    for j in range(1, len(columns) + 1):
        numbers = {float(r[j]) for r in rows if r[j] != MISSING}
        if len(numbers) > 1:
            best = max(numbers)
            for r in rows:
                if r[j] != MISSING and float(r[j]) == best:
                    r[j] = f"**{r[j]}**"
    header = ["model", *(column_header(t, m) for t, m in columns)]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    first = next(iter(evals.values()), {})
    counts = ", ".join(f"{t} {r.get('num_items', 0):,}" for t, r in first.items())
    chance = ", ".join(f"{t} {100 * r['chance']:.1f}%" for t, r in first.items() if "chance" in r)
    return "\n".join(lines) + f"\n\nItems: {counts}. Chance: {chance}. Bold: best in its column.\n"


def plot_tasks(evals: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Draw the parallel-coordinates figure: x = tasks (acc, and acc_norm where reported), y = accuracy in %.

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
    for k, (name, tasks) in enumerate(evals.items()):
        ys = [100 * tasks[t][m] if t in tasks and m in tasks[t] else float("nan") for t, m in columns]
        ax.plot(xs, ys, marker="o", color=cycle(k % 10), label=name)
    chance = [
        next((100 * r[t]["chance"] for r in evals.values() if t in r and "chance" in r[t]), float("nan"))
        for t, _ in columns
    ]
    ax.scatter(xs, chance, marker="_", s=400, color="grey", label="chance", zorder=3)
    for x in xs:
        ax.axvline(x, color="grey", lw=0.5, alpha=0.5)
    ax.set_xticks(list(xs), [column_header(t, m) for t, m in columns])
    ax.set(ylabel="accuracy (%)", title=title or "Zero-shot accuracy per task")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return path
