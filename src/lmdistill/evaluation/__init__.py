"""Zero-shot evaluation: log-likelihood scoring of texts and BLiMP minimal pairs, bits per byte, and task files."""

from lmdistill.evaluation.blimp import MinimalPair, evaluate_blimp, list_paradigms, load_blimp
from lmdistill.evaluation.bpb import bits_per_byte, held_out_texts
from lmdistill.evaluation.scoring import HFLogitsFn, LogitsFn, hf_logits_fn, score_texts
from lmdistill.evaluation.taskfile import TaskFileError, load_task_file, register_task_file, register_task_files

__all__ = [
    "HFLogitsFn",
    "LogitsFn",
    "MinimalPair",
    "TaskFileError",
    "bits_per_byte",
    "evaluate_blimp",
    "held_out_texts",
    "hf_logits_fn",
    "list_paradigms",
    "load_blimp",
    "load_task_file",
    "register_task_file",
    "register_task_files",
    "score_texts",
]
