"""A teacher with another vocabulary is refused everywhere (sizes named, `lmdistill adapt-teacher` suggested); a
teacher whose embedding only has padding rows past the run tokenizer's length is used through the shared rows
(``vocab_rows: shared``), and the student never sees the padding rows."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from lmdistill.config import ModelConfig
from lmdistill.config.recipes import ConfigError, load_recipe
from lmdistill.data.blocks import BlockDataset
from lmdistill.evaluation.scoring import Request, hf_logits_fn, loglikelihood, score_texts
from lmdistill.losses import DistillationObjective
from lmdistill.losses.chunked import fused_linear_loss
from lmdistill.losses.divergences import check_logits_pair, get_divergence
from lmdistill.losses.topk import topk_teacher
from lmdistill.methods.babyllama import teacher_ensemble
from lmdistill.methods.stages import (
    CorpusData,
    check_model_path,
    check_same_tokenizer,
    check_vocab_size,
    pretrained_model_stage,
)
from lmdistill.teachers import TeacherEnsemble
from lmdistill.teachers.cache import cache_spec, ensure_cache
from lmdistill.training import evaluate_dev_loss
from lmdistill.vocabulary import ADAPT_TEACHER, VocabularyMismatchError

EXTRA = 13  # padding rows past the tokenizer's length
T = 16
ADAPT = "`lmdistill adapt-teacher`"
TEXTS = ["The cat sat on the mat.", "She said no.", "A long time ago, in a house by the river, there lived a man."]


def _llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def _padded(model, fill: str):
    """``model`` with EXTRA more embedding and LM head rows, set to ``fill``; its first V rows unchanged."""
    padded = copy.deepcopy(model)
    v = model.config.vocab_size
    padded.resize_token_embeddings(v + EXTRA, mean_resizing=False)
    with torch.no_grad():
        for weight in (padded.get_input_embeddings().weight, padded.get_output_embeddings().weight):
            weight[v:] = 0.0 if fill == "zeros" else 30.0 * torch.randn_like(weight[v:])
    return padded.eval()


def _retokenized(tok, edit=None):
    """A copy of ``tok`` rebuilt from its JSON, after ``edit(spec)``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    if edit is not None:
        edit(spec)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def _data(tok, n_dev: int = 3) -> CorpusData:
    dev = torch.randint(4, len(tok), (n_dev, T), generator=torch.Generator().manual_seed(1))
    return CorpusData(tokenizer=tok, train=None, dev=dev, info={})


def _save(model, tok, folder):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return ModelConfig(path=str(folder))


def _ids(tok, b: int = 2):
    return torch.randint(0, len(tok), (b, T), generator=torch.Generator().manual_seed(2))


# ----------------------------------------------------------------------------------------------- refusals


def test_the_message_names_both_sizes_and_adapt_teacher():
    err = VocabularyMismatchError  # one helper writes every refusal
    from lmdistill.vocabulary import vocabulary_mismatch

    e = vocabulary_mismatch("qwen", 151936, "embedding rows", "this run's tokenizer", 151665, "tokens", padding=True)
    assert isinstance(e, err) and isinstance(e, ValueError)
    text = str(e)
    assert "qwen has 151,936 embedding rows and this run's tokenizer has 151,665 tokens" in text
    assert ADAPT_TEACHER in text and "vocab_rows: shared" in text


def test_ensemble_refuses_a_teacher_of_another_vocabulary(tiny_tokenizer):
    v = len(tiny_tokenizer)
    small, big = _llama(v - 4), _llama(v + EXTRA)
    with pytest.raises(VocabularyMismatchError) as e:
        TeacherEnsemble([_llama(v), big], vocab_size=v, names=["gpt2-teacher", "llama-teacher"])
    text = str(e.value)
    assert f"llama-teacher has {v + EXTRA:,} embedding rows and this run's tokenizer has {v:,} tokens" in text
    assert ADAPT in text and "vocab_rows: shared" in text  # more rows: padding may be the reason
    with pytest.raises(VocabularyMismatchError) as e:  # fewer rows than tokens: "shared" does not help
        TeacherEnsemble([small], vocab_size=v, vocab_rows="shared", names=["tiny"])
    assert f"tiny has {v - 4:,} embedding rows" in str(e.value) and "vocab_rows: shared" not in str(e.value)
    with pytest.raises(VocabularyMismatchError, match="adapt-teacher") as e:  # without V: teachers compared
        TeacherEnsemble([_llama(v), big])
    assert f"teacher 1 has {v + EXTRA:,} embedding rows and teacher 0 has {v:,} embedding rows" in str(e.value)
    with pytest.raises(ValueError, match="needs vocab_size"):
        TeacherEnsemble([big], vocab_rows="shared")


def test_stage_checks_refuse_another_vocabulary(tiny_tokenizer, tmp_path):
    v = len(tiny_tokenizer)
    data = _data(tiny_tokenizer)
    padded = _padded(_llama(v), "random")
    with pytest.raises(VocabularyMismatchError) as e:
        check_vocab_size("gpt2-teacher", padded, data)
    assert f"gpt2-teacher has {v + EXTRA:,} embedding rows and this run's tokenizer has {v:,} tokens" in str(e.value)
    assert ADAPT in str(e.value)
    assert check_vocab_size("gpt2-teacher", padded, data, "shared") == v
    assert check_vocab_size("gpt2-teacher", _llama(v), data) == v
    # a teacher given by path fails before anything loads or trains: its config.json says its rows
    cfg = _save(padded, tiny_tokenizer, tmp_path / "padded")
    with pytest.raises(VocabularyMismatchError, match=f"{v + EXTRA:,} embedding rows") as e:
        check_model_path("gpt2-teacher", cfg, data)
    assert str(tmp_path / "padded") in str(e.value) and ADAPT in str(e.value)
    check_model_path("gpt2-teacher", cfg, data, "shared")
    with pytest.raises(VocabularyMismatchError, match="adapt-teacher"):
        pretrained_model_stage("gpt2-teacher", cfg, data, torch.device("cpu"))


def test_divergence_checks_refuse_another_vocabulary():
    student, teacher = torch.randn(2, 5, 384), torch.randn(2, 5, 397)
    with pytest.raises(VocabularyMismatchError) as e:
        check_logits_pair(student, teacher, 1.0)
    text = str(e.value)
    assert "teacher_logits has 397 columns and student_logits has 384 columns" in text and ADAPT in text
    with pytest.raises(VocabularyMismatchError, match="adapt-teacher"):
        DistillationObjective(0.5, 2.0)(student, torch.randint(0, 384, (2, 5)), teacher)
    with pytest.raises(ValueError, match="positions"):  # not a vocabulary problem: no adapt-teacher
        check_logits_pair(student, teacher[:, :4, :384], 1.0)
    hidden, weight = torch.randn(2, 5, 8), torch.randn(384, 8)
    fused = "teacher_logits has 397 columns and the student's LM head has 384 rows"
    with pytest.raises(VocabularyMismatchError, match=fused):
        fused_linear_loss(hidden, weight, teacher, get_divergence("forward_kl"))


def test_a_tokenizer_that_differs_on_a_shared_id_is_refused_naming_the_token(tiny_tokenizer, tmp_path):
    v = len(tiny_tokenizer)
    data = _data(tiny_tokenizer)
    ids = {i: t for t, i in tiny_tokenizer.get_vocab().items()}
    a, b = ids[300], ids[301]

    def swap(spec):
        vocab = spec["model"]["vocab"]
        vocab[a], vocab[b] = vocab[b], vocab[a]

    swapped = _retokenized(tiny_tokenizer, swap)
    cfg = _save(_padded(_llama(v), "random"), swapped, tmp_path / "swapped")
    with pytest.raises(VocabularyMismatchError) as e:
        check_model_path("qwen-teacher", cfg, data, "shared")
    text = str(e.value)
    assert f"{v:,} tokens" in text and "qwen-teacher" in text and ADAPT in text
    assert f"id 300 is {b!r} in qwen-teacher ({cfg.path}) and {a!r} in this run" in text

    longer = _retokenized(tiny_tokenizer)
    longer.add_tokens(["<extra-token>"])  # a real token the run's tokenizer lacks, not padding
    cfg = _save(_padded(_llama(v), "random"), longer, tmp_path / "longer")
    with pytest.raises(VocabularyMismatchError) as e:
        check_model_path("qwen-teacher", cfg, data, "shared")
    text = str(e.value)
    assert f"has {v + 1:,} tokens and the tokenizer of this run has {v:,} tokens" in text
    assert f"id {v} '<extra-token>'" in text and ADAPT in text

    same = _retokenized(tiny_tokenizer)  # equal tokenizers pass
    check_same_tokenizer("a", same, "b", tiny_tokenizer)


def test_shared_rows_is_only_for_a_teacher_used_as_it_is():
    with pytest.raises(ConfigError, match="vocab_rows.*used as it is"):
        load_recipe("babyllama-smoke", ["teachers.members.0.vocab_rows=shared"])
    with pytest.raises(ConfigError, match="vocab_rows"):
        load_recipe("babyllama-smoke", ["teachers.members.0.vocab_rows=padded"])


# ---------------------------------------------------------------------------------------------- shared rows


@pytest.mark.parametrize("fill", ["zeros", "random"])
def test_shared_rows_give_the_unpadded_teachers_logits_and_kd_loss(tiny_tokenizer, fill):
    v = len(tiny_tokenizer)
    plain = _llama(v)
    padded = _padded(plain, fill)
    ids = _ids(tiny_tokenizer)
    full = padded(input_ids=ids).logits
    assert full.shape[-1] == v + EXTRA
    torch.testing.assert_close(full[..., :v], plain(input_ids=ids).logits)  # same weights on the shared rows

    shared = TeacherEnsemble([padded], vocab_size=v, vocab_rows="shared")
    reference = TeacherEnsemble([plain], vocab_size=v)
    assert shared.vocab_size == v
    torch.testing.assert_close(shared(ids), reference(ids))
    logits, outputs = shared.forward_features(ids, hidden_states=True)
    assert logits.shape == (2, T, v) and outputs[0].logits.shape == (2, T, v)
    assert len(outputs[0].hidden_states) == 3

    student = _llama(v, seed=5)(input_ids=ids).logits
    for rule in ("logits", "probs"):
        kd = DistillationObjective(0.5, 2.0)
        two = TeacherEnsemble([padded, _llama(v, seed=3)], rule, vocab_size=v, vocab_rows=["shared", "exact"])
        ref = TeacherEnsemble([plain, _llama(v, seed=3)], rule, vocab_size=v)
        got, want = kd(student, ids, two(ids, temperature=2.0)), kd(student, ids, ref(ids, temperature=2.0))
        torch.testing.assert_close(got[0], want[0])
        assert got[1] == pytest.approx(want[1])
    if fill == "random":  # the padding rows would matter if the student saw them
        seen = torch.log_softmax(full.float(), -1)[..., :v]
        assert not torch.allclose(seen, torch.log_softmax(shared(ids), -1), atol=1e-2)


def test_shared_rows_in_the_teacher_cache(tiny_tokenizer, tmp_path):
    v = len(tiny_tokenizer)
    plain = _llama(v)
    padded = _padded(plain, "random")
    rng = np.random.default_rng(0)
    blocks = BlockDataset(rng.integers(0, v, T * 7).astype(np.uint16), T, seed=3, random_offset=False)
    ensemble = TeacherEnsemble([padded], vocab_size=v, vocab_rows="shared")
    settings = {"top_k": 8, "dtype": "float32", "temperature": 2.0, "shard_blocks": 4}
    spec = cache_spec({"padded": padded}, "logits", "tok", blocks, vocab_size=ensemble.vocab_size, **settings)
    assert spec.vocab_size == v
    cache = ensure_cache(ensemble, blocks, spec, tmp_path / "cache", batch_size=3)
    index = np.array([6, 0, 3])
    got = cache.lookup(index)
    want = topk_teacher(TeacherEnsemble([plain])(blocks.batch(index * T)), 8, 2.0)
    assert got.vocab_size == v and int(got.ids.max()) < v
    torch.testing.assert_close(got.ids, want.ids)
    torch.testing.assert_close(got.log_probs, want.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.log_tail, want.log_tail, rtol=0, atol=1e-5)
    with pytest.raises(VocabularyMismatchError, match="adapt-teacher"):  # without V: the teachers must agree
        cache_spec({"padded": padded, "plain": plain}, "logits", "tok", blocks, **settings)


def test_shared_rows_in_the_evaluation_scorer(tiny_tokenizer):
    v = len(tiny_tokenizer)
    plain = _llama(v)
    padded = _padded(plain, "random")
    fn, ref = hf_logits_fn(padded, vocab_size=v), hf_logits_fn(plain)
    ids = _ids(tiny_tokenizer)
    assert fn(ids).shape[-1] == v
    assert score_texts(fn, tiny_tokenizer, TEXTS) == pytest.approx(score_texts(ref, tiny_tokenizer, TEXTS), abs=1e-4)
    requests = [Request("The cat", " sat"), Request("She said", " no."), Request("", "A long time")]
    got, want = loglikelihood(fn, tiny_tokenizer, requests), loglikelihood(ref, tiny_tokenizer, requests)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)


def test_shared_rows_in_the_pretrained_stage_and_the_recipes_ensemble(tiny_tokenizer, tmp_path):
    v = len(tiny_tokenizer)
    plain = _llama(v)
    data = _data(tiny_tokenizer)
    cfg = _save(_padded(plain, "random"), tiny_tokenizer, tmp_path / "padded")
    out = pretrained_model_stage("gpt2-teacher", cfg, data, torch.device("cpu"), "shared")
    want = evaluate_dev_loss(lambda b: plain(input_ids=b.input_ids).logits, data.dev)
    assert out["entry"]["dev_loss"] == pytest.approx(want, rel=1e-5)
    assert out["entry"]["vocab_rows"] == "shared" and out["entry"]["embedding_rows"] == v + EXTRA

    overrides = ["teachers.members.0.train=null", f"teachers.members.0.model.path={cfg.path}"]
    recipe = load_recipe("babyllama-smoke", [*overrides, "teachers.members.0.vocab_rows=shared"])
    other = _llama(v, seed=3)
    ensemble = teacher_ensemble(recipe, {"gpt2-teacher": out["model"], "llama-teacher": other}, data)
    ids = _ids(tiny_tokenizer)
    torch.testing.assert_close(ensemble(ids), TeacherEnsemble([plain, other], vocab_size=v)(ids))
    exact = load_recipe("babyllama-smoke", overrides)
    with pytest.raises(VocabularyMismatchError, match="gpt2-teacher has"):
        teacher_ensemble(exact, {"gpt2-teacher": out["model"], "llama-teacher": other}, data)
