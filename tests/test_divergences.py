"""The divergences of ``lmdistill.losses.divergences``, checked against independent references.

- identities (zero on identical inputs, endpoints and limits of the parametrised divergences, a high-temperature
  expansion, masking, empty masks);
- ``torch.nn.functional.kl_div`` formulas (values and gradients) and a float64 golden file written by
  ``tests/golden/make_divergences_golden.py`` with numpy and explicit loops;
- the compatibility presets of ``DistillationObjective`` against their anchors, each written here from its
  description (Baby Llama's trainer, torchdistill's KDLoss, TRL's generalized_jsd_loss);
- errors.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmdistill.losses import divergences as D
from lmdistill.losses.objective import DistillationObjective, StudentOutput

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "divergences.json").read_text(encoding="utf-8"))

NAMES = ["forward_kl", "reverse_kl", "generalized_jsd", "skew_forward_kl", "skew_reverse_kl", "total_variation"]
# every divergence, with the parametrised ones at interior and end-point values
CONFIGS = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.0}),
    ("generalized_jsd", {"beta": 0.3}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"skew": 0.0}),
    ("skew_forward_kl", {"skew": 0.1}),
    ("skew_reverse_kl", {"skew": 0.0}),
    ("skew_reverse_kl", {"skew": 0.4}),
    ("total_variation", {}),
]
CONFIG_IDS = [f"{n}{''.join(f'-{k}={v}' for k, v in p.items())}" for n, p in CONFIGS]
REDUCTIONS = ["mean", "sum", "batchmean", "none"]
IMPLS = ["plain", "chunked"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def call(name, params, student, teacher, **kw):
    """The public function ``name`` (e.g. ``forward_kl``) with its parameter; chunked runs use odd chunks."""
    if kw.get("implementation") == "chunked":
        kw.setdefault("chunk_size", 2)
    return getattr(D, name)(student, teacher, **params, **kw)


def logits(*shape, scale=2.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def reduce_ref(per_token, mask, reduction):
    """The documented reductions, written independently of ``reduce_per_token``."""
    if mask is None:
        mask = torch.ones(per_token.shape, dtype=torch.bool)
    kept = per_token * mask  # finite inputs only here
    if reduction == "none":
        return kept
    if reduction == "sum":
        return kept.sum()
    if reduction == "mean":
        n = int(mask.sum())
        return kept.sum() / n if n else kept.sum() * 0
    return kept.sum() / per_token.shape[0]


# ----------------------------------------------------------------------------------------------- references


def kl_div_reference(name, params, student, teacher, temperature):
    """Per-position divergence built from ``F.kl_div(input=log q, target=log p, log_target=True)`` = KL(p || q)."""
    ls = F.log_softmax(student / temperature, -1)
    lt = F.log_softmax(teacher / temperature, -1)

    def kl(log_p, log_q):  # KL(p || q)
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)

    def log_mix(w, log_a, log_b):  # log(w a + (1 - w) b)
        return torch.logsumexp(torch.stack([log_a + math.log(w), log_b + math.log(1 - w)]), dim=0)

    if name == "forward_kl":
        return kl(lt, ls)
    if name == "reverse_kl":
        return kl(ls, lt)
    if name == "generalized_jsd":
        beta = params["beta"]
        if beta == 0.0:
            return kl(lt, ls)
        if beta == 1.0:
            return kl(ls, lt)
        log_m = log_mix(beta, lt, ls)
        return beta * kl(lt, log_m) + (1 - beta) * kl(ls, log_m)
    if name == "skew_forward_kl":
        return kl(lt, ls) if params["skew"] == 0 else kl(lt, log_mix(params["skew"], lt, ls))
    if name == "skew_reverse_kl":
        return kl(ls, lt) if params["skew"] == 0 else kl(ls, log_mix(params["skew"], ls, lt))
    if name == "total_variation":
        return 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)
    raise AssertionError(name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_matches_kl_div_reference_value_and_gradient(name, params, reduction, impl):
    s = logits(2, 3, 6, seed=1).requires_grad_()
    t = logits(2, 3, 6, seed=2).requires_grad_()
    mask = torch.tensor([[True, False, True], [True, True, False]])
    T = 1.7
    got = call(name, params, s, t, temperature=T, mask=mask, reduction=reduction, implementation=impl)
    ref = reduce_ref(kl_div_reference(name, params, s, t, T), mask, reduction)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    upstream = logits(*ref.shape, seed=3) if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    g_got = torch.autograd.grad((got * upstream).sum(), (s, t))
    g_ref = torch.autograd.grad((ref * upstream).sum(), (s, t))
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- golden


def _golden_params():
    for case in GOLDEN["cases"]:
        for dtype in ("float64", "float32"):
            for impl in IMPLS:
                yield pytest.param(case, dtype, impl, id=f"{case['name']}-{dtype}-{impl}")


@pytest.mark.parametrize(("case", "dtype", "impl"), list(_golden_params()))
def test_golden_values(case, dtype, impl):
    torch_dtype = getattr(torch, dtype)
    s = torch.tensor(case["student"], dtype=torch_dtype)
    t = torch.tensor(case["teacher"], dtype=torch_dtype)
    assert list(s.shape) == case["shape"]
    mask = None if case["mask"] is None else torch.tensor(case["mask"], dtype=torch.bool)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-5}
    assert len(case["results"]) == 14 * 2  # every divergence configuration at both temperatures
    for entry in case["results"]:
        for reduction, expected in entry["reductions"].items():
            got = call(
                entry["divergence"],
                entry["params"],
                s,
                t,
                temperature=entry["temperature"],
                mask=mask,
                reduction=reduction,
                implementation=impl,
            )
            assert got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
            want = torch.tensor(expected, dtype=torch.float64)
            msg = f"{entry['divergence']} {entry['params']} T={entry['temperature']} {reduction}"
            torch.testing.assert_close(got.double(), want, **tol, msg=lambda m, msg=msg: f"{msg}: {m}")


def test_golden_file_agrees_with_its_generator():
    """The stored results are what the numpy generator computes from the stored logits (file not hand-edited)."""
    spec = importlib.util.spec_from_file_location("make_divergences_golden", GOLDEN_DIR / "make_divergences_golden.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    names = {c["name"] for c in GOLDEN["cases"]}
    assert names == {"btv_masked", "nv_unmasked", "nv_masked"}
    for case in GOLDEN["cases"]:
        assert gen.results_for(case["student"], case["teacher"], case["mask"]) == case["results"]
    assert {name for name, _ in gen.CONFIGS} == set(NAMES) == set(D.DIVERGENCES)


# ------------------------------------------------------------------------------------------------ identities


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [1.0, 3.0])
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_zero_for_identical_inputs(name, params, T, impl):
    z = logits(3, 4, 9, scale=4.0, dtype=torch.float32).requires_grad_()
    for reduction in REDUCTIONS:
        value = call(name, params, z, z.detach(), temperature=T, reduction=reduction, implementation=impl)
        torch.testing.assert_close(value, torch.zeros_like(value), rtol=0, atol=1e-6)
        (grad,) = torch.autograd.grad(value.sum(), z)
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_generalized_jsd_endpoints_are_the_kls(impl):
    s, t = logits(4, 6, 10, seed=4), logits(4, 6, 10, seed=5)
    for T in (1.0, 2.0):
        kw = {"temperature": T, "reduction": "none", "implementation": impl}
        fwd = call("forward_kl", {}, s, t, **kw)
        rev = call("reverse_kl", {}, s, t, **kw)
        torch.testing.assert_close(call("generalized_jsd", {"beta": 0.0}, s, t, **kw), fwd, rtol=1e-12, atol=0)
        torch.testing.assert_close(call("generalized_jsd", {"beta": 1.0}, s, t, **kw), rev, rtol=1e-12, atol=0)
        # the limits the endpoint convention continues: JSD(beta)/beta -> KL(t||s), JSD(beta)/(1-beta) -> KL(s||t)
        errors = []
        for eps in (1e-4, 1e-5):
            near_0 = call("generalized_jsd", {"beta": eps}, s, t, **kw) / eps
            near_1 = call("generalized_jsd", {"beta": 1 - eps}, s, t, **kw) / eps
            errors.append(max(((near_0 - fwd) / fwd).abs().max(), ((near_1 - rev) / rev).abs().max()))
        assert errors[1] < 1e-3  # loose: the error is O(beta) with a data-dependent constant
        assert errors[1] < errors[0] / 5  # and it shrinks with beta
        # swapping the models swaps beta and 1 - beta
        for beta in (0.2, 0.5, 0.9):
            torch.testing.assert_close(
                call("generalized_jsd", {"beta": beta}, s, t, **kw),
                call("generalized_jsd", {"beta": 1 - beta}, t, s, **kw),
                rtol=1e-10,
                atol=1e-14,
            )
        # the symmetric JSD is bounded by log 2
        assert (call("generalized_jsd", {"beta": 0.5}, s, t, **kw) <= math.log(2)).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_skew_kls_at_zero_and_their_symmetry(impl):
    s, t = logits(5, 8, seed=6), logits(5, 8, seed=7)
    kw = {"temperature": 1.5, "reduction": "none", "implementation": impl}
    fwd = call("forward_kl", {}, s, t, **kw)
    rev = call("reverse_kl", {}, s, t, **kw)
    torch.testing.assert_close(call("skew_forward_kl", {"skew": 0.0}, s, t, **kw), fwd, rtol=1e-12, atol=0)
    torch.testing.assert_close(call("skew_reverse_kl", {"skew": 0.0}, s, t, **kw), rev, rtol=1e-12, atol=0)
    torch.testing.assert_close(call("skew_forward_kl", {"skew": 1e-7}, s, t, **kw), fwd, rtol=1e-5, atol=0)
    torch.testing.assert_close(call("skew_reverse_kl", {"skew": 1e-7}, s, t, **kw), rev, rtol=1e-5, atol=0)
    for skew in (0.1, 0.5, 0.9):
        skewed_fwd = call("skew_forward_kl", {"skew": skew}, s, t, **kw)
        torch.testing.assert_close(skewed_fwd, call("skew_reverse_kl", {"skew": skew}, t, s, **kw), rtol=1e-10, atol=0)
        # mixing teacher into the student bounds KL(t || m) by -log(skew)
        assert (skewed_fwd <= -math.log(skew) + 1e-12).all()
        assert (skewed_fwd < fwd).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_total_variation_bounds(impl):
    s, t = logits(6, 7, scale=3.0, seed=8), logits(6, 7, scale=3.0, seed=9)
    kw = {"temperature": 1.0, "reduction": "none", "implementation": impl}
    tv = call("total_variation", {}, s, t, **kw)
    assert ((tv >= 0) & (tv <= 1)).all()
    # Pinsker: TV <= sqrt(KL / 2), for either KL
    assert (tv <= torch.sqrt(call("forward_kl", {}, s, t, **kw) / 2) + 1e-12).all()
    assert (tv <= torch.sqrt(call("reverse_kl", {}, s, t, **kw) / 2) + 1e-12).all()
    # far-apart one-hot-like distributions: TV -> 1
    far_s = torch.tensor([[100.0, 0.0, 0.0]], dtype=torch.float64)
    far_t = torch.tensor([[0.0, 100.0, 0.0]], dtype=torch.float64)
    assert call("total_variation", {}, far_s, far_t, **kw).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_temperature_divides_both_logits(name, params, impl):
    s, t = logits(3, 5, 6, seed=10), logits(3, 5, 6, seed=11)
    T = 2.75
    kw = {"reduction": "none", "implementation": impl}
    torch.testing.assert_close(
        call(name, params, s, t, temperature=T, **kw),
        call(name, params, s / T, t / T, temperature=1.0, **kw),
        rtol=1e-10,
        atol=1e-14,
    )
    # logits are only defined up to a constant per position
    shift_s, shift_t = logits(3, 5, 1, scale=50.0, seed=12), logits(3, 5, 1, scale=50.0, seed=13)
    torch.testing.assert_close(
        call(name, params, s + shift_s, t + shift_t, temperature=T, **kw),
        call(name, params, s, t, temperature=T, **kw),
        rtol=1e-9,
        atol=1e-12,
    )


def _high_t_limit(name, params, student, teacher, T):
    """Second-order expansion for large T: with d = z_s - z_t and Var, mean over the V entries (uniform weights),
    KL(p_t||p_s) ~ KL(p_s||p_t) ~ chi^2 / 2 with chi^2 ~ Var(d) / T^2; KL(p || w p + (1-w) q) ~ (1-w)^2 chi^2 / 2;
    JSD(beta) ~ beta (1 - beta) chi^2 / 2; TV ~ mean|d - mean d| / (2 T).
    """
    d = student - teacher
    centred = d - d.mean(-1, keepdim=True)
    chi2 = (centred**2).mean(-1) / T**2
    if name in ("forward_kl", "reverse_kl"):
        return chi2 / 2
    if name == "generalized_jsd":
        beta = params["beta"]
        return chi2 / 2 if beta in (0.0, 1.0) else beta * (1 - beta) * chi2 / 2
    if name in ("skew_forward_kl", "skew_reverse_kl"):
        return (1 - params["skew"]) ** 2 * chi2 / 2
    return centred.abs().mean(-1) / (2 * T)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_high_temperature_limit(name, params):
    s, t = logits(4, 9, scale=2.0, seed=14), logits(4, 9, scale=2.0, seed=15)
    T = 1e3
    got = call(name, params, s, t, temperature=T, reduction="none")
    torch.testing.assert_close(got, _high_t_limit(name, params, s, t, T), rtol=1e-2, atol=0)
    if name == "forward_kl":  # the classic statement: 2 T^2 KL -> Var_uniform(z_s - z_t)
        d = s - t
        torch.testing.assert_close(2 * T**2 * got, d.var(-1, unbiased=False), rtol=1e-2, atol=0)


# ------------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_masked_positions_change_nothing(name, params, reduction, impl):
    s0, t0 = logits(2, 5, 7, dtype=torch.float32, seed=16), logits(2, 5, 7, dtype=torch.float32, seed=17)
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])
    junk_s = logits(2, 5, 7, scale=1e3, dtype=torch.float32, seed=18) * ~mask[..., None]
    junk_t = logits(2, 5, 7, scale=1e3, dtype=torch.float32, seed=19) * ~mask[..., None]
    upstream = logits(2, 5, dtype=torch.float32, seed=20) if reduction == "none" else torch.tensor(1.0)
    results = []
    for ds, dt in ((0.0, 0.0), (junk_s, junk_t)):
        s = (s0 + ds).requires_grad_()
        t = (t0 + dt).requires_grad_()
        value = call(name, params, s, t, temperature=2.0, mask=mask, reduction=reduction, implementation=impl)
        grads = torch.autograd.grad((value * upstream).sum(), (s, t))
        results.append((value, *grads))
    (v0, gs0, gt0), (v1, gs1, gt1) = results
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)
    for g0, g1 in ((gs0, gs1), (gt0, gt1)):
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-7)
        assert (g1[~mask] == 0).all()
    if reduction == "none":
        assert (v1[~mask] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_empty_mask_gives_zero_and_zero_gradients(name, params, impl):
    for dtype in (torch.float32, torch.float64):
        s = logits(2, 3, 5, dtype=dtype, seed=21).requires_grad_()
        t = logits(2, 3, 5, dtype=dtype, seed=22).requires_grad_()
        mask = torch.zeros(2, 3, dtype=torch.bool)
        for reduction in REDUCTIONS:
            value = call(name, params, s, t, temperature=2.0, mask=mask, reduction=reduction, implementation=impl)
            assert torch.isfinite(value).all()
            assert (value == 0).all(), (reduction, value)
            gs, gt = torch.autograd.grad(value.sum(), (s, t))
            assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
            assert (gs == 0).all() and (gt == 0).all()


def test_mask_may_be_zero_one_integers():
    s, t = logits(2, 4, 6, seed=23), logits(2, 4, 6, seed=24)
    bool_mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    for impl in IMPLS:
        for reduction in REDUCTIONS:
            kw = {"reduction": reduction, "implementation": impl}
            torch.testing.assert_close(
                call("forward_kl", {}, s, t, mask=bool_mask.long(), **kw),
                call("forward_kl", {}, s, t, mask=bool_mask, **kw),
            )


def test_reduce_per_token_and_reduction_weights_agree():
    x = logits(3, 4, seed=25).abs()
    for mask in (None, torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)):
        for reduction in ("mean", "sum", "batchmean"):
            w = D.reduction_weights(x.shape, mask, reduction)
            torch.testing.assert_close((w.double() * x).sum(), D.reduce_per_token(x, mask, reduction))
            torch.testing.assert_close(D.reduce_per_token(x, mask, reduction), reduce_ref(x, mask, reduction))
    # a masked position's value, even NaN or inf, changes nothing
    y = x.clone()
    y[1, 2], y[0, 1] = float("nan"), float("inf")
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = mask[0, 1] = False
    for reduction in ("mean", "sum", "batchmean"):
        torch.testing.assert_close(D.reduce_per_token(y, mask, reduction), D.reduce_per_token(x, mask, reduction))


# ----------------------------------------------------------------------------------------- 1-D and dtypes


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_single_distribution_logits(reduction):
    """Logits of shape (V,): ``(..., V)`` with no leading dimension."""
    s, t = logits(7, seed=26), logits(7, seed=27)
    values = [call("forward_kl", {}, s, t, reduction=reduction, implementation=impl) for impl in IMPLS]
    ref = kl_div_reference("forward_kl", {}, s, t, 1.0)
    for v in values:
        torch.testing.assert_close(v, ref)


def test_single_distribution_batchmean_plain_and_chunked_agree():
    """Either both paths give the same value or both reject (V,) logits with a ValueError."""
    s, t = logits(7, seed=26), logits(7, seed=27)
    outcomes = []
    for impl in IMPLS:
        try:
            outcomes.append(call("forward_kl", {}, s, t, reduction="batchmean", implementation=impl))
        except ValueError as err:
            outcomes.append(type(err))
    if all(isinstance(o, torch.Tensor) for o in outcomes):
        torch.testing.assert_close(outcomes[0], outcomes[1])
    else:
        assert outcomes == [ValueError, ValueError]


@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_inputs_are_computed_in_float32(impl):
    s16, t16 = logits(3, 4, 11, dtype=torch.bfloat16, seed=28), logits(3, 4, 11, dtype=torch.bfloat16, seed=29)
    for name, params in CONFIGS:
        got = call(name, params, s16, t16, temperature=2.0, implementation=impl)
        assert got.dtype == torch.float32
        ref = kl_div_reference(name, params, s16.double(), t16.double(), 2.0).mean()
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ presets


def _preset_batch():
    B, L, H, V = 3, 6, 5, 11
    g = torch.Generator().manual_seed(30)
    hidden = torch.randn(B, L, H, generator=g)
    head = torch.nn.Linear(H, V, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
        head.bias.copy_(torch.randn(V, generator=g))
    teacher = torch.randn(B, L, V, generator=g) * 2
    ids = torch.randint(0, V, (B, L), generator=g)
    return hidden, head, teacher, ids


def _run_objective(objective, hidden, head, labels, teacher, attention_mask=None):
    """(loss, terms, grads w.r.t. hidden, weight, bias) on the path the objective's implementation takes."""
    hidden = hidden.clone().requires_grad_()
    if objective.implementation == "fused":
        student = StudentOutput(hidden=hidden, lm_head=head)
    else:
        student = StudentOutput(logits=head(hidden))
    loss, terms = objective(student, labels, teacher, attention_mask)
    grads = torch.autograd.grad(loss, (hidden, head.weight, head.bias))
    return loss, terms, grads


def _anchor_grads(anchor_fn, hidden, head):
    hidden = hidden.clone().requires_grad_()
    value, parts = anchor_fn(head(hidden))
    return value, parts, torch.autograd.grad(value, (hidden, head.weight, head.bias))


def _check_against_anchor(objective, anchor, hidden, head, labels, teacher, d_name):
    want, parts, want_grads = _anchor_grads(anchor, hidden, head)
    loss, terms, grads = _run_objective(objective, hidden, head, labels, teacher)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert terms["loss"] == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert terms["ce"] == pytest.approx(parts["ce"], rel=1e-5, abs=1e-6)
    assert terms[d_name] == pytest.approx(parts["d"], rel=1e-5, abs=1e-6)
    for got, ref in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["plain", "chunked", "fused"])
@pytest.mark.parametrize("overrides", [{}, {"alpha": 0.2, "temperature": 3.5}], ids=["defaults", "overridden"])
def test_babyllama_preset_reproduces_the_babyllama_trainer(impl, overrides):
    """Baby Llama: alpha * CE + (1 - alpha) * T^2 * KLDivLoss(batchmean)(log p_s^T, p_t^T) on (B, T, V)."""
    hidden, head, teacher, ids = _preset_batch()
    objective = DistillationObjective.from_preset("babyllama", implementation=impl, chunk_size=4, **overrides)
    alpha, T = overrides.get("alpha", 0.5), overrides.get("temperature", 2.0)
    assert (objective.alpha, objective.temperature) == (alpha, T)
    V = teacher.shape[-1]

    def anchor(student_logits):
        ce = F.cross_entropy(student_logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
        kd = torch.nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(student_logits / T, dim=-1), F.softmax(teacher / T, dim=-1)
        )
        return alpha * ce + (1 - alpha) * T**2 * kd, {"ce": ce.item(), "d": kd.item()}

    _check_against_anchor(objective, anchor, hidden, head, ids, teacher, "forward_kl")


@pytest.mark.parametrize("impl", ["plain", "chunked", "fused"])
@pytest.mark.parametrize("overrides", [{}, {"alpha": 0.7, "temperature": 4.0}], ids=["defaults", "overridden"])
def test_torchdistill_preset_reproduces_kdloss_on_supervised_rows(impl, overrides):
    """torchdistill KDLoss on (N, V) rows, one per supervised next-token position."""
    hidden, head, teacher, ids = _preset_batch()
    labels = ids.clone()
    labels[0, 4:] = -100
    labels[2, 1] = -100
    objective = DistillationObjective.from_preset("torchdistill", implementation=impl, chunk_size=5, **overrides)
    alpha, T = overrides.get("alpha", objective.alpha), overrides.get("temperature", objective.temperature)
    V = teacher.shape[-1]

    def anchor(student_logits):
        targets = labels[:, 1:]
        keep = targets != -100
        s_rows = student_logits[:, :-1][keep]  # (N, V)
        t_rows = teacher[:, :-1][keep]
        assert s_rows.shape == (int(keep.sum()), V)
        ce = F.cross_entropy(s_rows, targets[keep])
        kd = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_rows / T, dim=1), F.softmax(t_rows / T, dim=1))
        return alpha * ce + (1 - alpha) * T**2 * kd, {"ce": ce.item(), "d": kd.item()}

    _check_against_anchor(objective, anchor, hidden, head, labels, teacher, "forward_kl")


def trl_generalized_jsd_loss(student_logits, teacher_logits, labels, beta=0.5, temperature=1.0):
    """TRL GKDTrainer.generalized_jsd_loss (reduction "batchmean"), on already shifted logits and labels."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    beta_t = torch.tensor(beta, dtype=student_log_probs.dtype)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log(1 - beta_t), teacher_log_probs + torch.log(beta_t)]), dim=0
    )
    kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
    kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
    jsd = beta_t * kl_teacher + (1 - beta_t) * kl_student
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


@pytest.mark.parametrize("impl", ["plain", "chunked", "fused"])
def test_gkd_preset_reproduces_trl_generalized_jsd_loss(impl):
    hidden, head, teacher, ids = _preset_batch()
    labels = ids.clone()
    labels[1, :3] = -100  # a prompt
    labels[2, 5] = -100
    objective = DistillationObjective.from_preset("gkd", implementation=impl, chunk_size=7)
    assert (objective.alpha, objective.temperature, objective.t2_scaling) == (0.0, 1.0, False)

    def anchor(student_logits):
        jsd = trl_generalized_jsd_loss(student_logits[:, :-1], teacher[:, :-1], labels[:, 1:])
        # CE is logged (mean over supervised next tokens) though it has no weight in the loss
        ce = F.cross_entropy(student_logits[:, :-1].reshape(-1, student_logits.shape[-1]), labels[:, 1:].reshape(-1))
        return jsd, {"ce": ce.item(), "d": jsd.item()}

    _check_against_anchor(objective, anchor, hidden, head, labels, teacher, "generalized_jsd")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"babyllama.*gkd.*torchdistill"):
        DistillationObjective.from_preset("distillm")


# -------------------------------------------------------------------------------------------------- errors


def test_unknown_divergence_lists_the_names():
    with pytest.raises(ValueError, match="kl_divergence") as err:
        D.get_divergence("kl_divergence")
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="forward_kl"):
        DistillationObjective(divergence="kl_divergence")
    assert set(D.DIVERGENCES) == set(NAMES)


@pytest.mark.parametrize("beta", [-0.1, 1.0 + 1e-9, 2.0, float("nan")])
def test_beta_out_of_range(beta):
    s, t = logits(2, 3), logits(2, 3, seed=1)
    with pytest.raises(ValueError, match="beta"):
        D.generalized_jsd(s, t, beta=beta)
    with pytest.raises(ValueError, match="beta"):
        D.get_divergence("generalized_jsd", beta=beta)
    with pytest.raises(ValueError, match="beta"):
        DistillationObjective(divergence="generalized_jsd", beta=beta)


@pytest.mark.parametrize("skew", [-0.1, 1.0, 1.5, float("nan")])
@pytest.mark.parametrize("name", ["skew_forward_kl", "skew_reverse_kl"])
def test_skew_out_of_range(name, skew):
    s, t = logits(2, 3), logits(2, 3, seed=1)
    with pytest.raises(ValueError, match="skew"):
        getattr(D, name)(s, t, skew=skew)
    with pytest.raises(ValueError, match="skew"):
        D.get_divergence(name, skew=skew)
    with pytest.raises(ValueError, match="skew"):
        DistillationObjective(divergence=name, skew=skew)


def test_parameter_bounds_are_accepted():
    s, t = logits(2, 3), logits(2, 3, seed=1)
    for beta in (0.0, 1.0):
        assert torch.isfinite(D.generalized_jsd(s, t, beta=beta))
    for name in ("skew_forward_kl", "skew_reverse_kl"):
        assert torch.isfinite(getattr(D, name)(s, t, skew=0.0))
        assert torch.isfinite(getattr(D, name)(s, t, skew=0.999))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [0.0, -1.0, float("nan")])
@pytest.mark.parametrize("name", NAMES)
def test_temperature_must_be_positive(name, T, impl):
    s, t = logits(2, 3), logits(2, 3, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        getattr(D, name)(s, t, temperature=T, implementation=impl)
    with pytest.raises(ValueError, match="temperature"):
        DistillationObjective(temperature=T)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_names_both_shapes(name, impl):
    s, t = logits(2, 3, 5), logits(2, 3, 6, seed=1)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3, 6\)"):
        getattr(D, name)(s, t, implementation=impl)
    with pytest.raises(ValueError, match=r"\(3, 2, 5\).*\(2, 3, 5\)"):
        getattr(D, name)(s.transpose(0, 1), s, implementation=impl)


def test_mask_of_the_wrong_shape():
    s, t = logits(2, 3, 5), logits(2, 3, 5, seed=1)
    for impl in IMPLS:
        for reduction in REDUCTIONS:
            with pytest.raises(ValueError, match="mask"):
                D.forward_kl(s, t, mask=torch.ones(3, 2, dtype=torch.bool), reduction=reduction, implementation=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_reduction(impl):
    s, t = logits(2, 3, 5), logits(2, 3, 5, seed=1)
    with pytest.raises(ValueError, match=r"reduction.*'average'"):
        D.forward_kl(s, t, reduction="average", implementation=impl)
    with pytest.raises(ValueError, match="reduction"):
        D.reduce_per_token(s[..., 0], None, "average")
    with pytest.raises(ValueError, match="'none'"):
        D.reduction_weights(s.shape[:-1], None, "none")
    for bad in ("none", "sum", "average"):
        with pytest.raises(ValueError, match="reduction"):
            DistillationObjective(reduction=bad)


def test_unknown_implementation():
    s, t = logits(2, 3, 5), logits(2, 3, 5, seed=1)
    for bad in ("fused", "fast"):  # the divergence functions take logits: plain or chunked only
        with pytest.raises(ValueError, match=rf"implementation.*'{bad}'"):
            D.forward_kl(s, t, implementation=bad)
    with pytest.raises(ValueError, match="implementation"):
        DistillationObjective(implementation="fast")
