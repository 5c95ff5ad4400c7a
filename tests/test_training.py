"""The training loop: resume gives the same weights, Ctrl-C saves, NaN stops, distillation runs."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmdistill.config import ModelConfig, TrainConfig
from lmdistill.data.blocks import BlockDataset
from lmdistill.losses import DistillationObjective
from lmdistill.models import build_model
from lmdistill.teachers import TeacherEnsemble
from lmdistill.training import NonFiniteLossError, TrainingInterrupted, train

V, T = 64, 16


def _model(arch="llama", seed=0, dropout=0.1):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, num_layers=2, num_heads=2, hidden_size=16, intermediate_size=32, dropout=dropout)
    return build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)


def _data():
    rng = np.random.default_rng(0)
    tokens = (np.arange(2000) * 7 + rng.integers(0, 3, 2000)) % V  # learnable, not trivial
    return BlockDataset(tokens.astype(np.uint16), T, seed=5), torch.from_numpy(tokens[:64].astype(np.int64)).view(4, T)


CFG = TrainConfig(
    epochs=2, batch_size=8, lr=3e-3, warmup_steps=3, save_every_steps=5, log_every_steps=1, grad_accum_steps=2
)


def _weights(folder):
    return load_file(folder / "model.safetensors")


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    blocks, dev = _data()
    full = train(_model(), blocks, dev, CFG, tmp_path / "full", objective=DistillationObjective.language_modeling())
    assert full.steps == 2 * (125 // 8) and len(full.dev_losses) == 2

    def ctrl_c(step):
        if step == 7:  # mid-epoch, between two periodic checkpoints
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="interrupted at step 7") as info:
        train(
            _model(),
            blocks,
            dev,
            CFG,
            tmp_path / "cut",
            objective=DistillationObjective.language_modeling(),
            on_step=ctrl_c,
        )
    assert info.value.checkpoint.name == "step-0000007"
    assert not (tmp_path / "cut" / "final").exists()
    # a fresh process would build a fresh model: different init seed must not matter, weights come from the checkpoint
    resumed = train(
        _model(seed=123), blocks, dev, CFG, tmp_path / "cut", objective=DistillationObjective.language_modeling()
    )
    assert resumed.steps == full.steps
    a, b = _weights(full.final_dir), _weights(resumed.final_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed.dev_losses == pytest.approx(full.dev_losses, abs=1e-6)
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
        if "event" not in json.loads(x)
    ]
    assert steps == sorted(set(steps)), "metrics after resume must not repeat steps"
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step-*"))) <= 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    blocks, dev = _data()
    model = _model()

    def poison(step):
        if step == 6:
            with torch.no_grad():
                model.model.embed_tokens.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"at step 7 .*step-0000005"):
        train(model, blocks, dev, CFG, tmp_path, objective=DistillationObjective.language_modeling(), on_step=poison)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000005"]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "checkpoints" / "step-0000005").values())
    assert not (tmp_path / "final").exists()


def test_distillation_moves_the_student_towards_the_teachers(tmp_path):
    blocks, dev = _data()
    teachers = [_model("gpt2", seed=1, dropout=0.0), _model("llama", seed=2, dropout=0.0)]
    ensemble = TeacherEnsemble(teachers, "logits")
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_steps=0, log_every_steps=1)
    objective = DistillationObjective(alpha=0.0, temperature=2.0)  # pure KD: the student imitates the teachers
    student = _model(seed=3, dropout=0.0)
    x = dev[:2]

    def kl_to_teachers(m):
        return objective(m(input_ids=x).logits, x, ensemble(x))[1]["forward_kl"]

    before = kl_to_teachers(student)
    with pytest.raises(ValueError, match="no teacher"):
        train(student, blocks, dev, cfg, tmp_path / "x", objective=objective)
    train(student, blocks, dev, cfg, tmp_path / "kd", objective=objective, teacher=ensemble)
    assert kl_to_teachers(student) < 0.5 * before
    assert all(not p.requires_grad for t in teachers for p in t.parameters())
    record = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss", "ce", "forward_kl", "lr", "step"} <= set(record)


def _wide_llama(seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="llama", num_layers=4, num_heads=4, hidden_size=32, intermediate_size=64, dropout=0.0)
    return build_model(cfg, vocab_size=V, block_size=T, bos_id=1, eos_id=2, pad_id=0)


@pytest.mark.parametrize("implementation", ["plain", "fused"])
def test_feature_terms_train_their_projections_save_and_resume(tmp_path, implementation):
    """Hint + attention + embedding terms: the projections learn, are saved with the run and restored on resume."""
    from lmdistill.config import FeatureLossConfig
    from lmdistill.losses import load_projections

    blocks, dev = _data()
    features = [
        FeatureLossConfig(kind="hint", weight=1.0, layers="uniform"),
        FeatureLossConfig(kind="attention", weight=0.5, loss="kl", layers="last"),
        FeatureLossConfig(kind="embedding", weight=0.1),
    ]

    def objective():
        return DistillationObjective(alpha=0.5, temperature=2.0, implementation=implementation, features=features)

    def run(name, **kw):
        ensemble = TeacherEnsemble([_wide_llama(1)], "logits")
        torch.manual_seed(3)
        return train(
            _model(seed=3, dropout=0.0),
            blocks,
            dev,
            CFG,
            tmp_path / name,
            objective=kw.pop("obj"),
            teacher=ensemble,
            **kw,
        )

    full_objective = objective()
    full = run("full", obj=full_objective)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "hint" in r]
    assert {"loss", "ce", "forward_kl", "hint", "attention", "embedding"} <= set(train_records[0])
    assert (
        train_records[-1]["hint"] < 0.7 * train_records[0]["hint"]
    )  # student + projection learn the teacher's features
    # the loss is the weighted sum of its logged terms (first step: no averaging across steps)
    r = train_records[0]
    total = 0.5 * r["ce"] + 0.5 * 4 * r["forward_kl"] + r["hint"] + 0.5 * r["attention"] + 0.1 * r["embedding"]
    assert r["loss"] == pytest.approx(total, rel=1e-4)
    saved = load_file(full.final_dir / "objective.safetensors")
    assert set(saved) == set(full_objective.state_dict()) and any("projections" in k for k in saved)
    restored = objective().setup(_model(seed=9), [_wide_llama(1)])
    load_projections(restored, full.final_dir / "objective.safetensors")
    for k, v in full_objective.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[k], v.cpu())

    def ctrl_c(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        run("cut", obj=objective(), on_step=ctrl_c)
    assert (tmp_path / "cut" / "checkpoints" / "step-0000007" / "objective.safetensors").is_file()
    resumed_objective = objective()
    resumed = run("cut", obj=resumed_objective)
    for k, v in _weights(full.final_dir).items():
        torch.testing.assert_close(_weights(resumed.final_dir)[k], v, atol=1e-5, rtol=1e-5)
    for k, v in full_objective.state_dict().items():
        torch.testing.assert_close(resumed_objective.state_dict()[k], v, atol=1e-5, rtol=1e-5)
