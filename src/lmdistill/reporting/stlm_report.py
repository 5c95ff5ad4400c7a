"""The ``stlm`` method's report: STLM's Table 1 layout, the adaptation curve and the students' training curves.

Rows: the teacher in its own vocabulary, the teacher adapted with each initialisation, then each student variant
(the no-KD baseline first) as mean ± sample standard deviation over its seeds. Bits per byte of held-out text is
the column that compares models across tokenizers. A KD variant's difference from the baseline is paired by seed
(same initialisation and data order) and given with a t interval over the seeds; a difference whose 95% interval
contains 0 is called within noise.
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
from lmdistill.training_state import metric_records

__all__ = ["ADAPTATION_PLOT", "STUDENT_PLOT", "render_stlm_report", "variant_rows", "write_stlm_report"]

log = logging.getLogger(__name__)

ADAPTATION_PLOT = "plots/adaptation_curve.png"
STUDENT_PLOT = "plots/student_curves.png"
TASKS = (("arc_easy", "ARC-Easy"), ("winogrande", "WinoGrande"), ("mmlu", "MMLU"))


def _metrics(model: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers of one model: params, bits/byte, BLiMP overall and per field, task accuracies."""
    out: dict[str, float | None] = {
        "params": model.get("num_parameters"),
        "bpb": (model.get("bits_per_byte") or {}).get("bits_per_byte"),
        "blimp": (model.get("blimp") or {}).get("overall"),
    }
    for field, acc in ((model.get("blimp") or {}).get("per_field") or {}).items():
        out[f"blimp:{field}"] = acc
    for task, _ in TASKS:
        result = (model.get("eval") or {}).get(task)
        out[task] = result.get("acc") if result else None
    return out


def variant_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, list[float]]]]:
    """Table rows in order: (label, metric -> values over seeds); teachers have one value per metric."""
    models = results.get("models", {})
    rows: list[tuple[str, dict[str, list[float]]]] = []
    for name, model in models.items():
        if model.get("role") == "teacher":
            label = "teacher (own vocabulary)" if model.get("stage") == "original" else f"{name} (adapted)"
            if model.get("chosen"):
                label += ", the students' teacher"
            rows.append((label, {k: [v] for k, v in _metrics(model).items() if _number(v)}))
    groups: dict[str, dict[str, list[float]]] = {}
    for model in models.values():
        if model.get("role") in ("baseline", "student"):
            group = groups.setdefault(model["variant"], {})
            for k, v in _metrics(model).items():
                if _number(v):
                    group.setdefault(k, []).append(v)
    rows.extend(groups.items())
    return rows


def _mean_std(values: list[float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * mean(values):.{digits}f} ± {scale * stdev(values):.{digits}f}"


def _params(values: list[float] | None) -> str:
    if not values:
        return "-"
    n = values[0]
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _table(rows: list[tuple[str, dict[str, list[float]]]]) -> str:
    fields = sorted({k.split(":", 1)[1] for _, r in rows for k in r if k.startswith("blimp:")})
    header = ["model", "params", "bits/byte", "BLiMP", *fields, *(label for _, label in TASKS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, r in rows:
        cells = [label, _params(r.get("params")), _mean_std(r.get("bpb"), 1.0, 3), _mean_std(r.get("blimp"), 100)]
        cells += [_mean_std(r.get(f"blimp:{f}"), 100) for f in fields]
        cells += [_mean_std(r.get(task), 100) for task, _ in TASKS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(results: dict[str, Any], metric: str = "bpb") -> dict[str, dict[str, Any]]:
    """Each KD variant minus the baseline of the same seed: mean, std, 95% t interval, seeds (by variant)."""
    models = list(results.get("models", {}).values())
    base = {m["seed"]: _metrics(m)[metric] for m in models if m.get("role") == "baseline"}
    by_variant: dict[str, list[float]] = {}
    for m in models:
        value = _metrics(m)[metric] if m.get("role") == "student" else None
        if _number(value) and _number(base.get(m["seed"])):
            by_variant.setdefault(m["variant"], []).append(value - base[m["seed"]])
    out = {}
    for variant, diffs in by_variant.items():
        n = len(diffs)
        sd = stdev(diffs) if n > 1 else None
        half = t_value(n - 1) * sd / math.sqrt(n) if sd is not None else None
        out[variant] = {"mean": mean(diffs), "std": sd, "half_width": half, "n": n}
    return out


def _differences_text(results: dict[str, Any]) -> tuple[str, str]:
    """The paired-difference table and the one sentence on what the numbers show."""
    diffs = paired_differences(results, "bpb")
    blimp = paired_differences(results, "blimp")
    if not diffs:
        return "", "No KD variant has a baseline of the same seed to compare with."
    lines = [
        "| variant - baseline | bits/byte (mean, 95% CI) | BLiMP points (mean, 95% CI) | seeds |",
        "|---|---|---|---|",
    ]
    verdicts = []
    for variant, d in diffs.items():
        b = blimp.get(variant)

        def fmt(x: dict[str, Any] | None, scale: float, digits: int) -> str:
            if not x:
                return "-"
            if x["half_width"] is None:
                return f"{scale * x['mean']:+.{digits}f}"
            lo, hi = x["mean"] - x["half_width"], x["mean"] + x["half_width"]
            return f"{scale * x['mean']:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"

        lines.append(f"| {variant} | {fmt(d, 1, 4)} | {fmt(b, 100, 1)} | {d['n']} |")
        if d["half_width"] is None:
            verdicts.append(f"{variant} {d['mean']:+.4f} bits/byte (one seed: no interval)")
        elif abs(d["mean"]) <= d["half_width"]:
            verdicts.append(f"{variant} {d['mean']:+.4f} bits/byte, within noise")
        else:
            better = "better" if d["mean"] < 0 else "worse"
            verdicts.append(f"{variant} {d['mean']:+.4f} bits/byte ({better} than the baseline beyond seed noise)")
    sentence = "Against the no-KD baseline, paired by seed: " + "; ".join(verdicts) + "."
    return "\n".join(lines), sentence


def _adaptation_plot(results: dict[str, Any], run_dir: Path) -> Path | None:
    from matplotlib.figure import Figure

    data = results.get("data", {})
    nbytes, positions = data.get("dev_blocks_bytes"), data.get("dev_blocks_positions")
    if not nbytes or not positions:
        return None
    factor = positions / (math.log(2) * nbytes)  # nats per token -> bits per byte of the dev blocks' text
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, model in results.get("models", {}).items():
        if model.get("stage") == "original" and _number(model.get("dev_blocks_bits_per_byte")):
            ax.axhline(model["dev_blocks_bits_per_byte"], color="black", ls="--", label="teacher, own vocabulary")
        elif model.get("stage") == "adapted":
            curve = [(p["tokens"] or 0, p["dev_loss"] * factor) for p in model.get("curve", [])]
            if curve:
                ax.plot(*zip(*curve, strict=True), marker=".", label=f"{name} ({model['adaptation']['init']})")
    if not ax.has_data():
        return None
    ax.set(
        title="Adaptation: new embedding and head on a frozen body",
        xlabel="adaptation tokens",
        ylabel="bits per byte (dev blocks)",
    )
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, run_dir / ADAPTATION_PLOT)


def _student_plot(results: dict[str, Any], run_dir: Path) -> Path | None:
    """Hard-label CE (comparable across variants) and dev loss on shared axes; D and the hint term on their own."""
    from matplotlib.figure import Figure

    students = [m for m in results.get("models", {}).values() if m.get("role") in ("baseline", "student")]
    first_seed = min((m["seed"] for m in students), default=None)
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax_ce, ax_dev, ax_div, ax_hint = fig.subplots(1, 4)
    for model in students:
        path = run_dir / (model.get("metrics_file") or "")
        if not model.get("metrics_file") or not path.is_file():
            continue
        records = metric_records(path)
        train = [r for r in records if "event" not in r and _number(r.get("step"))]
        label = model["variant"]
        if model["seed"] == first_seed:
            ce = [(r["step"], r["ce"]) for r in train if _number(r.get("ce"))]
            if ce:
                ax_ce.plot(*zip(*ce, strict=True), lw=1, label=label)
            for ax, key in ((ax_div, "forward_kl"), (ax_div, "reverse_kl"), (ax_hint, "hint")):
                pts = [(r["step"], r[key]) for r in train if _number(r.get(key))]
                if pts:
                    ax.plot(*zip(*pts, strict=True), lw=1, label=f"{label}: {key}")
        dev = [(i + 1, v) for i, v in enumerate(model.get("dev_losses") or []) if _number(v)]
        if dev:
            ax_dev.plot(*zip(*dev, strict=True), marker="o", lw=0.8, alpha=0.7, label=f"{label} s{model['seed']}")
    ax_ce.set(title=f"Training CE (seed {first_seed})", xlabel="optimizer step", ylabel="nats / token")
    ax_dev.set(title="Dev CE, every seed", xlabel="epoch", ylabel="nats / token")
    ax_div.set(title="Divergence term D (without T^2)", xlabel="optimizer step", ylabel="nats / token")
    ax_hint.set(title="Hint term (MSE)", xlabel="optimizer step", ylabel="per element")
    for ax in (ax_ce, ax_dev, ax_div, ax_hint):
        if ax.has_data():
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, run_dir / STUDENT_PLOT)


def _adaptation_text(results: dict[str, Any]) -> str:
    lines = []
    for name, model in results.get("models", {}).items():
        if model.get("stage") != "adapted":
            continue
        a = model.get("adaptation", {})
        rows = a.get("rows") or {}
        curve = model.get("curve") or []
        tokens = curve[-1]["tokens"] if curve and curve[-1].get("tokens") else None
        start = (model.get("curve") or [{}])[0].get("dev_loss")
        lines.append(
            f"- {name}: {a.get('init')} init, {a.get('trained_parameters', 0):,} parameters trained "
            f"({'tied' if a.get('tied') else 'untied'} embedding/head; vocabulary {a.get('teacher_vocab_size'):,} -> "
            f"{a.get('vocab_size'):,}), dev loss {start if start is None else round(start, 3)} -> "
            f"{model.get('dev_loss') if model.get('dev_loss') is None else round(model['dev_loss'], 3)} nats/token "
            f"after {tokens if tokens is not None else '?'} tokens" + (f"; rows: {rows}" if rows else "")
        )
    return "\n".join(lines)


def _cost_text(results: dict[str, Any]) -> str:
    models = results.get("models", {})
    times: dict[str, list[float]] = {}
    for m in models.values():
        if m.get("role") in ("baseline", "student") and _number(m.get("train_time_s")):
            times.setdefault(m["variant"], []).append(m["train_time_s"])
    cache = results.get("data", {}).get("teacher_cache") or {}
    parts = [f"{v}: {_mean_std(t, 1.0, 0)} s" for v, t in times.items()]
    text = "Student training time per run (mean ± std over seeds): " + ", ".join(parts) + "."
    if cache:
        text += (
            f" The teacher's top-{cache['top_k']} cache ({cache['dtype']}, {cache['bytes_per_token']:.0f} B/token, "
            f"{cache['total_bytes'] / 1e6:.1f} MB) took {cache['build_time_s']:.0f} s to build, once for every KD "
            "run; a hint variant also runs the teacher's first blocks online (its time above includes that)."
        )
    return text


def _teacher_sentence(results: dict[str, Any]) -> str:
    """What adaptation cost the teacher, in bits per byte and BLiMP."""
    models = results.get("models", {})
    original = next((m for m in models.values() if m.get("stage") == "original"), None)
    adapted = {n: m for n, m in models.items() if m.get("stage") == "adapted"}
    if original is None or not adapted:
        return ""

    def bpb(m: dict[str, Any]) -> float | None:
        return (m.get("bits_per_byte") or {}).get("bits_per_byte")

    def blimp(m: dict[str, Any]) -> str:
        value = (m.get("blimp") or {}).get("overall")
        return "-" if value is None else f"{100 * value:.1f}%"

    parts = [
        f"{m['adaptation']['init']} {bpb(m):.3f} bits/byte and BLiMP {blimp(m)}"
        for m in adapted.values()
        if _number(bpb(m))
    ]
    return (
        f"The teacher in its own vocabulary: {bpb(original):.3f} bits/byte, BLiMP {blimp(original)}; adapted to the "
        f"run's vocabulary: {'; '.join(parts)}."
    )


def render_stlm_report(results: dict[str, Any], plots: list[str]) -> str:
    """report.md's text for an ``stlm`` run's results.json."""
    rows = variant_rows(results)
    diff_table, sentence = _differences_text(results)
    sentence = f"{_teacher_sentence(results)} {sentence}".strip()
    text_info = results.get("data", {}).get("bits_per_byte_text", {})
    seeds = results.get("recipe", {}).get("seeds", [])
    parts = [
        f"# {results.get('recipe_name', 'stlm')}: cross-vocabulary teacher adaptation + response/feature KD",
        "",
        f"{sentence}",
        "",
        "## Table 1",
        "",
        _table(rows),
        "",
        f"Bits per byte: held-out ({text_info.get('split', 'dev')}) corpus documents, "
        f"{sum((text_info.get('bytes') or {}).values()):,} bytes over {len(text_info.get('bytes') or {})} sources, "
        "each model in its own tokenizer. Accuracies in %; student rows are mean ± std over seeds "
        f"{', '.join(map(str, seeds))}.",
        "",
        "## Distilled students against the baseline",
        "",
        diff_table,
        "",
        "## Adaptation",
        "",
        _adaptation_text(results),
        "",
        *(f"![{Path(p).stem}]({p})" for p in plots),
        "",
        "## Cost",
        "",
        _cost_text(results),
        "",
        f"Wall time of the whole run: {results.get('wall_time_s', 0) / 60:.1f} min over "
        f"{results.get('invocations', 1)} invocation(s).",
        "",
    ]
    return "\n".join(parts)


def write_stlm_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/report.md`` and its plots from ``RUN/results.json``; returns the report's path.

    Raises:
        FileNotFoundError: no results.json in ``run_dir``.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    plots = []
    for make in (_adaptation_plot, _student_plot):
        try:
            path = make(results, run_dir)
        except Exception as err:  # noqa: BLE001 - a plot is never worth losing the report
            log.warning("plot %s failed: %s", make.__name__, err)
            path = None
        if path is not None:
            plots.append(str(path.relative_to(run_dir)))
    report = run_dir / "report.md"
    write_text(report, render_stlm_report(results, plots))
    return report
