"""Zero-shot evaluation: log-likelihood scoring of texts and BLiMP minimal pairs."""

from lmdistill.evaluation.blimp import MinimalPair, evaluate_blimp, list_paradigms, load_blimp
from lmdistill.evaluation.scoring import HFLogitsFn, LogitsFn, hf_logits_fn, score_texts

__all__ = [
    "HFLogitsFn",
    "LogitsFn",
    "MinimalPair",
    "evaluate_blimp",
    "hf_logits_fn",
    "list_paradigms",
    "load_blimp",
    "score_texts",
]
