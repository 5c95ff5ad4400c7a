"""Feature losses: hint (hidden-state), embedding and attention losses, layer maps, and forward-hook capture.

Where the features come from: run the student (and, under ``torch.no_grad()``, the teacher) with
``output_hidden_states=True`` and ``output_attentions=True``. ``hidden_states`` is a tuple of L + 1 tensors
(B, T, H): index 0 is the embedding output, index l (1..L) is the output of transformer layer l. In transformers
5.x the LLaMA and GPT-2 models apply their final norm to index L (``logits == lm_head(hidden_states[L])``).
``attentions`` is a tuple of L tensors (B, heads, T, T) of post-softmax probabilities and needs the model to be
loaded with ``attn_implementation="eager"`` (SDPA and flash kernels return none). Modules that transformers does
not expose (an MLP, a norm) are read with ``capture_outputs``.

Layer numbers are 1-based over transformer layers, i.e. they index ``hidden_states`` directly; the embedding
output (index 0) belongs to ``EmbeddingLoss``.

The pure functions (``hint_loss``, ``attention_kl``, ``attention_mse``) take already matched tensors; the
``nn.Module`` shells hold the learned projections and the layer pairs. Projections are ordinary parameters: give
them to the optimizer with the student's, and save them with the run (``save_projections``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmdistill.atomic import atomic_path
from lmdistill.losses.divergences import Reduction, reduce_per_token
from lmdistill.registry import did_you_mean

__all__ = [
    "AttentionLoss",
    "EmbeddingLoss",
    "HintLoss",
    "ModelDims",
    "attention_kl",
    "attention_mse",
    "capture_outputs",
    "hint_loss",
    "layer_map",
    "load_projections",
    "model_dims",
    "save_projections",
]

LayerPair = tuple[int, int]
"""(student_layer, teacher_layer), both indices into ``hidden_states`` / 1-based transformer layers."""
HintKind = Literal["mse", "cosine"]
AttentionKind = Literal["kl", "mse"]

_LAYER_MAP_KINDS = ("uniform", "last")


# --------------------------------------------------------------------------------------------------- layer maps


def layer_map(
    kind: str | Sequence[int] | Sequence[LayerPair], student_layers: int, teacher_layers: int
) -> list[LayerPair]:
    """Pair student layers with teacher layers (the layer mapping of TinyBERT, Jiao et al., arXiv:1909.10351).

    Kinds:
        - ``"uniform"``: student layer m (1..M) takes teacher layer ``m * N / M`` rounded down (and at least 1),
          e.g. M = 4, N = 12 gives teacher layers 3, 6, 9, 12 (TinyBERT's ``n = g(m) = 3m``). When N % M != 0
          the rounding still spreads the pairs evenly and maps student layer M to teacher layer N (TinyBERT's
          code, which floors N / M first, would stop short of the last layer).
        - ``"last"``: ``[(M, N)]``, the last layer only.
        - a list of M teacher layers, one per student layer: ``[t_1, ..., t_M]``.
        - a list of ``(student_layer, teacher_layer)`` pairs (any length, no duplicates).

    Args:
        kind (str | list[int] | list[tuple[int, int]]): one of the kinds above.
        student_layers (int): M, the student's number of transformer layers.
        teacher_layers (int): N, the teacher's number of transformer layers.

    Returns:
        list[tuple[int, int]]: ``(student_layer, teacher_layer)`` pairs, 1-based (indices into ``hidden_states``).

    Raises:
        ValueError: an unknown kind, a non-positive layer count, a list of the wrong length, a layer outside
            1..M / 1..N, or a duplicate pair.
    """
    M, N = student_layers, teacher_layers
    if M < 1 or N < 1:
        raise ValueError(f"layer counts must be >= 1, got student_layers={M}, teacher_layers={N}")
    if isinstance(kind, str):
        if kind == "uniform":
            return [(m, max(1, m * N // M)) for m in range(1, M + 1)]
        if kind == "last":
            return [(M, N)]
        raise ValueError(
            f"unknown layer map {kind!r}.{did_you_mean(kind, _LAYER_MAP_KINDS)} "
            "Use 'uniform', 'last', a list of teacher layers or a list of (student, teacher) pairs"
        )
    items = list(kind)
    if not items:
        raise ValueError("layer map is an empty list")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        if len(items) != M:
            raise ValueError(f"a list of teacher layers needs one per student layer ({M}), got {len(items)}: {items}")
        pairs = [(m, t) for m, t in enumerate(items, start=1)]
    elif all(isinstance(x, Sequence) and len(x) == 2 for x in items):
        pairs = [(int(s), int(t)) for s, t in items]
    else:
        raise ValueError(
            f"layer map must be a str, a list of ints or a list of (student, teacher) pairs, got {kind!r}"
        )
    for s, t in pairs:
        if not 1 <= s <= M:
            raise ValueError(f"student layer {s} in pair {(s, t)} is outside 1..{M}")
        if not 1 <= t <= N:
            raise ValueError(f"teacher layer {t} in pair {(s, t)} is outside 1..{N}")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"layer map has duplicate pairs: {pairs}")
    return pairs


class ModelDims(NamedTuple):
    """Sizes of a transformer that feature losses need."""

    num_layers: int
    hidden_size: int
    num_heads: int


def model_dims(config_or_model: Any) -> ModelDims:
    """Number of layers, hidden width and attention heads of a Hugging Face model or its config.

    Reads ``num_hidden_layers``/``n_layer``, ``hidden_size``/``n_embd`` and ``num_attention_heads``/``n_head``
    (the text config of a multimodal model).

    Raises:
        ValueError: the config has none of those names.
    """
    config = getattr(config_or_model, "config", config_or_model)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()

    def first(*names: str) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        raise ValueError(f"{type(config).__name__} has none of {names}")

    return ModelDims(
        num_layers=first("num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=first("hidden_size", "n_embd", "d_model"),
        num_heads=first("num_attention_heads", "n_head", "num_heads"),
    )


# ------------------------------------------------------------------------------------------------ pure functions


def _float(x: Tensor) -> Tensor:
    """Upcast half precision to float32 (float64 stays float64, for references and gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def hint_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    mask: Tensor | None = None,
    *,
    kind: HintKind = "mse",
    reduction: Reduction = "mean",
) -> Tensor:
    """Hint loss between already projected student features and teacher features (FitNets, arXiv:1412.6550).

    Per token: ``mse`` = ``mean_h (F_t - phi(F_s))^2`` (mean over the hidden dimension, so with ``mean``
    reduction it equals ``torch.nn.MSELoss()`` on the unmasked rows, as TinyBERT's hidden and embedding losses);
    ``cosine`` = ``1 - cos(F_t, phi(F_s))`` (eps 1e-8 on the norms). Computed in float32 or wider.

    Args:
        student_features (Tensor): (B, T, H) student features, already projected to the teacher's width.
        teacher_features (Tensor): (B, T, H) teacher features (compute them under ``torch.no_grad()``).
        mask (Tensor | None): (B, T) bool or 0/1; True marks tokens that count. None = all count.
        kind (str): "mse" or "cosine".
        reduction (str): see ``reduce_per_token``; "mean" is the mean over unmasked tokens (0 if none).

    Returns:
        Tensor: scalar (per token (B, T) for "none").

    Raises:
        ValueError: shapes differ, or an unknown kind.
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} differ (project the student to the teacher's width first)"
        )
    s, t = _float(student_features), _float(teacher_features)
    if kind == "mse":
        per_token = (s - t).pow(2).mean(-1)  # (B, T)
    elif kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)  # (B, T)
    else:
        raise ValueError(f"hint loss kind must be 'mse' or 'cosine', got {kind!r}")
    return reduce_per_token(per_token, mask, reduction)


def _match_heads(student_attentions: Tensor, teacher_attentions: Tensor) -> tuple[Tensor, Tensor]:
    """Average the side with more heads over groups of consecutive heads so both have the same head count.

    The mean of attention distributions is a distribution, so KL stays defined. Equal counts pass through.
    """
    if student_attentions.dim() != 4 or teacher_attentions.dim() != 4:
        raise ValueError(
            f"attentions must be (B, heads, T, T), got student {tuple(student_attentions.shape)} and teacher "
            f"{tuple(teacher_attentions.shape)}"
        )
    (B, hs, T, Tk), (Bt, ht, Tt, Ttk) = student_attentions.shape, teacher_attentions.shape
    if (B, T, Tk) != (Bt, Tt, Ttk):
        raise ValueError(
            f"student attentions {tuple(student_attentions.shape)} and teacher attentions "
            f"{tuple(teacher_attentions.shape)} differ in batch or tokens"
        )
    if hs == ht:
        return student_attentions, teacher_attentions
    if ht % hs == 0:
        return student_attentions, teacher_attentions.view(B, hs, ht // hs, T, Tk).mean(2)
    if hs % ht == 0:
        return student_attentions.view(B, ht, hs // ht, T, Tk).mean(2), teacher_attentions
    raise ValueError(f"student heads ({hs}) and teacher heads ({ht}) must be equal or one must divide the other")


def _key_mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """(B, T) token mask -> (B, 1, 1, T) key mask in ``like``'s dtype."""
    return None if mask is None else mask.to(like.dtype)[:, None, None, :]


def attention_kl(
    student_attentions: Tensor,
    teacher_attentions: Tensor,
    mask: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """KL(A_t || A_s) between attention distributions, as MiniLM's self-attention loss (arXiv:2002.10957).

    Per query token t: ``mean_heads sum_keys A_t[k] * (log A_t[k] - log A_s[k])`` over unmasked keys, then the
    reduction over query tokens. Probabilities are clamped at float32's smallest normal before the log, so keys
    that are masked out (causal future, padding: probability 0 in both) contribute exactly 0, never NaN. When head
    counts differ, the side with more heads is averaged over groups of consecutive heads (``heads_big / heads_small``
    per group); MiniLM itself requires equal counts.

    Args:
        student_attentions (Tensor): (B, heads_s, T, T) post-softmax probabilities (``output_attentions``).
        teacher_attentions (Tensor): (B, heads_t, T, T) post-softmax probabilities.
        mask (Tensor | None): (B, T) True for real tokens; padded query rows are excluded by the reduction and
            padded keys are dropped from the sum. None = all count.
        reduction (str): see ``reduce_per_token``, over (B, T) query tokens.

    Returns:
        Tensor: scalar in nats (per query token (B, T) for "none").

    Raises:
        ValueError: shapes that differ in batch or tokens, or head counts where neither divides the other.
    """
    s, t = _match_heads(student_attentions, teacher_attentions)
    s, t = _float(s), _float(t)
    tiny = torch.finfo(torch.float32).tiny
    per_key = t * (t.clamp_min(tiny).log() - s.clamp_min(tiny).log())  # (B, heads, T, T)
    key_mask = _key_mask(mask, per_key)
    if key_mask is not None:
        per_key = per_key * key_mask
    per_token = per_key.sum(-1).mean(1)  # (B, T)
    return reduce_per_token(per_token, mask, reduction)


def attention_mse(
    student_attentions: Tensor,
    teacher_attentions: Tensor,
    mask: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """MSE between attention matrices, after TinyBERT's attention loss (Jiao et al., arXiv:1909.10351, eq. 7).

    TinyBERT compares the pre-softmax scores: a model switched to ``lmdistill_scores`` attention
    (``lmdistill.losses.attention_scores``) returns them under ``output_attentions``; otherwise Hugging Face returns
    probabilities, and the same formula compares those.

    Per query token t: ``mean_heads (1 / K_b) sum_keys (A_s[k] - A_t[k])^2`` over the K_b
    unmasked keys of sequence b, then the reduction over query tokens; without a mask and with "mean" this is
    ``torch.nn.MSELoss()`` on the (B, heads, T, T) tensors. Head counts are matched as in ``attention_kl``.

    Args:
        student_attentions (Tensor): (B, heads_s, T, T) post-softmax probabilities or pre-softmax scores.
        teacher_attentions (Tensor): (B, heads_t, T, T) the same kind as the student's.
        mask (Tensor | None): (B, T) True for real tokens (query rows and keys). None = all count.
        reduction (str): see ``reduce_per_token``, over (B, T) query tokens.

    Returns:
        Tensor: scalar (per query token (B, T) for "none").

    Raises:
        ValueError: as ``attention_kl``.
    """
    s, t = _match_heads(student_attentions, teacher_attentions)
    sq = (_float(s) - _float(t)).pow(2)  # (B, heads, T, T)
    key_mask = _key_mask(mask, sq)
    if key_mask is None:
        per_token = sq.mean(-1).mean(1)  # (B, T)
    else:
        num_keys = key_mask.sum(-1).clamp_min(1)  # (B, 1, 1); an all-padding row gives 0, not NaN
        per_token = ((sq * key_mask).sum(-1) / num_keys).mean(1)
    return reduce_per_token(per_token, mask, reduction)


# ------------------------------------------------------------------------------------------------ module shells


def _projection(student_width: int, teacher_width: int, project: bool, bias: bool) -> nn.Module:
    if project:
        return nn.Linear(student_width, teacher_width, bias=bias)
    if student_width != teacher_width:
        raise ValueError(f"project=False needs equal widths, got student {student_width} and teacher {teacher_width}")
    return nn.Identity()


def _layer(states: Sequence[Tensor], index: int, who: str) -> Tensor:
    if isinstance(states, Tensor) or not isinstance(states, Sequence):
        raise TypeError(f"{who} must be a sequence of (B, T, H) tensors (output_hidden_states), got {type(states)}")
    if not 0 <= index < len(states):
        raise ValueError(
            f"{who} has {len(states)} entries (embeddings + {len(states) - 1} layers) but layer {index} was asked "
            "for; run the model with output_hidden_states=True"
        )
    x = states[index]
    if x is None or x.dim() != 3:
        raise ValueError(f"{who}[{index}] must be a (B, T, H) tensor, got {None if x is None else tuple(x.shape)}")
    return x


class HintLoss(nn.Module):
    """Hint loss ``||F_t - phi(F_s)||^2`` on hidden states through learned projections phi (FitNets; STLM).

    One ``nn.Linear(student_width, teacher_width)`` per layer pair (Romero et al., arXiv:1412.6550; the hidden
    loss of TinyBERT, arXiv:1909.10351, eq. 8; Cheng et al. 2024, STLM), in ``self.projections`` keyed
    ``"{student_layer}_to_{teacher_layer}"``. The loss is ``hint_loss`` per pair, averaged over pairs (TinyBERT
    sums over layers; the average keeps a term's weight independent of the number of pairs). The projections are
    trainable parameters: optimise them with the student, move the module to the student's device and dtype, and
    save them with the run (``save_projections``).

    Args:
        student_width (int): H_s.
        teacher_width (int): H_t.
        layer_pairs (list[tuple[int, int]]): (student_layer, teacher_layer) indices into ``hidden_states``,
            e.g. from ``layer_map``.
        kind (str): "mse" (mean over the hidden dimension) or "cosine" (``1 - cos``).
        project (bool): False uses no projection (identity); needs equal widths.
        bias (bool): whether the projections have a bias.

    Raises:
        ValueError: no pairs, negative or duplicate pairs, an unknown kind, or ``project=False`` with unequal widths.
    """

    def __init__(
        self,
        student_width: int,
        teacher_width: int,
        layer_pairs: Sequence[LayerPair],
        *,
        kind: HintKind = "mse",
        project: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        pairs = [(int(s), int(t)) for s, t in layer_pairs]
        if not pairs or min(min(p) for p in pairs) < 0 or len(set(pairs)) != len(pairs):
            raise ValueError(f"layer_pairs must be non-empty, non-negative and distinct, got {pairs}")
        if kind not in ("mse", "cosine"):
            raise ValueError(f"hint loss kind must be 'mse' or 'cosine', got {kind!r}")
        self.layer_pairs = pairs
        self.kind = kind
        self.projections = nn.ModuleDict(
            {f"{s}_to_{t}": _projection(student_width, teacher_width, project, bias) for s, t in pairs}
        )

    @classmethod
    def from_configs(
        cls,
        student_config: Any,
        teacher_config: Any,
        layers: str | Sequence[int] | Sequence[LayerPair] = "uniform",
        **kwargs: Any,
    ) -> HintLoss:
        """Build from two Hugging Face configs (or models): widths from ``model_dims``, pairs from ``layer_map``."""
        s, t = model_dims(student_config), model_dims(teacher_config)
        pairs = layer_map(layers, s.num_layers, t.num_layers)
        return cls(s.hidden_size, t.hidden_size, pairs, **kwargs)

    def forward(
        self,
        student_hidden_states: Sequence[Tensor],
        teacher_hidden_states: Sequence[Tensor],
        mask: Tensor | None = None,
        *,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """Mean over layer pairs of ``hint_loss(phi(F_s[s]), F_t[t], mask)``.

        Args:
            student_hidden_states (Sequence[Tensor]): L_s + 1 tensors (B, T, H_s), ``output_hidden_states``.
            teacher_hidden_states (Sequence[Tensor]): L_t + 1 tensors (B, T, H_t).
            mask (Tensor | None): (B, T) True for tokens that count (e.g. the attention mask).
            reduction (str): see ``reduce_per_token``.

        Returns:
            Tensor: scalar ((B, T) for "none").

        Raises:
            ValueError: a pair outside the given hidden states, or mismatched shapes.
            TypeError: a single tensor instead of a sequence of them.
        """
        losses = []
        for s, t in self.layer_pairs:
            projected = self.projections[f"{s}_to_{t}"](_layer(student_hidden_states, s, "student_hidden_states"))
            teacher = _layer(teacher_hidden_states, t, "teacher_hidden_states")
            losses.append(hint_loss(projected, teacher, mask, kind=self.kind, reduction=reduction))
        return torch.stack(losses).mean(0)


class EmbeddingLoss(nn.Module):
    """Embedding-layer loss ``MSE(E_s W_e, E_t)`` of TinyBERT (Jiao et al., arXiv:1909.10351, eq. 9).

    The same per-token ``hint_loss`` on the embedding outputs (``hidden_states[0]``) through its own projection
    ``self.projection``.

    Args:
        student_width (int): H_s.
        teacher_width (int): H_t.
        kind (str): "mse" or "cosine".
        project (bool): False uses no projection; needs equal widths.
        bias (bool): whether the projection has a bias.
    """

    def __init__(
        self,
        student_width: int,
        teacher_width: int,
        *,
        kind: HintKind = "mse",
        project: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"embedding loss kind must be 'mse' or 'cosine', got {kind!r}")
        self.kind = kind
        self.projection = _projection(student_width, teacher_width, project, bias)

    def forward(
        self,
        student_embeddings: Tensor | Sequence[Tensor],
        teacher_embeddings: Tensor | Sequence[Tensor],
        mask: Tensor | None = None,
        *,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """``hint_loss(phi(E_s), E_t, mask)``.

        Args:
            student_embeddings (Tensor | Sequence[Tensor]): (B, T, H_s), or the whole ``hidden_states`` tuple
                (its entry 0 is used).
            teacher_embeddings (Tensor | Sequence[Tensor]): (B, T, H_t), or the whole ``hidden_states`` tuple.
            mask (Tensor | None): (B, T) True for tokens that count.
            reduction (str): see ``reduce_per_token``.

        Returns:
            Tensor: scalar ((B, T) for "none").
        """
        s = student_embeddings if isinstance(student_embeddings, Tensor) else _layer(student_embeddings, 0, "student")
        t = teacher_embeddings if isinstance(teacher_embeddings, Tensor) else _layer(teacher_embeddings, 0, "teacher")
        return hint_loss(self.projection(s), t, mask, kind=self.kind, reduction=reduction)


class AttentionLoss(nn.Module):
    """Attention loss over layer pairs: ``"kl"`` (MiniLM, ``attention_kl``) or ``"mse"`` (TinyBERT, ``attention_mse``).

    No parameters. Layer numbers are 1-based, so pair (s, t) reads ``student_attentions[s - 1]`` and
    ``teacher_attentions[t - 1]``. The loss is averaged over pairs. MiniLMv2's query/key/value relations are not
    implemented.

    Args:
        layer_pairs (list[tuple[int, int]]): (student_layer, teacher_layer), 1-based, e.g. from ``layer_map``.
        kind (str): "kl" or "mse".

    Raises:
        ValueError: no pairs, a layer < 1, or an unknown kind.
    """

    def __init__(self, layer_pairs: Sequence[LayerPair], *, kind: AttentionKind = "kl") -> None:
        super().__init__()
        pairs = [(int(s), int(t)) for s, t in layer_pairs]
        if not pairs or min(min(p) for p in pairs) < 1:
            raise ValueError(
                f"layer_pairs must be non-empty and 1-based (attentions have no embedding entry): {pairs}"
            )
        if kind not in ("kl", "mse"):
            raise ValueError(f"attention loss kind must be 'kl' or 'mse', got {kind!r}")
        self.layer_pairs = pairs
        self.kind = kind

    def forward(
        self,
        student_attentions: Sequence[Tensor],
        teacher_attentions: Sequence[Tensor],
        mask: Tensor | None = None,
        *,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """Mean over layer pairs of the attention loss.

        Args:
            student_attentions (Sequence[Tensor]): L_s tensors (B, heads_s, T, T), ``output_attentions``.
            teacher_attentions (Sequence[Tensor]): L_t tensors (B, heads_t, T, T).
            mask (Tensor | None): (B, T) True for real tokens.
            reduction (str): see ``reduce_per_token``.

        Returns:
            Tensor: scalar ((B, T) for "none").

        Raises:
            ValueError: missing attentions (a model not loaded with ``attn_implementation="eager"``), a layer out
                of range, or mismatched shapes.
        """
        fn = attention_kl if self.kind == "kl" else attention_mse
        losses = []
        for s, t in self.layer_pairs:
            a_s = self._get(student_attentions, s, "student_attentions")
            a_t = self._get(teacher_attentions, t, "teacher_attentions")
            losses.append(fn(a_s, a_t, mask, reduction=reduction))
        return torch.stack(losses).mean(0)

    @staticmethod
    def _get(attentions: Sequence[Tensor] | None, layer: int, who: str) -> Tensor:
        if attentions is None or isinstance(attentions, Tensor) or len(attentions) == 0 or attentions[0] is None:
            raise ValueError(
                f"{who} is empty: run the model with output_attentions=True and load it with "
                'attn_implementation="eager" (SDPA and flash attention return no attention weights)'
            )
        if not 1 <= layer <= len(attentions):
            raise ValueError(f"{who} has layers 1..{len(attentions)}, but layer {layer} was asked for")
        return attentions[layer - 1]


# ------------------------------------------------------------------------------------------- hooks, persistence


@contextmanager
def capture_outputs(model: nn.Module, module_names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named submodules with forward hooks, for features transformers does not expose.

    Usage: ``with capture_outputs(student, ["model.layers.1.mlp"]) as feats: student(ids)``, then
    ``feats["model.layers.1.mlp"]`` is that module's output (B, T, H). A tuple or ``ModelOutput`` output gives its
    first element. Outputs keep their autograd graph (not detached). A module called several times keeps its
    last output. Hooks are removed on exit, also when the body raises.

    Args:
        model (nn.Module): the model to hook.
        module_names (Sequence[str]): names as in ``model.named_modules()``.

    Yields:
        dict[str, Tensor]: filled while the model runs inside the block.

    Raises:
        ValueError: an unknown module name (with the closest names).
    """
    modules = dict(model.named_modules())
    for name in module_names:
        if name not in modules:
            raise ValueError(f"model has no module {name!r}.{did_you_mean(name, list(modules))}")
    outputs: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if hasattr(output, "to_tuple"):  # transformers ModelOutput
                output = output.to_tuple()
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    handles = []
    try:
        for name in module_names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def save_projections(module: nn.Module, path: str | Path) -> None:
    """Write ``module.state_dict()`` (e.g. a ``HintLoss``'s projections) to a safetensors file, atomically.

    Raises:
        ValueError: the module has no tensors to save.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    if not state:
        raise ValueError(f"{type(module).__name__} has no parameters to save")
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "module": type(module).__name__})


def load_projections(module: nn.Module, path: str | Path) -> None:
    """Load a file written by ``save_projections`` into ``module`` (strict: same keys and shapes).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: keys or shapes differ from the module's (a different layer map or widths).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no projections file: {path}")
    state = load_file(str(path))
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit {type(module).__name__}: missing {missing}, unexpected {unexpected}, "
            f"shape mismatch {wrong} (was it saved with another layer map or other widths?)"
        )
    module.load_state_dict(state, strict=True)
