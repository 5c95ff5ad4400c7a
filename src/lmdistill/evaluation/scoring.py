"""Log-likelihood of ``(context, continuation)`` pairs under a causal LM, with lm-evaluation-harness's contract.

The contract (lm-eval 0.4.13, ``TemplateLM.loglikelihood``/``_encode_pair`` and ``HFLM._loglikelihood_tokens``):

1. Trailing whitespace of the context moves to the continuation: the word-boundary space belongs to the
   continuation. Then ``whole = enc(context + continuation)``, ``ctx = enc(context)`` and the continuation's
   tokens are ``whole[len(ctx):]``. ``enc`` is the tokenizer with its default special tokens, except for a
   string that already starts with the prefix token's text.
2. An empty context is scored after the prefix token (BOS, else EOS): ``ctx = [prefix]`` and ``cont =
   enc(continuation, add_special_tokens=False)``; if that already starts with the prefix token, its first token
   is the context instead.
3. The input is ``(ctx + cont)[-(window + 1):][:-1]``: a pair longer than the window is cut from the left
   (logged as a warning); the score is the sum of ``log p(token | everything before it)`` over the last
   ``len(cont)`` tokens, and ``is_greedy`` says whether each of them is the argmax.

What makes :func:`loglikelihood` fast (results equal, see ``benchmarks/eval_speed.py``): all pairs are tokenized
in a few batched calls; pairs whose inputs are identical (e.g. the one-token answers " A".." D" of one MMLU
question) share one row; rows are sorted by length and right-padded (causal attention makes padding invisible,
as in lm-eval, so no mask is needed); and for a Hugging Face model the LM head and log-softmax run only on the
continuation positions instead of on every position (``(N, V)`` instead of ``(B, T, V)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "HFLogitsFn",
    "LogitsFn",
    "Request",
    "encode_requests",
    "hf_logits_fn",
    "loglikelihood",
    "prefix_token_id",
    "score_texts",
]

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``logits_fn(input_ids (B, T) long, attention_mask (B, T) long) -> logits (B, T, V)``.

Optional attributes read by :func:`loglikelihood`: ``max_length`` (the model window in tokens), ``device``, and
``select_logits(input_ids (B, T), rows (N,), cols (N,)) -> logits (N, V)`` for a faster path.
"""


@dataclass(frozen=True)
class Request:
    """One log-likelihood request, as lm-eval's ``Instance.args`` of a ``loglikelihood`` request.

    Attributes:
        context (str): the conditioning text; "" means "after the prefix token" (BOS, else EOS).
        continuation (str): the scored text, usually starting with the target delimiter " ".
    """

    context: str
    continuation: str


class HFLogitsFn:
    """A Hugging Face causal LM as a :data:`LogitsFn`: eval mode, no gradients, no KV cache.

    ``select_logits`` runs the transformer body on all positions but the LM head only on the selected
    ``(row, col)`` positions. It is checked once against the full forward (first call) and falls back to the
    full forward, with a warning, for a model whose head is not a plain linear map of the body's output.

    Args:
        model (PreTrainedModel): a causal LM, e.g. ``LlamaForCausalLM`` or ``GPT2LMHeadModel``.
        vocab_size (int | None): keep only the first V logit columns (a teacher whose LM head has padding rows
            past the tokenizer's length, ``vocab_rows: shared``); None: every column.

    Attributes:
        model: the wrapped model (put in eval mode).
        vocab_size (int | None): the columns kept.
        max_length (int | None): the model window: ``config.n_positions``, else ``max_position_embeddings``,
            else ``n_ctx`` (lm-eval 0.4.13's ``resolve_max_length`` order).
        device (torch.device): the device of the model's first parameter.
    """

    def __init__(self, model: Any, vocab_size: int | None = None) -> None:
        self.model = model.eval()
        self.vocab_size = vocab_size
        config = getattr(model, "config", None)
        config = getattr(config, "text_config", None) or config
        window = next((getattr(config, k) for k in _WINDOW_KEYS if getattr(config, k, None) is not None), None)
        self.max_length: int | None = int(window) if window else None
        self.device = next(model.parameters()).device
        self._fast: bool | None = None  # None: not checked yet

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the logits (B, T, V) for ``input_ids`` (B, T) under ``attention_mask`` (B, T)."""
        return self._kept(self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits)

    def _kept(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.vocab_size is None else logits[..., : self.vocab_size]

    @torch.no_grad()
    def select_logits(self, input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) at positions ``(rows[n], cols[n])`` of right-padded ``input_ids`` (B, T), no mask."""
        if self._fast is False:
            return self(input_ids)[rows, cols]
        body, head = getattr(self.model, "base_model", None), self.model.get_output_embeddings()
        if body is None or body is self.model or not isinstance(head, torch.nn.Linear):
            self._fast = False
            return self(input_ids)[rows, cols]
        if self._fast is None:  # first call: the shortcut must give the model's own logits (checked on one row)
            one = input_ids[:1]
            shortcut = self._kept(head(body(input_ids=one, use_cache=False).last_hidden_state))
            self._fast = bool(torch.allclose(shortcut.float(), self(one).float(), atol=1e-4, rtol=1e-4))
            if not self._fast:
                logger.warning("%s: LM head is not a plain linear map; scoring with full logits", type(self.model))
                return self(input_ids)[rows, cols]
        hidden = body(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
        return self._kept(head(hidden[rows, cols]))  # (N, V)


_WINDOW_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def hf_logits_fn(model: Any, vocab_size: int | None = None) -> HFLogitsFn:
    """Wrap a Hugging Face causal LM as a :data:`LogitsFn` (eval mode, ``torch.no_grad``).

    Args:
        model (PreTrainedModel): a causal LM, e.g. ``LlamaForCausalLM`` or ``GPT2LMHeadModel``.
        vocab_size (int | None): keep only the first V logit columns (padding rows of the LM head past the
            tokenizer's length are never scored); None: every column.

    Returns:
        HFLogitsFn: ``fn(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)``, with ``max_length``,
        ``device`` and ``select_logits``, which :func:`loglikelihood` uses.
    """
    return HFLogitsFn(model, vocab_size)


def prefix_token_id(tokenizer: Any, prefix: str = "bos") -> int:
    """The token an empty context stands for.

    Args:
        tokenizer: the model's tokenizer.
        prefix (str): "bos": BOS, else EOS (lm-eval >= 0.4's ``HFLM.prefix_token_id``); "eos": EOS, else BOS
            (lm-eval 0.3's ``eot_token_id``, which the BabyLM 2023 pipeline used).

    Raises:
        ValueError: the tokenizer has neither, or an unknown ``prefix``.
    """
    if prefix not in ("bos", "eos"):
        raise ValueError(f"prefix must be 'bos' or 'eos', got {prefix!r}")
    order = ("bos_token_id", "eos_token_id") if prefix == "bos" else ("eos_token_id", "bos_token_id")
    for name in order:
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token; one is needed as the empty context")


def _encode_many(tokenizer: Any, texts: list[str], prefix_text: str) -> list[list[int]]:
    """lm-eval's ``tok_encode`` on many strings: default special tokens unless the text starts with the prefix."""
    out: list[list[int]] = [[] for _ in texts]
    for add in (True, False):
        index = [i for i, t in enumerate(texts) if (not (prefix_text and t.startswith(prefix_text))) == add and t]
        if index:
            encoded = tokenizer([texts[i] for i in index], add_special_tokens=add)["input_ids"]
            for i, ids in zip(index, encoded, strict=True):
                out[i] = list(ids)
    return out


def encode_requests(
    tokenizer: Any, requests: Sequence[Request], prefix: str = "bos"
) -> list[tuple[list[int], list[int]]]:
    """Tokenize requests into ``(context_ids, continuation_ids)`` exactly as lm-eval 0.4.13's HF backend does.

    Args:
        tokenizer (PreTrainedTokenizerBase): the model's tokenizer.
        requests (Sequence[Request]): N requests.
        prefix (str): the token an empty context stands for (``prefix_token_id``): "bos" as lm-eval 0.4.13.

    Returns:
        list[tuple[list[int], list[int]]]: N pairs; the continuation is empty only for an empty continuation.

    Raises:
        ValueError: an empty context and a tokenizer with neither BOS nor EOS.
    """
    try:
        prefix_id: int | None = prefix_token_id(tokenizer, prefix)
    except ValueError:
        if any(r.context == "" for r in requests):
            raise
        prefix_id = None
    prefix_text = tokenizer.decode([prefix_id]) if prefix_id is not None else ""
    contexts, wholes = [], []
    for r in requests:  # move the context's trailing whitespace to the continuation
        context = r.context.rstrip()
        contexts.append(context)
        wholes.append(r.context + r.continuation)
    ctx_enc = _encode_many(tokenizer, [c for c, r in zip(contexts, requests, strict=True) if r.context], prefix_text)
    whole_enc = _encode_many(tokenizer, [w for w, r in zip(wholes, requests, strict=True) if r.context], prefix_text)
    empties = [r.continuation for r in requests if not r.context]
    empty_enc = tokenizer(empties, add_special_tokens=False)["input_ids"] if empties else []
    pairs, k, e = [], 0, 0
    for r in requests:
        if r.context:
            ctx, whole = ctx_enc[k], whole_enc[k]
            pairs.append((ctx, whole[len(ctx) :]))
            k += 1
        else:
            cont = list(empty_enc[e])
            e += 1
            pairs.append((cont[:1], cont[1:]) if cont and cont[0] == prefix_id else ([prefix_id], cont))
    return pairs


def loglikelihood(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: str | None = None,
    prefix: str = "bos",
) -> list[tuple[float, bool]]:
    """Log-likelihood (natural log) of each continuation given its context, and whether it is the greedy text.

    See the module docstring for the contract (lm-eval 0.4.13). Log-softmax is taken in float32 and the
    per-token log-probabilities are summed in float64. An empty continuation scores ``(0.0, True)``.

    Args:
        model (PreTrainedModel | LogitsFn): a Hugging Face causal LM (wrapped with :func:`hf_logits_fn`) or a
            :data:`LogitsFn` such as a teachers' ensemble.
        tokenizer (PreTrainedTokenizerBase): the model's tokenizer.
        requests (Sequence[Request]): N requests.
        batch_size (int): rows (distinct inputs) per forward pass.
        max_length (int | None): model window in tokens; default ``model.max_length`` if it has one, else
            unlimited.
        device (str | torch.device | None): where inputs go; default ``model.device``, else CPU.
        progress (str | None): if given, the description of a tqdm progress bar (hidden when not a TTY).
        prefix (str): the token an empty context stands for, "bos" (lm-eval 0.4.13) or "eos" (lm-eval 0.3).

    Returns:
        list[tuple[float, bool]]: N ``(log-probability <= 0, is_greedy)``, in the order of ``requests``.

    Raises:
        ValueError: ``batch_size`` or ``max_length`` < 1; an empty context and no BOS/EOS token; logits that
            are not (B, T, V).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model, torch.nn.Module) and hasattr(model, "get_output_embeddings"):
        model = hf_logits_fn(model)
    if max_length is None:
        max_length = getattr(model, "max_length", None)
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    device = torch.device(device if device is not None else getattr(model, "device", "cpu"))
    if not requests:
        return []

    # One row per distinct input; each request scores the last len(cont) positions of its row.
    row_of_input: dict[tuple[int, ...], int] = {}
    inputs: list[tuple[int, ...]] = []
    jobs: list[tuple[int, list[int]] | None] = []  # (row, continuation targets) per request
    num_cut = 0
    for ctx, cont in encode_requests(tokenizer, requests, prefix):
        if not cont:
            jobs.append(None)
            continue
        whole = ctx + cont
        if max_length is not None and len(whole) > max_length + 1:
            whole = whole[-(max_length + 1) :]
            num_cut += 1
        key = tuple(whole[:-1])
        if key not in row_of_input:
            row_of_input[key] = len(inputs)
            inputs.append(key)
        jobs.append((row_of_input[key], cont[-len(whole) + 1 :] if len(cont) >= len(whole) else cont))
    if num_cut:
        logger.warning(
            "%d of %d requests are longer than the window of %d tokens and were cut from the left; "
            "their first tokens are not seen",
            num_cut,
            len(requests),
            max_length,
        )
    by_row: list[list[int]] = [[] for _ in inputs]
    for index, job in enumerate(jobs):
        if job is not None:
            by_row[job[0]].append(index)

    from tqdm.auto import tqdm

    results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
    order = sorted(range(len(inputs)), key=lambda r: len(inputs[r]), reverse=True)
    pad_id = 0
    with torch.no_grad(), tqdm(total=len(requests), desc=progress, disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(inputs[batch[0]])  # longest first
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            rows, cols, targets, owners = [], [], [], []
            for b, r in enumerate(batch):
                inp = inputs[r]
                input_ids[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
                for index in by_row[r]:
                    cont = jobs[index][1]  # type: ignore[index]
                    rows += [b] * len(cont)
                    cols += range(len(inp) - len(cont), len(inp))
                    targets += cont
                    owners += [index] * len(cont)
            input_ids = input_ids.to(device)
            rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
            logits = _selected_logits(model, input_ids, rows_t, cols_t)  # (N, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
            targets_t = torch.tensor(targets, device=device)
            token_lp = log_probs.gather(-1, targets_t[:, None]).squeeze(-1).double()  # (N,)
            greedy = log_probs.argmax(-1) == targets_t  # (N,)
            owners_t = torch.tensor(owners, device=device)
            sums = torch.zeros(len(requests), dtype=torch.float64, device=device).index_add_(0, owners_t, token_lp)
            misses = torch.zeros(len(requests), dtype=torch.long, device=device).index_add_(
                0, owners_t, (~greedy).long()
            )
            done = sorted(set(owners))
            for index, value, miss in zip(done, sums[done].tolist(), misses[done].tolist(), strict=True):
                if not math.isfinite(value):
                    logger.warning("request %d has a non-finite log-likelihood (%s)", index, value)
                results[index] = (float(value), miss == 0)
            bar.update(len(done))
            del logits, log_probs
    return results


def _selected_logits(model: Any, input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at ``(rows, cols)``, by the model's fast path when it has one, else from all logits."""
    select = getattr(model, "select_logits", None)
    if select is not None:
        return select(input_ids, rows, cols)
    lengths = cols.new_zeros(input_ids.shape[0]).scatter_reduce(0, rows, cols + 1, reduce="amax")
    mask = (torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]).long()
    logits = model(input_ids, mask)  # (B, T, V)
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits_fn returned shape {tuple(logits.shape)}, expected {tuple(input_ids.shape)} + (V,)")
    return logits[rows, cols]


def score_texts(
    logits_fn: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: str | None = None,
) -> list[float]:
    """Summed log-probability (natural log) of each text given an empty context: ``loglikelihood("", text)``.

    Args:
        logits_fn (PreTrainedModel | LogitsFn): the model (see :func:`loglikelihood`).
        tokenizer (PreTrainedTokenizerBase): the model's tokenizer.
        texts (Sequence[str]): N texts; an empty text scores 0.0.
        batch_size (int): rows per forward pass.
        max_length (int | None): model window in tokens (see :func:`loglikelihood`).
        device (str | torch.device | None): where inputs go.
        progress (str | None): if given, the description of a tqdm progress bar.

    Returns:
        list[float]: N log-probabilities (<= 0), in the order of ``texts``.

    Raises:
        ValueError: as :func:`loglikelihood`.
    """
    requests = [Request("", text) for text in texts]
    scored = loglikelihood(
        logits_fn, tokenizer, requests, batch_size=batch_size, max_length=max_length, device=device, progress=progress
    )
    return [value for value, _ in scored]
