"""Cross-vocabulary adaptation: give a pretrained model a new input embedding and LM head in another tokenizer.

The mechanism of the Super Tiny LMs KD plan (Cheng et al. 2024, arXiv:2405.14159, section 3): the teacher keeps
its transformer body, frozen, and learns a new embedding and output head in the student's vocabulary from the
corpus with plain cross-entropy. The result is an ordinary Hugging Face checkpoint with the student's tokenizer,
so every same-vocabulary recipe takes it as a teacher.

Initialisations of the new rows (``INITS``):

- ``random``: ``N(0, sigma^2)`` with sigma the standard deviation of the teacher's old embedding matrix (the
  scale the body was trained on), as STLM starts;
- ``mean_of_subwords``: Fast Vocabulary Transfer (Gee et al. 2022, "Fast Vocabulary Transfer for Language Model
  Compression", EMNLP industry track): a new token whose token string exists in the old vocabulary copies that row
  (byte-level BPE tokenizers share the ``Ġ``-for-space spelling); any other token's row is the mean of the old
  rows of the old tokenizer's pieces of the token's text; special tokens take the row of the old token they are
  mapped to (``special_tokens``, by default by role: bos to bos, eos to eos, pad to pad, else eos, unk to unk);
  a token whose text the old tokenizer encodes to nothing takes the mean of all old rows.

The output head gets the same treatment from the old head's rows when it is untied; a tied teacher stays tied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "INITS",
    "AdaptedRows",
    "adapt_vocabulary",
    "freeze_all_but_head",
    "untie_output_embedding",
    "freeze_body",
    "subword_mapping",
    "trainable_parameters",
]

INITS = ("random", "mean_of_subwords")
ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass
class AdaptedRows:
    """How each new token's row was made (``subword_mapping``), for the record and the tests.

    Attributes:
        pieces (list[list[int]]): per new token id, the old token ids whose rows are averaged.
        exact (int): tokens copied from an identical old token.
        special (int): special tokens mapped to an old token.
        averaged (int): tokens averaged over two or more old pieces (or over one piece of another spelling).
        unmapped (int): tokens with no old pieces (they take the mean of all old rows).
    """

    pieces: list[list[int]]
    exact: int = 0
    special: int = 0
    averaged: int = 0
    unmapped: int = 0

    def summary(self) -> dict[str, int]:
        """Counts by kind, for run records."""
        return {"exact": self.exact, "special": self.special, "averaged": self.averaged, "unmapped": self.unmapped}


def _special_targets(new_tok: Any, old_tok: Any, special_tokens: Mapping[str, str] | None) -> dict[int, int]:
    """New special token id -> old token id: the explicit map first, then by role."""
    old_vocab = old_tok.get_vocab()
    out: dict[int, int] = {}
    for new, old in (special_tokens or {}).items():
        new_id = new_tok.convert_tokens_to_ids(new)
        if new not in new_tok.get_vocab():
            raise ValueError(f"special_tokens: {new!r} is not a token of the new (student) tokenizer")
        if old not in old_vocab:
            raise ValueError(f"special_tokens: {old!r} (for {new!r}) is not a token of the teacher's tokenizer")
        out[new_id] = old_vocab[old]
    for role in ROLES:
        new_id = getattr(new_tok, f"{role}_id", None)
        if new_id is None or new_id in out:
            continue
        old_id = getattr(old_tok, f"{role}_id", None)
        if old_id is None and role == "pad_token":
            old_id = getattr(old_tok, "eos_token_id", None)
        if old_id is not None:
            out[new_id] = old_id
    return out


def subword_mapping(new_tok: Any, old_tok: Any, special_tokens: Mapping[str, str] | None = None) -> AdaptedRows:
    """For every token of ``new_tok``, the ``old_tok`` ids whose embedding rows FVT averages.

    Rules, in order: a special token -> its mapped old token (``special_tokens``: new token string -> old token
    string, else by role); the same token string in the old vocabulary -> that token; else the old tokenizer's
    pieces of the token's text (``convert_tokens_to_string``, encoded without special tokens); none -> [].

    Raises:
        ValueError: a ``special_tokens`` entry names a token missing from either tokenizer.
    """
    specials = _special_targets(new_tok, old_tok, special_tokens)
    old_vocab = old_tok.get_vocab()
    rows = AdaptedRows(pieces=[])
    new_specials = set(getattr(new_tok, "all_special_ids", [])) | set(specials)
    for new_id in range(len(new_tok)):
        token = new_tok.convert_ids_to_tokens(new_id)
        if new_id in specials:
            rows.pieces.append([specials[new_id]])
            rows.special += 1
        elif new_id in new_specials:
            rows.pieces.append([])
            rows.unmapped += 1
        elif token in old_vocab:
            rows.pieces.append([old_vocab[token]])
            rows.exact += 1
        else:
            text = new_tok.convert_tokens_to_string([token])
            pieces = old_tok.encode(text, add_special_tokens=False) if text else []
            rows.pieces.append(list(pieces))
            if pieces:
                rows.averaged += 1
            else:
                rows.unmapped += 1
    return rows


def _new_rows(old: torch.Tensor, init: str, mapping: AdaptedRows | None, size: int, generator) -> torch.Tensor:
    """(size, H) float32 rows from the old (V_old, H) matrix by ``init``."""
    old = old.detach().float()
    if init == "random":
        return torch.randn(size, old.shape[1], generator=generator) * old.std()
    assert mapping is not None
    mean_all = old.mean(0)
    out = torch.empty(size, old.shape[1])
    for new_id, pieces in enumerate(mapping.pieces):
        out[new_id] = old[pieces].mean(0) if pieces else mean_all
    return out


def adapt_vocabulary(
    model: nn.Module,
    old_tokenizer: Any,
    new_tokenizer: Any,
    init: str = "mean_of_subwords",
    *,
    special_tokens: Mapping[str, str] | None = None,
    seed: int = 0,
) -> tuple[nn.Module, AdaptedRows | None]:
    """Replace ``model``'s input embedding and LM head by new ones in ``new_tokenizer``'s vocabulary, in place.

    The body is untouched. A tied model (``config.tie_word_embeddings``) stays tied (one new matrix); an untied
    one gets a new head initialised the same way from its old head. The config's ``vocab_size`` and special
    token ids become the new tokenizer's.

    Args:
        model (PreTrainedModel): a causal LM (LLaMA, GPT-2, ...; anything with ``get_input_embeddings`` and
            ``resize_token_embeddings``), float32.
        old_tokenizer: the tokenizer the model was trained with.
        new_tokenizer: the target (student) tokenizer, V_new = ``len(new_tokenizer)``.
        init (str): "random" or "mean_of_subwords" (see the module docstring).
        special_tokens (Mapping[str, str] | None): new special token -> old token (e.g. ``{"<s>": "<|endoftext|>"}``).
        seed (int): seed of the random initialisation.

    Returns:
        tuple: the model (same object) and, for "mean_of_subwords", its ``AdaptedRows``.

    Raises:
        ValueError: an unknown ``init``, or a ``special_tokens`` entry missing from a tokenizer.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    size = len(new_tokenizer)
    old_in = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    old_out = None if head is None or tied else head.weight.detach().clone()
    mapping = subword_mapping(new_tokenizer, old_tokenizer, special_tokens) if init != "random" else None
    generator = torch.Generator().manual_seed(seed)
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(_new_rows(old_in, init, mapping, size, generator))
        if old_out is not None:
            model.get_output_embeddings().weight.copy_(_new_rows(old_out, init, mapping, size, generator))
            bias = getattr(model.get_output_embeddings(), "bias", None)
            if bias is not None:
                bias.zero_()
    config = model.config
    config.vocab_size = size
    for role in ("bos", "eos", "pad"):
        setattr(config, f"{role}_token_id", getattr(new_tokenizer, f"{role}_token_id", None))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        for role in ("bos", "eos", "pad"):
            setattr(generation, f"{role}_token_id", getattr(new_tokenizer, f"{role}_token_id", None))
    return model, mapping


def freeze_body(model: nn.Module, *, train_final_norm: bool = False) -> list[str]:
    """Freeze every parameter but the input embedding and LM head (and the final norm if asked); the names trained.

    Raises:
        ValueError: ``train_final_norm`` on a model whose final norm is not found (``model.model.norm``,
            ``transformer.ln_f``).
    """
    keep = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        keep.update(id(p) for p in head.parameters())
    if train_final_norm:
        norm = _final_norm(model)
        if norm is None:
            raise ValueError(f"train_final_norm: no final norm found on {type(model).__name__}")
        keep.update(id(p) for p in norm.parameters())
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            trained.append(name)
    return trained


def untie_output_embedding(model: nn.Module) -> None:
    """Give the output embedding (LM / MLM decoder) a weight of its own, a copy of the input embedding's.

    ``config.tie_word_embeddings`` is set to False so that the saved checkpoint keeps both matrices.
    """
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """Freeze the body (``base_model``, embeddings included); train what lies outside it; the names trained.

    For a masked LM that is the MLM head: BERT's transform (dense + LayerNorm) and output bias, its decoder weight
    being tied to the frozen input embedding. Used to give all-MiniLM-L6-v2, which ships without a head, an MLM
    head on its frozen body.

    Raises:
        ValueError: nothing lies outside the body (no head to train).
    """
    body = {id(p) for p in model.base_model.parameters()}
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) not in body)
        if id(p) not in body:
            trained.append(name)
    if not trained:
        raise ValueError(f"{type(model).__name__}: every parameter belongs to the body: no head to train")
    return trained


def _final_norm(model: nn.Module) -> nn.Module | None:
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.Module):
            return obj
    return None


def trainable_parameters(model: nn.Module) -> int:
    """Number of distinct parameters with ``requires_grad`` (tied weights counted once)."""
    return sum({id(p): p.numel() for p in model.parameters() if p.requires_grad}.values())
