"""KD losses: divergences on logits and the distillation objective."""

from lmdistill.losses.divergences import forward_kl, reduce_per_token, reverse_kl
from lmdistill.losses.features import (
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
from lmdistill.losses.objective import IGNORE_INDEX, DistillationObjective, causal_lm_ce
from lmdistill.losses.topk import TopKTeacher, reconstruction_kl, sparse_per_token, topk_teacher

__all__ = [
    "IGNORE_INDEX",
    "AttentionLoss",
    "TopKTeacher",
    "DistillationObjective",
    "EmbeddingLoss",
    "HintLoss",
    "attention_kl",
    "attention_mse",
    "capture_outputs",
    "causal_lm_ce",
    "forward_kl",
    "hint_loss",
    "layer_map",
    "load_projections",
    "model_dims",
    "reconstruction_kl",
    "reduce_per_token",
    "reverse_kl",
    "save_projections",
    "sparse_per_token",
    "topk_teacher",
]
