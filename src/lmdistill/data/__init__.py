"""Corpus reading and cleaning, tokenizer training, token caches and block packing."""

from lmdistill.data.root import DataRootError, resolve_data_root

__all__ = ["DataRootError", "resolve_data_root"]
