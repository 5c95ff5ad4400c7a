"""Shared fixtures: a tiny byte-level BPE tokenizer, a tiny LLaMA, the data root, and a fixed seed."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

from lmdistill.data.root import DataRootError, resolve_data_root

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    try:
        return resolve_data_root()
    except DataRootError as err:
        pytest.skip(f"no data root: {err}")


@pytest.fixture(scope="session")
def tiny_tokenizer(data_root: Path):
    """Byte-level BPE (vocabulary 384) trained on 300 lines of Brown; <pad>=0, <s>=1, </s>=2, <unk>=3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(data_root / "corpus" / "brown" / "train.txt", encoding="utf-8") as f:
        lines = [line.strip() for line in islice(f, 300) if line.strip()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A randomly initialised 2-layer LLaMA (width 32) over the tiny tokenizer's vocabulary, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()
