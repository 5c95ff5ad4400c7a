"""Report figures: training/dev loss curves and BLiMP accuracy per field (95% error bars), on matplotlib's Agg canvas.

Figures are built with the object-oriented API (``Figure`` + ``FigureCanvasAgg``), never pyplot, so that
making plots touches no global backend state and leaks no figures. Files are written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from lmdistill.atomic import atomic_path
from lmdistill.reporting.accuracy import blimp_accuracy

__all__ = ["BLIMP_PLOT", "CURVES_PLOT", "make_plots", "read_metrics"]

logger = logging.getLogger(__name__)

CURVES_PLOT = "plots/training_curves.png"
BLIMP_PLOT = "plots/blimp_fields.png"


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` log, skipping blank lines, lines that are not JSON objects and a torn last line.

    Args:
        path (str | PathLike): the JSONL file, one record per line, e.g. ``{"step": 10, "loss": 5.2, ...}``
            (training) or ``{"event": "dev", "step": 100, "epoch": 1, "dev_loss": 4.9}``.

    Returns:
        list[dict]: the records in file order; unknown keys are kept (callers ignore them).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    records, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
    if skipped:
        logger.info("%s: skipped %d lines that are not JSON objects", path, skipped)
    return records


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return path


def _curves(results: dict[str, Any], run_dir: Path, path: Path, colors: dict[str, Any]) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_train, ax_dev = fig.subplots(1, 2)
    for name, model in results.get("models", {}).items():
        color = colors[name]
        records = []
        if model.get("metrics_file"):
            metrics_path = run_dir / model["metrics_file"]
            if metrics_path.is_file():
                # the effective records: after a resume, a step's later record replaces the earlier one
                from lmdistill.training_state import metric_records

                records = metric_records(metrics_path)
            else:
                logger.warning("metrics file of %s not found: %s", name, metrics_path)
        train = [r for r in records if r.get("event", "train") == "train" and _number(r.get("step"))]
        loss = [(r["step"], r["loss"]) for r in train if _number(r.get("loss"))]
        if loss:
            ax_train.plot(*zip(*loss, strict=True), color=color, lw=1, label=name)
        # A distilled model's loss mixes CE and KL: its hard-label CE is the number comparable with the others.
        ce = [(r["step"], r["ce"]) for r in train if _number(r.get("ce")) and r["ce"] != r.get("loss")]
        if ce:
            ax_train.plot(*zip(*ce, strict=True), color=color, lw=1, ls="--", label=f"{name} (CE)")
        dev = [(r["epoch"], r["dev_loss"]) for r in records if r.get("event") == "dev" and _number(r.get("epoch"))]
        dev = [(e, v) for e, v in dev if _number(v)]
        if not dev and model.get("dev_losses"):
            dev = [(i + 1, v) for i, v in enumerate(model["dev_losses"]) if _number(v)]
        if dev:
            ax_dev.plot(*zip(*dev, strict=True), color=color, marker="o", label=name)
        elif _number(model.get("dev_loss")):  # not trained here (e.g. the ensemble): one level
            ax_dev.axhline(model["dev_loss"], color=color, ls=":", label=f"{name} (not trained)")
    ax_train.set(title="Training loss", xlabel="optimizer step", ylabel="loss (nats / token)")
    ax_dev.set(title="Dev loss", xlabel="epoch", ylabel="cross-entropy (nats / token)")
    ax_dev.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_train, ax_dev):
        if ax.has_data():
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def _blimp_bars(results: dict[str, Any], path: Path, colors: dict[str, Any]) -> Path:
    from matplotlib.figure import Figure

    evaluated = {name: m for name, m in results.get("models", {}).items() if m.get("blimp")}
    fields = sorted({f for m in evaluated.values() for f in m["blimp"].get("per_field", {})})
    groups = ["overall", *fields]
    width_in = min(14.0, max(6.0, 2.5 + len(groups) * (0.35 * len(evaluated) + 0.4)))
    fig = Figure(figsize=(width_in, 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(evaluated))
    for k, (name, model) in enumerate(evaluated.items()):
        accuracies = [blimp_accuracy(model)] + [blimp_accuracy(model, "field", f) for f in fields]
        xs = [g + (k - (len(evaluated) - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * a.value if a is not None else 0.0 for a in accuracies]
        intervals = [a.interval() if a is not None else None for a in accuracies]
        # 95% Wilson intervals as asymmetric error bars; none where the item count is not recorded.
        low = [h - 100 * iv[0] if iv else 0.0 for h, iv in zip(heights, intervals, strict=True)]
        high = [100 * iv[1] - h if iv else 0.0 for h, iv in zip(heights, intervals, strict=True)]
        bars = ax.bar(xs, heights, width, color=colors[name], label=name)
        if any(intervals):
            ax.errorbar(xs, heights, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        labels = [f"{h:.0f}" if a else "" for h, a in zip(heights, accuracies, strict=True)]
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=6)  # inside: the error bars sit on top
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance (50%)")
    ax.set_xticks(range(len(groups)), [g.replace("_", "-") for g in groups])
    ax.set(ylim=(0, 105), ylabel="accuracy (%)", title="BLiMP accuracy by field (error bars: 95% Wilson interval)")
    if not evaluated:
        ax.text(0.5, 0.6, "no BLiMP results", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def make_plots(results: dict[str, Any], run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw the report's figures into ``<run_dir>/plots/`` (PNG, written atomically).

    ``training_curves.png``: left, the training loss per optimizer step of each model with a metrics log
    (dashed: its hard-label CE when that differs from the loss, as in distillation); right, dev loss per epoch
    (from the log's dev events, else ``dev_losses``; a dotted level for a model with only ``dev_loss``).
    ``blimp_fields.png``: grouped bars of BLiMP accuracy overall and per field for each model, each with its 95%
    Wilson interval as an error bar where results.json records the item count, and a dashed 50% chance line
    (after the per-field figure of Timiryasov & Tastet, arXiv:2308.02019).

    Args:
        results (dict): the parsed ``results.json``; metrics files are resolved against ``run_dir``.
        run_dir (str | PathLike): the run folder.

    Returns:
        list[Path]: the two PNG paths, curves first.
    """
    import matplotlib as mpl

    run_dir = Path(run_dir)
    cycle = mpl.colormaps["tab10"]
    colors = {name: cycle(i % 10) for i, name in enumerate(results.get("models", {}))}
    paths = [
        _curves(results, run_dir, run_dir / CURVES_PLOT, colors),
        _blimp_bars(results, run_dir / BLIMP_PLOT, colors),
    ]
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths
