"""The run folder: every resume is checked against what the folder started with, one process at a time.

Each test stops a real ``lmdistill run`` (real data preparation on a tiny corpus) where its stages would begin, by
replacing ``train_teachers``; a replacement may first leave the output of a finished stage, as a run interrupted
after its first teacher would.
"""

import errno
import json
import os
import pathlib
import signal

import pytest
import torch
from safetensors.torch import load_file

import lmdistill.methods.babyllama as babyllama
from lmdistill.cli import main
from lmdistill.methods.runfolder import LOCK_FILE, RECORD_FILE, remove_stale_temporaries, run_lock, stage_outputs


class Stop(Exception):
    """Raised where the stages would begin (``main`` does not catch it)."""


@pytest.fixture
def tiny_root(tmp_path, data_root):
    """A data root with the smoke recipe's two sources (400 lines of each split) and the real evaluation data."""
    root = tmp_path / "data"
    for source in ("childes", "brown"):
        for split in ("train", "dev"):
            lines = (data_root / "corpus" / source / f"{split}.txt").read_text(encoding="utf-8").splitlines()
            (root / "corpus" / source).mkdir(parents=True, exist_ok=True)
            (root / "corpus" / source / f"{split}.txt").write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    for folder in ("blimp", "zero_shot"):  # the evaluation data, which a run checks before any stage
        (root / folder).symlink_to(data_root / folder)
    return root


@pytest.fixture
def run_args(tmp_path, tiny_root):
    """``run babyllama-smoke`` into tmp_path/run; returns (run folder, the arguments after the recipe name)."""
    run_dir = tmp_path / "run"
    where = ["--run-dir", str(run_dir), "--data-root", str(tiny_root), "--cache-dir", str(tmp_path / "cache")]
    return run_dir, where


def _fake_stages(monkeypatch):
    """Replace the stages: each call is counted, may leave a finished teacher, then raises Stop."""

    def fake_train_teachers(recipe, run_dir, data, resume, results):
        fake_train_teachers.calls.append({"recipe": recipe, "data": data, "resume": resume})
        if fake_train_teachers.finish_a_teacher:
            final = run_dir / "models" / recipe.teachers.members[0].name / "final"
            final.mkdir(parents=True, exist_ok=True)
            (final / "config.json").write_text("{}")
        raise Stop

    fake_train_teachers.calls = []
    fake_train_teachers.finish_a_teacher = True
    monkeypatch.setattr(babyllama, "train_teachers", fake_train_teachers)
    return fake_train_teachers


@pytest.fixture
def stages(monkeypatch):
    return _fake_stages(monkeypatch)


def _start(run_dir, where, stages, *overrides):
    """A first run that finished its first teacher, then stopped."""
    with pytest.raises(Stop):
        main(["run", "babyllama-smoke", *where, *overrides])
    assert (run_dir / "recipe.yaml").is_file() and (run_dir / RECORD_FILE).is_file()
    return len(stages.calls)


def test_resume_from_the_folder_refuses_an_edited_recipe_yaml(run_args, stages, capsys):
    run_dir, where = run_args
    _start(run_dir, where, stages)
    saved = run_dir / "recipe.yaml"
    original = saved.read_text()
    assert "alpha: 0.5" in original
    saved.write_text(original.replace("alpha: 0.5", "alpha: 0.3"))
    # the command the Ctrl-C message prints, and the same with the recipe named
    for args in (["run", "--resume", *where], ["run", "babyllama-smoke", "--resume", *where]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "recipe.yaml was edited after the run started" in err and "distillation.alpha" in err
        assert "0.5" in err and "0.3" in err
    assert len(stages.calls) == 1  # nothing ran on the edited recipe
    saved.write_text(original + "# a comment changes no key\n")
    with pytest.raises(Stop):
        main(["run", "--resume", *where])
    assert len(stages.calls) == 2 and stages.calls[-1]["recipe"].distillation.alpha == 0.5


def test_resume_refuses_changed_data_files_and_names_them(run_args, tiny_root, stages, capsys):
    run_dir, where = run_args
    _start(run_dir, where, stages)
    record = json.loads((run_dir / RECORD_FILE).read_text())
    assert record["data_files"] == stages.calls[0]["data"].info["files"]  # what results.json records too
    corpus = tiny_root / "corpus" / "brown" / "train.txt"
    text = corpus.read_text()
    corpus.write_text(text.replace("the", "a", 1))
    assert main(["run", "--resume", *where]) == 2
    err = capsys.readouterr().err
    assert "data files changed since the run started: corpus/brown/train.txt" in err
    assert "childes" not in err.split("data files changed")[1].split(";")[0]
    assert len(stages.calls) == 1
    corpus.write_text(text)  # restored: resumable again
    with pytest.raises(Stop):
        main(["run", "--resume", *where])
    assert len(stages.calls) == 2


def test_a_second_process_is_refused_and_told_the_holder(run_args, stages, capsys):
    run_dir, where = run_args
    _start(run_dir, where, stages)
    assert not (run_dir / LOCK_FILE).exists()  # released (and removed) when the run ended
    with run_lock(run_dir):
        holder = json.loads((run_dir / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        assert main(["run", "--resume", *where]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {os.getpid()}" in err and "kill -INT" in err
        assert main(["cache-teacher", "babyllama-smoke", *where]) == 2
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    assert len(stages.calls) == 1  # neither refused process ran a stage
    lines = (run_dir / "invocations.jsonl").read_text().splitlines()
    assert len(lines) == 1  # and neither wrote to the folder
    with pytest.raises(Stop):
        main(["run", "--resume", *where])


def test_a_first_run_that_failed_on_a_bad_teacher_path_runs_again_when_fixed(run_args, monkeypatch, capsys):
    run_dir, where = run_args
    bad = ["teachers.members.0.model.path=/nonexistent"]  # the real stages: teacher paths are checked first
    assert main(["run", "babyllama-smoke", *where, *bad]) == 2
    err = capsys.readouterr().err
    assert "gpt2-teacher: model.path /nonexistent does not exist" in err
    assert "Nothing has been trained" in err and "run the same command again" in err
    assert stage_outputs(run_dir) == [] and "/nonexistent" in (run_dir / "recipe.yaml").read_text()
    stages = _fake_stages(monkeypatch)
    stages.finish_a_teacher = False
    for resume in ([], ["--resume"]):  # the fixed command, plain or resumed
        with pytest.raises(Stop):
            main(["run", "babyllama-smoke", *where, *resume])
        assert stages.calls[-1]["recipe"].teachers.members[0].model.path is None
        assert "/nonexistent" not in (run_dir / "recipe.yaml").read_text()
        record = json.loads((run_dir / RECORD_FILE).read_text())
        assert record["recipe"]["teachers"]["members"][0]["model"]["path"] is None


def test_a_folder_with_a_finished_stage_keeps_its_recipe(run_args, stages, capsys):
    run_dir, where = run_args
    _start(run_dir, where, stages)
    assert main(["run", "babyllama-smoke", *where]) == 2
    assert "already holds a run (models/gpt2-teacher/final)" in capsys.readouterr().err
    assert main(["run", "babyllama-smoke", *where, "--resume", "student.train.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "student.train.lr (started with 0.002, now 0.001)" in err and "models/gpt2-teacher/final" in err
    (run_dir / "recipe.yaml").unlink()  # by hand: nothing says any more what the teacher was made with
    assert main(["run", "babyllama-smoke", *where]) == 2
    assert "holds models/gpt2-teacher/final but no recipe.yaml" in capsys.readouterr().err
    assert len(stages.calls) == 1


def test_a_folder_of_an_older_version_is_resumed_and_gets_its_record(run_args, stages):
    run_dir, where = run_args
    _start(run_dir, where, stages)
    (run_dir / RECORD_FILE).unlink()  # as an older lmdistill left it: recipe.yaml only
    with pytest.raises(Stop):
        main(["run", "--resume", *where])
    record = json.loads((run_dir / RECORD_FILE).read_text())
    assert record["data_files"] and record["recipe"]["name"] == "babyllama-smoke"


def test_a_resume_removes_what_a_killed_writer_left_under_temporary_names(run_args, stages):
    run_dir, where = run_args
    _start(run_dir, where, stages)
    half = run_dir / "models" / "gpt2-teacher" / "checkpoints" / ".step-0000005.k9x2.tmp"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    (run_dir / ".results.json.a1b2.tmp").write_text("{")
    assert remove_stale_temporaries(run_dir) == []  # not without the folder's lock: a writer may be at work
    with pytest.raises(Stop):
        main(["run", "--resume", *where])
    assert not half.parent.exists() or not list(half.parent.iterdir())
    assert not list(run_dir.rglob("*.tmp"))


def test_a_full_disk_leaves_no_half_written_record_and_says_what_to_do(run_args, stages, monkeypatch, capsys):
    run_dir, where = run_args
    write_text = pathlib.Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name.startswith(f".{RECORD_FILE}."):  # the temporary file of an atomic write
            write_text(self, "{", encoding="utf-8")  # a part of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    assert main(["run", "babyllama-smoke", *where]) == 4
    err = capsys.readouterr().err
    assert "disk is full" in err and f"lmdistill run --resume --run-dir {run_dir}" in err
    assert not (run_dir / RECORD_FILE).exists() and not (run_dir / "recipe.yaml").exists()
    assert not list(run_dir.rglob("*.tmp"))
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    _start(run_dir, where, stages)


def test_sigterm_saves_a_checkpoint_like_ctrl_c_and_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    from lmdistill.losses import DistillationObjective
    from lmdistill.training import train
    from test_training import CFG, _data, _model

    blocks, dev = _data()
    lm = DistillationObjective.language_modeling()
    full = train(_model(), blocks, dev, CFG, tmp_path / "full", objective=lm)

    def sigterm_at_step_7(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    def fake_run(recipe, run_dir, **kwargs):
        train(_model(), blocks, dev, CFG, tmp_path / "cut", objective=lm, on_step=sigterm_at_step_7)

    class Killed(Exception):
        pass

    def not_handled(*_):
        raise Killed  # without main's handler SIGTERM would end pytest itself

    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        monkeypatch.setattr(babyllama, "run", fake_run)
        assert main(["run", "babyllama-smoke", "--run-dir", str(tmp_path / "r")]) == 143
        assert signal.getsignal(signal.SIGTERM) is not_handled  # main put it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and "interrupted at step 7" in err
    assert f"lmdistill run --resume --run-dir {tmp_path / 'r'}" in err
    assert (tmp_path / "cut" / "checkpoints" / "step-0000007").is_dir()
    resumed = train(_model(), blocks, dev, CFG, tmp_path / "cut", objective=lm, resume=True)
    assert resumed.steps == full.steps
    a, b = load_file(full.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_a_teacher_trained_further_from_a_path_must_carry_the_runs_tokenizer(tmp_path, data_root, capsys):
    """model.path with a train section is checked like one used as it is: tokenizer, not vocabulary size only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmdistill.cli import main

    teacher = tmp_path / "teacher"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(teacher)  # the run's vocabulary size, but no tokenizer files (as checkpoints/step-N/)
    code = main(
        [
            "run",
            "babyllama-smoke",
            "--run-dir",
            str(tmp_path / "run"),
            "--data-root",
            str(data_root),
            "--cache-dir",
            str(tmp_path / "cache"),
            f"teachers.members.0.model.path={teacher}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "gpt2-teacher" in err and str(teacher) in err and "no tokenizer" in err
    assert not (tmp_path / "run" / "models" / "llama-teacher").exists()  # refused before any teacher trained
