"""Build GPT-2 and LLaMA causal LMs from a recipe, or load them from a local checkpoint folder."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from lmdistill.config import ModelConfig

__all__ = ["build_model", "count_parameters", "load_model"]

log = logging.getLogger(__name__)


def build_model(
    cfg: ModelConfig, *, vocab_size: int, block_size: int, bos_id: int, eos_id: int, pad_id: int
) -> PreTrainedModel:
    """Create a randomly initialised causal LM, or load ``cfg.path`` when it is set.

    Args:
        cfg (ModelConfig): architecture sizes (or a checkpoint path).
        vocab_size (int): V, the tokenizer's vocabulary size.
        block_size (int): context length (positions).
        bos_id (int): start token id, written into the model config.
        eos_id (int): end token id.
        pad_id (int): padding token id.

    Returns:
        PreTrainedModel: a ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` in train mode, float32.

    Raises:
        FileNotFoundError: ``cfg.path`` is set but is not a checkpoint folder.
        ValueError: a loaded checkpoint's vocabulary size differs from ``vocab_size``.
    """
    if cfg.path is not None:
        model = load_model(cfg.path)
        if model.config.vocab_size != vocab_size:
            raise ValueError(
                f"checkpoint {cfg.path} has vocab_size={model.config.vocab_size} but the run's tokenizer has "
                f"{vocab_size}: teachers and student must share one tokenizer"
            )
        return model
    special = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if cfg.arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=block_size,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            tie_word_embeddings=cfg.tie_word_embeddings,
            **special,
        )
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=block_size,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_word_embeddings,
        **special,
    )
    return LlamaForCausalLM(config)


def load_model(path: str | Path) -> PreTrainedModel:
    """Load a causal LM from a local Hugging Face checkpoint folder (safetensors; no remote code).

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``config.json``.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"not a model checkpoint folder (no config.json): {path}")
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)


def count_parameters(model: PreTrainedModel) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())
