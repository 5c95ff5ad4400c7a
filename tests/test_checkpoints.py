"""Checkpoints and the metrics log survive crashes: only finite weights are saved, leftovers of a killed write are
removed, a broken newest checkpoint falls back to an older one, metrics.jsonl is only appended to, the first record
after a resume averages the right steps, and atomic writes reach the disk (fsync) before their rename."""

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lmdistill import atomic
from lmdistill import training_state as ts
from lmdistill.config import ModelConfig, TrainConfig
from lmdistill.data.blocks import BlockDataset
from lmdistill.losses import DistillationObjective
from lmdistill.models import build_model
from lmdistill.training import NonFiniteLossError, train

V, T = 64, 16
CFG = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=3, save_every_steps=5, log_every_steps=1)


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="llama", num_layers=2, num_heads=2, hidden_size=16, intermediate_size=32, dropout=0.1)
    return build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)


def _data():
    rng = np.random.default_rng(0)
    tokens = (np.arange(2000) * 7 + rng.integers(0, 3, 2000)) % V
    return BlockDataset(tokens.astype(np.uint16), T, seed=5), torch.from_numpy(tokens[:64].astype(np.int64)).view(4, T)


def _train(out_dir, cfg=CFG, seed=0, **kw):
    blocks, dev = _data()
    return train(_model(seed), blocks, dev, cfg, out_dir, objective=DistillationObjective.language_modeling(), **kw)


def _crash_at(stop):
    def on_step(step):
        if step == stop:
            raise RuntimeError("simulated crash")

    return on_step


def _finite(folder):
    return all(torch.isfinite(v).all() for v in load_file(folder / "model.safetensors").values())


def metric_records(path):
    return ts.metric_records(path)


def _same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ 1. only finite weights are saved


def _poison_gradient(at_step):
    def hook(info):
        if info.step == at_step:  # a finite loss, a NaN gradient: the optimizer step makes the weights NaN
            info.model.get_input_embeddings().weight.grad.fill_(float("nan"))

    return hook


def test_no_checkpoint_is_written_from_non_finite_weights(tmp_path):
    cfg = replace(CFG, save_every_steps=1, max_grad_norm=None)
    with pytest.raises(NonFiniteLossError, match=r"after step 1 .*none saved yet") as info:
        _train(tmp_path, cfg, pre_step_hooks=[_poison_gradient(1)])
    assert "embed_tokens" in str(info.value)
    assert not list((tmp_path / "checkpoints").glob("*step-*"))
    assert not (tmp_path / "final").exists()


def test_the_last_good_checkpoint_named_is_finite(tmp_path):
    cfg = replace(CFG, save_every_steps=1, max_grad_norm=None)
    with pytest.raises(NonFiniteLossError, match=r"after step 3 .*step-0000002") as info:
        _train(tmp_path, cfg, pre_step_hooks=[_poison_gradient(3)])
    named = tmp_path / "checkpoints" / "step-0000002"
    assert str(named) in str(info.value) and _finite(named)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]


def test_infinite_weight_decay_past_the_config_check_saves_nothing(tmp_path):
    """The issue's reproduction: weight_decay=inf (now refused by TrainConfig) makes every weight NaN at step 1."""
    cfg = replace(CFG, save_every_steps=1)
    object.__setattr__(cfg, "weight_decay", math.inf)  # past __post_init__'s check
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*none saved yet"):
        _train(tmp_path, cfg)
    assert not list((tmp_path / "checkpoints").glob("*step-*"))


def test_non_finite_weights_at_the_end_write_no_final_folder(tmp_path):
    cfg = replace(CFG, epochs=1, max_steps=4, save_every_steps=2, max_grad_norm=None)
    with pytest.raises(NonFiniteLossError, match=r"after step 4 .*step-0000002"):
        _train(tmp_path, cfg, pre_step_hooks=[_poison_gradient(4)])
    assert not (tmp_path / "final").exists()


# ------------------------------------------------------------------ 2. leftovers of a killed write

_KILLED_WRITE = """
import os, signal, sys
from lmdistill.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target):
    """Run ``atomic_dir(target)`` in a process that SIGKILLs itself mid-write."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITE), str(target)], env=env, check=False)
    assert done.returncode == -9


def test_a_killed_atomic_write_leaves_a_temporary_that_is_removed(tmp_path):
    _killed_write(tmp_path / "step-0000005")
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".step-0000005.") and left[0].endswith(".tmp")
    (tmp_path / "other.json").write_text("{}")
    (tmp_path / ".other.json.abc.tmp").write_text("not ours")
    removed = atomic.remove_stale_temporaries(tmp_path, r"step-\d+")
    assert removed == [f"removed {tmp_path / left[0]}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc.tmp", "other.json"]


def test_a_rename_cut_between_its_two_steps_restores_the_old_folder(tmp_path):
    """atomic_dir over an existing folder moves it to .NAME.old first: killed there, NAME is gone but .old is whole."""
    old = tmp_path / ".final.old"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"complete")
    actions = atomic.remove_stale_temporaries(tmp_path, "final")
    assert actions == [f"restored {tmp_path / 'final'} from {old}"]
    assert (tmp_path / "final" / "model.safetensors").read_bytes() == b"complete" and not old.exists()
    old.mkdir()  # with NAME present, .NAME.old is a leftover
    assert atomic.remove_stale_temporaries(tmp_path, "final") == [f"removed {old}"]


def test_training_removes_its_stale_temporaries_when_it_starts(tmp_path, caplog):
    _train(tmp_path / "run", replace(CFG, epochs=1, max_steps=7))  # checkpoint step-5, final
    run = tmp_path / "run"
    _killed_write(run / "checkpoints" / "step-0000010")
    _killed_write(run / "final")
    (run / ".eval.json.x1y2.tmp").write_text("another stage's")
    stale = [*(run / "checkpoints").glob(".step-*.tmp"), *run.glob(".final.*.tmp")]
    assert len(stale) == 2
    with caplog.at_level(logging.WARNING, logger="lmdistill.training"):
        _train(run, replace(CFG, epochs=1, max_steps=7))
    assert not any(p.exists() for p in stale)
    assert all(str(p) in caplog.text for p in stale)
    assert (run / ".eval.json.x1y2.tmp").exists(), "only the training stage's own temporaries are removed"


# ------------------------------------------------------------------ 3. a broken newest checkpoint


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A full run, and one that crashed at step 12 with checkpoints step-5 and step-10."""
    root = tmp_path_factory.mktemp("crashed")
    full = _train(root / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(root / "cut", on_step=_crash_at(12))
    assert sorted(p.name for p in (root / "cut" / "checkpoints").iterdir()) == ["step-0000005", "step-0000010"]
    return full, root / "cut"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weights(path):
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(path).items()}, path)


BREAKS = {
    "model.safetensors": _truncate,
    "state.json": lambda p: p.write_text('{"step": 1'),
    "optimizer.pt": _truncate,
    "scheduler.pt": _truncate,
    "rng.pt": lambda p: p.write_bytes(b"garbage"),
    "missing state.json": None,
    "non-finite model.safetensors": _nan_weights,
}


@pytest.mark.parametrize("how", list(BREAKS))
def test_a_broken_newest_checkpoint_falls_back_to_the_older_one(tmp_path, crashed, how, caplog):
    full, cut = crashed
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    name = how.split()[-1]
    broken = run / "checkpoints" / "step-0000010" / name
    if BREAKS[how] is None:
        broken.unlink()
    else:
        BREAKS[how](broken)
    with caplog.at_level(logging.WARNING):
        resumed = _train(run, seed=7)
    warning = next(r.getMessage() for r in caplog.records if "step-0000010" in r.getMessage())
    assert name in warning and "step-0000005" in warning
    assert resumed.steps == full.steps
    _same_weights(full.final_dir, resumed.final_dir)
    assert resumed.dev_losses == pytest.approx(full.dev_losses, abs=1e-6)


def test_no_loadable_checkpoint_is_a_clear_error_and_nothing_is_deleted(tmp_path, crashed):
    _, cut = crashed
    run = tmp_path / "run"
    shutil.copytree(cut, run)
    _truncate(run / "checkpoints" / "step-0000010" / "model.safetensors")
    (run / "checkpoints" / "step-0000005" / "optimizer.pt").unlink()
    with pytest.raises(ts.CheckpointError) as info:
        _train(run)
    message = str(info.value)
    assert "step-0000010" in message and "model.safetensors" in message
    assert "step-0000005" in message and "optimizer.pt" in message and "missing" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000005", "step-0000010"]


# ------------------------------------------------------------------ 4. metrics.jsonl is appended to


def test_metrics_log_is_append_only_and_readers_see_the_effective_records(tmp_path):
    """Crash at step 17 after the epoch-1 dev record (step 15) and past the last checkpoint (step 10)."""
    cfg = replace(CFG, save_every_steps=10)
    full = _train(tmp_path / "full", cfg)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(cut, cfg, on_step=_crash_at(17))
    before = (cut / "metrics.jsonl").read_bytes()
    resumed = _train(cut, cfg, seed=4)
    after = (cut / "metrics.jsonl").read_bytes()
    assert after.startswith(before), "the records of the crashed run are kept as written"
    raw = ts.read_records(cut / "metrics.jsonl")
    assert {"event": "resume", "step": 10} in raw
    assert [r["step"] for r in raw if r.get("event") == "dev"] == [15, 15, 30]  # the stale one, then its redo
    effective, reference = metric_records(cut / "metrics.jsonl"), metric_records(tmp_path / "full" / "metrics.jsonl")
    assert [(r.get("event"), r["step"]) for r in effective] == [(r.get("event"), r["step"]) for r in reference]
    for a, b in zip(effective, reference, strict=True):
        for key in ("loss", "dev_loss", "lr", "epoch"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-6), (key, b["step"])
    assert resumed.dev_losses == pytest.approx(full.dev_losses, abs=1e-6)


def test_metric_records_replays_resumes_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 1, "loss": 5.0},
        {"step": 2, "loss": 4.0},
        {"event": "dev", "step": 2, "epoch": 1, "dev_loss": 4.5},
        {"step": 3, "loss": 3.0},
        {"event": "resume", "step": 1},
        {"step": 2, "loss": 4.1},
        {"event": "dev", "step": 2, "epoch": 1, "dev_loss": 4.6},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo')
    assert metric_records(path) == [lines[0], lines[5], lines[6]]
    log = ts.MetricsLog(tmp_path, resume_step=2, enabled=True)  # a killed append left a torn line: start a new one
    log.write({"step": 3, "loss": 3.1})
    log.close()
    assert metric_records(path) == [lines[0], lines[5], lines[6], {"step": 3, "loss": 3.1}]
    assert path.read_text().splitlines()[-2] == json.dumps({"event": "resume", "step": 2})
    assert metric_records(tmp_path / "none.jsonl") == []


# ------------------------------------------------------------------ 5. the first record after a resume


def test_the_first_record_after_a_resume_averages_the_steps_since_its_own_start(tmp_path):
    """log every 4, checkpoint every 3, crash at 9 (after the record at 8): resumed from step 6, the record at 8
    averages steps 7 and 8 of the new invocation and says so; the others average their 4 steps."""
    _train(tmp_path / "each", replace(CFG, max_steps=14))
    per_step = metric_records(tmp_path / "each" / "metrics.jsonl")
    loss = {r["step"]: r["loss"] for r in per_step if "event" not in r}
    cfg = replace(CFG, max_steps=14, log_every_steps=4, save_every_steps=3)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(cut, cfg, on_step=_crash_at(9))
    _train(cut, cfg)
    records = {r["step"]: r for r in metric_records(cut / "metrics.jsonl") if "event" not in r}
    assert sorted(records) == [4, 8, 12, 14]
    expected = {4: [1, 2, 3, 4], 8: [7, 8], 12: [9, 10, 11, 12], 14: [13, 14]}
    for step, window in expected.items():
        assert records[step]["window_steps"] == len(window)
        assert records[step]["loss"] == pytest.approx(sum(loss[s] for s in window) / len(window), abs=1e-5)


# ------------------------------------------------------------------ 6. fsync before the rename


@pytest.fixture
def disk_events(monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace_(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace_)
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads fd paths from /proc")
def test_atomic_file_writes_fsync_the_file_before_and_the_folder_after_the_rename(tmp_path, disk_events):
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    (rename,) = [i for i, e in enumerate(disk_events) if e[0] == "replace"]
    tmp = disk_events[rename][1]
    assert ("fsync", tmp) in disk_events[:rename]
    assert ("fsync", str(tmp_path)) in disk_events[rename:]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads fd paths from /proc")
def test_atomic_folder_writes_fsync_every_file_and_folder_before_the_rename(tmp_path, disk_events):
    target = tmp_path / "ckpt"
    for _ in range(2):  # a new folder, then one that replaces it
        disk_events.clear()
        with atomic.atomic_dir(target) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "w.bin").write_bytes(b"1")
            (tmp / "state.json").write_text("{}")
        renames = [i for i, e in enumerate(disk_events) if e[0] == "replace" and e[2] == str(target)]
        (rename,) = renames
        synced = {e[1] for e in disk_events[:rename] if e[0] == "fsync"}
        assert {str(tmp / "sub" / "w.bin"), str(tmp / "state.json"), str(tmp / "sub"), str(tmp)} <= synced
        assert ("fsync", str(tmp_path)) in disk_events[rename:]
        assert (target / "sub" / "w.bin").read_bytes() == b"1"
