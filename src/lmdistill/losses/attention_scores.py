"""Pre-softmax attention scores, captured as transformers runs the model (TinyBERT's attention loss compares them).

Hugging Face models return attention *probabilities* (``output_attentions=True``); TinyBERT's attention loss
(Jiao et al., arXiv:1909.10351, eq. 7) is the MSE between the *scores* ``A = Q K^T / sqrt(d_head)`` before the
softmax. transformers 5 looks each layer's attention function up by ``config._attn_implementation`` in
``AttentionInterface``; this module registers one more, ``"lmdistill_scores"``, that computes eager attention
(same outputs, up to float rounding) and hands back the scores instead of the probabilities. A model switched to it
(``use_attention_scores``) then returns, under ``output_attentions=True``, one (B, heads, T, T) tensor of scores per
layer: the hook is the attention function itself, so no module's internals are re-derived.

The recorded scores are ``Q K^T * scaling`` as the layer computes them (after rotary embeddings for LLaMA; the
scaling is the layer's own, ``d_head ** -0.5`` by default), *without* the additive attention mask, and 0 at keys the
mask blocks (padding, a causal model's future): masked keys then contribute nothing to an MSE where both sides
are 0 there, as TinyBERT's code zeroes scores below -100 after the mask has been added. Grouped-query attention
(LLaMA, SmolLM2) repeats each key/value head over its group of query heads, so there is one score map per query
head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SCORES_IMPLEMENTATION", "register_attention_scores", "scores_attention", "use_attention_scores"]

SCORES_IMPLEMENTATION = "lmdistill_scores"
"""The attention implementation name under which ``scores_attention`` is registered."""


def _blocked(attention_mask: Tensor) -> Tensor:
    """True where the mask forbids attending: False in a boolean mask, very negative in an additive one."""
    if attention_mask.dtype == torch.bool:
        return ~attention_mask
    return attention_mask <= torch.finfo(attention_mask.dtype).min / 2


def scores_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Eager attention that returns the pre-softmax scores as its "weights" (an ``AttentionInterface`` function).

    Args:
        module (nn.Module): the attention layer (its ``training`` flag decides dropout).
        query (Tensor): (B, heads, T, d_head).
        key (Tensor): (B, kv_heads, S, d_head); kv_heads divides heads (grouped-query attention).
        value (Tensor): (B, kv_heads, S, d_head).
        attention_mask (Tensor | None): (B, 1, T, S) additive float or boolean (True = attend), or None.
        scaling (float | None): the score scale; None = ``d_head ** -0.5``.
        dropout (float): attention dropout probability (training only).
        **kwargs: what transformers passes besides (sliding window, position ids, ...); unused.

    Returns:
        tuple: the attention output (B, T, heads, d_head), as eager attention gives it, and the scores
        (B, heads, T, S): ``Q K^T * scaling``, 0 where the mask blocks a key.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # each key/value head serves `groups` consecutive query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # (B, heads, T, S)
    logits = scores
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        blocked = _blocked(mask)
        if mask.dtype == torch.bool:
            logits = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        else:
            logits = scores + mask
        scores = scores.masked_fill(blocked, 0.0)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, scores


def register_attention_scores() -> str:
    """Register ``scores_attention`` (and eager masks for it) with transformers; returns its name. Idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(SCORES_IMPLEMENTATION, scores_attention)
    try:  # the mask builders look the implementation up too: give it eager attention's (a full additive mask)
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        AttentionMaskInterface.register(SCORES_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    except (ImportError, KeyError):  # older transformers: masks are built independently of the implementation
        pass
    return SCORES_IMPLEMENTATION


def use_attention_scores(model: nn.Module) -> nn.Module:
    """Switch ``model`` to ``"lmdistill_scores"`` attention: ``output_attentions`` then gives scores; returns it.

    Raises:
        ValueError: a model whose attention transformers cannot switch (no ``set_attn_implementation``).
    """
    register_attention_scores()
    inner = getattr(model, "module", model)
    if not hasattr(inner, "set_attn_implementation"):
        raise ValueError(f"{type(inner).__name__} cannot switch its attention implementation (transformers >= 4.48)")
    if getattr(inner.config, "_attn_implementation", None) != SCORES_IMPLEMENTATION:
        inner.set_attn_implementation(SCORES_IMPLEMENTATION)
    return model
