import json
import math

import pytest

from lmdistill.reporting import compare_runs, make_plots, read_metrics, render_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def blimp(overall, morphology, syntax):
    return {
        "overall": overall,
        "per_field": {"morphology": morphology, "syntax": syntax},
        "per_paradigm": {"adjunct_island": syntax, "irregular_past_participle_verbs": morphology},
        "num_pairs": 10,
        "macro_paradigm": (morphology + syntax) / 2,
    }


def model(role, arch, params, dev_loss, acc, metrics=True, name=""):
    return {
        "role": role,
        "arch": arch,
        "num_parameters": params,
        "dev_loss": dev_loss,
        "dev_losses": [dev_loss + 0.5, dev_loss] if dev_loss is not None and metrics else [],
        "train_time_s": 12.5 if metrics else None,
        "metrics_file": f"models/{name}/metrics.jsonl" if metrics else None,
        **({"blimp": acc} if acc else {}),
    }


def make_run(run_dir, recipe_name="babyllama-cpu", student_acc=0.6123):
    models = {
        "gpt2-teacher": model("teacher", "gpt2", 3_456_789, 4.8123, blimp(0.55, 0.5, 0.6), name="gpt2-teacher"),
        "llama-teacher": model("teacher", "llama", 2_100_000, 4.9, blimp(0.57, 0.54, 0.6), name="llama-teacher"),
        "ensemble": model("ensemble", "ensemble", 5_556_789, 4.7, blimp(0.58, 0.56, 0.6), metrics=False),
        "baseline": model("baseline", "llama", 1_712_345, 5.1, None, name="baseline"),
        "student": model("student", "llama", 1_712_345, 4.95, blimp(student_acc, 0.7, 0.5), name="student"),
    }
    results = {
        "recipe_name": recipe_name,
        "recipe": {"name": recipe_name, "train": {"lr": 3e-4}},
        "created": "2025-01-01T00:00:00",
        "wall_time_s": 3725.0,
        "versions": {"lmdistill": "0.1.0", "python": "3.11", "torch": "2.13"},
        "data": {
            "root": "/data",
            "files": {"corpus/brown/train.txt": "ab" * 32},
            "train_tokens": 1_234_567,
            "dev_tokens": 45_678,
            "num_train_blocks": 9645,
            "vocab_size": 16000,
            "corpus_note": "A BabyLM-style mixture, not the BabyLM corpus.",
        },
        "models": models,
    }
    for _name, m in models.items():
        if m["metrics_file"]:
            path = run_dir / m["metrics_file"]
            path.parent.mkdir(parents=True)
            lines = [
                json.dumps(
                    {
                        "step": s,
                        "epoch": s / 20,
                        "loss": 6 - s / 10,
                        "ce": 6.5 - s / 10,
                        "lr": 1e-4,
                        "tokens": 4096 * s,
                        "new_key": [1],
                    }
                )
                for s in range(1, 21)
            ]
            lines += ["not json", json.dumps({"event": "dev", "step": 20, "epoch": 1, "dev_loss": m["dev_loss"]})]
            path.write_text("\n".join(lines) + '\n{"step": 21, "lo', encoding="utf-8")  # torn last line
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return results


def test_write_report_tables_and_plots(tmp_path):
    run = tmp_path / "run1"
    results = make_run(run)
    path = write_report(run)
    assert path == run / "report.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Distillation report: babyllama-cpu")
    assert "| model | role | parameters | dev loss | BLiMP overall | morphology | syntax |" in text
    # The ensemble's dev loss is more than 0.01 below the next: bold. On 10 pairs no BLiMP accuracy stands out of
    # the noise: no bold, and each has its 95% Wilson interval; the fields have no item count, so no interval.
    assert "| student | student | 1.71 M | 4.950 | 61.2 [32.3, 84.0] | 70.0 | 50.0 |" in text
    assert "| ensemble | ensemble | 5.56 M | **4.700** | 58.0 [29.7, 81.9] | 56.0 | 60.0 |" in text
    assert "| baseline | baseline | 1.71 M | 5.100 | — | — | — |" in text
    assert "- Items (n): BLiMP 10 minimal pairs (per-field counts not recorded: no field intervals)." in text
    assert "_`baseline` has no accuracies in results.json: nothing to compare._" in text
    assert "<details>" in text and "| adjunct_island |" in text
    assert "(plots/training_curves.png)" in text and "(plots/blimp_fields.png)" in text
    assert text.count("not the BabyLM corpus") == 1  # the recorded note, shown once as the callout
    assert "1.23 M training tokens" in text and "1 h 02 min" in text and "torch 2.13" in text
    assert "ab" * 32 in text and '"lr": 0.0003' in text
    for name in ("training_curves.png", "blimp_fields.png"):
        png = run / "plots" / name
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(run.rglob("*.tmp"))
    assert render_report(results) == text


def test_read_metrics_skips_bad_lines(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    records = read_metrics(run / "models" / "student" / "metrics.jsonl")
    assert len(records) == 21
    assert records[-1] == {"event": "dev", "step": 20, "epoch": 1, "dev_loss": 4.95}


def test_plots_without_metrics_or_blimp(tmp_path):
    results = {"recipe_name": "x", "models": {"m": {"role": "student", "dev_loss": math.pi, "metrics_file": "gone"}}}
    paths = make_plots(results, tmp_path)
    assert [p.read_bytes()[:8] for p in paths] == [PNG_MAGIC, PNG_MAGIC]
    text = render_report(results)
    assert "| m | student | — | 3.142 | — |" in text  # a single number is not bolded


def test_compare_runs_lists_both(tmp_path):
    make_run(tmp_path / "a", recipe_name="recipe-a", student_acc=0.6)
    make_run(tmp_path / "b", recipe_name="recipe-b", student_acc=0.7)
    text = compare_runs([tmp_path / "a", tmp_path / "b"])
    assert "Comparison of 2 runs" in text
    # 70% against 60% of 10 pairs is inside the noise: no bold.
    assert "| a | recipe-a | student | student | 1.71 M | 4.950 | 60.0 [31.3, 83.2] |" in text
    assert "| b | recipe-b | student | student | 1.71 M | 4.950 | 70.0 [39.7, 89.2] |" in text
    assert "Items (n): BLiMP 10 minimal pairs" in text
    assert text.count("| gpt2-teacher |") == 2
    with pytest.raises(ValueError):
        compare_runs([])


def test_missing_or_broken_results_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "results.json")):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match="results.json is not valid JSON"):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_no_bold_when_all_models_tie():
    tie = {"role": "teacher", "num_parameters": 10, "dev_loss": 2.0, "blimp": blimp(0.5, 0.5, 0.5)}
    results = {
        "recipe_name": "x",
        "data": {"corpus_note": "mixture."},
        "models": {"a": tie, "b": dict(tie, dev_loss=1.0)},
    }
    text = render_report(results)
    assert "| a | teacher | 10 | 2.000 | 50.0 [23.7, 76.3] | 50.0 | 50.0 |" in text
    assert "| b | teacher | 10 | **1.000** | 50.0 [23.7, 76.3] | 50.0 | 50.0 |" in text
    assert "> **Corpus.** mixture." in text and text.count("mixture.") == 1


# --------------------------------------------------------------------------- uncertainty: intervals and tests

# 1,000 BLiMP pairs: 3 morphology paradigms and 7 syntax paradigms of 100 pairs each, in paradigm order.
PARADIGMS = [("morphology", f"morph_{i}") for i in range(3)] + [("syntax", f"syn_{i}") for i in range(7)]
BASELINE = [1, 0] * 500  # 50.0%, and 50% of each paradigm


def blimp_eval(correct, record_items=False):
    """A model's ``eval`` and ``blimp`` entries as the pipeline builds them (``aggregate``, ``blimp_summary``).

    With ``record_items``, also the per-item correctness the report reads when present: ``correct.acc``, a
    "0"/"1" string beside each ``num_items`` (the task and each group).
    """
    from lmdistill.evaluation.blimp import blimp_summary
    from lmdistill.evaluation.metrics import aggregate
    from lmdistill.evaluation.tasks import Doc, get_task

    docs = [
        Doc(("", ""), (" good", " bad"), 0, (4, 3), (("field", field), ("paradigm", paradigm)))
        for field, paradigm in PARADIGMS
        for _ in range(100)
    ]
    result = aggregate(get_task("blimp"), docs, [{"acc": float(c)} for c in correct])
    # aggregate records each item's outcome beside every num_items; check it against the items themselves
    assert result["correct"] == {"acc": "".join(map(str, correct))}
    for key in ("field", "paradigm"):
        for name, group in result["groups"][key].items():
            members = [c for c, d in zip(correct, docs, strict=True) if dict(d.groups)[key] == name]
            assert group["correct"] == {"acc": "".join(map(str, members))}
            if not record_items:  # results.json written before the field existed
                del group["correct"]
    if not record_items:
        del result["correct"]
    return {"eval": {"blimp": result}, "blimp": blimp_summary(result)}


def flip(correct, to_wrong, to_right):
    """``correct`` with the first ``to_wrong`` right items made wrong and the first ``to_right`` wrong made right."""
    out = list(correct)
    rights = [i for i, c in enumerate(out) if c][:to_wrong]
    wrongs = [i for i, c in enumerate(out) if not c][:to_right]
    for i in rights:
        out[i] = 0
    for i in wrongs:
        out[i] = 1
    return out


def run_results(models, record_items=False):
    return {
        "recipe_name": "noise",
        "models": {
            name: {"role": role, "num_parameters": 1000, "dev_loss": 5.0, **blimp_eval(correct, record_items)}
            for name, (role, correct) in models.items()
        },
    }


def cell(text, name, column=1):
    """The ``column``-th cell (0: the name) of the table row of ``name`` in ``text``."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")][column]


def against_baseline(text):
    return text.split("## Against the no-KD baseline", 1)[1].split("## Plots", 1)[0]


@pytest.mark.parametrize("record_items", [False, True])
def test_report_marks_noise_and_significant_differences(record_items):
    models = {
        "baseline": ("baseline", BASELINE),
        "close": ("student", flip(BASELINE, 60, 70)),  # 51.0%: +1 point, 130 pairs answered differently
        "far": ("student", flip(BASELINE, 0, 200)),  # 70.0%: +20 points
    }
    text = render_report(run_results(models, record_items))
    assert "- Items (n): BLiMP 1,000 minimal pairs (morphology 300, syntax 700)." in text
    # Each accuracy with its 95% Wilson interval; "far" is bold where it stands out of the runner-up's noise.
    assert "| baseline | baseline | 1 k | 5.000 | 50.0 [46.9, 53.1] |" in text
    assert "| far | student | 1 k | 5.000 | **70.0** [67.1, 72.8] |" in text
    assert "| close | student | 1 k | 5.000 | 51.0 [47.9, 54.1] |" in text
    section = against_baseline(text)
    assert "| model | BLiMP overall | morphology | syntax |" in section
    close, far = cell(section, "close"), cell(section, "far")
    assert close.startswith("+1.0 [") and close.endswith("] ~")
    assert far.startswith("+20.0 [") and far.endswith("] *")
    if record_items:
        assert "Paired cells" in section and "McNemar's mid-p" in section and "unpaired" not in section
    else:
        assert "All cells are unpaired" in section and "conservative fallback" in section


def test_paired_comparison_finds_what_the_unpaired_fallback_cannot():
    # +3 points on the same 1,000 pairs, all 30 changed pairs in the student's favour: McNemar's mid-p is about
    # 2e-9, while two independent 1,000-pair accuracies of 50% and 53% are well inside each other's noise.
    models = {"baseline": ("baseline", BASELINE), "student": ("student", flip(BASELINE, 0, 30))}
    unpaired = render_report(run_results(models, record_items=False))
    paired = render_report(run_results(models, record_items=True))
    assert cell(against_baseline(unpaired), "student").endswith("] ~")
    assert cell(against_baseline(paired), "student") == "+3.0 [+1.9, +4.1] *"
    assert "| student | student | 1 k | 5.000 | 53.0 [49.9, 56.1] |" in unpaired  # no bold: inside the noise
    assert "| student | student | 1 k | 5.000 | **53.0** [49.9, 56.1] |" in paired  # bold: it is not


def test_inconsistent_per_item_correctness_falls_back_to_unpaired():
    models = {"baseline": ("baseline", BASELINE), "student": ("student", flip(BASELINE, 0, 30))}
    results = run_results(models, record_items=True)
    results["models"]["student"]["eval"]["blimp"]["correct"]["acc"] += "1"  # 1,001 entries for 1,000 pairs
    section = against_baseline(render_report(results))
    assert cell(section, "student").endswith("] ~")
    assert "Unpaired cells" in section  # the fields are still paired, the overall cell is not


def test_samples_give_per_item_correctness():
    from lmdistill.reporting.accuracy import task_accuracy

    tasks = {"arc_easy": {"acc": 0.5, "num_items": 4, "samples": [{"acc": 1.0}, {"acc": 0.0}] * 2}}
    assert task_accuracy(tasks, "arc_easy").correct == (1, 0, 1, 0)
    assert task_accuracy(tasks, "arc_easy", "acc_norm") is None
    tasks["arc_easy"]["acc"] = 0.75  # the samples no longer average to the accuracy: ignored
    assert task_accuracy(tasks, "arc_easy").correct is None


def test_plots_draw_95_percent_error_bars(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from lmdistill.reporting.stats import wilson_interval
    from lmdistill.reporting.tasks import plot_tasks

    calls = []
    original = Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        calls.append((list(y), kwargs["yerr"]))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", spy)
    results = run_results({"baseline": ("baseline", BASELINE), "far": ("student", flip(BASELINE, 0, 200))})
    make_plots(results, tmp_path)
    low, high = wilson_interval(0.7, 1000)
    (y_base, err_base), (y_far, err_far) = calls  # one errorbar call per model in the BLiMP figure
    assert y_far[0] == pytest.approx(70.0)  # overall, then morphology and syntax
    assert err_far[0][0] == pytest.approx(70.0 - 100 * low) and err_far[1][0] == pytest.approx(100 * high - 70.0)
    assert len(y_base) == len(err_base[0]) == 3
    calls.clear()
    evals = {name: m["eval"] for name, m in results["models"].items()}
    assert plot_tasks(evals, tmp_path / "tasks.png").read_bytes()[:8] == PNG_MAGIC
    assert [y for y, _ in calls] == [[pytest.approx(50.0)], [pytest.approx(70.0)]]


def test_task_table_intervals_and_bold_only_beyond_noise():
    from lmdistill.reporting.tasks import task_table

    def arc(acc, n=20):
        return {"arc_easy": {"task": "arc_easy", "acc": acc, "acc_norm": acc, "num_items": n, "chance": 0.25}}

    text = task_table({"a": arc(0.30), "b": arc(0.35)})
    assert "| a | 30.0 [14.5, 51.9] | 30.0 [14.5, 51.9] |" in text
    assert "| b | 35.0 [18.1, 56.7] | 35.0 [18.1, 56.7] |" in text  # 35% vs 30% of 20 items: no bold
    assert "Items (n): arc_easy 20 (chance 25%)." in text
    text = task_table({"a": arc(0.30, 2000), "b": arc(0.35, 2000)})
    assert "| b | **35.0** [32.9, 37.1] | **35.0** [32.9, 37.1] |" in text


def test_readme_blimp_gap_is_inside_the_noise():
    # The README's table: student 51.6% and baseline 50.4% of 1,340 pairs; results.json as written before any
    # per-item field, with only ``blimp.num_pairs`` as the count (no ``eval``): the unpaired fallback.
    def entry(role, overall):
        return {"role": role, "dev_loss": 5.0, "blimp": {"overall": overall, "per_field": {}, "num_pairs": 1340}}

    text = render_report({"models": {"baseline": entry("baseline", 0.504), "student": entry("student", 0.516)}})
    assert "| student | student | — | 5.000 | 51.6 [48.9, 54.3] |" in text  # not bold
    assert cell(against_baseline(text), "student") == "+1.2 [-2.6, +5.0] ~"
