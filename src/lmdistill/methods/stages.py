"""Stages every method can use: prepare a run, corpus data, train or load a model, evaluate a model.

Preparing checks the run folder, then builds the data on rank 0 first; a trained model is a resumable stage of
its own; an evaluation is cached per model, keyed by its weights.

Each stage is a function of the recipe's sections and the run folder; a method's ``run`` calls them in its order.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lmdistill.atomic import write_json
from lmdistill.config.sections import DataConfig, EvaluationConfig, ModelConfig, TokenizerConfig, TrainConfig
from lmdistill.data.blocks import BlockDataset, dev_block_indices, dev_blocks
from lmdistill.data.corpus import file_sha256, load_corpus
from lmdistill.data.root import resolve_data_root
from lmdistill.data.tokenizer import (
    SPECIAL_ROLES,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)
from lmdistill.data.tokens import tokenize_documents
from lmdistill.distributed import process_state
from lmdistill.evaluation.runner import evaluate_tasks
from lmdistill.evaluation.tasks import task_data_problems as evaluation_data_problems
from lmdistill.evaluation.tasks import task_specs
from lmdistill.losses.objective import DistillationObjective
from lmdistill.methods.runfolder import check_run_folder, clear_record, record_recipe, remove_stale_temporaries
from lmdistill.models import build_model, count_parameters, family_of, load_model, load_model_tokenizer
from lmdistill.training import evaluate_dev_loss, train
from lmdistill.vocabulary import embedding_rows, kept_columns, vocabulary_mismatch

__all__ = [
    "CORPUS_NOTE",
    "CorpusData",
    "check_model_path",
    "check_same_tokenizer",
    "check_vocab_size",
    "corpus_file_hashes",
    "default_cache_dir",
    "evaluate_model",
    "evaluation_data_problems",
    "prepare_corpus",
    "prepare_corpus_run",
    "prepare_run",
    "read_training_json",
    "pretrained_model_stage",
    "tokenizer_difference",
    "train_model_stage",
]

log = logging.getLogger(__name__)
D = TypeVar("D")

CORPUS_NOTE = (
    "The training text is a BabyLM-style mixture of public English sources (child-directed speech, fiction, news, "
    "dialogue, reviews), not the BabyLM corpus itself, which could not be obtained offline; numbers are not "
    "directly comparable with BabyLM leaderboards."
)
DEV_RULE = "dev_max_blocks blocks evenly spaced over the dev split (each source in proportion to its dev tokens)"


def default_cache_dir() -> Path:
    """Token cache folder: ``LMDISTILL_CACHE``, else ``~/.cache/lmdistill``."""
    return Path(os.environ.get("LMDISTILL_CACHE", Path.home() / ".cache" / "lmdistill"))


def prepare_run(
    recipe: Any,
    run_dir: Path,
    data_root: str | Path | None,
    resume: bool,
    prepare_data: Callable[[Path], D],
    data_files: Callable[[Path], dict[str, str | None]] | None = None,
) -> tuple[Path, D]:
    """Check the run folder, prepare the data (rank 0 first, the others then read its caches), record the recipe.

    The folder's record (``RUN/run.json``, then ``RUN/recipe.yaml``) is written only once the data are prepared,
    so a run that fails on bad data leaves none; a folder whose stages have produced nothing yet starts again
    with this recipe and data (``check_run_folder``).

    Args:
        recipe: the method's validated recipe.
        run_dir (Path): the run folder.
        data_root (str | Path | None): the data root (``resolve_data_root``).
        resume (bool): continue the run in ``run_dir``.
        prepare_data (Callable[[Path], D]): the data root -> the method's data.
        data_files (Callable | None): the data root -> SHA-256 of every data file the recipe reads, by path
            relative to the root (None: missing); recorded when the run starts and checked on every resume.

    Returns:
        tuple: the data root and ``prepare_data``'s result.

    Raises:
        RunFolderError: the folder holds another run (without ``resume``), another recipe or other data.
    """
    state = process_state()
    root = resolve_data_root(data_root)
    recorded = (run_dir / "recipe.yaml").exists()
    files_now = data_files(root) if data_files is not None and recorded else None
    start_again = check_run_folder(recipe, run_dir, resume, files_now)
    state.wait_for_everyone()  # every rank has read the folder before rank 0 changes it
    remove_stale_temporaries(run_dir)  # rank 0 under the folder's lock: half-written files of a killed process
    with state.main_process_first():  # the other ranks then load rank 0's tokenizer and token cache
        if start_again and state.is_main_process:
            clear_record(run_dir)  # so that the tokenizer of the earlier recipe or data is not reused
        data = prepare_data(root)
        if state.is_main_process:  # only now: a run that fails on bad data can simply be re-run
            if (files_now is None or start_again) and data_files is not None:
                files_now = data_files(root)
            record_recipe(recipe, run_dir, files_now)  # a folder that has its record keeps it
    return root, data


def prepare_corpus_run(
    recipe: Any, run_dir: Path, data_root: Any, resume: bool, cache_dir: Any
) -> tuple[Path, CorpusData]:
    """``prepare_run`` for a corpus recipe (``data``, ``tokenizer``, ``seed``): the corpus files hashed once.

    Returns:
        tuple: the data root and the ``CorpusData`` (run tokenizer, blocks, dev blocks, provenance).
    """
    hashes: dict[Path, dict[str, str | None]] = {}

    def file_hashes(root: Path) -> dict[str, str | None]:  # hashed once: for the resume check and for results
        if root not in hashes:
            hashes[root] = corpus_file_hashes(root, recipe.data.sources)
        return hashes[root]

    return prepare_run(
        recipe,
        run_dir,
        data_root,
        resume,
        lambda root: prepare_corpus(
            recipe.data, recipe.tokenizer, recipe.seed, run_dir, root, cache_dir, file_hashes=file_hashes(root)
        ),
        file_hashes,
    )


def corpus_file_hashes(data_root: Path, sources: list) -> dict[str, str | None]:
    """SHA-256 of each corpus file (train and dev) of ``sources``, by path relative to the data root.

    The keys are those of ``CorpusData.info["files"]``; a missing file is None (reading it reports it).
    """
    hashes: dict[str, str | None] = {}
    for s in sources:
        for split in ("train", "dev"):
            name = f"corpus/{s.name}/{split}.txt"
            path = Path(data_root) / name
            hashes[name] = file_sha256(path) if path.is_file() else None
    return hashes


@dataclass
class CorpusData:
    """A corpus recipe's data: the run's tokenizer, training blocks, fixed dev blocks and their provenance."""

    tokenizer: PreTrainedTokenizerBase
    train: BlockDataset
    dev: torch.Tensor
    info: dict[str, Any]


def prepare_corpus(
    data_cfg: DataConfig,
    tokenizer_cfg: TokenizerConfig,
    seed: int,
    run_dir: Path,
    data_root: Path,
    cache_dir: str | Path | None,
    file_hashes: dict[str, str | None] | None = None,
) -> CorpusData:
    """Read the corpus, train (or reuse) the run's BPE tokenizer, tokenize, cut training and dev blocks.

    Every document is ``<s> ... </s>`` in the token stream. The dev subset takes ``dev_max_blocks`` blocks evenly
    spaced over the dev split (``DEV_RULE``); how many come from each source is recorded. ``file_hashes`` are the
    corpus files' SHA-256 if the caller has them already (``corpus_file_hashes``); else they are computed here.

    Raises:
        FileNotFoundError, ValueError: a missing or empty corpus file, a dev split shorter than one block.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    sources = data_cfg.sources
    train_docs = load_corpus(data_root, sources, "train")
    tok_dir = run_dir / "tokenizer"
    # reuse only a tokenizer of this recipe: a failed first attempt may have left one for other settings
    if (run_dir / "recipe.yaml").exists() and (tok_dir / "tokenizer.json").exists():
        tokenizer = load_tokenizer(tok_dir)
    else:
        if tokenizer_cfg.pretrained:
            tokenizer = _pretrained_tokenizer(tokenizer_cfg.pretrained)
        else:
            log.info("training a %d-token BPE tokenizer on %d documents", tokenizer_cfg.vocab_size, len(train_docs))
            tokenizer = train_tokenizer(train_docs, tokenizer_cfg.vocab_size, tokenizer_cfg.min_frequency)
        save_tokenizer(tokenizer, tok_dir)
        tokenizer = load_tokenizer(tok_dir)
    tokenizer.model_max_length = data_cfg.block_size
    train_tokens = tokenize_documents(train_docs, tokenizer, cache / "tokens", "train")
    dev_parts = [
        tokenize_documents(load_corpus(data_root, [s], "dev"), tokenizer, cache / "tokens", f"dev-{s.name}")
        for s in sources
    ]
    dev_tokens = np.concatenate([np.asarray(p) for p in dev_parts])
    names = [s.name for s in sources]
    blocks = BlockDataset(
        train_tokens,
        data_cfg.block_size,
        seed=seed,
        random_offset=data_cfg.random_offset,
        split="train",
        sources=names,
    )
    dev = dev_blocks(dev_tokens, data_cfg.block_size, data_cfg.dev_max_blocks, sources=names)
    files = file_hashes if file_hashes is not None else corpus_file_hashes(data_root, sources)
    info = {
        "root": str(data_root),
        "files": files,
        "train_tokens": int(len(train_tokens)),
        "dev_tokens": int(len(dev_tokens)),
        "num_train_blocks": len(blocks),
        "num_dev_blocks": int(len(dev)),
        "dev_rule": DEV_RULE if data_cfg.dev_max_blocks else "every dev block",
        "dev_blocks_per_source": _blocks_per_source(dev_parts, sources, data_cfg),
        "document_format": "<s> text </s>",
        "vocab_size": len(tokenizer),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "corpus_note": CORPUS_NOTE,
    }
    log.info("data: %d train tokens (%d blocks), %d dev blocks", len(train_tokens), len(blocks), len(dev))
    return CorpusData(tokenizer, blocks, dev, info)


def _pretrained_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A pretrained tokenizer (folder, ``package:NAME`` or Hub id) with pad and bos filled from eos if missing.

    Raises:
        ValueError: it has no eos token (documents end with one).
    """
    from transformers import AutoTokenizer

    from lmdistill.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer.pretrained {path}: the tokenizer has no eos token to end documents with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    log.info("using the pretrained tokenizer %s (%d tokens)", path, len(tokenizer))
    return tokenizer


def _blocks_per_source(dev_parts: list[np.ndarray], sources: list, data_cfg: DataConfig) -> dict[str, int]:
    """How many of the chosen dev blocks start in each source's part of the dev split."""
    size = data_cfg.block_size
    num = sum(len(p) for p in dev_parts) // size
    chosen = np.arange(num)
    if data_cfg.dev_max_blocks is not None and data_cfg.dev_max_blocks < num:
        chosen = dev_block_indices(num, data_cfg.dev_max_blocks)
    bounds = np.cumsum([len(p) for p in dev_parts])
    owner = np.searchsorted(bounds, chosen * size, side="right")
    return {s.name: int((owner == i).sum()) for i, s in enumerate(sources)}


def train_model_stage(
    name: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: CorpusData,
    seed: int,
    run_dir: Path,
    objective: DistillationObjective,
    teacher: Any,
    resume: bool,
    feature_teacher: Any = None,
) -> dict[str, Any]:
    """Train a model as the stage ``RUN/models/<name>/`` (or load it when ``final/`` is there already).

    ``teacher`` and ``feature_teacher`` are ``lmdistill.training.train``'s.

    Returns:
        dict: ``model`` (the trained model, loaded from ``final/``) and ``entry`` (results.json's record: family,
        architecture, parameters, dev losses, training time over every invocation, metrics file).
    """
    stage = run_dir / "models" / name
    final = stage / "final"
    tok = data.tokenizer
    if (final / "config.json").exists():
        log.info("%s: already trained (%s)", name, final)
        model = load_model(final)
        record = read_training_json(final)
        dev_losses, train_time = record.get("dev_losses", []), record.get("train_time_s")
    else:
        torch.manual_seed(seed)
        model = build_model(
            model_cfg,
            vocab_size=len(tok),
            block_size=data.train.block_size,
            bos_id=tok.bos_token_id,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
        )
        log.info("%s: %s, %s parameters", name, model_cfg.arch, f"{count_parameters(model):,}")
        result = train(
            model,
            data.train,
            data.dev,
            train_cfg,
            stage,
            objective=objective,
            teacher=teacher,
            feature_teacher=feature_teacher,
            tokenizer=tok,
            resume=resume,
            desc=name,
        )
        model = load_model(result.final_dir)
        dev_losses, train_time = result.dev_losses, result.train_time_s
    return {
        "model": model,
        "entry": {
            "family": objective.family.name,
            "arch": model.config.model_type,
            "num_parameters": count_parameters(model),
            "dev_loss": dev_losses[-1] if dev_losses else None,
            "dev_losses": dev_losses,
            "train_time_s": train_time,
            "metrics_file": f"models/{name}/metrics.jsonl",
        },
    }


def read_training_json(final: Path) -> dict[str, Any]:
    """A trained stage's ``final/training.json`` (steps, dev losses, training time); ``{}`` when there is none."""
    path = final / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def pretrained_model_stage(
    name: str, model_cfg: ModelConfig, data: CorpusData, device: torch.device, vocab_rows: str = "exact"
) -> dict:
    """Load a model given by ``model.path`` (no training), check its tokenizer and rows against the run's, dev loss.

    ``vocab_rows`` "shared" accepts an embedding / LM head with padding rows past the run tokenizer's length V
    (``check_vocab_size``); the dev loss then sees the first V columns of its logits, as the student does.

    Raises:
        VocabularyMismatchError: its tokenizer differs from the run's (``check_same_tokenizer``), or its rows do
            not fit ``vocab_rows`` (``check_vocab_size``).
        FileNotFoundError: the path is not a checkpoint (or the GGUF file is missing).
    """
    path = model_cfg.path
    _check_saved_tokenizer(name, model_cfg, data)
    model = load_model(path, family=model_cfg.family, gguf_file=model_cfg.gguf_file).to(device).eval()
    family = family_of(model)
    v = check_vocab_size(name, model, data, vocab_rows)
    dev_loss = evaluate_dev_loss(
        lambda b: model(input_ids=b.input_ids.to(device)).logits[..., :v], data.dev, family=family
    )
    entry = {
        "family": family.name,
        "arch": model.config.model_type,
        "num_parameters": count_parameters(model),
        "dev_loss": dev_loss,
        "dev_losses": [],
        "train_time_s": None,
        "metrics_file": None,
        "path": str(path),
    }
    if vocab_rows == "shared":
        entry.update(vocab_rows="shared", embedding_rows=embedding_rows(model))
    return {"model": model, "entry": entry}


def check_model_path(
    name: str, model_cfg: ModelConfig, data: CorpusData | None = None, vocab_rows: str = "exact"
) -> None:
    """A model's ``model.path`` must exist; with ``data`` it must also carry the run's tokenizer and rows.

    A local path is checked here, a Hub id when it loads. ``data`` is given for a model loaded by path (used as it
    is, or trained further), which must share the run's tokenizer (``_check_saved_tokenizer``) and, when a local
    ``config.json`` says its ``vocab_size``, have rows that fit ``vocab_rows`` (checked again on the loaded model by
    ``check_vocab_size``): a mismatch fails before any model trains.

    Raises:
        FileNotFoundError: the local path does not exist (naming the model and the path).
        ValueError: its tokenizer is missing.
        VocabularyMismatchError: its tokenizer differs from the run's, or its rows do not fit.
    """
    path = str(model_cfg.path)
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        raise FileNotFoundError(
            f"{name}: model.path {path} does not exist: point it at a checkpoint folder (config.json and weights, "
            "with the run's tokenizer files for a model used as it is) or at a Hugging Face Hub id"
        )
    if data is not None:
        _check_saved_tokenizer(name, model_cfg, data)
        config = Path(path).expanduser() / "config.json"
        if model_cfg.gguf_file is None and config.is_file():
            saved = json.loads(config.read_text(encoding="utf-8"))
            rows = saved.get("vocab_size") or (saved.get("text_config") or {}).get("vocab_size")
            if isinstance(rows, int):
                kept_columns(f"{name} ({path})", rows, len(data.tokenizer), vocab_rows)


def _check_saved_tokenizer(name: str, model_cfg: ModelConfig, data: CorpusData) -> None:
    """A model loaded by path must carry the run's tokenizer; one saved without tokenizer files is refused."""
    check_model_path(name, model_cfg)
    try:
        saved = load_model_tokenizer(model_cfg.path, gguf_file=model_cfg.gguf_file)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise ValueError(
            f"{name}: {model_cfg.path} has no tokenizer to compare with this run's ({err}); a checkpoint folder "
            "such as checkpoints/step-N/ holds none: point model.path at a final/ folder, or copy the run's "
            "tokenizer/ files beside the weights"
        ) from None
    check_same_tokenizer(f"{name} ({model_cfg.path})", saved, "this run", data.tokenizer)


def check_same_tokenizer(name_a: str, tok_a: Any, name_b: str, tok_b: Any) -> None:
    """The one check that two models share a tokenizer: same vocabulary, specials and merges (fingerprint).

    Raises:
        VocabularyMismatchError: naming both, their lengths and what differs (a special token, the first id whose
            token differs, tokens past the other's length, or else the merges / normalisation).
    """
    if tokenizer_fingerprint(tok_a) == tokenizer_fingerprint(tok_b):
        return
    raise vocabulary_mismatch(
        f"the tokenizer of {name_a}",
        len(tok_a),
        "tokens",
        f"the tokenizer of {name_b}",
        len(tok_b),
        "tokens",
        detail=tokenizer_difference(name_a, tok_a, name_b, tok_b),
    )


def tokenizer_difference(name_a: str, tok_a: Any, name_b: str, tok_b: Any) -> str:
    """What differs between two tokenizers, in words: special tokens, then ids compared one by one.

    Every id below the shorter length is compared (the token it decodes to in each); tokens of the longer one past
    that length are real tokens the other lacks (an example is named). Same tokens and specials: the merges or the
    normalisation differ.
    """
    diffs = []
    for role in SPECIAL_ROLES:
        a, b = getattr(tok_a, role, None), getattr(tok_b, role, None)
        if a != b:
            diffs.append(f"{role} {a!r} vs {b!r}")
    ids_a = {i: t for t, i in tok_a.get_vocab().items()}
    ids_b = {i: t for t, i in tok_b.get_vocab().items()}
    shared = min(len(tok_a), len(tok_b))
    moved = [i for i in range(shared) if ids_a.get(i) != ids_b.get(i)]
    if moved:
        i = moved[0]
        diffs.append(
            f"{len(moved):,} of ids 0 to {shared - 1} are other tokens, e.g. id {i} is {ids_a.get(i)!r} in "
            f"{name_a} and {ids_b.get(i)!r} in {name_b}"
        )
    longer, name, other = (ids_a, name_a, name_b) if len(tok_a) > len(tok_b) else (ids_b, name_b, name_a)
    if len(tok_a) != len(tok_b):
        diffs.append(
            f"{name} has {abs(len(tok_a) - len(tok_b)):,} more tokens (ids {shared} to "
            f"{max(len(tok_a), len(tok_b)) - 1}) that {other} lacks, e.g. id {shared} {longer.get(shared)!r}"
        )
    return "; ".join(diffs) or "same tokens and special tokens, but the merges or normalisation differ"


def check_vocab_size(name: str, model: Any, data: CorpusData, vocab_rows: str = "exact") -> int:
    """A model's output vocabulary (its embedding / LM head rows) must be the run tokenizer's length V.

    With ``vocab_rows`` "shared" it may have more rows (padding, ``lmdistill.vocabulary``): its logits are then
    used through their first V columns. Its tokenizer is checked separately (``check_model_path``).

    Returns:
        int: V, the logit columns to use.

    Raises:
        VocabularyMismatchError: naming the model, both sizes and ``lmdistill adapt-teacher``.
    """
    return kept_columns(name, embedding_rows(model), len(data.tokenizer), vocab_rows)


def evaluate_model(
    name: str,
    model: Any,
    fingerprint: str,
    tokenizer: Any,
    evaluation: EvaluationConfig,
    data_root: Path,
    run_dir: Path,
) -> dict[str, Any]:
    """Every task of the recipe on one model, through the same code as ``lmdistill eval``; cached per model.

    ``RUN/models/<name>/eval.json`` keeps the results with the fingerprint of the weights they were computed from
    (``model_fingerprint``) and the scoring settings; a retrained model or other settings are evaluated again.
    """
    cached = run_dir / "models" / name / "eval.json"
    key = {
        "weights_sha256": fingerprint,
        "limit": evaluation.limit,
        "empty_context_prefix": evaluation.prefix,
        "blimp_target_delimiter": evaluation.blimp_target_delimiter,
        "blimp_paradigms": evaluation.blimp_paradigms,
    }
    stored = json.loads(cached.read_text()) if cached.exists() else {}
    done = stored.get("tasks", {}) if stored.get("key") == key else {}
    if stored and not done:
        log.info("%s: eval.json was computed for other weights or settings; evaluating again", name)
    if evaluation.task_limits:
        key["task_limits"] = evaluation.task_limits
    specs = task_specs(evaluation)
    missing = [s for s in specs if s.name not in done]
    by_limit: dict[int | None, list] = {}
    for spec in missing:  # one scoring pass per distinct limit
        by_limit.setdefault(evaluation.task_limits.get(spec.name, evaluation.limit), []).append(spec)
    for limit, group in by_limit.items():
        done.update(
            evaluate_tasks(
                model,
                tokenizer,
                group,
                data_root=data_root,
                limit=limit,
                batch_size=evaluation.batch_size,
                progress=f"eval {name}",
                empty_context_prefix=evaluation.prefix,
            )
        )
    if missing:
        write_json(cached, {"key": key, "tasks": done})
    return {s.name: done[s.name] for s in specs}
