"""Markdown reports from a run folder's ``results.json``: what ran, one table per comparison, links to plots.

``results.json`` (written by the pipeline) holds ``recipe_name``, ``recipe``, ``created``, ``wall_time_s``,
``versions``, ``data`` and ``models``; each model has ``role``, ``arch``, ``num_parameters``, ``dev_loss``,
``dev_losses``, ``train_time_s``, ``metrics_file`` and, when evaluated, ``eval`` (task -> result with
``num_items``, see ``lmdistill.evaluation.metrics.aggregate``) and ``blimp`` (accuracies in [0, 1]).
Models are reported in the order ``models`` lists them. Missing values show as an em dash.

Every accuracy is shown with its 95% Wilson score interval over its n items, and differences are tested before
they are claimed: the best in a column is bold only where it differs significantly from the runner-up, and each
model's difference against the no-KD baseline is marked ``*`` (significant) or ``~`` (inside the noise). Where
results.json records per-item correctness the comparison is paired, else it treats the two accuracies as
independent, a conservative fallback (see :mod:`lmdistill.reporting.accuracy` and
:mod:`lmdistill.reporting.stats`). The intervals cover the sampling of items, not the variation between
training runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lmdistill.atomic import write_text
from lmdistill.reporting.accuracy import (
    MISSING,
    NOISE,
    SIGNIFICANT,
    Accuracy,
    best_index,
    blimp_accuracy,
    compare,
    format_accuracy,
    format_difference,
)
from lmdistill.reporting.plots import BLIMP_PLOT, CURVES_PLOT, make_plots
from lmdistill.reporting.tasks import (
    TASKS_PLOT,
    bold_cells,
    column_header,
    items_line,
    plot_tasks,
    task_accuracies,
    task_columns,
)

__all__ = ["compare_runs", "load_results", "render_report", "write_report"]

logger = logging.getLogger(__name__)

# The lowest dev loss is bolded only this far (nats per token) below the next: a run of one recipe is
# bit-identical on one machine but not across machines, where dev losses have differed in the third decimal.
DEV_LOSS_MARGIN = 0.01


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


def _loss(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else MISSING


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _bold_lowest_loss(cells: list[str]) -> list[str]:
    """Bold the lowest dev loss, only when it is at least ``DEV_LOSS_MARGIN`` below the next one."""
    numbers = sorted({float(c) for c in cells if c != MISSING})
    if len(numbers) < 2 or numbers[1] - numbers[0] < DEV_LOSS_MARGIN - 1e-9:  # one, or too close to call
        return cells
    return [f"**{c}**" if c != MISSING and float(c) == numbers[0] else c for c in cells]


def _markdown_table(header: list[str], rows: list[list[str]], left: int, loss_column: int | None = None) -> str:
    """A GitHub table; the first ``left`` columns align left; the lowest dev loss of ``loss_column`` is bolded."""
    if loss_column is not None and rows:
        losses = _bold_lowest_loss([row[loss_column] for row in rows])
        rows = [[*row[:loss_column], loss, *row[loss_column + 1 :]] for row, loss in zip(rows, losses, strict=True)]
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fields(models: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({field for m in models for field in (m.get("blimp") or {}).get("per_field", {})})


def _model_accuracies(
    model: dict[str, Any], fields: list[str], columns: list[tuple[str, str]]
) -> list[Accuracy | None]:
    """BLiMP overall | one per BLiMP field | one per (task, metric) column."""
    return [
        blimp_accuracy(model),
        *(blimp_accuracy(model, "field", field) for field in fields),
        *task_accuracies(model.get("eval"), columns),
    ]


def _accuracy_cells(accuracies: list[Accuracy | None], bold: frozenset[int]) -> list[str]:
    return [format_accuracy(a, j in bold) for j, a in enumerate(accuracies)]


def _counts(accuracies: Iterable[Accuracy | None]) -> str:
    """``1,340``, ``1,340/1,000`` where models differ, ``""`` where no model's count is recorded."""
    counts = sorted({a.n for a in accuracies if a is not None and a.n is not None}, reverse=True)
    return "/".join(f"{n:,}" for n in counts)


def _items_caption(
    fields: list[str], evals: dict[str, dict[str, Any]], accuracies: list[list[Accuracy | None]], skip: tuple
) -> str:
    """``Items (n): BLiMP 1,340 minimal pairs (morphology 180, ...); arc_easy 20 (chance 25%); ...``."""
    column = [[row[j] for row in accuracies] for j in range(1 + len(fields))]
    parts = []
    if any(a is not None for a in column[0]):
        blimp = f"BLiMP {_counts(column[0]) or '(count not recorded)'} minimal pairs"
        per_field = [(f, _counts(c)) for f, c in zip(fields, column[1:], strict=True)]
        if any(n for _, n in per_field):
            blimp += " (" + ", ".join(f"{f} {n or 'not recorded'}" for f, n in per_field) + ")"
        elif fields:
            blimp += " (per-field counts not recorded: no field intervals)"
        parts.append(blimp)
    if evals and (others := items_line(evals, skip=skip)):
        parts.append(others)
    return "Items (n): " + "; ".join(parts) + "." if parts else ""


INTERVAL_CAPTION = (
    "Accuracies in % with their 95% Wilson (1927) score interval in brackets: the accuracies compatible with the "
    "model's answers on these n items. An interval covers the sampling of items only, not the variation between "
    "training runs: another seed, or the same seed on another machine (training is bit-identical on one machine, "
    "not across machines), trains a slightly different model, so a difference found here holds for these trained "
    "models on these items, not necessarily for the recipe. An accuracy without brackets has no item count in "
    "results.json."
)


def _results_caption(
    models: dict[str, dict[str, Any]],
    fields: list[str],
    evals: dict[str, dict[str, Any]],
    columns: list[tuple[str, str]],
    accuracies: list[list[Accuracy | None]],
) -> str:
    """The main table's legend, one bullet per point, the item counts first."""
    items = _items_caption(fields, evals, accuracies, skip=("blimp",))
    parts = [
        *([items] if items else []),
        INTERVAL_CAPTION,
        "Bold: the best in its column, only where it differs significantly (5% level) from the runner-up, tested "
        "as in the comparison with the baseline; a column without bold has its best inside the noise of the "
        "runner-up.",
        "Dev loss: mean cross-entropy in nats per token on the dev split (lower is better). It is one number per "
        "model, without an interval (results.json records no per-block losses), and not reproducible bit for bit "
        "across machines (the third decimal has differed): bold marks the lowest only where it is at least "
        f"{DEV_LOSS_MARGIN} below the next, a margin of reproducibility, not a significance test.",
    ]
    if any(m.get("blimp") for m in models.values()):
        parts.append(
            "BLiMP: a pair counts as correct when the model gives the grammatical sentence the higher probability "
            "(chance is 50%); field columns are over that field's pairs."
        )
    if columns:
        parts.append(
            'Other tasks: zero-shot accuracy scored as lm-evaluation-harness 0.4.13 scores them; "(norm)" is '
            "acc_norm, the log-likelihood divided by the answer's length in characters."
        )
    return "\n".join(f"- {part}" for part in parts)


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
    evaluated = {name: m for name, m in models.items() if m.get("blimp")}
    paradigms = sorted({p for m in evaluated.values() for p in m["blimp"].get("per_paradigm", {})})
    if not paradigms:
        return ""
    rows = []
    for paradigm in paradigms:
        accuracies = [blimp_accuracy(m, "paradigm", paradigm) for m in evaluated.values()]
        best = best_index(accuracies)
        rows.append([_cell(paradigm), *(format_accuracy(a, j == best) for j, a in enumerate(accuracies))])
    table = _markdown_table(["paradigm", *map(_cell, evaluated)], rows, left=1)
    counts = _counts(blimp_accuracy(m, "paradigm", p) for m in evaluated.values() for p in paradigms)
    summary = (
        f"BLiMP accuracy (%) per paradigm: {len(paradigms)} paradigms x {len(evaluated)} models, "
        + (f"{counts} pairs each, 95% Wilson intervals" if counts else "pair counts not recorded")
        + " (bold: best, where it differs significantly from the runner-up)"
    )
    return f"<details>\n<summary>{summary}</summary>\n\n{table}\n\n</details>"


def _baseline_section(
    models: dict[str, dict[str, Any]], headers: list[str], accuracies: list[list[Accuracy | None]]
) -> list[str]:
    """The heading, table and caption of every model's accuracy minus the no-KD baseline's; [] without one."""
    names = list(models)
    baseline = next((name for name, m in models.items() if m.get("role") == "baseline"), None)
    if baseline is None or not headers or len(models) < 2:
        return []
    base = accuracies[names.index(baseline)]
    heading = f"## Against the no-KD baseline (`{_cell(baseline)}`)"
    if all(a is None for a in base):
        return [heading, f"_`{_cell(baseline)}` has no accuracies in results.json: nothing to compare._"]
    rows, paired = [], set()
    for name, accs in zip(names, accuracies, strict=True):
        if name == baseline:
            continue
        cells = []
        for mine, theirs in zip(accs, base, strict=True):
            difference = compare(mine, theirs) if mine is not None and theirs is not None else None
            if difference is not None:
                paired.add(difference.paired)
            cells.append(format_difference(difference))
        rows.append([_cell(name), *cells])
    table = _markdown_table(["model", *headers], rows, left=1)
    caption: list[str] = [
        f"Accuracy minus the baseline's, in points, with its 95% interval; `{SIGNIFICANT}`: significant at the 5% "
        f"level, `{NOISE}`: inside the noise (no difference shown by these items); an em dash: an accuracy or its "
        "item count is missing. Each cell is tested on its own, with no correction for the number of cells: when "
        f"nothing differs, about one cell in twenty is marked `{SIGNIFICANT}` by chance."
    ]
    if True in paired:
        caption.append(
            "Paired cells (per-item correctness recorded for both models, scored on the same items): the mark is "
            "McNemar's mid-p test on the items the two models answer differently (Fagerland et al. 2013), the "
            "interval Newcombe's (1998) score interval for paired proportions; the two can disagree at the "
            "margin, where the mark decides."
        )
    if False in paired:
        caption.append(
            ("Unpaired cells" if True in paired else "All cells are unpaired")
            + ": results.json records no (usable) per-item correctness, so the comparison treats the two "
            "accuracies as independent (Newcombe's 1998 hybrid score interval; the mark: whether it contains 0). "
            "Models scored on the same items tend to get the same items right, so this interval is too wide: a "
            f"conservative fallback, under which some `{NOISE}` may hide a real difference."
        )
    return [heading, table, "\n".join(f"- {part}" for part in caption)]


def render_report(results: dict[str, Any]) -> str:
    """Render the Markdown report of one run.

    Args:
        results (dict): the parsed ``results.json`` (see the module docstring).

    Returns:
        str: Markdown: title, what ran, the corpus note (``data.corpus_note``, when recorded), the main table
        (model | role | parameters | dev loss | BLiMP overall | one column per BLiMP field | one per other
        task's metric; accuracies with their 95% Wilson interval, the best bold only where it differs
        significantly from the runner-up), a caption with the item count n of each accuracy, each model's
        difference against the no-KD baseline (role ``baseline``, where there is one) marked ``*``
        (significant) or ``~`` (inside the noise), links to ``plots/*.png``, the per-paradigm table in a
        ``<details>`` block, data file hashes and the resolved recipe.
    """
    models: dict[str, dict[str, Any]] = results.get("models", {})
    fields = _fields(models.values())
    evals = {name: m["eval"] for name, m in models.items() if m.get("eval")}
    columns = task_columns(evals, skip=("blimp",))  # BLiMP has its own columns
    accuracy_headers = ["BLiMP overall", *map(_cell, fields), *(column_header(t, m) for t, m in columns)]
    accuracies = [_model_accuracies(m, fields, columns) for m in models.values()]
    bold = bold_cells(accuracies)
    rows = [
        [
            _cell(name),
            _cell(m.get("role", MISSING)),
            _human_count(m.get("num_parameters")),
            _loss(m.get("dev_loss")),
            *_accuracy_cells(accs, b),
        ]
        for (name, m), accs, b in zip(models.items(), accuracies, bold, strict=True)
    ]
    header = ["model", "role", "parameters", "dev loss", *accuracy_headers]
    sections = [
        f"# Distillation report: {results.get('recipe_name', 'unnamed run')}",
        _what_ran(results),
        *([f"> **Corpus.** {note}"] if (note := results.get("data", {}).get("corpus_note")) else []),
        "## Results",
        _markdown_table(header, rows, left=2, loss_column=3) if rows else "_No models in results.json._",
        _results_caption(models, fields, evals, columns, accuracies),
        *_baseline_section(models, accuracy_headers, accuracies),
        "## Plots",
        f"![Training and dev loss]({CURVES_PLOT})\n\n![BLiMP accuracy by field]({BLIMP_PLOT})"
        + (f"\n\n![Zero-shot accuracy per task]({TASKS_PLOT})" if evals else "")
        + "\n\nError bars: 95% Wilson intervals, as in the tables.",
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
        dev loss | BLiMP overall | one column per BLiMP field (union over runs), accuracies with their 95%
        Wilson interval, the best bold only where it differs significantly from the runner-up (unpaired).

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
    entries = [(name, results, model, m) for name, results in runs for model, m in results.get("models", {}).items()]
    accuracies = [_model_accuracies(m, fields, []) for _, _, _, m in entries]
    bold = bold_cells(accuracies, paired=False)  # runs may differ in their items
    rows = [
        [_cell(name), _cell(results.get("recipe_name", MISSING)), _cell(model), _cell(m.get("role", MISSING))]
        + [_human_count(m.get("num_parameters")), _loss(m.get("dev_loss")), *_accuracy_cells(accs, b)]
        for (name, results, model, m), accs, b in zip(entries, accuracies, bold, strict=True)
    ]
    table = _markdown_table(header, rows, left=4, loss_column=5) if rows else "_No models._"
    caption = (
        f"Dev loss in nats per token (bold: the lowest, where at least {DEV_LOSS_MARGIN} below the next; no "
        "interval). BLiMP accuracy in % with its 95% Wilson score interval over the pairs it was scored on (item "
        "sampling only, not the variation between training runs or machines). Bold: the best in its column, only "
        "where it differs significantly (5% level) from the runner-up; runs may be scored on different items, so "
        "the comparison treats accuracies as independent (Newcombe's 1998 hybrid score interval), conservatively "
        "for models scored on the same items."
    )
    items = _items_caption(fields, {}, accuracies, skip=())
    return f"# Comparison of {len(runs)} runs\n\n{table}\n\n{caption}" + (f" {items}" if items else "") + "\n"
