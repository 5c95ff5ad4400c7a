"""KD losses: divergences on logits and the distillation objective."""

from lmdistill.losses.divergences import forward_kl, reduce_per_token, reverse_kl
from lmdistill.losses.objective import IGNORE_INDEX, DistillationObjective, causal_lm_ce

__all__ = ["IGNORE_INDEX", "DistillationObjective", "causal_lm_ce", "forward_kl", "reduce_per_token", "reverse_kl"]
