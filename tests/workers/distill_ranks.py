"""Worker of tests/test_distributed.py: distil a tiny student online and from a teacher cache, in one process or
under ``accelerate launch --num_processes N``. Writes OUT/<mode>/metrics.jsonl (rank 0) and OUT/rank<r>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from lmdistill.config import ModelConfig, TrainConfig
from lmdistill.data.blocks import BlockDataset
from lmdistill.distributed import process_state
from lmdistill.losses import DistillationObjective
from lmdistill.losses.topk import topk_teacher
from lmdistill.models import build_model
from lmdistill.teachers import TeacherEnsemble
from lmdistill.teachers.cache import cache_spec, ensure_cache
from lmdistill.training import train

V, T = 64, 16


def _model(arch: str, seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, num_layers=1, num_heads=2, hidden_size=16, intermediate_size=32, dropout=0.0)
    return build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)


def main(out: Path) -> None:
    state = process_state()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tokens = ((np.arange(T * 48) * 5 + rng.integers(0, 3, T * 48)) % V).astype(np.uint16)
    blocks = BlockDataset(tokens, T, seed=1)
    dev = torch.from_numpy(tokens[: 4 * T].astype(np.int64)).view(4, T)
    teachers = {"gpt2-teacher": _model("gpt2", 1), "llama-teacher": _model("llama", 2)}
    ensemble = TeacherEnsemble(list(teachers.values()), "logits")
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, save_every_steps=4, log_every_steps=1)
    objective = DistillationObjective(alpha=0.5, temperature=2.0)

    train(_model("llama", 7), blocks, dev, cfg, out / "online", objective=objective, teacher=ensemble)

    spec = cache_spec(teachers, "logits", "tok", blocks, top_k=8, dtype="float16", temperature=2.0, shard_blocks=5)
    cache = ensure_cache(ensemble, blocks, spec, out / "cache", batch_size=4)
    seen, errors, id_mismatches = [], [], []
    lookup = cache.lookup

    def recording_lookup(block_indices):
        got = lookup(block_indices)
        seen.append([int(b) for b in block_indices])
        want = topk_teacher(ensemble(blocks.batch(np.asarray(block_indices) * T)), 8, 2.0)
        errors.append(float((got.log_probs - want.log_probs).abs().max()))
        id_mismatches.append(int((got.ids != want.ids).sum()))
        return got

    cache.lookup = recording_lookup
    train(_model("llama", 7), blocks, dev, cfg, out / "cached", objective=objective, teacher=cache)
    record = {
        "rank": state.process_index,
        "world": state.num_processes,
        "lookups": seen,
        "max_logprob_error": max(errors),
        "id_mismatches": sum(id_mismatches),
    }
    (out / f"rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
