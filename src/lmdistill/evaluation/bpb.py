"""Bits per UTF-8 byte (and per word, per token) of documents under a causal LM: a tokenizer-free loss.

Per-token loss depends on the tokenizer (a model with a larger vocabulary sees fewer, harder tokens), so it
cannot compare models with different tokenizers; the total negative log-likelihood of a text can, and dividing it
by a tokenizer-free length gives lm-evaluation-harness's perplexity metrics (``lm_eval/api/metrics.py``:
``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``, as its wikitext task reports them) and The Pile's
measure (Gao et al. 2020, arXiv:2101.00027, bits per UTF-8 byte):

    bits_per_byte = NLL / (ln 2 * bytes)    bits_per_word = NLL / (ln 2 * words)    nats_per_token = NLL / tokens
    byte_perplexity = exp(NLL / bytes)      word_perplexity = exp(NLL / words)

where NLL is the summed ``-ln p(token | preceding tokens)`` over every token of every document, in nats.

Long documents are scored as lm-eval 0.4.13's ``loglikelihood_rolling`` does (``get_rolling_token_windows`` with
``context_len=1``, then ``make_disjoint_window``); see :func:`bits_per_byte` for the exact rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmdistill.config import SourceConfig
from lmdistill.data.corpus import Split, load_documents
from lmdistill.evaluation.scoring import hf_logits_fn, prefix_token_id

__all__ = ["bits_per_byte", "checkpoint_bits_per_byte", "corpus_sources", "held_out_texts", "rolling_windows"]

logger = logging.getLogger(__name__)


def rolling_windows(
    tokens: Sequence[int], prefix_id: int, max_length: int | None
) -> list[tuple[list[int], list[int]]]:
    """Split one document into model inputs so that every token is predicted exactly once.

    lm-eval 0.4.13's rule (``get_rolling_token_windows(tokens, prefix, L, context_len=1)``): with window ``L``
    and ``n`` tokens ``t``, the first input is ``[prefix] + t[:min(L, n) - 1]`` and predicts ``t[:min(L, n)]``;
    then, while tokens remain, the next ``k = min(L, n - done)`` tokens ``t[done:done + k]`` are predicted by the
    input ``t[done + k - L - 1 : done + k - 1]``: always ``L`` tokens, the window filled with the text just
    before, so a full chunk's first token sees one token of the previous chunk and a short last chunk sees more.

    Args:
        tokens (Sequence[int]): the document's ``n >= 1`` token ids, without special tokens.
        prefix_id (int): the token before the first one (BOS or EOS).
        max_length (int | None): the window ``L >= 1`` in tokens; None = one window for the whole document.

    Returns:
        list[tuple[list[int], list[int]]]: ``(input_ids, targets)`` per window, ``len(targets) <= len(input_ids)
        <= L``; the last ``len(targets)`` positions of ``input_ids`` predict ``targets``. The targets of all
        windows, concatenated, are ``tokens``.
    """
    tokens = list(tokens)
    n = len(tokens)
    window = n if max_length is None else max_length
    first = min(window, n)
    out = [([prefix_id, *tokens[: first - 1]], tokens[:first])]
    done = first
    while done < n:
        end = done + min(window, n - done)
        out.append((tokens[end - window - 1 : end - 1], tokens[done:end]))
        done = end
    return out


def _as_groups(texts: Sequence[str] | Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], bool]:
    """``{source: documents}`` and whether ``texts`` was a mapping; checks for empty lists and documents."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of documents or a mapping source -> documents, not one str")
    is_mapping = isinstance(texts, Mapping)
    groups = {str(k): list(v) for k, v in texts.items()} if is_mapping else {"": list(texts)}
    if not groups or not any(groups.values()):
        raise ValueError("bits_per_byte needs at least one document; got an empty text list")
    for name, docs in groups.items():
        where = f"source {name!r}: " if is_mapping else ""
        if not docs:
            raise ValueError(f"{where}no documents; drop the source or give it at least one document")
        for index, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise TypeError(f"{where}document {index} is a {type(doc).__name__}, expected str")
            if not doc:
                raise ValueError(
                    f"{where}document {index} is empty; an empty document has no bytes to score; drop it first "
                    "(e.g. [d for d in docs if d])"
                )
    return groups, is_mapping


def _summary(counts: Sequence[tuple[float, int, int, int]]) -> dict[str, Any]:
    """The metrics of documents given as ``(nll, num_bytes, num_words, num_tokens)`` each."""
    nll = math.fsum(c[0] for c in counts)
    num_bytes, num_words, num_tokens = (sum(c[i] for c in counts) for i in (1, 2, 3))
    num_documents = len(counts)
    ln2 = math.log(2)
    return {
        "nll": nll,
        "num_bytes": num_bytes,
        "num_words": num_words,
        "num_tokens": num_tokens,
        "num_documents": num_documents,
        "bits_per_byte": nll / (ln2 * num_bytes),
        "bits_per_word": nll / (ln2 * num_words) if num_words else math.nan,
        "nats_per_token": nll / num_tokens,
        "byte_perplexity": math.exp(nll / num_bytes),
        "word_perplexity": math.exp(nll / num_words) if num_words else math.nan,
    }


def bits_per_byte(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    prefix: str = "bos",
    progress: str | None = None,
) -> dict[str, Any]:
    r"""Total NLL of documents, in nats, and its bits per UTF-8 byte, bits per word and nats per token.

    Each document is tokenized with ``add_special_tokens=False`` and scored after one prefix token, which is not
    scored itself: every document token ``t_i`` adds ``-ln p(t_i | prefix, t_<i)``. A document longer than the
    window is scored in consecutive windows by lm-eval's rolling rule (:func:`rolling_windows`): each window
    predicts its own tokens, conditioned on the text before them inside a full window of ``max_length`` tokens,
    so every token is predicted exactly once (its context starts at most ``max_length`` tokens back, and as
    little as one token back at the start of a window). Windows are sorted by length, right-padded with an
    attention mask, and run ``batch_size`` at a time; log-softmax is taken in float32 per window, sums in float64.
    Peak memory is about ``batch_size * max_length * V`` logits.

    Counts: ``num_bytes`` = ``len(doc.encode("utf-8"))``, ``num_words`` = ``len(doc.split())`` (whitespace-split,
    as ``lmdistill.data.corpus.count_words``; lm-eval's wikitext uses ``re.split(r"\s+")``, which also counts
    an empty string at a leading or trailing space), ``num_tokens`` = the document tokens scored (no prefix).

    Args:
        model (PreTrainedModel | LogitsFn): a Hugging Face causal LM (wrapped with
            :func:`~lmdistill.evaluation.scoring.hf_logits_fn`) or a :data:`~lmdistill.evaluation.scoring.LogitsFn`
            ``(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)``.
        tokenizer (PreTrainedTokenizerBase): the model's tokenizer.
        texts (Sequence[str] | Mapping[str, Sequence[str]]): documents, or ``{source name: documents}`` to also
            get the metrics per source.
        max_length (int | None): window in tokens, capped by ``model.max_length`` when the model has one; default
            ``model.max_length`` (the HF config's
            ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``), else unlimited (one window per document).
        batch_size (int): windows per forward pass.
        device (str | torch.device | None): where inputs go; default ``model.device``, else CPU.
        prefix (str): the token before each document: "bos" (BOS, else EOS; lm-eval >= 0.4) or "eos" (EOS, else
            BOS; lm-eval 0.3), as :func:`~lmdistill.evaluation.scoring.prefix_token_id`.
        progress (str | None): if given, the description of a tqdm progress bar over windows.

    Returns:
        dict: ``nll`` (float, nats), ``num_bytes``, ``num_words``, ``num_tokens``, ``num_documents``,
        ``max_length`` (the window used; None: whole documents) (int),
        ``bits_per_byte``, ``bits_per_word``, ``nats_per_token``, ``byte_perplexity``, ``word_perplexity``
        (float; the word metrics are NaN when there are no words), and, when ``texts`` is a mapping,
        ``per_source``: ``{name: the same fields}``, whose sums are the totals.

    Raises:
        ValueError: no documents (an empty list, an empty mapping or a source with none); an empty document (it
            has no bytes; rather than skip it silently, the message names it); a document that tokenizes to no
            tokens; a tokenizer with neither BOS nor EOS, or an unknown ``prefix``; ``batch_size`` or
            ``max_length`` < 1; logits that are not (B, T, V) or a NLL that is not finite.
        TypeError: ``texts`` is a single str, or a document is not a str.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups, is_mapping = _as_groups(texts)
    prefix_id = prefix_token_id(tokenizer, prefix)
    if isinstance(model, torch.nn.Module) and hasattr(model, "get_output_embeddings"):
        model = hf_logits_fn(model)
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    window = getattr(model, "max_length", None)  # the model's context: no window may be longer
    max_length = window if max_length is None else min(max_length, window) if window else max_length
    device = torch.device(device if device is not None else getattr(model, "device", "cpu"))

    docs = [(name, doc) for name, group in groups.items() for doc in group]
    encoded = tokenizer([doc for _, doc in docs], add_special_tokens=False)["input_ids"]
    windows: list[tuple[list[int], list[int], int]] = []  # (input_ids, targets, document index)
    for index, ((name, doc), tokens) in enumerate(zip(docs, encoded, strict=True)):
        if not tokens:
            where = f"source {name!r}, " if is_mapping else ""
            raise ValueError(f"{where}document {index} ({doc[:40]!r}) tokenizes to no tokens; nothing to score")
        windows += [(ids, targets, index) for ids, targets in rolling_windows(tokens, prefix_id, max_length)]

    from tqdm.auto import tqdm

    doc_nll = torch.zeros(len(docs), dtype=torch.float64)
    order = sorted(range(len(windows)), key=lambda w: len(windows[w][0]), reverse=True)
    pad_id = 0  # right padding, masked; under causal attention the scored positions never see it anyway
    with torch.no_grad(), tqdm(total=len(windows), desc=progress, disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            batch = [windows[w] for w in order[start : start + batch_size]]
            width = len(batch[0][0])  # longest first
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (ids, _, _) in enumerate(batch):
                input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[b, : len(ids)] = 1
            logits = model(input_ids.to(device), attention_mask.to(device))  # (B, T, V)
            if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
                raise ValueError(
                    f"model returned logits of shape {tuple(logits.shape)}, expected {tuple(input_ids.shape)} + (V,)"
                )
            for b, (ids, targets, index) in enumerate(batch):  # one window at a time: one (T, V) float32 copy
                scored = logits[b, len(ids) - len(targets) : len(ids)].float()  # (k, V)
                target_ids = torch.tensor(targets, dtype=torch.long, device=scored.device)
                nll = F.cross_entropy(scored, target_ids, reduction="none")  # (k,) nats, float32 log-softmax
                doc_nll[index] += nll.double().sum().item()
            bar.update(len(batch))
            del logits

    values = doc_nll.tolist()
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the NLL of document(s) {bad[:5]} is not finite: the model gave a token probability 0")
    counts = [
        (value, len(doc.encode("utf-8")), len(doc.split()), len(tokens))
        for value, (_, doc), tokens in zip(values, docs, encoded, strict=True)
    ]
    result = _summary(counts)
    if is_mapping:
        names = [name for name, _ in docs]
        result["per_source"] = {
            name: _summary([c for c, owner in zip(counts, names, strict=True) if owner == name]) for name in groups
        }
    result["max_length"] = max_length
    return result


def held_out_texts(
    data_root: str | Path,
    sources: Sequence[str | SourceConfig],
    split: Split = "dev",
    max_bytes_per_source: int | None = 20_000,
) -> dict[str, list[str]]:
    """Whole held-out documents per corpus source, read and cleaned as training reads them.

    Documents come from :func:`lmdistill.data.corpus.load_documents` (``<data_root>/corpus/<source>/<split>.txt``,
    the source's cleaning rule, blank lines between documents). They are taken whole, in file order, while the
    source's UTF-8 total stays within ``max_bytes_per_source``; a source whose first document alone is larger
    gives that document's first whole lines that fit (at least one line; logged), so no source is left empty and
    no source exceeds the budget by more than one line.

    Args:
        data_root (str | Path): folder holding ``corpus/``.
        sources (Sequence[str | SourceConfig]): source names (cleaned by the rule named after them) or configs
            (their ``cleaning``, and ``dev_max_words``/``max_words`` applied first).
        split (str): "dev" (default) or "train".
        max_bytes_per_source (int | None): byte budget per source; None = every document.

    Returns:
        dict[str, list[str]]: ``{source name: documents}`` in the order of ``sources``, ready for
        :func:`bits_per_byte`.

    Raises:
        ValueError: no sources, a source named twice, or ``max_bytes_per_source`` < 1; and as ``load_documents``.
        FileNotFoundError: a missing corpus file (the message names the path and the sources that exist).
        KeyError: an unknown cleaning rule.
    """
    if max_bytes_per_source is not None and max_bytes_per_source < 1:
        raise ValueError(f"max_bytes_per_source must be >= 1 or None, got {max_bytes_per_source}")
    configs = [s if isinstance(s, SourceConfig) else SourceConfig(name=s) for s in sources]
    names = [c.name for c in configs]
    if not configs:
        raise ValueError("held_out_texts needs at least one source")
    if len(set(names)) != len(names):
        raise ValueError(f"a source is named twice: {names}")
    out: dict[str, list[str]] = {}
    for config in configs:
        documents = load_documents(Path(data_root), config, split)
        if max_bytes_per_source is None:
            out[config.name] = documents
            continue
        kept, used = [], 0
        for doc in documents:
            size = len(doc.encode("utf-8"))
            if used + size > max_bytes_per_source:
                break
            kept.append(doc)
            used += size
        if not kept and documents:  # the first document alone is over the budget: its first lines that fit
            lines = documents[0].split("\n")
            head = lines[0]
            for line in lines[1:]:
                if len((head + "\n" + line).encode("utf-8")) > max_bytes_per_source:
                    break
                head += "\n" + line
            kept = [head]
            logger.info(
                "%s/%s: the first document (%d bytes) is over the budget of %d bytes; taking its first %d bytes "
                "(whole lines, at least one)",
                config.name,
                split,
                len(documents[0].encode("utf-8")),
                max_bytes_per_source,
                len(head.encode("utf-8")),
            )
        out[config.name] = kept
    return out


def corpus_sources(data_root: str | Path) -> list[str]:
    """The corpus sources under a data root (``corpus/<source>/``), sorted.

    Raises:
        FileNotFoundError: the data root has no ``corpus/`` folder.
    """
    folder = Path(data_root) / "corpus"
    if not folder.is_dir():
        raise FileNotFoundError(f"no corpus folder under the data root: {folder}")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def checkpoint_bits_per_byte(
    model_dirs: Sequence[str | Path],
    data_root: str | Path,
    output_dir: str | Path,
    *,
    sources: Sequence[str] | None = None,
    max_bytes_per_source: int = 20_000,
    max_length: int | None = 1024,
    batch_size: int = 8,
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``lmdistill eval --bits-per-byte``: bits per byte of held-out corpus text for checkpoint folders.

    Each model is scored in its own tokenizer on the same documents (``held_out_texts``, dev split), in windows of
    at most ``max_length`` tokens (capped by the model's context); ``OUT/<model>/bits_per_byte.json`` keeps each
    result (written atomically).

    Returns:
        dict: model folder name -> ``bits_per_byte``'s result (with ``per_source``).

    Raises:
        FileNotFoundError: a missing corpus file or checkpoint folder.
    """
    from lmdistill.atomic import write_json
    from lmdistill.distributed import default_device
    from lmdistill.models import load_model, load_model_tokenizer

    texts = held_out_texts(data_root, list(sources or corpus_sources(data_root)), "dev", max_bytes_per_source)
    results = {}
    for folder in model_dirs:
        folder = Path(folder)
        model = load_model(folder).eval()
        tokenizer = load_model_tokenizer(folder)
        target = torch.device(device) if device else default_device()
        result = bits_per_byte(
            model.to(target), tokenizer, texts, max_length=max_length, batch_size=batch_size, device=target,
            progress=f"bits/byte {folder.name}",
        )  # fmt: skip
        write_json(Path(output_dir) / folder.name / "bits_per_byte.json", result)
        results[folder.name] = result
    return results
