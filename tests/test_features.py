"""Feature losses (hint, embedding, attention), layer maps, hooks and projection files.

References: float64 loops written position by position, torch.nn.MSELoss / F.kl_div, and two tiny LLaMA models.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lmdistill.losses import (
    AttentionLoss,
    EmbeddingLoss,
    HintLoss,
    attention_kl,
    attention_mse,
    capture_outputs,
    hint_loss,
    layer_map,
    load_projections,
    model_dims,
    save_projections,
)

# ----------------------------------------------------------------------------------------------------- references


def _project(linear: nn.Linear, x: list[float]) -> list[float]:
    W, b = linear.weight.double().tolist(), linear.bias.double().tolist()
    return [sum(w_ij * x_j for w_ij, x_j in zip(row, x, strict=True)) + b_i for row, b_i in zip(W, b, strict=True)]


def _hint_direct(loss: HintLoss, hs_s, hs_t, mask, kind) -> float:
    """Mean over pairs of the mean over unmasked tokens of the per-token mse (mean over H) or 1 - cos."""
    per_pair = []
    for s, t in loss.layer_pairs:
        lin = loss.projections[f"{s}_to_{t}"]
        xs, xt = hs_s[s].double().tolist(), hs_t[t].double().tolist()
        terms = []
        for b in range(len(xs)):
            for i in range(len(xs[b])):
                if mask is not None and not mask[b, i]:
                    continue
                p, y = _project(lin, xs[b][i]), xt[b][i]
                if kind == "mse":
                    terms.append(sum((pi - yi) ** 2 for pi, yi in zip(p, y, strict=True)) / len(y))
                else:
                    dot = sum(pi * yi for pi, yi in zip(p, y, strict=True))
                    norm = math.sqrt(sum(pi * pi for pi in p)) * math.sqrt(sum(yi * yi for yi in y))
                    terms.append(1.0 - dot / max(norm, 1e-8))
        per_pair.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(per_pair) / len(per_pair)


def _attention_direct(a_s, a_t, mask, kind) -> float:
    """Loop formula with equal heads: per query row, KL summed (or squared error averaged) over real keys."""
    s, t = a_s.double().tolist(), a_t.double().tolist()
    B, heads, T, _ = a_s.shape
    rows = []
    for b in range(B):
        keys = [k for k in range(T) if mask is None or mask[b, k]]
        for q in range(T):
            if mask is not None and not mask[b, q]:
                continue
            total = 0.0
            for h in range(heads):
                if kind == "kl":  # 0 * log(0 / q) = 0 (causal future keys)
                    total += sum(
                        t[b][h][q][k] * math.log(t[b][h][q][k] / s[b][h][q][k]) for k in keys if t[b][h][q][k]
                    )
                else:
                    total += sum((t[b][h][q][k] - s[b][h][q][k]) ** 2 for k in keys) / len(keys)
            rows.append(total / heads)
    return sum(rows) / len(rows) if rows else 0.0


def _hidden(B, T, H, L, g):
    return tuple(torch.randn(B, T, H, generator=g, dtype=torch.float64) for _ in range(L + 1))


def _attn(B, heads, T, g, causal=False):
    scores = torch.randn(B, heads, T, T, generator=g, dtype=torch.float64) * 2
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def padding_mask():
    return torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)


# ------------------------------------------------------------------------------------------------------ layer maps


def test_layer_map_tinybert_example():
    assert layer_map("uniform", 4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert layer_map("last", 4, 12) == [(4, 12)]
    assert layer_map([2, 4, 6, 12], 4, 12) == [(1, 2), (2, 4), (3, 6), (4, 12)]
    assert layer_map([(4, 12), (2, 6)], 4, 12) == [(4, 12), (2, 6)]
    assert layer_map([[1, 1]], 4, 12) == [(1, 1)]  # YAML gives lists


@pytest.mark.parametrize(("M", "N"), [(16, 24), (3, 7), (4, 2), (1, 5), (5, 5)])
def test_layer_map_uniform_rounding(M, N):
    pairs = layer_map("uniform", M, N)
    assert [s for s, _ in pairs] == list(range(1, M + 1))
    teachers = [t for _, t in pairs]
    assert teachers[-1] == N and all(1 <= t <= N for t in teachers)
    assert teachers == sorted(teachers)
    assert teachers == [max(1, math.floor(m * N / M)) for m in range(1, M + 1)]


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("unifrom", "Did you mean: uniform"),
        ([1, 2], r"one per student layer \(4\)"),
        ([1, 2, 3, 13], r"teacher layer 13 .* outside 1..12"),
        ([(0, 3)], r"student layer 0 .* outside 1..4"),
        ([(1, 3), (1, 3)], "duplicate"),
        ([], "empty"),
        ([1.5, 2, 3, 4], "list of ints"),
    ],
)
def test_layer_map_errors(kind, match):
    with pytest.raises(ValueError, match=match):
        layer_map(kind, 4, 12)
    with pytest.raises(ValueError, match="must be >= 1"):
        layer_map("uniform", 0, 12)


def test_model_dims_llama_and_gpt2():
    from transformers import GPT2Config, LlamaConfig

    assert model_dims(LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4)) == (3, 48, 4)
    assert model_dims(GPT2Config(n_embd=32, n_layer=5, n_head=2)) == (5, 32, 2)


# ------------------------------------------------------------------------------------------------------ hint loss


@pytest.mark.parametrize("kind", ["mse", "cosine"])
@pytest.mark.parametrize("use_mask", [True, False])
def test_hint_loss_matches_loop_formula(g, padding_mask, kind, use_mask):
    loss = HintLoss(4, 6, [(1, 2), (2, 4), (2, 1)], kind=kind).double()
    hs_s, hs_t = _hidden(3, 5, 4, 2, g), _hidden(3, 5, 6, 4, g)
    mask = padding_mask if use_mask else None
    got = loss(hs_s, hs_t, mask)
    assert got.item() == pytest.approx(_hint_direct(loss, hs_s, hs_t, mask, kind), rel=1e-10)


def test_hint_mse_is_torch_mse_on_unmasked_rows(g, padding_mask):
    s, t = torch.randn(3, 5, 6, generator=g), torch.randn(3, 5, 6, generator=g)
    ref = nn.MSELoss()(s[padding_mask], t[padding_mask])
    torch.testing.assert_close(hint_loss(s, t, padding_mask), ref)
    per_token = hint_loss(s, t, padding_mask, reduction="none")
    assert per_token.shape == (3, 5) and (per_token[~padding_mask] == 0).all()
    torch.testing.assert_close(hint_loss(s, t, padding_mask, reduction="sum"), per_token.sum())


def test_hint_zero_for_identity_projection(g):
    loss = HintLoss(5, 5, [(1, 1), (2, 2)])
    with torch.no_grad():
        for lin in loss.projections.values():
            lin.weight.copy_(torch.eye(5))
            lin.bias.zero_()
    hs = tuple(torch.randn(2, 3, 5, generator=g) for _ in range(3))
    assert loss(hs, hs).item() == 0.0
    assert HintLoss(5, 5, [(2, 2)], kind="cosine", project=False)(hs, hs).item() == pytest.approx(0.0, abs=1e-6)
    assert len(list(HintLoss(5, 5, [(1, 1)], project=False).parameters())) == 0
    with pytest.raises(ValueError, match="equal widths"):
        HintLoss(5, 6, [(1, 1)], project=False)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hint_masked_positions_change_nothing(g, padding_mask, kind):
    loss = HintLoss(4, 6, [(1, 2), (2, 2)], kind=kind)
    hs_s = [torch.randn(3, 5, 4, generator=g).requires_grad_() for _ in range(3)]
    hs_t = [torch.randn(3, 5, 6, generator=g) for _ in range(3)]
    base = loss(hs_s, hs_t, padding_mask)
    base.backward()
    assert (hs_s[1].grad[~padding_mask] == 0).all() and (hs_s[1].grad[padding_mask] != 0).any()
    noisy_s = [x.detach().clone() for x in hs_s]
    noisy_t = [x.clone() for x in hs_t]
    for x in noisy_s + noisy_t:
        x[~padding_mask] = torch.randn(x[~padding_mask].shape, generator=g) * 1e3
    torch.testing.assert_close(loss(noisy_s, noisy_t, padding_mask), base.detach())


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hint_empty_mask_gives_zero_and_finite_gradients(g, kind):
    loss = HintLoss(4, 6, [(1, 1)], kind=kind)
    hs_s = [torch.randn(2, 3, 4, generator=g).requires_grad_() for _ in range(2)]
    hs_t = [torch.randn(2, 3, 6, generator=g) for _ in range(2)]
    out = loss(hs_s, hs_t, torch.zeros(2, 3, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(hs_s[1].grad).all() and torch.isfinite(loss.projections["1_to_1"].weight.grad).all()


def test_hint_input_errors(g):
    loss = HintLoss(4, 6, [(3, 1)])
    hs_s, hs_t = _hidden(2, 3, 4, 2, g), _hidden(2, 3, 6, 2, g)
    with pytest.raises(ValueError, match="layer 3 was asked"):
        loss(hs_s, hs_t)
    with pytest.raises(TypeError, match="sequence"):
        HintLoss(4, 6, [(1, 1)])(hs_s[1], hs_t[1])
    with pytest.raises(ValueError, match="differ"):
        hint_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="'mse' or 'cosine'"):
        HintLoss(4, 6, [(1, 1)], kind="l2")
    with pytest.raises(ValueError, match="distinct"):
        HintLoss(4, 6, [(1, 1), (1, 1)])


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 4),
    H_s=st.integers(1, 5),
    H_t=st.integers(1, 5),
    kind=st.sampled_from(["mse", "cosine"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_hint_property_against_loop(B, T, H_s, H_t, kind, seed, data):
    g = torch.Generator().manual_seed(seed)
    bits = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))
    mask = torch.tensor(bits, dtype=torch.bool).view(B, T)
    torch.manual_seed(seed)
    loss = HintLoss(H_s, H_t, [(1, 1), (1, 2)], kind=kind).double()
    hs_s, hs_t = _hidden(B, T, H_s, 1, g), _hidden(B, T, H_t, 2, g)
    got = loss(hs_s, hs_t, mask)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(_hint_direct(loss, hs_s, hs_t, mask, kind), rel=1e-9, abs=1e-12)


def test_embedding_loss_uses_entry_zero(g, padding_mask):
    emb = EmbeddingLoss(4, 6).double()
    hs_s, hs_t = _hidden(3, 5, 4, 2, g), _hidden(3, 5, 6, 2, g)
    ref = hint_loss(emb.projection(hs_s[0]), hs_t[0], padding_mask)
    torch.testing.assert_close(emb(hs_s, hs_t, padding_mask), ref)
    torch.testing.assert_close(emb(hs_s[0], hs_t[0], padding_mask), ref)
    hint = HintLoss(4, 6, [(0, 0)]).double()
    hint.projections["0_to_0"].load_state_dict(emb.projection.state_dict())
    torch.testing.assert_close(hint(hs_s, hs_t, padding_mask), ref)


# ------------------------------------------------------------------------------------------------- attention loss


@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_loop_formula(g, padding_mask, kind, causal):
    a_s, a_t = _attn(3, 2, 5, g, causal), _attn(3, 2, 5, g, causal)
    fn = attention_kl if kind == "kl" else attention_mse
    for mask in (None, padding_mask):
        assert fn(a_s, a_t, mask).item() == pytest.approx(_attention_direct(a_s, a_t, mask, kind), rel=1e-9)


def test_attention_kl_against_torch_kl_div(g):
    a_s, a_t = _attn(2, 3, 4, g).float(), _attn(2, 3, 4, g).float()
    ref = F.kl_div(a_s.log(), a_t, reduction="none").sum(-1).mean(1).mean()  # KL(A_t || A_s) per row
    torch.testing.assert_close(attention_kl(a_s, a_t), ref)
    assert attention_kl(a_t, a_t).item() == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(attention_mse(a_s, a_t), nn.MSELoss()(a_s, a_t))


@pytest.mark.parametrize("fn", [attention_kl, attention_mse])
def test_attention_padding_excluded_and_causal_zeros_safe(fn, g, padding_mask):
    a_s = _attn(3, 2, 5, g, causal=True).requires_grad_()
    a_t = _attn(3, 2, 5, g, causal=True)
    base = fn(a_s, a_t, padding_mask)
    base.backward()
    assert torch.isfinite(base) and torch.isfinite(a_s.grad).all()
    assert (a_s.grad.permute(0, 2, 1, 3)[~padding_mask] == 0).all()  # padded query rows
    assert (a_s.grad.permute(0, 3, 1, 2)[~padding_mask] == 0).all()  # padded keys
    noisy_s, noisy_t = a_s.detach().clone(), a_t.clone()
    for x in (noisy_s, noisy_t):
        x.permute(0, 2, 1, 3)[~padding_mask] = 0.37  # rows of padded queries (HF makes them uniform)
        x.permute(0, 3, 1, 2)[~padding_mask] = 0.0  # padded keys
    torch.testing.assert_close(fn(noisy_s, noisy_t, padding_mask), base.detach())
    empty = fn(a_s, a_t, torch.zeros(3, 5, dtype=torch.bool))
    assert empty.item() == 0.0


def test_attention_head_groups(g):
    a_s, a_t = _attn(2, 2, 4, g), _attn(2, 6, 4, g)
    grouped_t = a_t.view(2, 2, 3, 4, 4).mean(2)  # consecutive teacher heads 0-2 and 3-5
    torch.testing.assert_close(attention_kl(a_s, a_t), attention_kl(a_s, grouped_t))
    torch.testing.assert_close(attention_mse(a_t, a_s), attention_mse(grouped_t, a_s))
    with pytest.raises(ValueError, match=r"heads \(4\) .* heads \(6\)"):
        attention_kl(_attn(2, 4, 4, g), a_t)
    with pytest.raises(ValueError, match="batch or tokens"):
        attention_kl(_attn(2, 2, 3, g), a_t)


def test_gradcheck_hint_and_attention(g):
    # No custom autograd here; gradcheck still guards the clamps and masks against wrong or NaN gradients.
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    s, t = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 4).double()
    for kind in ("mse", "cosine"):
        assert torch.autograd.gradcheck(lambda x, k=kind: hint_loss(x, t, mask, kind=k), (s,))
    scores = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a_t = _attn(2, 2, 3, g, causal=True)
    causal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    for fn in (attention_kl, attention_mse):
        assert torch.autograd.gradcheck(
            lambda x, f=fn: f(x.masked_fill(causal, -1e9).softmax(-1), a_t, mask), (scores,)
        )


def test_attention_module_errors():
    with pytest.raises(ValueError, match="1-based"):
        AttentionLoss([(0, 1)])
    with pytest.raises(ValueError, match="'kl' or 'mse'"):
        AttentionLoss([(1, 1)], kind="js")
    with pytest.raises(ValueError, match="eager"):
        AttentionLoss([(1, 1)])((), (torch.ones(1, 1, 2, 2),))
    with pytest.raises(ValueError, match="layers 1..1"):
        AttentionLoss([(1, 2)])((torch.ones(1, 1, 2, 2),), (torch.ones(1, 1, 2, 2),))


# ---------------------------------------------------------------------------------------------------- tiny models


def _tiny_llama(hidden, layers, heads, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def test_end_to_end_on_two_tiny_llamas():
    student, teacher = _tiny_llama(16, 2, 2, seed=1), _tiny_llama(24, 4, 4, seed=2).eval()
    ids = torch.randint(1, 64, (2, 6))
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, :2] = 0  # left padding
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    hint = HintLoss.from_configs(student.config, teacher.config, "uniform")
    assert hint.layer_pairs == [(1, 2), (2, 4)]
    emb = EmbeddingLoss(16, 24)
    attn_kl = AttentionLoss(hint.layer_pairs, kind="kl")
    attn_mse = AttentionLoss(hint.layer_pairs, kind="mse")
    mask = attention_mask.bool()

    def losses():
        s_out = student(ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
        return {
            "hint": hint(s_out.hidden_states, t_out.hidden_states, mask),
            "embedding": emb(s_out.hidden_states, t_out.hidden_states, mask),
            "attention_kl": attn_kl(s_out.attentions, t_out.attentions, mask),
            "attention_mse": attn_mse(s_out.attentions, t_out.attentions, mask),
        }

    terms = losses()
    assert all(torch.isfinite(v) and v > 0 for v in terms.values()), terms
    sum(terms.values()).backward()
    for p in [*hint.parameters(), *emb.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    for name in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
    ):
        assert student.get_parameter(name).grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())

    opt = torch.optim.SGD([*student.parameters(), *hint.parameters()], lr=0.05)
    first = losses()["hint"].item()
    for _ in range(5):
        opt.zero_grad()
        losses()["hint"].backward()
        opt.step()
    assert losses()["hint"].item() < 0.9 * first


def test_hidden_states_from_a_gpt2_teacher_fit_a_llama_student():
    from transformers import GPT2Config, GPT2LMHeadModel

    student = _tiny_llama(16, 2, 2, seed=1)
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=20, n_layer=3, n_head=2, n_positions=32)).eval()
    ids = torch.randint(1, 64, (2, 5))
    with torch.no_grad():
        t_out = teacher(ids, output_hidden_states=True)
    s_out = student(ids, output_hidden_states=True)
    hint = HintLoss.from_configs(student, teacher, "last", kind="cosine")
    assert hint.layer_pairs == [(2, 3)] and hint.projections["2_to_3"].weight.shape == (20, 16)
    assert torch.isfinite(hint(s_out.hidden_states, t_out.hidden_states))


def test_capture_outputs_matches_hidden_states_and_removes_hooks():
    model = _tiny_llama(16, 2, 2, seed=3).eval()
    ids = torch.randint(1, 64, (2, 5))
    names = ["model.layers.0", "model.layers.1.post_attention_layernorm", "model.layers.1.mlp"]

    def num_hooks():  # transformers installs hooks of its own on the first forward; ours must all be gone on exit
        return sum(len(m._forward_hooks) for m in model.modules())

    model(ids, output_hidden_states=True)
    before = num_hooks()
    with capture_outputs(model, names) as feats:
        out = model(ids, output_hidden_states=True)
    torch.testing.assert_close(feats["model.layers.0"], out.hidden_states[1])
    layer = model.model.layers[1]
    torch.testing.assert_close(
        feats["model.layers.1.mlp"], layer.mlp(feats["model.layers.1.post_attention_layernorm"])
    )
    assert feats["model.layers.1.mlp"].grad_fn is not None  # kept in the graph for the student
    assert num_hooks() == before

    with pytest.raises(RuntimeError, match="boom"), capture_outputs(model, names):
        assert num_hooks() == before + len(names)
        raise RuntimeError("boom")
    assert num_hooks() == before
    with pytest.raises(ValueError, match=r"Did you mean: model\.layers\.1\.mlp"):
        with capture_outputs(model, ["model.layers.1.mpl"]):
            pass


def test_capture_outputs_takes_first_element_of_tuples():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, x * 2

    model = nn.Sequential(Pair())
    with capture_outputs(model, ["0"]) as feats:
        model(torch.ones(2))
    torch.testing.assert_close(feats["0"], torch.full((2,), 2.0))


# ------------------------------------------------------------------------------------------------ projection files


def test_projections_round_trip(tmp_path):
    saved = HintLoss(4, 6, [(1, 3), (2, 6)])
    path = tmp_path / "run" / "projections.safetensors"
    save_projections(saved, path)
    assert [p.name for p in path.parent.iterdir()] == ["projections.safetensors"]  # no temporary file left
    torch.manual_seed(123)
    loaded = HintLoss(4, 6, [(1, 3), (2, 6)])
    assert not torch.equal(loaded.projections["1_to_3"].weight, saved.projections["1_to_3"].weight)
    load_projections(loaded, path)
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"missing \['projections.1_to_2.bias'"):
        load_projections(HintLoss(4, 6, [(1, 2), (2, 6)]), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_projections(HintLoss(5, 6, [(1, 3), (2, 6)]), path)
    with pytest.raises(FileNotFoundError):
        load_projections(loaded, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="no parameters"):
        save_projections(AttentionLoss([(1, 1)]), tmp_path / "attn.safetensors")
