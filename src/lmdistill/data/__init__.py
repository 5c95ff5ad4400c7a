"""Corpus reading and cleaning, tokenizer training, token caches and block packing."""

from lmdistill.data.blocks import BlockDataset, dev_blocks
from lmdistill.data.corpus import CLEANERS, load_corpus, load_documents
from lmdistill.data.root import DataRootError, resolve_data_root
from lmdistill.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, save_tokenizer, train_tokenizer
from lmdistill.data.tokens import tokenize_documents

__all__ = [
    "CLEANERS",
    "SPECIAL_TOKENS",
    "BlockDataset",
    "DataRootError",
    "dev_blocks",
    "load_corpus",
    "load_documents",
    "load_tokenizer",
    "resolve_data_root",
    "save_tokenizer",
    "tokenize_documents",
    "train_tokenizer",
]
