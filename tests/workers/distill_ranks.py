"""Worker of tests/test_distributed.py: distil a tiny student online and from a teacher cache, train on padded
examples with gradient accumulation, and train with dropout, in one process or under ``accelerate launch
--num_processes N``. Writes OUT/<mode>/metrics.jsonl (rank 0) and OUT/rank<r>.json.

``worker.py OUT resume`` only resumes OUT/dropout from its latest checkpoint (the test removes the later ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from lmdistill.config import ModelConfig, TrainConfig
from lmdistill.data.batches import ExampleSource
from lmdistill.data.blocks import BlockDataset
from lmdistill.distributed import process_state
from lmdistill.losses import DistillationObjective
from lmdistill.losses.topk import topk_teacher
from lmdistill.models import build_model
from lmdistill.teachers import TeacherEnsemble
from lmdistill.teachers.cache import cache_spec, ensure_cache
from lmdistill.training import train

V, T = 64, 16


def _model(arch: str, seed: int, dropout: float = 0.0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, num_layers=1, num_heads=2, hidden_size=16, intermediate_size=32, dropout=dropout)
    return build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)


def _examples() -> list[dict]:
    """32 examples of 3 to 16 tokens: every micro-batch has its own length and its own number of targets."""
    rng = np.random.default_rng(4)
    lengths = rng.integers(3, 17, 32)
    return [{"input_ids": [int(x) for x in (np.arange(n) * 3 + i) % (V - 4) + 4]} for i, n in enumerate(lengths)]


def train_dropout(out: Path, dev: torch.Tensor, blocks: BlockDataset) -> None:
    """GPT-2 with dropout 0.1 (every process its own masks), checkpoints every 4 steps."""
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, save_every_steps=4, log_every_steps=1)
    lm = DistillationObjective.language_modeling()
    train(_model("gpt2", 3, dropout=0.1), blocks, dev, cfg, out / "dropout", objective=lm)


def main(out: Path, resume: bool = False) -> None:
    state = process_state()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tokens = ((np.arange(T * 48) * 5 + rng.integers(0, 3, T * 48)) % V).astype(np.uint16)
    blocks = BlockDataset(tokens, T, seed=1)
    dev = torch.from_numpy(tokens[: 4 * T].astype(np.int64)).view(4, T)
    if resume:
        train_dropout(out, dev, blocks)
        return
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

    # padded examples: one process takes the whole batch at once, N processes 2 micro-batches each
    accum = 1 if state.num_processes == 1 else 2
    padded_cfg = TrainConfig(
        epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, log_every_steps=1, grad_accum_steps=accum
    )
    source = ExampleSource(_examples(), 8, pad_id=0, seed=2)
    train(
        _model("llama", 5),
        source,
        [source.collate(np.arange(8))],
        padded_cfg,
        out / "padded",
        objective=DistillationObjective.language_modeling(),
    )
    train_dropout(out, dev, blocks)
    record = {
        "rank": state.process_index,
        "world": state.num_processes,
        "lookups": seen,
        "max_logprob_error": max(errors),
        "id_mismatches": sum(id_mismatches),
    }
    (out / f"rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), resume=sys.argv[2:] == ["resume"])
