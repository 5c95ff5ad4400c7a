"""The chunked and fused loss paths (``lmdistill.losses.chunked``) and the objective's three implementations.

- ``torch.autograd.gradcheck`` in float64 of both custom autograd functions, for every divergence;
- property tests: chunked == plain and fused == plain in value and gradient, over shapes, temperatures, masks,
  reductions and chunk sizes (including chunk sizes that do not divide the number of positions);
- ``DistillationObjective`` on a tiny in-process LlamaForCausalLM: plain, chunked and fused give the same loss,
  terms and parameter gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmdistill.losses import divergences as D
from lmdistill.losses.chunked import auto_chunk_size, chunked_per_token, fused_linear_loss
from lmdistill.losses.objective import DistillationObjective

CONFIGS = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.3}),
    ("generalized_jsd", {"beta": 0.0}),
    ("skew_forward_kl", {"skew": 0.2}),
    ("skew_reverse_kl", {"skew": 0.6}),
    ("total_variation", {}),
]
CONFIG_IDS = [f"{n}{''.join(f'-{k}={v}' for k, v in p.items())}" for n, p in CONFIGS]
SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def div_of(name, params):
    return D.get_divergence(name, **params)


def rand(*shape, scale=2.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def plain_combined(div, student, teacher, temperature, targets=None, div_weights=None, ce_weights=None):
    """``w_d * D + w_ce * CE`` per position, by ordinary autograd expressions (the reference)."""
    total = torch.zeros(student.shape[:-1], dtype=student.dtype)
    if div is not None:
        d = div.per_token(student, teacher, temperature)
        total = total + (d if div_weights is None else d * div_weights)
    if targets is not None:
        ce = F.cross_entropy(
            student.reshape(-1, student.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        total = total + (ce if ce_weights is None else ce * ce_weights)
    return total


# --------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(("name", "params"), [*CONFIGS, (None, {})], ids=[*CONFIG_IDS, "ce-only"])
def test_gradcheck_chunked(name, params):
    div = None if name is None else div_of(name, params)
    N, V = 5, 4
    s = rand(N, V, seed=1)
    t = rand(N, V, seed=2)
    targets = torch.tensor([0, 3, -100, 1, 2])
    div_w = torch.tensor([0.5, 0.0, 1.5, 0.25, 1.0], dtype=torch.float64)
    ce_w = torch.tensor([1.0, 0.5, 0.0, 2.0, 0.0], dtype=torch.float64)
    for reduce in (True, False):
        for teacher_grad in (False, True) if div is not None else (False,):
            for with_ce in (False, True) if div is not None else (True,):
                kw = {
                    "chunk_size": 2,
                    "reduce": reduce,
                    "div_weights": div_w if div is not None else None,
                    "targets": targets if with_ce else None,
                    "ce_weights": ce_w if with_ce else None,
                }
                if teacher_grad:
                    inputs = (s.clone().requires_grad_(), t.clone().requires_grad_())

                    def fn(a, b, kw=kw):
                        return chunked_per_token(div, a, b, 1.7, **kw)
                else:
                    inputs = (s.clone().requires_grad_(),)

                    def fn(a, kw=kw):
                        return chunked_per_token(div, a, None if div is None else t, 1.7, **kw)

                assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5), (
                    reduce,
                    kw,
                )


@pytest.mark.parametrize(("name", "params"), [*CONFIGS, (None, {})], ids=[*CONFIG_IDS, "ce-only"])
def test_gradcheck_fused(name, params):
    div = None if name is None else div_of(name, params)
    N, H, V = 5, 3, 4
    h = rand(N, H, scale=1.0, seed=3)
    w = rand(V, H, scale=1.0, seed=4)
    b = rand(V, scale=1.0, seed=5)
    t = rand(N, V, seed=6)
    targets = torch.tensor([2, -100, 0, 3, 1])
    div_w = torch.tensor([1.0, 0.5, 0.0, 2.0, 0.3], dtype=torch.float64)
    ce_w = torch.tensor([0.2, 1.0, 1.0, 0.0, 0.7], dtype=torch.float64)
    for with_bias in (True, False):
        for with_ce in (False, True) if div is not None else (True,):
            kw = {
                "temperature": 2.3,
                "chunk_size": 2,
                "div_weights": div_w if div is not None else None,
                "targets": targets if with_ce else None,
                "ce_weights": ce_w if with_ce else None,
            }
            teacher = None if div is None else t
            if with_bias:
                inputs = (h.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_())

                def fn(hh, ww, bb, kw=kw, teacher=teacher):
                    return fused_linear_loss(hh, ww, teacher, div, bias=bb, **kw)[0]
            else:
                inputs = (h.clone().requires_grad_(), w.clone().requires_grad_())

                def fn(hh, ww, kw=kw, teacher=teacher):
                    return fused_linear_loss(hh, ww, teacher, div, **kw)[0]

            assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5), (
                with_bias,
                kw,
            )


# ------------------------------------------------------------------------------------------ chunked == plain


@st.composite
def problems(draw, max_positions=12):
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    n = 1
    for x in lead:
        n *= x
    if n > max_positions:
        lead = (max_positions,)
        n = max_positions
    vocab = draw(st.integers(1, 9))
    use_mask = draw(st.booleans())
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(lead) if use_mask else None
    return {
        "lead": lead,
        "vocab": vocab,
        "mask": mask,
        "temperature": draw(st.sampled_from([0.5, 1.0, 2.0, 3.7])),
        "reduction": draw(st.sampled_from(["mean", "sum", "batchmean", "none"])),
        "chunk_size": draw(st.integers(1, n + 2)),
        "config": draw(st.sampled_from(CONFIGS)),
        "scale": draw(st.sampled_from([0.5, 3.0, 10.0])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _plain_vs_chunked(p, dtype, tol):
    name, params = p["config"]
    s = rand(*p["lead"], p["vocab"], scale=p["scale"], dtype=dtype, seed=p["seed"]).requires_grad_()
    t = rand(*p["lead"], p["vocab"], scale=p["scale"], dtype=dtype, seed=p["seed"] + 1).requires_grad_()
    up = rand(*p["lead"], dtype=dtype, seed=p["seed"] + 2)
    out = {}
    for impl in ("plain", "chunked"):
        value = getattr(D, name)(
            s,
            t,
            **params,
            temperature=p["temperature"],
            mask=p["mask"],
            reduction=p["reduction"],
            implementation=impl,
            chunk_size=p["chunk_size"],
        )
        weighted = (value * up).sum() if p["reduction"] == "none" else value
        out[impl] = (value, *torch.autograd.grad(weighted, (s, t)))
    for a, b in zip(out["chunked"], out["plain"], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)


@SETTINGS
@given(p=problems())
def test_chunked_equals_plain_float64(p):
    _plain_vs_chunked(p, torch.float64, {"rtol": 1e-5, "atol": 1e-6})


@settings(SETTINGS, max_examples=25)
@given(p=problems())
def test_chunked_equals_plain_float32(p):
    _plain_vs_chunked(p, torch.float32, {"rtol": 1e-5, "atol": 1e-5})


def test_chunked_non_contiguous_and_default_chunk_size():
    s_base = rand(5, 3, 7, seed=7)
    s = s_base.transpose(0, 1).requires_grad_()  # (3, 5, 7), not contiguous
    t = rand(3, 5, 7, seed=8)
    assert not s.is_contiguous()
    ref = D.forward_kl(s, t, temperature=2.0, reduction="sum")
    (g_ref,) = torch.autograd.grad(ref, s)
    for chunk_size in (None, 1, 4, 15, 100):
        got = D.forward_kl(s, t, temperature=2.0, reduction="sum", implementation="chunked", chunk_size=chunk_size)
        (g,) = torch.autograd.grad(got, s)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(g, g_ref)
    assert auto_chunk_size(151_936) >= 8 and auto_chunk_size(1) >= 1


def test_chunked_parts_and_combined_loss():
    """``return_parts``: D and CE per position (without weights), the combined loss with them."""
    s = rand(2, 4, 6, seed=9).requires_grad_()
    t = rand(2, 4, 6, seed=10)
    targets = torch.tensor([[1, -100, 5, 0], [2, 2, -100, -100]])
    div = div_of("generalized_jsd", {"beta": 0.5})
    div_w = rand(2, 4, seed=11).abs()
    ce_w = rand(2, 4, seed=12).abs()
    for reduce in (True, False):
        total, d_rows, ce_rows = chunked_per_token(
            div,
            s,
            t,
            1.5,
            chunk_size=3,
            targets=targets,
            div_weights=div_w,
            ce_weights=ce_w,
            reduce=reduce,
            return_parts=True,
        )
        ref_rows = plain_combined(div, s, t, 1.5, targets, div_w, ce_w)
        torch.testing.assert_close(total, ref_rows.sum() if reduce else ref_rows)
        torch.testing.assert_close(d_rows, div.per_token(s, t, 1.5).detach())
        assert (ce_rows[targets == -100] == 0).all() and (ce_rows[targets != -100] > 0).all()
        assert not d_rows.requires_grad and not ce_rows.requires_grad
        up = rand(2, 4, seed=13)
        g = torch.autograd.grad(total if reduce else (total * up).sum(), s)[0]
        g_ref = torch.autograd.grad(ref_rows.sum() if reduce else (ref_rows * up).sum(), s)[0]
        torch.testing.assert_close(g, g_ref)


def test_chunked_gradient_with_non_unit_upstream():
    """The stored gradient is scaled by the incoming gradient (here the loss is squared and scaled)."""
    s = rand(6, 5, seed=14).requires_grad_()
    t = rand(6, 5, seed=15).requires_grad_()
    grads = {}
    for impl in ("plain", "chunked"):
        loss = D.reverse_kl(s, t, implementation=impl, chunk_size=4)
        grads[impl] = torch.autograd.grad(3 * loss**2, (s, t))
    for a, b in zip(grads["chunked"], grads["plain"], strict=True):
        torch.testing.assert_close(a, b)


def test_chunked_graph_can_be_backpropagated_three_times():
    s = rand(4, 5, seed=16).requires_grad_()
    t = rand(4, 5, seed=17)
    (g_once,) = torch.autograd.grad(D.forward_kl(s, t), s)
    loss = D.forward_kl(s, t, implementation="chunked", chunk_size=3)
    for _ in range(3):
        loss.backward(retain_graph=True)
    torch.testing.assert_close(s.grad, 3 * g_once)


def test_fused_graph_can_be_backpropagated_three_times():
    h = rand(4, 3, seed=18).requires_grad_()
    w = rand(5, 3, seed=19).requires_grad_()
    t = rand(4, 5, seed=20)
    div = div_of("forward_kl", {})
    g_once = torch.autograd.grad(fused_linear_loss(h, w, t, div)[0], (h, w))
    loss = fused_linear_loss(h, w, t, div, chunk_size=3)[0]
    for _ in range(3):
        loss.backward(retain_graph=True)
    torch.testing.assert_close(h.grad, 3 * g_once[0])
    torch.testing.assert_close(w.grad, 3 * g_once[1])


def test_gradient_accumulates_into_existing_grad():
    """One ordinary backward into a leaf that already has a gradient (gradient accumulation across steps)."""
    s = rand(4, 5, seed=21).requires_grad_()
    t = rand(4, 5, seed=22)
    (g_once,) = torch.autograd.grad(D.forward_kl(s, t), s)
    for _ in range(2):
        D.forward_kl(s, t, implementation="chunked", chunk_size=3).backward()
    torch.testing.assert_close(s.grad, 2 * g_once)


def test_chunked_errors():
    s, t = rand(3, 4), rand(3, 4, seed=1)
    div = div_of("forward_kl", {})
    with pytest.raises(ValueError, match="teacher_logits"):
        chunked_per_token(div, s, None)
    with pytest.raises(ValueError, match="nothing to compute"):
        chunked_per_token(None, s, None)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_per_token(div, s, t, chunk_size=-1)
    with pytest.raises(ValueError, match="teacher_logits"):
        chunked_per_token(div, s, rand(3, 5))
    with pytest.raises(ValueError, match="targets"):
        chunked_per_token(None, s, None, targets=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        fused_linear_loss(rand(3, 2), rand(4, 3), t, div)
    with pytest.raises(ValueError, match="vocabulary"):
        fused_linear_loss(rand(3, 2), rand(5, 2), t, div)
    with pytest.raises(ValueError, match="teacher_logits"):
        fused_linear_loss(rand(3, 2), rand(4, 2), None, div)


# -------------------------------------------------------------------------------------------- fused == plain


@st.composite
def fused_problems(draw):
    n_lead = draw(st.sampled_from([(1,), (5,), (7,), (2, 3), (3, 4)]))
    n = 1
    for x in n_lead:
        n *= x
    use_mask = draw(st.booleans())
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).view(n_lead) if use_mask else None
    return {
        "lead": n_lead,
        "hidden": draw(st.integers(1, 5)),
        "vocab": draw(st.integers(1, 8)),
        "bias": draw(st.booleans()),
        "mask": mask,
        "targets": draw(st.booleans()),
        "temperature": draw(st.sampled_from([0.7, 1.0, 2.5])),
        "reduction": draw(st.sampled_from(["mean", "sum", "batchmean"])),
        "chunk_size": draw(st.integers(1, n + 2)),
        "config": draw(st.sampled_from(CONFIGS)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _fused_vs_plain(p, dtype, tol):
    div = div_of(*p["config"])
    lead, H, V = p["lead"], p["hidden"], p["vocab"]
    h = rand(*lead, H, scale=1.5, dtype=dtype, seed=p["seed"]).requires_grad_()
    w = rand(V, H, scale=1.5, dtype=dtype, seed=p["seed"] + 1).requires_grad_()
    b = rand(V, dtype=dtype, seed=p["seed"] + 2).requires_grad_() if p["bias"] else None
    t = rand(*lead, V, scale=2.0, dtype=dtype, seed=p["seed"] + 3)
    g = torch.Generator().manual_seed(p["seed"] + 4)
    targets = None
    if p["targets"]:
        targets = torch.randint(0, V, lead, generator=g)
        targets[torch.rand(lead, generator=g) < 0.3] = -100
    weights = D.reduction_weights(torch.Size(lead), p["mask"], p["reduction"]).to(dtype)
    ce_weights = None if targets is None else D.reduction_weights(torch.Size(lead), targets != -100, "mean").to(dtype)
    params = [x for x in (h, w, b) if x is not None]

    # plain: the logits themselves, then the public divergence function and an ordinary CE
    logits = h @ w.T + (b if b is not None else 0)
    name, kwargs = p["config"]
    plain = getattr(D, name)(
        logits, t, **kwargs, temperature=p["temperature"], mask=p["mask"], reduction=p["reduction"]
    )
    if targets is not None:
        ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100, reduction="none")
        plain = plain + (ce.view(lead) * ce_weights).sum()
    g_plain = torch.autograd.grad(plain, params)

    fused, d_rows, ce_rows = fused_linear_loss(
        h,
        w,
        t,
        div,
        bias=b,
        temperature=p["temperature"],
        targets=targets,
        div_weights=weights,
        ce_weights=ce_weights,
        chunk_size=p["chunk_size"],
    )
    g_fused = torch.autograd.grad(fused, params)
    torch.testing.assert_close(fused, plain, **tol)
    for a, c in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, c, **tol)
    torch.testing.assert_close(d_rows, div.per_token(logits, t, p["temperature"]).detach(), **tol)
    assert (ce_rows is None) == (targets is None)


@SETTINGS
@given(p=fused_problems())
def test_fused_equals_plain_float64(p):
    _fused_vs_plain(p, torch.float64, {"rtol": 1e-5, "atol": 1e-6})


@settings(SETTINGS, max_examples=20)
@given(p=fused_problems())
def test_fused_equals_plain_float32(p):
    _fused_vs_plain(p, torch.float32, {"rtol": 1e-5, "atol": 1e-5})


# ---------------------------------------------------------------------------------------------- objective


@pytest.fixture(scope="module")
def llama_batch():
    """A 2-layer LlamaForCausalLM (width 16, V = 37) built in-process, ids with padding, and teacher logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=37,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(99)
    B, L = 3, 7
    ids = torch.randint(3, 37, (B, L), generator=g)
    attention_mask = torch.ones(B, L, dtype=torch.long)
    attention_mask[1, 5:] = 0  # right padding
    attention_mask[2, 3:] = 0
    ids[attention_mask == 0] = 0
    labels = ids.masked_fill(attention_mask == 0, -100)
    teacher = torch.randn(B, L, 37, generator=g) * 3
    return model, ids, labels, attention_mask, teacher


def _objective_run(model, objective, ids, labels, attention_mask, teacher):
    model.zero_grad(set_to_none=True)
    out = objective.student_forward(model, ids, attention_mask)
    if objective.implementation == "fused":
        assert out.logits is None and out.hidden is not None
    loss, terms = objective(out, labels, teacher, attention_mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), terms, grads


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_objective_implementations_agree_on_tiny_llama(llama_batch, alpha, reduction):
    model, ids, labels, attention_mask, teacher = llama_batch
    for name, params in [("forward_kl", {}), ("generalized_jsd", {"beta": 0.3}), ("total_variation", {})]:
        if alpha == 1.0 and name != "forward_kl":
            continue  # no divergence term at alpha = 1
        runs = {}
        for impl in ("plain", "chunked", "fused"):
            objective = DistillationObjective(
                alpha, 2.0, name, **params, reduction=reduction, implementation=impl, chunk_size=4
            )
            runs[impl] = _objective_run(model, objective, ids, labels, attention_mask, teacher)
        loss_p, terms_p, grads_p = runs["plain"]
        expected_terms = {"loss", "ce"} | ({name} if alpha < 1 else set())
        assert set(terms_p) == expected_terms
        assert len(grads_p) == len(list(model.parameters()))
        for impl in ("chunked", "fused"):
            loss, terms, grads = runs[impl]
            torch.testing.assert_close(loss, loss_p, rtol=1e-5, atol=1e-6)
            assert set(terms) == expected_terms
            for key in expected_terms:
                assert terms[key] == pytest.approx(terms_p[key], rel=1e-5, abs=1e-6), (impl, key)
            assert set(grads) == set(grads_p)
            for pname, g in grads.items():
                torch.testing.assert_close(g, grads_p[pname], rtol=1e-4, atol=1e-6, msg=f"{impl} {pname}")
        if alpha == 1.0:  # plain LM training: the teacher is ignored
            loss_none, _, _ = _objective_run(
                model, DistillationObjective(alpha, 2.0, reduction=reduction), ids, labels, attention_mask, None
            )
            torch.testing.assert_close(loss_none, loss_p)


def test_objective_fused_with_tied_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    config = LlamaConfig(
        vocab_size=23,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 23, (2, 5))
    teacher = torch.randn(2, 5, 23)
    runs = {}
    for impl in ("plain", "fused"):
        objective = DistillationObjective(0.4, 1.5, "reverse_kl", implementation=impl, chunk_size=3)
        runs[impl] = _objective_run(model, objective, ids, ids, None, teacher)
    torch.testing.assert_close(runs["fused"][0], runs["plain"][0], rtol=1e-5, atol=1e-6)
    for pname, g in runs["plain"][2].items():
        torch.testing.assert_close(runs["fused"][2][pname], g, rtol=1e-4, atol=1e-6, msg=pname)


@pytest.mark.parametrize("impl", ["plain", "chunked", "fused"])
def test_objective_with_nothing_supervised_is_zero_not_nan(llama_batch, impl):
    model, ids, _, attention_mask, teacher = llama_batch
    labels = torch.full_like(ids, -100)
    objective = DistillationObjective(0.5, 2.0, "skew_reverse_kl", implementation=impl, chunk_size=4)
    loss, terms, grads = _objective_run(model, objective, ids, labels, attention_mask, teacher)
    assert loss.item() == 0.0
    assert terms == {"loss": 0.0, "ce": 0.0, "skew_reverse_kl": 0.0}
    for g in grads.values():
        assert torch.isfinite(g).all() and (g == 0).all()


# ---------------------------------------------------------------------------------------------- compiled


def _compiled_problem(seed=11):
    """N = 7 positions in chunks of 3 (a ragged last chunk), V = 11, some targets -100, "mean" weights."""
    N, H, V = 7, 5, 11
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(N, V, generator=g) * 3
    teacher = torch.randn(N, V, generator=g) * 3
    hidden = torch.randn(N, H, generator=g)
    weight = torch.randn(V, H, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[1, 5]] = -100
    supervised = targets != -100
    weights = D.reduction_weights(targets.shape, supervised, "mean")
    return student, teacher, hidden, weight, targets, weights


def _chunked_and_fused(div, compile, problem, temperature=2.0):
    """Loss and gradients of both paths (D and CE together, chunks of 3), eager or compiled."""
    student, teacher, hidden, weight, targets, weights = problem
    s = student.clone().requires_grad_()
    kw = {"chunk_size": 3, "targets": targets, "div_weights": weights, "ce_weights": weights * 0.5}
    chunked = chunked_per_token(div, s, teacher, temperature, reduce=True, compile=compile, **kw)
    chunked.backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    fused, _, _ = fused_linear_loss(h, w, teacher, div, temperature=temperature, compile=compile, **kw)
    fused.backward()
    return [chunked.detach(), s.grad, fused.detach(), h.grad, w.grad]


def _assert_compiled_equals_eager(div):
    from torch._dynamo.utils import counters

    problem = _compiled_problem()
    eager = _chunked_and_fused(div, False, problem)
    graphs = counters["stats"]["unique_graphs"]
    compiled = _chunked_and_fused(div, True, problem)
    # one graph for both paths and every chunk (the ragged last one too): same key, same (3, V) shape
    assert counters["stats"]["unique_graphs"] - graphs == 1
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    again = _chunked_and_fused(div, True, _compiled_problem(seed=12))  # new values, same shapes: no recompile
    assert counters["stats"]["unique_graphs"] - graphs == 1
    for got, want in zip(again, _chunked_and_fused(div, False, _compiled_problem(seed=12)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compiled_equals_eager_forward_kl():
    """``compile=True`` (``loss.compile``): same loss and gradients, chunked and fused, ragged last chunk, -100."""
    _assert_compiled_equals_eager(div_of("forward_kl", {}))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params"), [c for c in CONFIGS if c[0] != "forward_kl"], ids=CONFIG_IDS[1:])
def test_compiled_equals_eager_every_divergence(name, params):
    _assert_compiled_equals_eager(div_of(name, params))


def test_compiled_chunks_are_larger_and_parallel_over_rows():
    assert auto_chunk_size(151_936, compile=True) == 110 == 2 * auto_chunk_size(151_936)
    for vocab in (16_000, 50_257, 151_936, 199_000):  # rows >= V / 2,400: inductor parallelises over rows
        assert auto_chunk_size(vocab, compile=True) * 300 * 8 >= vocab


def test_chunks_are_static_with_a_moved_back_last_chunk():
    from lmdistill.losses.chunked import _chunks

    assert list(_chunks(7, 3, static=True)) == [(0, 3, 0), (3, 6, 0), (4, 7, 2)]
    assert list(_chunks(7, 3, static=False)) == [(0, 3, 0), (3, 6, 0), (6, 7, 0)]
    assert list(_chunks(2, 5, static=True)) == [(0, 2, 0)]


def test_compile_without_a_cpp_compiler_names_the_option(monkeypatch):
    import torch._inductor.config as inductor_config

    from lmdistill.losses import chunked

    pytest.importorskip("torch._inductor.cpp_builder")
    monkeypatch.setattr(chunked, "_AVAILABLE", set())
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        with pytest.raises(RuntimeError, match=r"loss\.compile=true.*C\+\+ compiler.*Set loss\.compile to false"):
            chunked_per_token(div_of("forward_kl", {}), s, t, compile=True)


def test_compiler_errors_name_the_option(monkeypatch):
    from lmdistill.losses import chunked

    def failing_compile(fn, **kwargs):
        def run(*args):
            raise torch._dynamo.exc.TorchDynamoException("backend exploded\n\nmore lines")

        return run

    monkeypatch.setattr(chunked, "_COMPILED_STEPS", {})
    monkeypatch.setattr(torch, "compile", failing_compile)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(RuntimeError, match=r"loss\.compile=true.*: TorchDynamoException: backend exploded\. Set loss"):
        fused_linear_loss(torch.randn(4, 3), torch.randn(5, 3), t, div_of("forward_kl", {}), compile=True)
    with pytest.raises(RuntimeError, match=r"backend exploded"):
        chunked_per_token(div_of("forward_kl", {}), s.requires_grad_(), t, compile=True)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_objective_compiled_agrees_on_tiny_llama(llama_batch, impl):
    """``loss.compile`` through the objective: same loss, terms and parameter gradients (B x T = 21, chunks of 4)."""
    model, ids, labels, attention_mask, teacher = llama_batch
    runs = {}
    for compile in (False, True):
        objective = DistillationObjective(0.5, 2.0, "forward_kl", implementation=impl, chunk_size=4, compile=compile)
        runs[compile] = _objective_run(model, objective, ids, labels, attention_mask, teacher)
    (loss_c, terms_c, grads_c), (loss_e, terms_e, grads_e) = runs[True], runs[False]
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert terms_c == pytest.approx(terms_e, rel=1e-5, abs=1e-6)
    for pname, g in grads_e.items():
        torch.testing.assert_close(grads_c[pname], g, rtol=1e-4, atol=1e-6, msg=pname)
