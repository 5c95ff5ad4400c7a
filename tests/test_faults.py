"""Faults of a real `lmdistill run` process: SIGTERM, `kill -9` at a checkpoint and at a log line, a second start.

Each case stops a shrunken smoke run at an event (a file appearing, a log line), never after a timer; checks that
no file under its final name is half-written; resumes with the command the run folder needs (``run --resume
--run-dir RUN``); and checks that every final model equals that of one uninterrupted run, tensor by tensor.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = [  # about 7 optimizer steps per stage, a checkpoint every 3, a metrics line every step
    "data.sources.0.max_words=1500",
    "data.sources.1.max_words=1500",
    *(f"{stage}.train.{key}" for stage in ("teachers.members.0", "teachers.members.1", "student")
      for key in ("epochs=1", "save_every_steps=3", "log_every_steps=1")),
    "baseline=false",
    "evaluation.tasks=[]",
]  # fmt: skip
TRAINED = ["gpt2-teacher", "llama-teacher", "student"]


class Run:
    """An `lmdistill` subprocess whose stderr lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, cache: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "LMDISTILL_CACHE": str(cache),
            "OMP_NUM_THREADS": "1",  # the same arithmetic in every run, and room for a second process
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmdistill", *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, event, what: str, timeout: float = 300) -> None:
        """Poll ``event()`` until it is true; fail if the process ends first."""
        end = time.monotonic() + timeout
        while not event():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > end:
                self.proc.kill()
                pytest.fail(f"no {what} within {timeout} s:\n{self.stderr[-3000:]}")
            time.sleep(0.02)

    def finish(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def setting(tmp_path_factory, data_root):
    """The arguments of a run into a given folder, and the final weights of one uninterrupted run."""
    base = tmp_path_factory.mktemp("faults")
    cache = base / "cache"

    def args(run_dir: Path) -> list[str]:
        return ["run", "babyllama-smoke", *SMALL, "--run-dir", str(run_dir), "--data-root", str(data_root)]

    def resume(run_dir: Path) -> list[str]:
        return ["run", "--resume", "--run-dir", str(run_dir), "--data-root", str(data_root)]

    reference = Run(args(base / "reference"), base, cache)
    assert reference.finish() == 0, reference.stderr[-3000:]
    models = base / "reference" / "models"
    weights = {name: load_file(models / name / "final" / "model.safetensors") for name in TRAINED}
    return {"base": base, "cache": cache, "args": args, "resume": resume, "weights": weights}


def _assert_whole(run_dir: Path) -> None:
    """Every file under its final name is complete: JSON parses, weights and torch files load, folders are full."""
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if any(part.startswith(".") and part.endswith(".tmp") for part in rel.parts) or not path.is_file():
            continue  # a temporary name (of a writer that was killed), or a folder
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            for line in lines[:-1]:  # an append cut by a kill can only tear the last line, which readers skip
                json.loads(line)
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
    for ckpt in run_dir.glob("models/*/checkpoints/step-*"):
        names = {p.name for p in ckpt.iterdir()}
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"} <= names, ckpt
    for final in run_dir.glob("models/*/final"):
        assert {"config.json", "model.safetensors", "training.json", "tokenizer.json"} <= {
            p.name for p in final.iterdir()
        }, final


def _resume_and_compare(setting, run_dir: Path) -> Run:
    """Resume with the folder's own recipe, then compare every final model with the uninterrupted run's."""
    resumed = Run(setting["resume"](run_dir), setting["base"], setting["cache"])
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    _assert_whole(run_dir)
    assert not list(run_dir.rglob("*.tmp")), "a resume removes what a killed writer left"
    for name, expected in setting["weights"].items():
        got = load_file(run_dir / "models" / name / "final" / "model.safetensors")
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["models"]) == ["gpt2-teacher", "llama-teacher", "ensemble", "student"]
    return resumed


def test_sigterm_checkpoints_like_ctrl_c_and_the_resume_matches_an_uninterrupted_run(setting):
    run_dir = setting["base"] / "sigterm"
    run = Run(setting["args"](run_dir), setting["base"], setting["cache"])
    metrics = run_dir / "models" / "gpt2-teacher" / "metrics.jsonl"
    # its first record: the training loop runs (before the loop, Ctrl-C and SIGTERM stop without a checkpoint)
    run.wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, "the first stage's first metrics line")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.stderr[-3000:]
    assert "terminated (SIGTERM)" in run.stderr and f"lmdistill run --resume --run-dir {run_dir}" in run.stderr
    assert "Traceback" not in run.stderr
    assert list((run_dir / "models" / "gpt2-teacher" / "checkpoints").glob("step-*"))
    outcomes = [json.loads(x)["outcome"] for x in (run_dir / "invocations.jsonl").read_text().splitlines()]
    assert outcomes == ["interrupted"]
    _assert_whole(run_dir)
    _resume_and_compare(setting, run_dir)


def test_kill_9_at_a_checkpoint_and_a_second_start_meanwhile(setting):
    run_dir = setting["base"] / "kill-at-checkpoint"
    run = Run(setting["args"](run_dir), setting["base"], setting["cache"])
    run.wait_for(lambda: (run_dir / "recipe.yaml").exists(), "the run folder's record")
    run.proc.send_signal(signal.SIGSTOP)  # it holds the lock, paused, while a second process starts
    try:
        second = Run(setting["resume"](run_dir), setting["base"], setting["cache"])
        assert second.finish() == 2, second.stderr[-3000:]
    finally:
        run.proc.send_signal(signal.SIGCONT)
    assert f"in use by process {run.proc.pid}" in second.stderr and "Traceback" not in second.stderr
    checkpoints = run_dir / "models" / "llama-teacher" / "checkpoints"
    run.wait_for(lambda: any(checkpoints.glob("step-*")), "a checkpoint of the second teacher")
    run.proc.kill()  # SIGKILL: no handler runs, the lock goes with the process
    run.finish()
    _assert_whole(run_dir)
    assert (run_dir / "models" / "gpt2-teacher" / "final" / "model.safetensors").is_file()
    resumed = _resume_and_compare(setting, run_dir)
    assert "gpt2-teacher: already trained" in resumed.stderr
    assert "llama-teacher: resumed from" in resumed.stderr or "llama-teacher: already trained" in resumed.stderr


def test_kill_9_right_after_a_log_line_as_the_final_model_is_written(setting):
    run_dir = setting["base"] / "kill-at-line"
    run = Run(setting["args"](run_dir), setting["base"], setting["cache"])
    # the dev loss of the student's last epoch is logged just before final/ is written
    run.wait_for(lambda: any("student: epoch 1, step" in line for line in run.lines), "the student's last dev loss")
    run.proc.kill()
    run.finish()
    _assert_whole(run_dir)
    assert not (run_dir / "results.json").exists()
    _resume_and_compare(setting, run_dir)
