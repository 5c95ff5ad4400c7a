"""BLiMP minimal pairs (Warstadt et al., 2020, arXiv:1912.00582): loading and zero-shot accuracy.

A pair is answered correctly when the model gives the grammatical sentence at least the total log-probability
of the ungrammatical one, both scored from an empty context, as lm-eval's ``blimp_*`` tasks do.
Data: ``<data_root>/blimp/<paradigm>.jsonl``, one JSON object per line with ``sentence_good``, ``sentence_bad``,
``field``, ``linguistics_term``, ``UID`` and ``pairID``; the paradigms are whatever files are there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmdistill.data.root import resolve_data_root
from lmdistill.evaluation.readers import read_jsonl, require
from lmdistill.evaluation.scoring import LogitsFn, Request, loglikelihood
from lmdistill.registry import did_you_mean

__all__ = ["MinimalPair", "blimp_summary", "evaluate_blimp", "list_paradigms", "load_blimp"]

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = ("sentence_good", "sentence_bad", "field", "linguistics_term")


@dataclass(frozen=True)
class MinimalPair:
    """One BLiMP minimal pair.

    Attributes:
        paradigm (str): the file stem, e.g. "adjunct_island" (BLiMP's ``UID``).
        field (str): "morphology", "syntax", "semantics" or "syntax_semantics".
        linguistics_term (str): the phenomenon, e.g. "island_effects".
        pair_id (str): ``pairID`` within the paradigm.
        good (str): the grammatical sentence.
        bad (str): the ungrammatical sentence.
    """

    paradigm: str
    field: str
    linguistics_term: str
    pair_id: str
    good: str
    bad: str


def _blimp_dir(data_root: str | os.PathLike[str] | None) -> Path:
    folder = resolve_data_root(data_root) / "blimp"
    if not folder.is_dir():
        raise FileNotFoundError(f"BLiMP folder not found: {folder} (expected <data_root>/blimp/<paradigm>.jsonl)")
    return folder


def list_paradigms(data_root: str | os.PathLike[str] | None = None) -> list[str]:
    """Sorted names of the BLiMP paradigms found in ``<data_root>/blimp/*.jsonl``.

    Args:
        data_root (str | PathLike | None): the data root; None resolves it as
            :func:`~lmdistill.data.root.resolve_data_root` does.

    Returns:
        list[str]: file stems, e.g. ["adjunct_island", "anaphor_gender_agreement", ...] (67 for full BLiMP).

    Raises:
        FileNotFoundError: the data root or its ``blimp`` folder does not exist, or holds no ``*.jsonl``.
    """
    folder = _blimp_dir(data_root)
    names = sorted(path.stem for path in folder.glob("*.jsonl"))
    if not names:
        raise FileNotFoundError(f"no BLiMP paradigm files (*.jsonl) in {folder}")
    return names


def _pair(where: str, row: dict[str, Any], paradigm: str, index: int) -> MinimalPair:
    require(row, where, **dict.fromkeys(_REQUIRED_KEYS, str))
    return MinimalPair(
        paradigm=paradigm,
        # The release spells one paradigm's field "syntax/semantics" (principle_A_case_2), all others
        # "syntax_semantics"; one spelling keeps it a single field.
        field=row["field"].replace("/", "_"),
        linguistics_term=row["linguistics_term"],
        pair_id=str(row.get("pairID", index)),
        good=row["sentence_good"],
        bad=row["sentence_bad"],
    )


def load_blimp(
    data_root: str | os.PathLike[str] | None = None,
    paradigms: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[MinimalPair]:
    """Load BLiMP minimal pairs, the first ``limit`` of each paradigm, in paradigm then file order.

    Args:
        data_root (str | PathLike | None): the data root (holding ``blimp/``); None resolves it as
            :func:`~lmdistill.data.root.resolve_data_root` does.
        paradigms (Sequence[str] | None): paradigm names (file stems); None loads all of them.
        limit (int | None): at most this many pairs per paradigm; None loads all (1,000 each in BLiMP).

    Returns:
        list[MinimalPair]: the pairs; blank lines are skipped.

    Raises:
        FileNotFoundError: the data root or ``<data_root>/blimp`` does not exist (the message names the path).
        KeyError: an unknown paradigm name (the message suggests close names).
        ValueError: ``limit`` < 0, or a malformed row (the message names ``file:line``).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    folder = _blimp_dir(data_root)
    available = list_paradigms(data_root)
    if paradigms is None:
        names = available
    else:
        names = list(dict.fromkeys([paradigms] if isinstance(paradigms, str) else paradigms))
        for name in names:
            if name not in available:
                raise KeyError(f"Unknown BLiMP paradigm '{name}' in {folder}.{did_you_mean(name, available)}")
    pairs: list[MinimalPair] = []
    for name in names:
        rows = read_jsonl(folder / f"{name}.jsonl", limit)
        pairs.extend(_pair(where, row, name, index) for index, (where, row) in enumerate(rows))
    logger.info("loaded %d BLiMP pairs from %d paradigms in %s", len(pairs), len(names), folder)
    return pairs


def blimp_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The BLiMP view of a ``blimp`` task result (see ``lmdistill.evaluation.metrics.aggregate``).

    Returns:
        dict: ``overall`` (accuracy over all pairs in [0, 1]), ``macro_paradigm`` (mean of the per-paradigm
        accuracies), ``per_field`` ({field: accuracy}), ``per_paradigm`` ({paradigm: accuracy}), ``num_pairs``.
    """
    groups = result.get("groups", {})
    return {
        "overall": result["acc"],
        "macro_paradigm": result["macro"]["acc"],
        "per_field": {name: g["acc"] for name, g in groups.get("field", {}).items()},
        "per_paradigm": {name: g["acc"] for name, g in groups.get("paradigm", {}).items()},
        "num_pairs": result["num_items"],
    }


def evaluate_blimp(
    logits_fn: LogitsFn,
    tokenizer: Any,
    pairs: Sequence[MinimalPair],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: str | None = None,
    target_delimiter: str = " ",
) -> dict[str, Any]:
    """Zero-shot BLiMP accuracy of given pairs: a pair is correct when ``log P(good) >= log P(bad)``.

    As lm-eval's ``blimp_*`` tasks: the requests are ``("", target_delimiter + sentence)`` (scored after the
    BOS token, see :func:`~lmdistill.evaluation.scoring.loglikelihood`) and the prediction is the argmax over
    (good, bad), so a tie goes to the good sentence (lm-eval 0.4.13 takes ``np.argmax``).

    Args:
        logits_fn (PreTrainedModel | LogitsFn): the model.
        tokenizer (PreTrainedTokenizerBase): the model's tokenizer.
        pairs (Sequence[MinimalPair]): N pairs, e.g. from :func:`load_blimp`.
        batch_size (int): rows per forward pass.
        device (str | torch.device | None): where inputs go; default ``logits_fn.device``, else CPU.
        progress (str | None): if given, the description of a tqdm progress bar.
        target_delimiter (str): text put before each sentence: " " (default) as lm-eval >= 0.4; "" scores the
            sentence as written, like the BabyLM 2023 pipeline and lm-eval 0.3.

    Returns:
        dict: see :func:`blimp_summary`.

    Raises:
        ValueError: ``pairs`` is empty (or see :func:`~lmdistill.evaluation.scoring.loglikelihood`).
    """
    from lmdistill.evaluation.metrics import aggregate, score_item
    from lmdistill.evaluation.tasks import Doc, get_task

    if not pairs:
        raise ValueError("evaluate_blimp needs at least one minimal pair")
    spec = get_task("blimp")
    docs = [
        Doc(("", ""), (target_delimiter + p.good, target_delimiter + p.bad), 0, (len(p.good), len(p.bad)),
            (("field", p.field), ("paradigm", p.paradigm)))
        for p in pairs
    ]  # fmt: skip
    requests = [Request(c, t) for d in docs for c, t in zip(d.contexts, d.continuations, strict=True)]
    scores = loglikelihood(logits_fn, tokenizer, requests, batch_size=batch_size, device=device, progress=progress)
    items = [score_item(d, [scores[2 * k][0], scores[2 * k + 1][0]], spec.metrics) for k, d in enumerate(docs)]
    return blimp_summary(aggregate(spec, docs, items))
