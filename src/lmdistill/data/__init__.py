"""Corpus reading and cleaning, tokenizer training, token caches and block packing.

The names below are imported on first use (PEP 562), so that resolving the data root does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLEANERS": "corpus",
    "SPECIAL_TOKENS": "tokenizer",
    "BlockDataset": "blocks",
    "DataRootError": "root",
    "dev_blocks": "blocks",
    "load_corpus": "corpus",
    "load_documents": "corpus",
    "load_tokenizer": "tokenizer",
    "resolve_data_root": "root",
    "save_tokenizer": "tokenizer",
    "tokenize_documents": "tokens",
    "train_tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lmdistill.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lmdistill.data' has no attribute {name!r}")
