"""Log-likelihood of whole texts under a causal LM, scored as lm-evaluation-harness scores an empty context.

The harness's HF backend turns a request ``("", continuation)`` into ``[prefix] + tok_encode(continuation)``,
where the prefix token is the tokenizer's BOS (else EOS), feeds all tokens but the last and sums the
log-probabilities of every continuation token given the ones before it. :func:`score_texts` does the same,
in length-sorted, right-padded batches; causal attention makes the padding invisible to the real tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["HFLogitsFn", "LogitsFn", "hf_logits_fn", "score_texts"]

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``logits_fn(input_ids (B, T) long, attention_mask (B, T) long) -> logits (B, T, V)``.

Optional attributes read by :func:`score_texts`: ``max_length`` (the model window in tokens) and ``device``.
"""


class HFLogitsFn:
    """A Hugging Face causal LM as a :data:`LogitsFn`: eval mode, no gradients, no KV cache.

    Args:
        model (PreTrainedModel): a causal LM whose forward takes ``input_ids`` and ``attention_mask``.

    Attributes:
        model: the wrapped model (put in eval mode).
        max_length (int | None): the model window, from ``config.max_position_embeddings`` (``n_positions``).
        device (torch.device): the device of the model's first parameter.
    """

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        config = getattr(model, "config", None)
        window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length: int | None = int(window) if window else None
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the logits (B, T, V) for ``input_ids`` (B, T) under ``attention_mask`` (B, T)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def hf_logits_fn(model: Any) -> HFLogitsFn:
    """Wrap a Hugging Face causal LM as a :data:`LogitsFn` (eval mode, ``torch.no_grad``).

    Args:
        model (PreTrainedModel): a causal LM, e.g. ``LlamaForCausalLM`` or ``GPT2LMHeadModel``.

    Returns:
        HFLogitsFn: ``fn(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)``, with ``max_length``
        and ``device`` attributes that :func:`score_texts` uses as defaults.
    """
    return HFLogitsFn(model)


def _prefix_token_id(tokenizer: Any) -> int:
    for name in ("bos_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token; one is needed as the empty context")


def score_texts(
    logits_fn: LogitsFn,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: str | None = None,
) -> list[float]:
    """Summed log-probability (natural log) of each text given an empty context.

    Each text becomes ``[p] + tokenizer(text, add_special_tokens=False).input_ids`` with ``p`` the BOS id (else
    EOS), as in lm-evaluation-harness's ``loglikelihood("", text)``; every text token is scored given all the
    tokens before it. Texts are sorted by length (longest first), cut into batches, right-padded with the pad
    id (EOS, else 0, when the tokenizer has none) and an attention mask; log-softmax is taken in float32 and
    the per-token log-probabilities are summed in float64. An empty text scores 0.0.

    A text of ``n`` tokens needs a window of ``n`` (the last token is never an input). Longer texts keep their
    last ``max_length + 1`` tokens, as the harness does: the cut-off tokens are neither seen nor scored.

    Args:
        logits_fn (LogitsFn): ``(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)``.
        tokenizer (PreTrainedTokenizerBase): the model's tokenizer.
        texts (Sequence[str]): N texts.
        batch_size (int): texts per forward pass.
        max_length (int | None): model window in tokens; default ``logits_fn.max_length`` if it has one,
            else unlimited.
        device (str | torch.device | None): where inputs go; default ``logits_fn.device``, else CPU.
        progress (str | None): if given, the description of a tqdm progress bar (hidden when not a TTY).

    Returns:
        list[float]: N log-probabilities (<= 0), in the order of ``texts``.

    Raises:
        ValueError: ``batch_size`` or ``max_length`` < 1; the tokenizer has no BOS and no EOS token; the
            logits are not (B, T, V).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length is None:
        max_length = getattr(logits_fn, "max_length", None)
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    device = torch.device(device if device is not None else getattr(logits_fn, "device", "cpu"))
    texts = list(texts)
    if not texts:
        return []
    prefix = _prefix_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    sequences: list[list[int]] = []
    num_cut = 0
    for ids in encoded:
        seq = [prefix, *ids]
        if max_length is not None and len(seq) > max_length + 1:
            seq = seq[-(max_length + 1) :]
            num_cut += 1
        sequences.append(seq)
    if num_cut:
        logger.warning(
            "%d of %d texts are longer than the window of %d tokens and were cut from the left; "
            "their first tokens are not scored",
            num_cut,
            len(texts),
            max_length,
        )

    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(sequences[i]), reverse=True)
    scores = [0.0] * len(texts)
    with torch.no_grad(), tqdm(total=len(texts), desc=progress, disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            batch = [i for i in order[start : start + batch_size] if len(sequences[i]) > 1]
            bar.update(min(batch_size, len(order) - start))
            if not batch:  # only empty texts left: they keep 0.0
                continue
            width = len(sequences[batch[0]]) - 1  # longest first
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            targets = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = sequences[i]
                n = len(seq) - 1
                input_ids[row, :n] = torch.tensor(seq[:-1])
                targets[row, :n] = torch.tensor(seq[1:])
                mask[row, :n] = 1
            input_ids, targets, mask = input_ids.to(device), targets.to(device), mask.to(device)
            logits = logits_fn(input_ids, mask)  # (B, T, V)
            if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
                raise ValueError(
                    f"logits_fn returned shape {tuple(logits.shape)}, expected ({len(batch)}, {width}, V)"
                )
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
            token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
            sums = token_lp.double().masked_fill(mask == 0, 0.0).sum(-1).tolist()  # (B,)
            del logits, log_probs
            for i, value in zip(batch, sums, strict=True):
                if not math.isfinite(value):
                    logger.warning("text %d has a non-finite log-probability (%s)", i, value)
                scores[i] = float(value)
    return scores
