"""Markdown reports from a run folder's ``results.json``: what ran, one table per comparison, links to plots.

``results.json`` (written by the pipeline) holds ``recipe_name``, ``recipe``, ``created``, ``wall_time_s``,
``versions``, ``data`` and ``models``; each model has ``role``, ``arch``, ``num_parameters``, ``dev_loss``,
``dev_losses``, ``train_time_s``, ``metrics_file`` and, when evaluated, ``blimp`` (accuracies in [0, 1]).
Models are reported in the order ``models`` lists them. Missing values show as an em dash.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lmdistill.atomic import write_text
from lmdistill.reporting.plots import BLIMP_PLOT, CURVES_PLOT, make_plots
from lmdistill.reporting.tasks import TASKS_PLOT, column_header, plot_tasks, task_cells, task_columns

__all__ = ["compare_runs", "load_results", "render_report", "write_report"]

logger = logging.getLogger(__name__)

MISSING = "—"


def load_results(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<run_dir>/results.json``.

    Args:
        run_dir (str | PathLike): the run folder.

    Returns:
        dict: the parsed results (a JSON object with a ``models`` object).

    Raises:
        FileNotFoundError: ``results.json`` does not exist (the message names the path).
        ValueError: the file is not valid JSON, or not an object with a ``models`` object (names the file).
    """
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file: {path} (is {Path(run_dir)} a finished run folder?)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(results, dict) or not isinstance(results.get("models", {}), dict):
        raise ValueError(f"{path}: expected a JSON object whose 'models' is an object")
    return results


def _human_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return MISSING
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(int(n))


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _pct(acc: Any) -> str:
    return f"{100 * acc:.1f}" if isinstance(acc, (int, float)) else MISSING


def _loss(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else MISSING


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _bold_best(cells: list[str], higher: bool) -> list[str]:
    """Bold every cell equal (as displayed) to the best number, unless all numbers are equal."""
    numbers = [float(c) for c in cells if c != MISSING]
    if len(set(numbers)) < 2:  # nothing to compare, or all equal: no winner
        return cells
    best = max(numbers) if higher else min(numbers)
    return [f"**{c}**" if c != MISSING and float(c) == best else c for c in cells]


def _markdown_table(header: list[str], rows: list[list[str]], best: dict[int, bool], left: int) -> str:
    """A GitHub table; ``best`` maps a column index to higher-is-better; the first ``left`` columns align left."""
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in header]
    for index, higher in best.items():
        columns[index] = _bold_best(columns[index], higher)
    rows = [list(row) for row in zip(*columns, strict=True)]
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fields(models: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({field for m in models for field in (m.get("blimp") or {}).get("per_field", {})})


def _model_cells(model: dict[str, Any], fields: list[str]) -> list[str]:
    """Parameters | dev loss | BLiMP overall | one cell per field."""
    blimp = model.get("blimp") or {}
    per_field = blimp.get("per_field", {})
    return [
        _human_count(model.get("num_parameters")),
        _loss(model.get("dev_loss")),
        _pct(blimp.get("overall")),
        *(_pct(per_field.get(field)) for field in fields),
    ]


def _blimp_caption(models: Iterable[dict[str, Any]]) -> str:
    counts = sorted({m["blimp"].get("num_pairs") for m in models if m.get("blimp")} - {None})
    pairs = f"{counts[0]:,} minimal pairs" if len(counts) == 1 else "minimal pairs (counts differ per model)"
    return (
        f"Dev loss: mean cross-entropy in nats per token on the dev split (lower is better). BLiMP: accuracy (%) "
        f"on {pairs}, a pair counting as correct when the model gives the grammatical sentence the higher "
        "probability (chance is 50%); field columns average over that field's pairs. Bold: best in its column."
    )


def _what_ran(results: dict[str, Any]) -> str:
    data = results.get("data", {})
    models = results.get("models", {})
    tokens = ", ".join(
        f"{_human_count(data.get(key))} {label}"
        for key, label in (("train_tokens", "training tokens"), ("dev_tokens", "dev tokens"))
        if data.get(key) is not None
    )
    parts = [
        f"Recipe `{results.get('recipe_name', MISSING)}`, run created {results.get('created', MISSING)}, "
        f"wall time {_duration(results.get('wall_time_s'))}.",
        "Data: "
        + (tokens or "token counts not recorded")
        + (f" ({data['num_train_blocks']:,} training blocks)" if data.get("num_train_blocks") else "")
        + (f"; BPE vocabulary {data['vocab_size']:,}" if data.get("vocab_size") else "")
        + ".",
    ]
    if models:
        described = [
            f"`{name}` ({m.get('role', '?')}, {m.get('arch', '?')}"
            + (f", trained in {_duration(m['train_time_s'])}" if m.get("train_time_s") is not None else "")
            + ")"
            for name, m in models.items()
        ]
        parts.append("Models: " + ", ".join(described) + ".")
    if results.get("versions"):
        parts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".")
    return " ".join(parts)


def _paradigm_table(models: dict[str, dict[str, Any]]) -> str:
    evaluated = {name: m["blimp"].get("per_paradigm", {}) for name, m in models.items() if m.get("blimp")}
    paradigms = sorted({p for per in evaluated.values() for p in per})
    if not paradigms:
        return ""
    rows = []
    for paradigm in paradigms:
        cells = _bold_best([_pct(per.get(paradigm)) for per in evaluated.values()], higher=True)
        rows.append([_cell(paradigm), *cells])
    table = _markdown_table(["paradigm", *map(_cell, evaluated)], rows, best={}, left=1)
    summary = f"BLiMP accuracy (%) per paradigm: {len(paradigms)} paradigms x {len(evaluated)} models (best in bold)"
    return f"<details>\n<summary>{summary}</summary>\n\n{table}\n\n</details>"


def _tasks_caption(evals: dict[str, dict[str, Any]]) -> str:
    first = next(iter(evals.values()))
    parts = [
        f"{t} {r.get('num_items', 0):,} items (chance {100 * r.get('chance', 0):.0f}%)"
        for t, r in first.items()
        if t != "blimp"
    ]
    return (
        " Other tasks: zero-shot accuracy (%) scored as lm-evaluation-harness 0.4.13 scores them ("
        + "; ".join(parts)
        + '); "(norm)" is acc_norm, the log-likelihood divided by the answer\'s length in characters.'
    )


def render_report(results: dict[str, Any]) -> str:
    """Render the Markdown report of one run.

    Args:
        results (dict): the parsed ``results.json`` (see the module docstring).

    Returns:
        str: Markdown: title, what ran, the corpus note (``data.corpus_note``, when recorded), the main table
        (model | role | parameters | dev loss | BLiMP overall | one column per BLiMP field; best per column in
        bold), links to ``plots/*.png``, the per-paradigm table in a ``<details>`` block, data file hashes
        and the resolved recipe.
    """
    models: dict[str, dict[str, Any]] = results.get("models", {})
    fields = _fields(models.values())
    evals = {name: m["eval"] for name, m in models.items() if m.get("eval")}
    columns = task_columns(evals, skip=("blimp",))  # BLiMP has its own columns
    header = ["model", "role", "parameters", "dev loss", "BLiMP overall", *map(_cell, fields)]
    header += [column_header(t, m) for t, m in columns]
    rows = [
        [_cell(name), _cell(m.get("role", MISSING)), *_model_cells(m, fields), *task_cells(m.get("eval"), columns)]
        for name, m in models.items()
    ]
    best = {3: False, **{4 + i: True for i in range(len(fields) + 1 + len(columns))}}
    sections = [
        f"# Distillation report: {results.get('recipe_name', 'unnamed run')}",
        _what_ran(results),
        *([f"> **Corpus.** {note}"] if (note := results.get("data", {}).get("corpus_note")) else []),
        "## Results",
        _markdown_table(header, rows, best, left=2) if rows else "_No models in results.json._",
        _blimp_caption(models.values()) + (_tasks_caption(evals) if columns else ""),
        "## Plots",
        f"![Training and dev loss]({CURVES_PLOT})\n\n![BLiMP accuracy by field]({BLIMP_PLOT})"
        + (f"\n\n![Zero-shot accuracy per task]({TASKS_PLOT})" if evals else ""),
    ]
    paradigm_table = _paradigm_table(models)
    if paradigm_table:
        sections += ["## BLiMP per paradigm", paradigm_table]
    files = results.get("data", {}).get("files") or {}
    if files:
        listing = "\n".join(f"| `{_cell(path)}` | `{digest}` |" for path, digest in files.items())
        sections.append(
            "<details>\n<summary>Data files (SHA-256)</summary>\n\n| file | sha256 |\n| --- | --- |\n"
            f"{listing}\n\n</details>"
        )
    if results.get("recipe"):
        recipe = json.dumps(results["recipe"], indent=2, default=str)
        sections.append(f"<details>\n<summary>Resolved recipe</summary>\n\n```json\n{recipe}\n```\n\n</details>")
    return "\n\n".join(sections) + "\n"


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``<run_dir>/report.md`` and ``<run_dir>/plots/*.png`` from ``<run_dir>/results.json`` (atomically).

    Args:
        run_dir (str | PathLike): a run folder holding ``results.json``.

    Returns:
        Path: the report path.

    Raises:
        FileNotFoundError: ``results.json`` is missing (the message names the path).
        ValueError: ``results.json`` is not valid JSON (the message names the file).
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    make_plots(results, run_dir)
    evals = {name: m["eval"] for name, m in results.get("models", {}).items() if m.get("eval")}
    if evals:
        plot_tasks(evals, run_dir / TASKS_PLOT, title=f"{results.get('recipe_name', 'run')}: zero-shot accuracy")
    path = run_dir / "report.md"
    write_text(path, render_report(results))
    logger.info("wrote %s", path)
    return path


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> str:
    """A Markdown table comparing the models of several runs.

    Args:
        run_dirs (Sequence[str | PathLike]): run folders, each holding ``results.json``.

    Returns:
        str: a heading and one table with a row per (run, model): run | recipe | model | role | parameters |
        dev loss | BLiMP overall | one column per BLiMP field (union over runs); best per column in bold.

    Raises:
        FileNotFoundError: a ``results.json`` is missing.
        ValueError: ``run_dirs`` is empty, or a ``results.json`` is not valid JSON.
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    paths = [Path(d) for d in run_dirs]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):  # same folder name under different parents: show the paths
        names = [str(p) for p in paths]
    runs = [(name, load_results(path)) for name, path in zip(names, paths, strict=True)]
    fields = _fields(m for _, results in runs for m in results.get("models", {}).values())
    header = ["run", "recipe", "model", "role", "parameters", "dev loss", "BLiMP overall", *map(_cell, fields)]
    rows = [
        [_cell(name), _cell(results.get("recipe_name", MISSING)), _cell(model), _cell(m.get("role", MISSING))]
        + _model_cells(m, fields)
        for name, results in runs
        for model, m in results.get("models", {}).items()
    ]
    best = {5: False, 6: True, **{7 + i: True for i in range(len(fields))}}
    table = _markdown_table(header, rows, best, left=4) if rows else "_No models._"
    return f"# Comparison of {len(runs)} runs\n\n{table}\n\nBLiMP accuracy in %, dev loss in nats per token.\n"
