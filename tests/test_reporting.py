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
    # Best per column in bold: the ensemble's dev loss, the student's BLiMP overall and morphology.
    assert "| student | student | 1.71 M | 4.950 | **61.2** | **70.0** | 50.0 |" in text
    assert "| ensemble | ensemble | 5.56 M | **4.700** | 58.0 | 56.0 | **60.0** |" in text
    assert "| baseline | baseline | 1.71 M | 5.100 | — | — | — |" in text
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
    assert "| a | recipe-a | student | student | 1.71 M | 4.950 | 60.0 |" in text
    assert "| b | recipe-b | student | student | 1.71 M | 4.950 | **70.0** |" in text
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
    assert "| a | teacher | 10 | 2.000 | 50.0 | 50.0 | 50.0 |" in text
    assert "| b | teacher | 10 | **1.000** | 50.0 | 50.0 | 50.0 |" in text
    assert "> **Corpus.** mixture." in text and text.count("mixture.") == 1
