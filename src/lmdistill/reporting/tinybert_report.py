"""The ``tinybert`` method's report: the comparison table, the probe-batch logit losses and the gradient norms.

Rows: the teacher, then each variant (the no-KD baseline first) as mean ± sample standard deviation over its
seeds. Figures: the logit loss on the fixed train and held-out probe batches over training (Barakat & Huang's
Figures 3 and 4, one line per variant), the average gradient norm of each part of the student (their Figure 5)
and a part x step heatmap per variant. The claims are checked in words: a difference between two variants is
paired by seed and called within noise when its 95% t interval contains 0 (or when there is one seed only).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from lmdistill.atomic import write_text
from lmdistill.reporting.plots import _number, _save
from lmdistill.reporting.report import load_results
from lmdistill.reporting.stats import t_value
from lmdistill.reporting.stlm_report import _mean_std, _params
from lmdistill.training_state import metric_records

__all__ = ["GRADIENT_PLOT", "HEATMAP_PLOT", "PROBE_PLOT", "render_tinybert_report", "write_tinybert_report"]

log = logging.getLogger(__name__)

PROBE_PLOT = "plots/logit_loss_probes.png"
GRADIENT_PLOT = "plots/gradient_norms.png"
HEATMAP_PLOT = "plots/gradient_norm_heatmap.png"


def _students(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Variant -> its models over seeds, in the recipe's order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in results.get("models", {}).values():
        if model.get("role") in ("student", "baseline"):
            out.setdefault(model["variant"], []).append(model)
    return out


def _layer_keys(groups: dict[str, float]) -> tuple[str | None, str | None]:
    layers = sorted(k for k in groups if k.startswith("layer_"))
    return (layers[0], layers[-1]) if layers else (None, None)


def _values(models: list[dict[str, Any]], results: dict[str, Any]) -> dict[str, list[float]]:
    """The table's numbers of each seed of one variant."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if _number(value):
            out.setdefault(key, []).append(float(value))

    downstream = (results.get("downstream") or {}).get("models", {})
    for m in models:
        probe = m.get("final_probe") or {}
        add("params", m.get("num_parameters"))
        add("train_logit", probe.get("train_logit_loss"))
        add("held_logit", probe.get("held_out_logit_loss"))
        add("mlm", (m.get("held_out") or {}).get("loss"))
        norms = m.get("grad_norms") or {}
        first, last = _layer_keys(norms)
        add("grad_total", norms.get("total"))
        add("grad_first", norms.get(first) if first else None)
        add("grad_last", norms.get(last) if last else None)
        name = f"{m['variant']}-s{m['seed']}"
        accs = (downstream.get(name) or {}).get("accuracies") or []
        if accs:
            add("downstream", mean(accs))
    return out


def _fmt(values: list[float] | None, digits: int = 3, scale: float = 1.0) -> str:
    return _mean_std(values, scale, digits)


def _table(results: dict[str, Any]) -> str:
    downstream = results.get("downstream") or {}
    task = downstream.get("task", "downstream")
    header = ["model", "params", "train logit loss", "held-out logit loss", "MLM loss (held-out)",
              "grad norm (all)", "grad norm (first layer)", "grad norm (last layer)", f"{task} acc (%)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    teacher = results.get("models", {}).get("teacher", {})
    if teacher:
        accs = ((downstream.get("models") or {}).get("teacher") or {}).get("accuracies") or []
        cells = ["teacher", _params([teacher.get("num_parameters", 0)]), "0 (itself)", "0 (itself)",
                 _fmt([(teacher.get("held_out") or {}).get("loss")]) if teacher.get("held_out") else "-",
                 "-", "-", "-", _fmt(accs, 1, 100) if accs else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for variant, models in _students(results).items():
        v = _values(models, results)
        per_seed = [_acc_seeds(results, m) for m in models]
        accs = [a for seeds in per_seed for a in seeds]
        cells = [f"{variant} ({len(models)} seed{'s' if len(models) > 1 else ''})", _params(v.get("params")),
                 _fmt(v.get("train_logit")), _fmt(v.get("held_logit")), _fmt(v.get("mlm")),
                 _fmt(v.get("grad_total"), 3), _fmt(v.get("grad_first"), 3), _fmt(v.get("grad_last"), 3),
                 _fmt(accs, 1, 100) if accs else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _acc_seeds(results: dict[str, Any], model: dict[str, Any]) -> list[float]:
    name = f"{model['variant']}-s{model['seed']}"
    return list((((results.get("downstream") or {}).get("models") or {}).get(name) or {}).get("accuracies") or [])


def paired(results: dict[str, Any], key: str, first: str, second: str) -> dict[str, Any] | None:
    """``first - second`` of metric ``key`` (a ``_values`` key) paired by student seed: mean, half width, n."""
    students = _students(results)
    if first not in students or second not in students:
        return None
    by_seed = {m["seed"]: _values([m], results).get(key) for m in students[second]}
    diffs = []
    for m in students[first]:
        a, b = _values([m], results).get(key), by_seed.get(m["seed"])
        if a and b:
            diffs.append(a[0] - b[0])
    if not diffs:
        return None
    n = len(diffs)
    half = t_value(n - 1) * stdev(diffs) / math.sqrt(n) if n > 1 else None
    return {"mean": mean(diffs), "half_width": half, "n": n}


def _verdict(d: dict[str, Any] | None, what: str, lower_is: str, digits: int = 3, scale: float = 1.0) -> str:
    if d is None:
        return f"{what}: not measured."
    value = f"{scale * d['mean']:+.{digits}f}"
    if d["half_width"] is None:
        return f"{what}: {value} (one seed: no interval, cannot tell from noise)."
    lo, hi = scale * (d["mean"] - d["half_width"]), scale * (d["mean"] + d["half_width"])
    ci = f"95% CI [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    if abs(d["mean"]) <= d["half_width"]:
        return f"{what}: {value}, {ci} over {d['n']} seeds: within noise."
    direction = lower_is if d["mean"] < 0 else ("higher" if lower_is == "lower" else "lower")
    return f"{what}: {value}, {ci} over {d['n']} seeds: {direction}, beyond seed noise."


def _claims(results: dict[str, Any]) -> str:
    a, b = "multi_loss", "logit_only"
    students = _students(results)
    if a not in students or b not in students:
        return "The claims compare variants named multi_loss and logit_only; this run has " + ", ".join(students) + "."
    checks = (
        ("train_logit", "Train logit loss"),
        ("held_logit", "Held-out logit loss"),
        ("grad_total", "Average gradient norm"),
        ("grad_first", "First-layer gradient norm"),
    )
    lines = [f"- {_verdict(paired(results, key, a, b), f'{what}, {a} - {b}', 'lower')}" for key, what in checks]
    if results.get("downstream"):
        lines.append(
            "- " + _verdict(paired(results, "downstream", a, b), "Downstream accuracy (points), multi_loss - "
                            "logit_only", "lower", 1, 100)
        )  # fmt: skip
        if "baseline" in students:
            lines.append(
                "- " + _verdict(paired(results, "downstream", a, "baseline"), "Downstream accuracy (points), "
                                "multi_loss - baseline", "lower", 1, 100)
            )  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- plots


def _colors(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _probe_plot(results: dict[str, Any], run_dir: Path) -> Path | None:
    from matplotlib.figure import Figure

    from lmdistill.diagnostics import read_probes

    students = _students(results)
    if not students:
        return None
    colors = _colors(list(students))
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    drawn = False
    for ax, split, title in ((axes[0], "train", "train probe batches"), (axes[1], "held_out", "held-out batches")):
        for variant, models in students.items():
            for i, m in enumerate(models):
                records = read_probes(run_dir / m.get("probes_file", ""))
                points = [(r["step"], r[f"{split}_logit_loss"]) for r in records if f"{split}_logit_loss" in r]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, color=colors[variant], alpha=0.9, label=variant if i == 0 else None)
                    drawn = True
        ax.set_title(f"Logit loss D(teacher, student), {title}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats per supervised token")
    axes[0].legend()
    return _save(fig, run_dir / PROBE_PLOT) if drawn else None


def _group_order(keys: set[str]) -> list[str]:
    order = ["embeddings", *sorted(k for k in keys if k.startswith("layer_")), "final", "head", "projections"]
    return [k for k in order if k in keys]


def _gradient_plot(results: dict[str, Any], run_dir: Path) -> Path | None:
    from matplotlib.figure import Figure

    students = _students(results)
    keys = {k for ms in students.values() for m in ms for k in (m.get("grad_norms") or {}) if k != "total"}
    if not keys:
        return None
    order = [k for k in _group_order(keys) if k != "projections"]
    colors = _colors(list(students))
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for variant, models in students.items():
        ys = []
        for k in order:
            vals = [(m.get("grad_norms") or {}).get(k) for m in models]
            vals = [v for v in vals if _number(v)]
            ys.append(mean(vals) if vals else float("nan"))
        ax.plot(range(len(order)), ys, marker="o", color=colors[variant], label=variant)
    ax.set_xticks(range(len(order)), [k.replace("layer_", "L") for k in order], rotation=0)
    ax.set_yscale("log")
    ax.set_ylabel("mean L2 gradient norm over training")
    ax.set_title("Average gradient norm per part of the student (before clipping)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, run_dir / GRADIENT_PLOT)


def _heatmap(results: dict[str, Any], run_dir: Path) -> Path | None:
    import numpy as np
    from matplotlib.figure import Figure

    students = _students(results)
    first = {v: ms[0] for v, ms in students.items() if ms}
    grids = {}
    for variant, m in first.items():
        path = run_dir / m.get("metrics_file", "")
        if not path.exists():
            continue
        rows = [r for r in metric_records(path) if any(k.startswith("grad_norm/layer_") for k in r)]
        if not rows:
            continue
        keys = _group_order({k[len("grad_norm/") :] for r in rows for k in r if k.startswith("grad_norm/")})
        keys = [k for k in keys if k != "projections"]
        grid = np.array([[r.get(f"grad_norm/{k}", np.nan) for r in rows] for k in keys], dtype=float)
        grids[variant] = (keys, [r["step"] for r in rows], grid)
    if not grids:
        return None
    fig = Figure(figsize=(4 * len(grids) + 1, 3.5))
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    logs = np.log10(np.concatenate([g.ravel() for _, _, g in grids.values()]).clip(1e-12))
    vmin, vmax = np.nanmin(logs), np.nanmax(logs)
    image = None
    for ax, (variant, (keys, steps, grid)) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(np.log10(grid.clip(1e-12)), aspect="auto", origin="lower", vmin=vmin, vmax=vmax,
                          extent=(steps[0], steps[-1], -0.5, len(keys) - 0.5), cmap="viridis")  # fmt: skip
        ax.set_yticks(range(len(keys)), [k.replace("layer_", "L") for k in keys])
        ax.set_xlabel("step")
        ax.set_title(f"{variant} (seed {first[variant]['seed']})")
    fig.colorbar(image, ax=list(axes), label="log10 gradient norm")
    return _save(fig, run_dir / HEATMAP_PLOT)


# ------------------------------------------------------------------------------------------------------ report


def _teacher_text(results: dict[str, Any]) -> str:
    teacher = results.get("models", {}).get("teacher", {})
    held = teacher.get("held_out") or {}
    head = teacher.get("head")
    text = f"Teacher `{teacher.get('path')}` ({teacher.get('num_parameters', 0) / 1e6:.1f}M parameters)"
    if head:
        text += (
            f" with a new MLM head ({head['trained_parameters']:,} parameters trained on its frozen body in "
            f"{(head.get('train_time_s') or 0) / 60:.1f} min)"
        )
    if held:
        text += (
            f": masked-token accuracy {100 * held['accuracy']:.1f}% and loss {held['loss']:.3f} nats on "
            f"{held['tokens']:,} held-out masked tokens."
            if results.get("data", {}).get("masking")
            else f": next-token accuracy {100 * held['accuracy']:.1f}% and loss {held['loss']:.3f} nats on "
            f"{held['tokens']:,} held-out tokens."
        )
    return text


def render_tinybert_report(results: dict[str, Any], plots: list[str]) -> str:
    """report.md's text for a ``tinybert`` run's results.json."""
    recipe = results.get("recipe", {})
    dist = recipe.get("distillation", {})
    data = results.get("data", {})
    downstream = results.get("downstream")
    seeds = recipe.get("seeds", [])
    parts = [
        f"# {results.get('recipe_name', 'tinybert')}: multi-loss vs logit-only KD",
        "",
        _teacher_text(results),
        "",
        "## Table",
        "",
        _table(results),
        "",
        f"Logit loss: {dist.get('divergence', 'forward_kl')} at T = {dist.get('temperature', 1.0)} between teacher "
        f"and student at the supervised positions of {data.get('probe_rows', {}).get('train', '?')} fixed training "
        f"and {data.get('probe_rows', {}).get('held_out', '?')} held-out sequences, after the last step (nats per "
        "token, without T^2). MLM loss: the student's own CE on the held-out sequences. Gradient norms: L2 norm of "
        "each part's gradient before clipping, averaged over the logged steps. Variants are mean ± std over student "
        f"seeds {', '.join(map(str, seeds))}"
        + (
            f"; {downstream['task']} accuracy is the mean over fine-tuning seeds "
            f"{', '.join(map(str, (recipe.get('downstream') or {}).get('seeds', [])))} "
            f"({downstream['num_train']:,} training, {downstream['num_test']:,} test examples; majority class "
            f"{100 * downstream['majority_test']:.1f}%)."
            if downstream
            else "."
        ),
        "",
        "## The paper's claims, here",
        "",
        _claims(results),
        "",
        "Attention term: "
        + ("pre-softmax scores Q K^T / sqrt(d) (TinyBERT)" if dist.get("attention", "scores") == "scores"
           else "attention probabilities")
        + f"; layer map {dist.get('layers', 'uniform')!r} (uniform: student layer m takes teacher layer "
        "floor(m N / M)).",
        "",
        *(f"![{Path(p).stem}]({p})" for p in plots),
        "",
        f"Wall time of the whole run: {results.get('wall_time_s', 0) / 60:.1f} min over "
        f"{results.get('invocations', 1)} invocation(s).",
        "",
    ]  # fmt: skip
    return "\n".join(parts)


def write_tinybert_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/report.md`` and its plots from ``RUN/results.json``; returns the report's path.

    Raises:
        FileNotFoundError: no results.json in ``run_dir``.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    plots = []
    for make in (_probe_plot, _gradient_plot, _heatmap):
        try:
            path = make(results, run_dir)
        except Exception as err:  # noqa: BLE001 - a plot is never worth losing the report
            log.warning("plot %s failed: %s", make.__name__, err)
            path = None
        if path is not None:
            plots.append(str(path.relative_to(run_dir)))
    report = run_dir / "report.md"
    write_text(report, render_tinybert_report(results, plots))
    return report
