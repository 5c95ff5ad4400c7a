"""Zero-shot evaluation: log-likelihood scoring of texts and BLiMP minimal pairs, and tasks written as files."""

from lmdistill.evaluation.blimp import MinimalPair, evaluate_blimp, list_paradigms, load_blimp
from lmdistill.evaluation.scoring import HFLogitsFn, LogitsFn, hf_logits_fn, score_texts
from lmdistill.evaluation.taskfile import TaskFileError, load_task_file, register_task_file, register_task_files

__all__ = [
    "HFLogitsFn",
    "LogitsFn",
    "MinimalPair",
    "TaskFileError",
    "evaluate_blimp",
    "hf_logits_fn",
    "list_paradigms",
    "load_blimp",
    "load_task_file",
    "register_task_file",
    "register_task_files",
    "score_texts",
]
