"""The tinybert method: each loss against a direct formula, the pre-softmax score capture, per-layer gradient norms,
static MLM masking, supervised-position logits, the recipes, and the smoke runs (encoder and decoder) with resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, BertModel, LlamaConfig, LlamaForCausalLM

from lmdistill.config import load_recipe
from lmdistill.config.schema import ConfigError
from lmdistill.config.sections import FeatureLossConfig
from lmdistill.data.batches import Batch
from lmdistill.data.mlm import MaskingConfig, causal_examples, mask_sequence, mlm_examples, mlm_sequences
from lmdistill.diagnostics import GradientNorms, LogitLossProbe, parameter_groups, read_probes
from lmdistill.losses.attention_scores import use_attention_scores
from lmdistill.losses.divergences import get_divergence
from lmdistill.losses.features import layer_map
from lmdistill.losses.objective import DistillationObjective
from lmdistill.models.adapt import freeze_all_but_head, untie_output_embedding
from lmdistill.models.families import FAMILIES, head_rows
from lmdistill.teachers.ensemble import TeacherEnsemble
from lmdistill.training import StepInfo


def _bert(vocab: int = 50, layers: int = 3, width: int = 24, heads: int = 2, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * width, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    return BertForMaskedLM(config).eval()


def _llama(vocab: int = 50, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _padded_batch(vocab: int = 50, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    labels = torch.full_like(ids, -100)
    for b, t in ((0, 1), (0, 6), (1, 2), (1, 5), (2, 3)):
        labels[b, t] = ids[b, t]
    return Batch(input_ids=ids, labels=labels, attention_mask=mask)


# ------------------------------------------------------------------------------------------- scores and hooks


def test_scores_attention_captures_q_k_over_sqrt_d_and_keeps_the_output():
    model = _bert()
    batch = _padded_batch()
    eager = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    use_attention_scores(model)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-5, rtol=1e-5)  # the outputs are eager attention's
    for layer in range(3):
        attn = model.bert.encoder.layer[layer].attention.self
        x = eager.hidden_states[layer]  # the layer's input
        q = attn.query(x).view(3, 10, 2, 12).transpose(1, 2)
        k = attn.key(x).view(3, 10, 2, 12).transpose(1, 2)
        manual = q @ k.transpose(2, 3) / math.sqrt(12)
        keys = batch.attention_mask.bool()[:, None, None, :]
        manual = manual.masked_fill(~keys, 0.0)  # masked keys are recorded as 0
        torch.testing.assert_close(out.attentions[layer], manual, atol=1e-5, rtol=1e-5)


def test_scores_attention_on_grouped_query_llama_matches_eager_and_zeroes_the_future():
    model = _llama()
    ids = torch.randint(3, 50, (2, 7))
    eager = model(input_ids=ids, output_hidden_states=True)
    use_attention_scores(model)
    out = model(input_ids=ids, output_attentions=True)
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-5, rtol=1e-5)
    scores = out.attentions[0]
    assert scores.shape == (2, 4, 7, 7)  # one map per query head (2 kv heads repeated)
    future = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
    assert (scores[..., future] == 0).all() and (scores[..., ~future] != 0).any()


def test_head_rows_gives_the_dense_logits_at_the_kept_positions():
    model = _bert()
    batch = _padded_batch()
    dense = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    keep = batch.labels != -100
    with head_rows(model.get_output_embeddings(), keep):
        sparse = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert sparse.shape == (int(keep.sum()), 50)
    torch.testing.assert_close(sparse, dense[keep], atol=1e-6, rtol=1e-6)
    after = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert after.shape == dense.shape  # the hook is gone


# ------------------------------------------------------------------------------------------ the four losses


def _objective(features, alpha=0.0, logits_at="supervised", temperature=2.0):
    return DistillationObjective(
        alpha=alpha, temperature=temperature, features=features, family="masked_lm", logits_at=logits_at
    )


def test_logit_loss_at_masked_positions_equals_dense_formula_and_gradient():
    student, teacher = _bert(layers=2, width=16, seed=1), _bert(seed=2)
    batch = _padded_batch()
    results = {}
    for logits_at in ("supervised", "all"):
        student.zero_grad()
        obj = _objective([], alpha=0.3, logits_at=logits_at)
        out = obj.student_forward(student, batch)
        keep = obj.family.supervised(batch.labels) if logits_at == "supervised" else None
        t_logits, _ = TeacherEnsemble([teacher]).forward_features(batch.input_ids, batch.attention_mask, keep=keep)
        loss, terms = obj(out, batch.labels, t_logits, batch.attention_mask)
        loss.backward()
        results[logits_at] = (loss.item(), terms, student.bert.embeddings.word_embeddings.weight.grad.clone())
    # direct formula on the dense logits at the 5 masked positions
    keep = batch.labels != -100
    s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[keep]
    t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[keep]
    ce = F.cross_entropy(s, batch.labels[keep])
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean")
    expected = 0.3 * ce + 0.7 * 4 * kl
    assert results["supervised"][0] == pytest.approx(expected.item(), rel=1e-5)
    assert results["all"][0] == pytest.approx(expected.item(), rel=1e-5)
    assert results["supervised"][1]["forward_kl"] == pytest.approx(kl.item(), rel=1e-5)
    torch.testing.assert_close(results["supervised"][2], results["all"][2], atol=1e-6, rtol=1e-5)


def test_embedding_hidden_and_attention_terms_equal_direct_formulas_with_padding_and_ratio_1_5():
    student, teacher = _bert(layers=2, width=16, heads=2, seed=1), _bert(layers=3, width=24, heads=2, seed=2)
    batch = _padded_batch()
    features = [
        FeatureLossConfig(kind="embedding"),
        FeatureLossConfig(kind="hint", layers="uniform"),
        FeatureLossConfig(kind="attention", loss="mse", layers="uniform", scores=True),
    ]
    obj = _objective(features).setup(student, [teacher])
    assert layer_map("uniform", 2, 3) == [(1, 1), (2, 3)]  # floor(m * 3 / 2): 1.5 -> 1, 3 -> 3
    out = obj.student_forward(student, batch)
    keep = obj.family.supervised(batch.labels)
    t_logits, t_out = TeacherEnsemble([teacher]).forward_features(
        batch.input_ids, batch.attention_mask, hidden_states=True, attentions=True, keep=keep
    )
    _, terms = obj(out, batch.labels, t_logits, batch.attention_mask, teacher_outputs=t_out)

    real = batch.attention_mask.bool()
    s_h, t_h = out.hidden_states, t_out[0].hidden_states
    emb = obj.feature_modules["embedding"].projection
    expected_emb = F.mse_loss(emb(s_h[0])[real], t_h[0][real])
    hint = obj.feature_modules["hint"].projections
    expected_hid = (
        F.mse_loss(hint["1_to_1"](s_h[1])[real], t_h[1][real]) + F.mse_loss(hint["2_to_3"](s_h[2])[real], t_h[3][real])
    ) / 2
    # attention: per query token, mean over heads of (1 / K_b) sum over real keys, then mean over real queries
    s_a, t_a = out.attentions, t_out[0].attentions
    per_pair = []
    for s_layer, t_layer in ((1, 1), (2, 3)):
        sq = (s_a[s_layer - 1] - t_a[t_layer - 1]) ** 2  # (B, heads, T, T)
        keys = real[:, None, None, :].float()
        per_query = ((sq * keys).sum(-1) / keys.sum(-1)).mean(1)  # (B, T)
        per_pair.append(per_query[real].mean())
    expected_att = sum(per_pair) / 2
    assert terms["embedding"] == pytest.approx(expected_emb.item(), rel=1e-5)
    assert terms["hint"] == pytest.approx(expected_hid.item(), rel=1e-5)
    assert terms["attention"] == pytest.approx(expected_att.item(), rel=1e-5)
    # scores, not probabilities: a row of probabilities sums to 1, these do not
    assert not torch.allclose(s_a[0].sum(-1)[real[:, None, :].expand(-1, 2, -1)], torch.tensor(1.0))


def test_attention_terms_must_agree_on_scores_or_probabilities():
    features = [
        FeatureLossConfig(kind="attention", loss="mse", scores=True),
        FeatureLossConfig(kind="attention", loss="mse", scores=False),
    ]
    with pytest.raises(ValueError, match="both pre-softmax scores and probabilities"):
        _objective(features).setup(_bert(layers=2, width=16), [_bert()])
    with pytest.raises(ConfigError, match="scores"):
        FeatureLossConfig(kind="attention", loss="kl", scores=True)


def test_supervised_logits_refuse_what_they_cannot_serve():
    with pytest.raises(ValueError, match="logits_at='supervised'"):
        DistillationObjective(implementation="fused", logits_at="supervised")
    with pytest.raises(ValueError, match="logits_at='supervised'"):
        DistillationObjective(reduction="batchmean", logits_at="supervised")


# -------------------------------------------------------------------------------------------- gradient norms


def test_gradient_norms_equal_get_total_norm_over_each_group_and_partition_the_parameters():
    model = _bert(layers=3, width=16, seed=3).train()
    obj = _objective([FeatureLossConfig(kind="hint")], alpha=0.5).setup(model, [_bert(seed=4)])
    batch = _padded_batch()
    out = obj.student_forward(model, batch)
    teacher = _bert(seed=4)
    t_logits, t_out = TeacherEnsemble([teacher]).forward_features(
        batch.input_ids, batch.attention_mask, hidden_states=True, keep=obj.family.supervised(batch.labels)
    )
    loss, _ = obj(out, batch.labels, t_logits, batch.attention_mask, teacher_outputs=t_out)
    loss.backward()
    groups = parameter_groups(model)
    assert list(groups) == ["embeddings", "layer_01", "layer_02", "layer_03", "head"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(dict.fromkeys(model.parameters())))  # each parameter once

    info = StepInfo(1, model, obj, {})
    metrics = GradientNorms(every=5)(info)
    for name, params in groups.items():
        reference = torch.nn.utils.get_total_norm([p.grad for p in params])
        manual = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        assert metrics[f"grad_norm/{name}"] == pytest.approx(float(reference), rel=1e-6)
        assert metrics[f"grad_norm/{name}"] == pytest.approx(manual, rel=1e-5)
    total = math.sqrt(sum(metrics[f"grad_norm/{k}"] ** 2 for k in groups))
    assert metrics["grad_norm/total"] == pytest.approx(total, rel=1e-5)
    assert metrics["grad_norm/projections"] > 0  # the hint projection, outside "total"
    info.step = 3
    assert GradientNorms(every=5)(info) is None  # between measurements


def test_layer_groups_of_llama_and_the_head_freeze():
    groups = parameter_groups(_llama(layers=2))
    assert list(groups) == ["embeddings", "layer_01", "layer_02", "final", "head"]  # final norm, untied lm_head
    bert = _bert()
    trained = freeze_all_but_head(bert)
    assert trained and all(n.startswith("cls.") for n in trained)
    assert "cls.predictions.decoder.weight" not in trained  # tied to the frozen input embedding
    assert not bert.bert.embeddings.word_embeddings.weight.requires_grad


def test_an_untied_mlm_decoder_trains_and_survives_a_save(tmp_path):
    bert = _bert()
    untie_output_embedding(bert)
    trained = freeze_all_but_head(bert)
    assert "cls.predictions.decoder.weight" in trained
    with torch.no_grad():
        bert.cls.predictions.decoder.weight.add_(1.0)
    bert.save_pretrained(tmp_path)
    loaded = BertForMaskedLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.cls.predictions.decoder.weight, bert.cls.predictions.decoder.weight)
    embedding = loaded.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(embedding, bert.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(loaded.cls.predictions.decoder.weight, loaded.bert.embeddings.word_embeddings.weight)


# --------------------------------------------------------------------------------------------------- masking


def test_mlm_masking_is_reproducible_and_follows_bert_rates():
    seqs = mlm_sequences([list(range(10, 1010))], cls_id=2, sep_id=3, max_length=50)
    assert all(s[0] == 2 and s[-1] == 3 and len(s) <= 50 for s in seqs) and len(seqs) == 21
    kwargs = dict(mask_id=4, special_ids=[0, 1, 2, 3], vocab_size=1200)
    a = mlm_examples(seqs, seed=7, **kwargs)
    assert a == mlm_examples(seqs, seed=7, **kwargs)  # same seed, same masks
    assert a != mlm_examples(seqs, seed=8, **kwargs)
    assert a[5] == mlm_examples(seqs[5:6] * 6, seed=7, **kwargs)[5]  # a sequence's mask depends on its index only
    many = mlm_sequences([list(range(10, 20010))], cls_id=2, sep_id=3, max_length=130)
    ex = mlm_examples(many, seed=0, **kwargs)
    chosen = kept = masked = random = total = 0
    for e, s in zip(ex, many, strict=True):
        for x, y, orig in zip(e["input_ids"], e["labels"], s, strict=True):
            if orig in (2, 3):
                assert y == -100 and x == orig  # specials are never chosen
                continue
            total += 1
            if y != -100:
                chosen += 1
                assert y == orig
                masked += x == 4
                kept += x == orig
                random += x not in (4, orig)
    assert chosen / total == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.02)
    assert random / chosen == pytest.approx(0.1, abs=0.02)
    assert kept / chosen == pytest.approx(0.1, abs=0.02)


def test_every_sequence_is_supervised_and_rates_are_validated():
    rng = np.random.default_rng(0)
    inputs, labels = mask_sequence([2, 11, 3], rng, mask_id=4, special_ids=[2, 3], random_ids=np.arange(5, 9),
                                   config=MaskingConfig(probability=0.01))  # fmt: skip
    assert labels == [-100, 11, -100]
    with pytest.raises(ValueError, match="sum to at most 1"):
        MaskingConfig(mask_fraction=0.8, random_fraction=0.3)
    blocks = causal_examples([[5, 6, 7], [8, 9]], 1, 2, 4)
    assert [b["input_ids"] for b in blocks] == [[1, 5, 6, 7], [2, 1, 8, 9]]


# -------------------------------------------------------------------------------------------------- probes


def test_logit_loss_probe_matches_a_direct_kl_and_keeps_the_last_record_per_step(tmp_path):
    teacher, student = _bert(seed=1), _bert(layers=2, width=16, seed=2)
    batch = _padded_batch()
    probe = LogitLossProbe(
        {"train": [batch]}, teacher, FAMILIES["masked_lm"], get_divergence("forward_kl"), 2.0, tmp_path / "p.jsonl"
    )
    record = probe(0, student)
    keep = batch.labels != -100
    s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[keep]
    t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[keep]
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean")
    assert record["train_logit_loss"] == pytest.approx(kl.item(), rel=1e-5)
    assert record["train_ce"] == pytest.approx(F.cross_entropy(s, batch.labels[keep]).item(), rel=1e-5)
    with open(tmp_path / "p.jsonl", "a") as f:
        f.write(json.dumps({"step": 0, "train_logit_loss": 9.0}) + "\n{truncated")
    assert [r["train_logit_loss"] for r in read_probes(tmp_path / "p.jsonl")] == [9.0]  # last wins; torn line skipped


# -------------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["tinybert-cpu", "tinybert", "tinybert-smoke", "tinybert-decoder-cpu"])
def test_packaged_tinybert_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe.method == "tinybert"
    assert [v.name for v in recipe.variants][:3] == ["baseline", "logit_only", "multi_loss"]


def test_paper_scale_recipe_counts_tinybert_4l_312_on_the_meta_device():
    from lmdistill.models import build_model

    recipe = load_recipe("tinybert")
    assert recipe.teacher.model.path == "bert-base-uncased"
    with torch.device("meta"):
        student = build_model(recipe.student.model, vocab_size=30522, block_size=512, bos_id=None, eos_id=None,
                              pad_id=0)  # fmt: skip
        teacher = BertForMaskedLM(BertConfig())  # bert-base-uncased's configuration
    body = sum(p.numel() for p in student.bert.parameters())
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (4, 312)
    assert body == pytest.approx(14.3e6, rel=0.03)  # TinyBERT-4's 14.5M, its pooler not built for a masked LM
    assert sum(p.numel() for p in teacher.bert.parameters()) == pytest.approx(109e6, rel=0.01)


def test_recipe_checks_family_and_downstream():
    recipe = load_recipe("tinybert-smoke")
    with pytest.raises(ConfigError, match="student.model.arch"):
        load_recipe("tinybert-smoke", overrides=["student.model.arch=llama"])
    with pytest.raises(ConfigError, match="variants"):
        load_recipe("tinybert-smoke", overrides=["variants=[{name: teacher}]"])
    assert recipe.downstream.task == "esnli"


# ---------------------------------------------------------------------------------------------- smoke runs


def _wordpiece_teacher(out: Path, data_root: Path) -> Path:
    """A 3-layer BERT body (no MLM head, as all-MiniLM-L6-v2) with a WordPiece tokenizer trained on the corpus."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from lmdistill.config.sections import SourceConfig
    from lmdistill.data.corpus import load_corpus

    docs = load_corpus(data_root, [SourceConfig("childes", max_words=4000), SourceConfig("brown", max_words=4000)],
                       "train")  # fmt: skip
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(docs, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(hf), hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, pad_token_id=hf.pad_token_id)  # fmt: skip
    BertModel(config).save_pretrained(out)
    hf.save_pretrained(out)
    return out


@pytest.mark.slow
def test_tinybert_smoke_runs_end_to_end_and_resumes(tmp_path, data_root):
    from lmdistill.methods.tinybert import run

    teacher = _wordpiece_teacher(tmp_path / "teacher", data_root)
    recipe = load_recipe("tinybert-smoke", overrides=[f"teacher.model.path={teacher}"])
    run_dir = tmp_path / "run"
    results = run(recipe, run_dir, data_root=data_root)
    models = results["models"]
    assert set(models) == {"teacher", "baseline-s1", "logit_only-s1", "multi_loss-s1"}
    head = models["teacher"]["head"]
    assert head["trained_parameters"] > 0 and models["teacher"]["held_out"]["tokens"] > 0
    multi = models["multi_loss-s1"]
    records = [json.loads(line) for line in (run_dir / multi["metrics_file"]).read_text().splitlines()]
    logged = {k for r in records for k in r}
    assert {"embedding", "hint", "attention", "forward_kl", "ce", "grad_norm/layer_01", "grad_norm/head"} <= logged
    assert "forward_kl" not in (run_dir / models["baseline-s1"]["metrics_file"]).read_text()
    probes = read_probes(run_dir / multi["probes_file"])
    assert probes[0]["step"] == 0 and probes[-1]["step"] == multi["steps"]
    # the same initialisation: every variant's first probe is the same untrained student
    first = {v: read_probes(run_dir / models[f"{v}-s1"]["probes_file"])[0] for v in ("baseline", "logit_only")}
    assert first["baseline"]["train_logit_loss"] == pytest.approx(first["logit_only"]["train_logit_loss"], rel=1e-6)
    downstream = results["downstream"]
    assert set(downstream["models"]) == set(models) and all(
        len(m["accuracies"]) == 2 for m in downstream["models"].values()
    )
    report = (run_dir / "report.md").read_text()
    assert "## The paper's claims, here" in report and "plots/logit_loss_probes.png" in report
    assert (run_dir / "plots" / "gradient_norm_heatmap.png").exists()

    # resume: an interrupted student (final removed, a checkpoint left) is continued; finished stages are kept
    shutil.rmtree(run_dir / "models" / "multi_loss-s1" / "final")
    (run_dir / "downstream" / "multi_loss-s1-s1" / "accuracy.json").unlink()
    again = run(recipe, run_dir, data_root=data_root, resume=True)
    assert again["models"]["multi_loss-s1"]["steps"] == multi["steps"]
    assert again["models"]["baseline-s1"]["final_probe"] == models["baseline-s1"]["final_probe"]
    resumed = again["models"]["multi_loss-s1"]["final_probe"]
    assert resumed["train_logit_loss"] == pytest.approx(multi["final_probe"]["train_logit_loss"], rel=1e-4)

    from lmdistill.cli import main

    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0  # the command dispatches on the run's method
    assert "multi-loss vs logit-only KD" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_tinybert_decoder_smoke_distils_a_causal_teacher(tmp_path, data_root, tiny_tokenizer):
    from lmdistill.methods.tinybert import run

    teacher = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    ))  # fmt: skip
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer.save_pretrained(tmp_path / "teacher")
    recipe = load_recipe("tinybert-decoder-smoke", overrides=[f"teacher.model.path={tmp_path / 'teacher'}"])
    results = run(recipe, tmp_path / "run", data_root=data_root)
    multi = results["models"]["multi_loss-s1"]
    assert multi["family"] == "causal_lm" and "downstream" not in results
    assert {"layer_01", "layer_02", "final"} <= set(multi["grad_norms"])
    assert multi["final_probe"]["held_out_logit_loss"] > 0
