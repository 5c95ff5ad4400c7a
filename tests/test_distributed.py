"""Two CPU processes under ``accelerate launch`` (gloo): the same loss curve as one process with the same global
batch, online and from a teacher cache that the two ranks build together and read by halves; padded examples of
unequal lengths with gradient accumulation equal one process with the whole batch; with dropout, every rank draws
its own masks and a resumed 2-process run gives the same weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmdistill.data.blocks import BlockDataset

WORKER = Path(__file__).parent / "workers" / "distill_ranks.py"
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    _run([sys.executable, str(WORKER), str(root / "one")], root)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch = [*launch, "--mixed_precision", "no", "--dynamo_backend", "no", str(WORKER)]
    _run([*launch, str(root / "two")], root)
    # resume the 2-process dropout run from its step-4 checkpoint: drop what came after it
    resumed = root / "resumed"
    shutil.copytree(root / "two", resumed)
    shutil.rmtree(resumed / "dropout" / "final")
    for ckpt in (resumed / "dropout" / "checkpoints").glob("step-*"):
        if ckpt.name != "step-0000004":
            shutil.rmtree(ckpt)
    _run([*launch, str(resumed), "resume"], root)
    return root / "one", root / "two", resumed


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_two_processes_follow_the_single_process_loss_curve(runs, mode):
    one, two = (_records(run / mode / "metrics.jsonl") for run in runs[:2])
    assert len(one) == len(two) == 14  # 12 steps and 2 dev losses
    for a, b in zip(one, two, strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "ce", "forward_kl", "dev_loss", "lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a["step"])
    assert one[-2]["loss"] < one[0]["loss"]  # it did learn something
    assert json.loads((runs[1] / mode / "final" / "training.json").read_text())["num_processes"] == 2


def test_ranks_build_alternate_shards_of_one_cache(runs):
    one, two = (json.loads((run / "cache" / "manifest.json").read_text()) for run in runs[:2])
    assert [s["rank"] for s in two["shards"]] == [i % 2 for i in range(len(two["shards"]))]
    assert {s["rank"] for s in one["shards"]} == {0}
    # the same bytes whichever process wrote them
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_each_rank_reads_its_half_of_every_global_batch(runs):
    one = json.loads((runs[0] / "rank0.json").read_text())
    ranks = [json.loads((runs[1] / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert one["world"] == 1 and all(r["world"] == 2 for r in ranks)
    tokens = np.zeros(16 * 48, dtype=np.uint16)
    blocks = BlockDataset(tokens, 16, seed=1)  # the worker's block order: same seed, same number of blocks
    expected = [list(s // 16) for e in range(2) for s in blocks.epoch_batch_starts(e, 8)]
    assert one["lookups"] == expected
    for step, batch in enumerate(expected):
        assert ranks[0]["lookups"][step] == batch[:4] and ranks[1]["lookups"][step] == batch[4:]
    # what each rank read equals the teachers' top-k recomputed there (float16 storage; same ids)
    assert all(r["max_logprob_error"] < 5e-3 and r["id_mismatches"] == 0 for r in [one, *ranks])


def test_padded_accumulated_two_processes_equal_one_whole_batch(runs):
    """2 processes x 2 micro-batches of unequal lengths = 1 process with the whole batch (global token mean)."""
    one, two = (_records(run / "padded" / "metrics.jsonl") for run in runs[:2])
    assert len(one) == len(two) == 10  # 8 steps and 2 dev losses
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "ce", "dev_loss", "lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), (key, a["step"])
    a, b = (load_file(run / "padded" / "final" / "model.safetensors") for run in runs[:2])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_ranks_draw_their_own_dropout_masks_and_resume_exactly(runs):
    _, two, resumed = runs
    rng = torch.load(two / "dropout" / "checkpoints" / "step-0000004" / "rng.pt", weights_only=True)
    assert len(rng["ranks"]) == 2
    assert not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"]), "ranks drew the same masks"
    a, b = (load_file(run / "dropout" / "final" / "model.safetensors") for run in (two, resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    from lmdistill.training_state import metric_records  # the effective records of a resumed, appended log

    dev = [r["dev_loss"] for r in metric_records(resumed / "dropout" / "metrics.jsonl") if r.get("event") == "dev"]
    want = [r["dev_loss"] for r in metric_records(two / "dropout" / "metrics.jsonl") if r.get("event") == "dev"]
    assert dev == pytest.approx(want, abs=1e-6)
