"""End to end: `lmdistill run babyllama-smoke` on the real data, every output file checked, then resumed."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmdistill.cli import main

pytestmark = pytest.mark.slow

MODELS = ["gpt2-teacher", "llama-teacher", "ensemble", "baseline", "student"]
TRAINED = ["gpt2-teacher", "llama-teacher", "baseline", "student"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("run") / "smoke"
    cache = tmp_path_factory.mktemp("cache")
    code = main(
        ["run", "babyllama-smoke", "--run-dir", str(run_dir), "--cache-dir", str(cache), "--data-root", str(data_root)]
    )
    assert code == 0
    return run_dir, cache


def test_run_writes_every_output(smoke_run):
    run_dir, _ = smoke_run
    assert (run_dir / "recipe.yaml").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    for name in TRAINED:
        stage = run_dir / "models" / name
        final = stage / "final"
        assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
        model = AutoModelForCausalLM.from_pretrained(final)  # plain transformers loads it
        assert model.config.vocab_size == len(tokenizer)
        records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
        assert any("loss" in r for r in records) and any(r.get("event") == "dev" for r in records)
        assert list((stage / "tb").glob("events.out.tfevents.*"))
        assert (stage / "eval.json").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["models"]) == MODELS
    assert {"recipe", "versions", "data", "wall_time_s", "recipe_name"} <= set(results)
    assert results["data"]["files"] and all(len(h) == 64 for h in results["data"]["files"].values())
    for name in MODELS:
        entry = results["models"][name]
        assert entry["num_parameters"] > 0 and entry["dev_loss"] > 0
        blimp = entry["blimp"]
        assert blimp["num_pairs"] == 67 * 2 and 0.0 <= blimp["overall"] <= 1.0
        assert len(blimp["per_paradigm"]) == 67 and set(blimp["per_field"]) >= {"syntax", "semantics", "morphology"}
        tasks = entry["eval"]
        assert list(tasks) == ["blimp", "arc_easy", "winogrande", "mmlu"]
        assert tasks["blimp"]["acc"] == blimp["overall"]
        assert tasks["arc_easy"]["num_items"] == 2 and tasks["winogrande"]["num_items"] == 2
        assert tasks["mmlu"]["num_items"] == 57 * 2 and len(tasks["mmlu"]["groups"]["subject"]) == 57
    teachers = [results["models"][n]["num_parameters"] for n in ("gpt2-teacher", "llama-teacher")]
    assert results["models"]["ensemble"]["num_parameters"] == sum(teachers)
    # the baseline and the student start from the same initialisation but train differently
    assert results["models"]["baseline"]["dev_losses"] != results["models"]["student"]["dev_losses"]
    report = (run_dir / "report.md").read_text()
    for name in MODELS:
        assert name in report
    assert "arc_easy (norm)" in report and "mmlu" in report
    for png in ("training_curves.png", "blimp_fields.png", "tasks.png"):
        assert (run_dir / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_without_resume_is_refused_and_resume_reuses_everything(smoke_run, data_root, capsys):
    run_dir, cache = smoke_run
    args = [
        "run",
        "babyllama-smoke",
        "--run-dir",
        str(run_dir),
        "--cache-dir",
        str(cache),
        "--data-root",
        str(data_root),
    ]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = json.loads((run_dir / "results.json").read_text())
    weights = (run_dir / "models" / "student" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    after = json.loads((run_dir / "results.json").read_text())
    assert (run_dir / "models" / "student" / "final" / "model.safetensors").stat().st_mtime_ns == weights
    for name in MODELS:
        assert after["models"][name]["blimp"] == before["models"][name]["blimp"]
        assert after["models"][name]["eval"] == before["models"][name]["eval"]
        assert after["models"][name]["dev_loss"] == pytest.approx(before["models"][name]["dev_loss"])
        assert after["models"][name]["train_time_s"] == before["models"][name]["train_time_s"]
    # resuming with a different recipe is refused, naming the key that differs
    assert main([*args, "--resume", "distillation.alpha=0.3"]) == 2
    assert "distillation.alpha" in capsys.readouterr().err


def test_report_command_rebuilds_and_compares(smoke_run, tmp_path, capsys):
    run_dir, _ = smoke_run
    (run_dir / "report.md").unlink()
    out = tmp_path / "compare.md"
    assert main(["report", str(run_dir), str(run_dir), "--output", str(out)]) == 0
    assert (run_dir / "report.md").is_file()
    assert "student" in out.read_text()
    torch.manual_seed(0)  # keep later tests independent of this module's RNG use


def test_cached_teachers_distil_a_student_and_a_corrupt_shard_is_named(smoke_run, tmp_path, data_root, capsys):
    """`cache-teacher` then `run --resume` with teachers.cache=true, reusing the smoke run's trained teachers."""
    run_dir, cache = smoke_run
    teachers = run_dir / "models"
    overrides = [
        f"teachers.members.0.model.path={teachers / 'gpt2-teacher' / 'final'}",
        "teachers.members.0.train=null",
        f"teachers.members.1.model.path={teachers / 'llama-teacher' / 'final'}",
        "teachers.members.1.train=null",
        "teachers.cache=true",
        "teachers.cache_shard_blocks=16",
        "baseline=false",
        "evaluation.tasks=[blimp]",
    ]
    where = ["--run-dir", str(tmp_path / "cached"), "--cache-dir", str(cache), "--data-root", str(data_root)]
    assert main(["cache-teacher", "babyllama-smoke", *overrides, *where]) == 0
    out = capsys.readouterr().out
    assert "top-64 float16 at T=2.0" in out and "bytes/token" in out
    manifest = json.loads((tmp_path / "cached" / "teacher-cache" / "manifest.json").read_text())
    assert len(manifest["shards"]) > 1 and manifest["bytes_per_token"] <= 300
    assert main(["run", "babyllama-smoke", *overrides, *where, "--resume"]) == 0
    results = json.loads((tmp_path / "cached" / "results.json").read_text())
    student = results["models"]["student"]
    assert student["teacher_cache"]["top_k"] == 64 and student["teacher_cache"]["bytes_per_token"] <= 300
    assert student["dev_loss"] > 0 and 0.0 <= student["blimp"]["overall"] <= 1.0
    # a damaged shard is found before training starts, and named
    shutil.rmtree(tmp_path / "cached" / "models" / "student")
    shard = tmp_path / "cached" / "teacher-cache" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    assert main(["run", "babyllama-smoke", *overrides, *where, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "shard-00001.safetensors" in err and "truncated" in err
