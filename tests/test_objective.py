"""The Baby Llama objective against a direct float64 formula written with explicit loops."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdistill.losses import DistillationObjective, causal_lm_ce, forward_kl, reverse_kl
from lmdistill.teachers import TeacherEnsemble


def _softmax(row, T):
    m = max(row)
    e = [math.exp((x - m) / T) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))


def _direct(student, teacher, ids, alpha, T, reduction):
    """alpha * CE + (1 - alpha) * T^2 * KL, written out position by position in float64."""
    s, t = student.double().tolist(), teacher.double().tolist()
    B, L = ids.shape
    ce_terms, kl_shifted, kl_all = [], [], []
    for b in range(B):
        for i in range(L):
            kl_i = _kl(_softmax(t[b][i], T), _softmax(s[b][i], T))
            kl_all.append(kl_i)
            if i < L - 1 and ids[b, i + 1] != -100:
                ce_terms.append(-math.log(_softmax(s[b][i], 1.0)[ids[b, i + 1]]))
                kl_shifted.append(kl_i)
    ce = sum(ce_terms) / len(ce_terms)
    kl = sum(kl_shifted) / len(kl_shifted) if reduction == "mean" else sum(kl_all) / B
    return alpha * ce + (1 - alpha) * T**2 * kl, ce, kl


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 7, generator=g) * 2
    teacher = torch.randn(2, 5, 7, generator=g) * 2
    ids = torch.randint(0, 7, (2, 5), generator=g)
    return student, teacher, ids


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize(("alpha", "T"), [(0.5, 2.0), (0.2, 1.0), (0.9, 4.0)])
def test_objective_matches_direct_formula(batch, reduction, alpha, T):
    student, teacher, ids = batch
    loss, terms = DistillationObjective(alpha, T, reduction=reduction)(student, ids, teacher)
    ref, ce, kl = _direct(student, teacher, ids, alpha, T, reduction)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert terms["ce"] == pytest.approx(ce, rel=1e-5)
    assert terms["forward_kl"] == pytest.approx(kl, rel=1e-5)


def test_batchmean_reproduces_babyllama_code(batch):
    """The Baby Llama trainer: KLDivLoss(reduction="batchmean") on (B, T, V) log-probs, times T^2."""
    student, teacher, ids = batch
    T, alpha = 2.0, 0.5
    kl_code = (
        torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(student / T, -1), torch.softmax(teacher / T, -1))
        * T**2
    )
    ce_code = torch.nn.functional.cross_entropy(student[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    loss, _ = DistillationObjective(alpha, T, reduction="batchmean")(student, ids, teacher)
    torch.testing.assert_close(loss, alpha * ce_code + (1 - alpha) * kl_code)


def test_masked_tokens_change_nothing(batch):
    student, teacher, ids = batch
    labels = ids.clone()
    labels[0, 3:] = -100
    loss, _ = DistillationObjective(0.5, 2.0)(student, labels, teacher)
    student2 = student.clone()
    student2[0, 2:] += 100 * torch.randn_like(student2[0, 2:])  # positions 2..4 predict masked labels 3..4 or none
    loss2, _ = DistillationObjective(0.5, 2.0)(student2, labels, teacher)
    torch.testing.assert_close(loss, loss2)


def test_empty_mask_gives_zero_not_nan(batch):
    student, teacher, ids = batch
    labels = torch.full_like(ids, -100)
    loss, terms = DistillationObjective(0.5, 2.0)(student.requires_grad_(), labels, teacher)
    assert loss.item() == 0.0 and terms["forward_kl"] == 0.0
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_kl_is_zero_for_identical_logits_and_matches_torch(batch):
    student, teacher, _ = batch
    assert forward_kl(student, student, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    ref = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), log_target=True, reduction="none"
        )
        .sum(-1)
        .mean()
    )
    torch.testing.assert_close(forward_kl(student, teacher), ref)
    ref_rev = (
        torch.nn.functional.kl_div(
            torch.log_softmax(teacher, -1), torch.log_softmax(student, -1), log_target=True, reduction="none"
        )
        .sum(-1)
        .mean()
    )
    torch.testing.assert_close(reverse_kl(student, teacher), ref_rev)


def test_alpha_one_is_plain_cross_entropy(batch):
    student, _, ids = batch
    objective = DistillationObjective.language_modeling()
    assert not objective.needs_teacher
    loss, terms = objective(student, ids)
    assert set(terms) == {"loss", "ce"}
    torch.testing.assert_close(loss, causal_lm_ce(student, ids))


def test_missing_teacher_and_vocab_mismatch_are_errors(batch):
    student, teacher, ids = batch
    with pytest.raises(ValueError, match="needs teacher logits"):
        DistillationObjective(0.5, 2.0)(student, ids)
    with pytest.raises(ValueError, match="do not share one vocabulary.*lmdistill adapt-teacher"):
        DistillationObjective(0.5, 2.0)(student, ids, teacher[..., :6])


class _Fixed(torch.nn.Module):
    def __init__(self, logits, vocab):
        super().__init__()
        self.logits = logits
        self.config = type("C", (), {"vocab_size": vocab})()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return type("O", (), {"logits": self.logits})()


def test_ensemble_rules(batch):
    a, b, ids = batch
    logits_rule = TeacherEnsemble([_Fixed(a, 7), _Fixed(b, 7)], "logits")
    torch.testing.assert_close(logits_rule(ids), (a + b) / 2)
    probs_rule = TeacherEnsemble([_Fixed(a, 7), _Fixed(b, 7)], "probs")
    T = 2.0
    expected = (torch.softmax(a / T, -1) + torch.softmax(b / T, -1)) / 2
    torch.testing.assert_close(torch.softmax(probs_rule(ids, temperature=T) / T, -1), expected)
    with pytest.raises(ValueError, match="teacher 1 has 8 embedding rows and teacher 0 has 7 embedding rows"):
        TeacherEnsemble([_Fixed(a, 7), _Fixed(b, 8)])


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(2, 6),
    V=st.integers(2, 9),
    alpha=st.floats(0.0, 0.99),
    T=st.floats(0.5, 5.0),
    reduction=st.sampled_from(["mean", "batchmean"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_objective_matches_direct_formula_property(B, L, V, alpha, T, reduction, seed, data):
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(B, L, V, generator=g) * 3, torch.randn(B, L, V, generator=g) * 3
    ids = torch.randint(0, V, (B, L), generator=g)
    keep = data.draw(st.lists(st.booleans(), min_size=B * (L - 1), max_size=B * (L - 1)))
    labels = ids.clone()
    labels[:, 1:][~torch.tensor(keep).view(B, L - 1)] = -100
    loss, terms = DistillationObjective(alpha, T, reduction=reduction)(student, labels, teacher)
    assert torch.isfinite(loss)
    if not any(keep):  # nothing supervised: CE (and the mean-reduced KL) are 0, never NaN
        assert terms["ce"] == 0.0
        return
    ref, ce, kl = _direct(student, teacher, labels, alpha, T, reduction)
    assert loss.item() == pytest.approx(ref, rel=1e-4, abs=1e-5)
    assert terms["forward_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_loss_compile_is_threaded_from_the_recipe_sections():
    from lmdistill.config import DistillationConfig, LossConfig

    obj = DistillationObjective.from_config(DistillationConfig(), LossConfig(implementation="fused", compile=True))
    assert obj.compile_loss is True and obj.implementation == "fused"
    assert DistillationObjective.from_config(DistillationConfig()).compile_loss is False
    assert DistillationObjective.from_preset("gkd", implementation="chunked", compile=True).compile_loss is True
    assert DistillationObjective.language_modeling("chunked", compile=True).compile_loss is True
    assert callable(obj.compile)  # nn.Module.compile is not shadowed
    with pytest.raises(ValueError, match=r"compile: applies to implementation chunked or fused"):
        DistillationObjective(implementation="plain", compile=True)
