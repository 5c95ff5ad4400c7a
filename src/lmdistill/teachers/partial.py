"""A teacher cut after its first layers, for feature terms whose teacher layers all lie below the top.

A hint loss on teacher layer l needs only the first l transformer blocks: the rest of the forward pass (and the
LM head's (B, T, V) logits) is work whose result is thrown away when the response part of the loss comes from a
top-k cache. ``truncated_teacher`` keeps blocks 1..l+1, so that ``hidden_states[l]`` is the output of block l as
in the whole model (the last entry of a Hugging Face ``hidden_states`` tuple has the final norm applied; the entry
below the top does not). Its cost per token is (l + 1) / N of the whole body's.
"""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["truncated_teacher"]


def truncated_teacher(model: nn.Module, teacher_layer: int) -> nn.Module:
    """A copy of ``model`` that keeps its first ``teacher_layer + 1`` blocks (or all of them), frozen.

    ``hidden_states[i]`` of the copy equals the whole model's for every ``i <= teacher_layer``. Its logits are
    not the model's (they come from a lower layer) and must not be used.

    Args:
        model (PreTrainedModel): a LLaMA-style causal LM (``model.model.layers``) or GPT-2 (``transformer.h``).
        teacher_layer (int): the highest teacher layer (1-based) a feature term reads.

    Returns:
        PreTrainedModel: the copy, in eval mode, ``requires_grad=False``; ``config.num_hidden_layers`` updated.

    Raises:
        ValueError: ``teacher_layer`` outside 1..N, or a model whose blocks are not found.
    """
    config = model.config
    total = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if total is None or not 1 <= teacher_layer <= total:
        raise ValueError(f"teacher_layer must be in 1..{total}, got {teacher_layer}")
    keep = min(teacher_layer + 1, total)
    if keep == total:
        copied = model
    else:
        owner, attr = _blocks(model)
        blocks = getattr(owner, attr)
        setattr(owner, attr, nn.ModuleList())  # so that deepcopy does not copy the blocks that are dropped
        try:
            copied = copy.deepcopy(model)
        finally:
            setattr(owner, attr, blocks)
        setattr(_blocks(copied)[0], attr, nn.ModuleList(copy.deepcopy(b) for b in list(blocks)[:keep]))
        for key in ("num_hidden_layers", "n_layer"):
            if hasattr(copied.config, key):
                setattr(copied.config, key, keep)
        if getattr(copied.config, "layer_types", None):
            copied.config.layer_types = list(copied.config.layer_types)[:keep]
    copied.eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def _blocks(model: nn.Module) -> tuple[nn.Module, str]:
    for owner_name, attr in (("model", "layers"), ("transformer", "h")):
        owner = getattr(model, owner_name, None)
        if owner is not None and isinstance(getattr(owner, attr, None), nn.ModuleList):
            return owner, attr
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__} (model.layers, transformer.h)")
