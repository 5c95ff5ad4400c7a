"""Corpus reading and cleaning, tokenizer training, token caches and block packing.

The names below are imported on first use (PEP 562), so that resolving the data root does not import torch.
"""

from __future__ import annotations

from lmdistill.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
