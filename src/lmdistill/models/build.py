"""Build a model from a recipe architecture, or load one from a local folder, a Hub id or a GGUF file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import transformers
from transformers import PreTrainedModel

from lmdistill.config.sections import ModelConfig
from lmdistill.models.families import get_family
from lmdistill.models.paths import resolve_model_path

__all__ = ["build_model", "count_parameters", "load_model", "load_model_tokenizer", "resolve_model_path"]

log = logging.getLogger(__name__)


def build_model(
    cfg: ModelConfig, *, vocab_size: int, block_size: int, bos_id: int, eos_id: int, pad_id: int
) -> PreTrainedModel:
    """Create a randomly initialised model of the recipe's architecture, or load ``cfg.path`` when it is set.

    Args:
        cfg (ModelConfig): architecture sizes (or a checkpoint path / Hub id / GGUF file).
        vocab_size (int): V, the tokenizer's vocabulary size.
        block_size (int): context length (positions).
        bos_id (int): start token id, written into the model config.
        eos_id (int): end token id.
        pad_id (int): padding token id.

    Returns:
        PreTrainedModel: ``GPT2LMHeadModel``, ``LlamaForCausalLM``, ``BertForMaskedLM`` (or
        ``BertForSequenceClassification`` with ``family: classifier``) or ``T5ForConditionalGeneration``, float32.

    Raises:
        FileNotFoundError: ``cfg.path`` is neither a checkpoint folder nor a reachable Hub id.
        ValueError: a loaded checkpoint's vocabulary size differs from ``vocab_size``.
    """
    if cfg.path is not None:
        model = load_model(cfg.path, family=cfg.family, gguf_file=cfg.gguf_file)
        if model.config.vocab_size != vocab_size:
            from lmdistill.vocabulary import vocabulary_mismatch

            raise vocabulary_mismatch(
                f"checkpoint {cfg.path}", model.config.vocab_size, "embedding rows", "the run's tokenizer", vocab_size,
                "tokens",
            )  # fmt: skip
        return model
    special = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    family = cfg.resolved_family
    if cfg.arch == "gpt2":
        config = transformers.GPT2Config(
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
    elif cfg.arch == "llama":
        config = transformers.LlamaConfig(
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
    elif cfg.arch == "bert":
        config = transformers.BertConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=block_size,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            tie_word_embeddings=cfg.tie_word_embeddings,
            **special,
        )
    else:  # t5
        config = transformers.T5Config(
            vocab_size=vocab_size,
            d_model=cfg.hidden_size,
            d_kv=cfg.hidden_size // cfg.num_heads,
            d_ff=cfg.intermediate_size,
            num_layers=cfg.num_layers,
            num_decoder_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            dropout_rate=cfg.dropout,
            tie_word_embeddings=cfg.tie_word_embeddings,
            decoder_start_token_id=pad_id,
            **special,
        )
    if family == "classifier":
        config.num_labels = cfg.num_labels
    auto = getattr(transformers, get_family(family).auto_class)
    return auto.from_config(config)


def _is_local(path: str | Path) -> bool:
    return Path(path).exists() or str(path).startswith((".", "/", "~"))


def load_model(
    path: str | Path, *, family: str | None = None, gguf_file: str | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load a model from a local Hugging Face folder, a Hub id (needs internet) or a GGUF file in either.

    Never runs remote code. A GGUF file is dequantised to float32 by transformers (needs the ``gguf`` package).

    Args:
        path (str | Path): folder, ``package:NAME`` (an installed package's folder), or Hub id such as
            ``HuggingFaceTB/SmolLM2-135M``.
        family (str | None): the family's auto class to load with; None = the folder's ``config.json`` decides
            (a causal LM when the folder has only a GGUF file).
        gguf_file (str | None): a GGUF file name inside ``path``.
        **kwargs: passed to ``from_pretrained`` (e.g. ``torch_dtype``).

    Returns:
        PreTrainedModel: in eval mode as transformers returns it.

    Raises:
        FileNotFoundError: a local folder without ``config.json`` (or without the GGUF file), or a Hub id that
            cannot be reached (the message says so: the Hub needs internet, or use a local folder).
    """
    path = resolve_model_path(path)
    local = _is_local(path)
    path = Path(path).expanduser() if local else path
    if local:
        if gguf_file is not None and not (Path(path) / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file not found: {Path(path) / gguf_file}")
        if gguf_file is None and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"not a model checkpoint folder (no config.json): {path}")
    if family is None and gguf_file is None and local:
        auto = transformers.AutoModelForCausalLM
        architectures = _read_architectures(Path(path))
        for name in ("ForMaskedLM", "ForSequenceClassification", "ForConditionalGeneration"):
            if any(a.endswith(name) for a in architectures):
                auto = {
                    "ForMaskedLM": transformers.AutoModelForMaskedLM,
                    "ForSequenceClassification": transformers.AutoModelForSequenceClassification,
                    "ForConditionalGeneration": transformers.AutoModelForSeq2SeqLM,
                }[name]
    else:
        auto = getattr(transformers, get_family(family or "causal_lm").auto_class)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model = auto.from_pretrained(path, trust_remote_code=False, **extra, **kwargs)
    except OSError as err:
        if local:
            raise
        raise FileNotFoundError(
            f"could not load {path!r} from the Hugging Face Hub ({err}); the Hub needs internet: download the model "
            "elsewhere and give its local folder as model.path"
        ) from err
    if gguf_file:
        _forget_gguf_quantization(model)
    return model


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """Drop transformers' quantised marks from a GGUF model, which is dequantised to float on load.

    Marked, it refuses ``.float()`` and saves a ``quantization_config``; unmarked, it is trained, cast and saved
    as the plain float model it is.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _read_architectures(folder: Path) -> list[str]:
    import json

    try:
        return list(json.loads((folder / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return []


def load_model_tokenizer(path: str | Path, *, gguf_file: str | None = None) -> Any:
    """The tokenizer saved with a model (a folder's tokenizer files, or the one inside a GGUF file).

    Raises:
        FileNotFoundError: the folder has no tokenizer files.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if _is_local(path) and gguf_file is None:
        folder = Path(path)
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            raise FileNotFoundError(f"{folder} holds no tokenizer files (tokenizer.json, tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(path, **extra)


def count_parameters(model: PreTrainedModel) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())
