"""Model families: how each kind of model's labels align with its logits, and where its parts are.

The objective and the training loop talk to a model only through its family, so they assume no causal shift and
reach into no Hugging Face internals:

==========  ================================  ==============================================================
family      Hugging Face auto class           label alignment (targets for the logits at position t)
==========  ================================  ==============================================================
causal_lm   ``AutoModelForCausalLM``          ``labels[:, t + 1]`` (next token); -100 at the last position
masked_lm   ``AutoModelForMaskedLM``          ``labels[:, t]``, -100 except at the masked positions
seq2seq     ``AutoModelForSeq2SeqLM``         decoder ``labels[:, t]`` (the decoder's input is labels shifted
                                              right by the model's own rule)
classifier  ``AutoModelForSequenceClass.``    one label per sequence: logits (B, C) are read as (B, 1, C)
==========  ================================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FAMILIES", "IGNORE_INDEX", "ModelFamily", "family_of", "get_family", "head_rows"]

IGNORE_INDEX = -100
"""Label of positions without a target (padding, prompts, unmasked MLM positions)."""


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel and friends


@dataclass(frozen=True)
class ModelFamily:
    """One family's rules (see the module table); stateless, shared by every model of the family.

    Attributes:
        name (str): "causal_lm", "masked_lm", "seq2seq" or "classifier".
        auto_class (str): the transformers auto class that loads a checkpoint of this family.
        shift (bool): whether position t's logits predict the label at t + 1 (causal LMs).
        fused (bool): whether logits are ``output_embeddings(last hidden state)`` with nothing between, so that
            ``loss.implementation: fused`` applies.
    """

    name: str
    auto_class: str
    shift: bool = False
    fused: bool = False

    def targets(self, labels: Tensor) -> Tensor:
        """Targets aligned with the logits' positions.

        Args:
            labels (Tensor): (B, T) token ids with -100 where not supervised, or (B,) class ids (classifier).

        Returns:
            Tensor: (B, T) targets (causal: ``labels[:, t + 1]``, -100 at the last position; classifier: (B, 1)).
        """
        if self.name == "classifier":
            return labels.reshape(-1, 1)
        if self.shift:  # aligning the targets (not slicing logits[:, :-1]) avoids copying the (B, T, V) logits
            return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        return labels

    def positions(self, logits: Tensor) -> Tensor:
        """Logits with a position axis: (B, T, V) as they are; a classifier's (B, C) as (B, 1, C)."""
        return logits.unsqueeze(1) if logits.dim() == 2 else logits

    def model_inputs(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of the model's forward for a batch (labels are never passed: no HF loss).

        Args:
            model (nn.Module): the model (possibly wrapped by DDP).
            batch (Mapping): ``input_ids`` (B, T), optional ``attention_mask`` (B, T), ``labels`` and, for
                seq2seq, optional ``decoder_attention_mask``.

        Returns:
            dict: ``input_ids``, ``attention_mask`` and (seq2seq) ``decoder_input_ids`` built from the labels.
        """
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
        if self.name == "seq2seq":
            inner = _unwrap(model)
            inputs["decoder_input_ids"] = inner.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
            if batch.get("decoder_attention_mask") is not None:
                inputs["decoder_attention_mask"] = batch["decoder_attention_mask"]
        return inputs

    def forward(self, model: nn.Module, batch: Mapping[str, Any], **extras: Any) -> Any:
        """``model(**model_inputs(batch), **extras)``: the model's output (``logits`` and what extras ask for)."""
        return model(**self.model_inputs(model, batch), **extras)

    def hidden_states(self, output: Any) -> tuple[Tensor, ...] | None:
        """The L + 1 hidden states (B, T, H) the feature losses match: the decoder's for seq2seq."""
        name = "decoder_hidden_states" if self.name == "seq2seq" else "hidden_states"
        return getattr(output, name, None)

    def attentions(self, output: Any) -> tuple[Tensor, ...] | None:
        """The L attention maps (B, heads, T, T): the decoder's self-attention for seq2seq."""
        name = "decoder_attentions" if self.name == "seq2seq" else "attentions"
        return getattr(output, name, None)

    def input_embeddings(self, model: nn.Module) -> nn.Module:
        """The token embedding (``weight`` (V, H))."""
        return _unwrap(model).get_input_embeddings()

    def output_head(self, model: nn.Module) -> nn.Module | None:
        """The output embedding (LM head, ``weight`` (V, H)); None for a classifier (its head is not a vocabulary)."""
        return None if self.name == "classifier" else _unwrap(model).get_output_embeddings()

    def body(self, model: nn.Module) -> nn.Module:
        """The transformer without its head (``base_model``): its output's ``last_hidden_state`` feeds the head."""
        return _unwrap(model).base_model

    def supervised(self, labels: Tensor) -> Tensor:
        """(B, T) bool: the positions whose logits have a target (``targets(labels) != -100``)."""
        return self.targets(labels) != IGNORE_INDEX

    def supervised_targets(self, labels: Tensor) -> Tensor:
        """The targets of the supervised positions only, as (N, 1).

        They align with ``head_rows``' (N, V) logits read through ``positions`` as (N, 1, V).
        """
        targets = self.targets(labels)
        return targets[targets != IGNORE_INDEX].reshape(-1, 1)


@contextmanager
def head_rows(head: nn.Module, keep: Tensor) -> Iterator[None]:
    """Inside the block, ``head`` (an output embedding, ``weight`` (V, H)) maps only the rows ``keep`` selects.

    A forward pre-hook turns the head's (B, T, H) input into its (N, H) rows at ``keep``'s True positions (row-major
    order), so a masked LM whose logits are wanted at the 15% masked positions pays the (V, H) product only there;
    the model's ``logits`` are then (N, V). What comes before the head (BERT's transform, a final norm) still runs
    on every position.

    Args:
        head (nn.Module): the model's output embedding (``get_output_embeddings()``).
        keep (Tensor): (B, T) bool, e.g. ``family.supervised(labels)``.

    Raises:
        ValueError: inside the block, the head's input is not (B, T, H) with ``keep``'s (B, T).
    """

    def gather(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.shape[:-1] != keep.shape:
            raise ValueError(
                f"head_rows: the head's input {tuple(hidden.shape)} does not fit keep {tuple(keep.shape)}"
            )
        return (hidden[keep.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


FAMILIES: dict[str, ModelFamily] = {
    "causal_lm": ModelFamily("causal_lm", "AutoModelForCausalLM", shift=True, fused=True),
    "masked_lm": ModelFamily("masked_lm", "AutoModelForMaskedLM"),
    "seq2seq": ModelFamily("seq2seq", "AutoModelForSeq2SeqLM"),
    "classifier": ModelFamily("classifier", "AutoModelForSequenceClassification"),
}
"""The families by name (``model.family`` in a recipe)."""


def get_family(name: str) -> ModelFamily:
    """The family called ``name``.

    Raises:
        KeyError: an unknown name (the message lists the families).
    """
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a transformers model, from its class name (``...ForCausalLM``, ``GPT2LMHeadModel``, ...).

    Raises:
        ValueError: a model class that belongs to no family (the message names it).
    """
    cls = type(_unwrap(model)).__name__
    config = getattr(_unwrap(model), "config", None)
    if cls.endswith("ForSequenceClassification"):
        return FAMILIES["classifier"]
    if cls.endswith("ForMaskedLM"):
        return FAMILIES["masked_lm"]
    if getattr(config, "is_encoder_decoder", False) and cls.endswith(("ForConditionalGeneration", "Seq2SeqLM")):
        return FAMILIES["seq2seq"]
    if cls.endswith(("ForCausalLM", "LMHeadModel")):
        return FAMILIES["causal_lm"]
    raise ValueError(
        f"{cls} belongs to no model family: expected a ...ForCausalLM, ...ForMaskedLM, seq2seq "
        "...ForConditionalGeneration or ...ForSequenceClassification model"
    )
