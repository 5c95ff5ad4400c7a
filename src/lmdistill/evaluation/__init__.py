"""Zero-shot evaluation: log-likelihood scoring of texts and BLiMP minimal pairs, bits per byte, and task files.

The names below are imported on first use (PEP 562), so that reading task files and recipes does not import torch.
"""

from __future__ import annotations

from lmdistill.lazy import lazy_exports

_EXPORTS = {
    "HFLogitsFn": "scoring",
    "LogitsFn": "scoring",
    "MinimalPair": "blimp",
    "TaskFileError": "taskfile",
    "bits_per_byte": "bpb",
    "evaluate_blimp": "blimp",
    "held_out_texts": "bpb",
    "hf_logits_fn": "scoring",
    "list_paradigms": "blimp",
    "load_blimp": "blimp",
    "load_task_file": "taskfile",
    "register_task_file": "taskfile",
    "register_task_files": "taskfile",
    "score_texts": "scoring",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
