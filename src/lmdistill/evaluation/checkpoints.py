"""``lmdistill eval``: evaluate checkpoint folders on zero-shot tasks; results.json per model, a table and a plot.

Output folder::

    OUT/<model>/results.json   what ran (model path, backend, tasks and task files, limit, versions) and each
                               task's result
    OUT/comparison.md          models x tasks, accuracy in %
    OUT/tasks.png              the same as a parallel-coordinates figure
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from lmdistill.atomic import write_json, write_text
from lmdistill.evaluation.runner import evaluate_tasks, resolve_tasks
from lmdistill.reporting.tasks import plot_tasks, task_table

__all__ = ["TOKENIZER_FILES", "check_checkpoint_folder", "evaluate_checkpoints", "model_names"]

logger = logging.getLogger(__name__)


def model_names(model_dirs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short unique names for checkpoint folders: the folder name, with parents added where two clash."""
    paths = [Path(p).resolve() for p in model_dirs]
    depth = 1
    while True:
        names = ["-".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)
"""Files that hold a tokenizer's vocabulary; a folder with none of them has no tokenizer (``tokenizer_config.json``
alone is not one: ``transformers`` 5 then builds an empty tokenizer that encodes every text to no tokens)."""


def check_checkpoint_folder(model_dir: str | os.PathLike[str]) -> None:
    """Refuse a folder that is not a Hugging Face checkpoint with its tokenizer, before any model is loaded.

    Raises:
        FileNotFoundError: no ``config.json``, or none of ``TOKENIZER_FILES`` (names the folder and what is expected).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"not a Hugging Face checkpoint folder (no config.json): {model_dir}")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer files: expected tokenizer.json (or a vocabulary file: "
            f"{', '.join(TOKENIZER_FILES[1:])}) beside config.json, as saving the tokenizer with save_pretrained "
            "writes; a run's models/<name>/final/ folders have one, checkpoints/step-N/ folders do not: evaluate "
            "final/, or copy the run's tokenizer/ files into the folder"
        )


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_checkpoint_folder(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # a truncated tokenizer.json, a missing sentencepiece, ...: one line naming the folder
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise ValueError(
            f"{model_dir}: its tokenizer files do not load ({type(err).__name__}: {reason}); expected a tokenizer "
            "saved with save_pretrained beside the model"
        ) from None
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), tokenizer


def evaluate_checkpoints(
    model_dirs: Sequence[str | os.PathLike[str]],
    tasks: Sequence[str] | str,
    *,
    output_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    backend: Literal["lmdistill", "harness"] = "lmdistill",
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate each checkpoint folder on the tasks and write results, comparison table and plot.

    Args:
        model_dirs (Sequence[str | PathLike]): Hugging Face checkpoint folders, each with its tokenizer.
        tasks (Sequence[str] | str): task names, or "blimp,arc_easy,...".
        output_dir (str | PathLike): where results go (see the module docstring).
        data_root (str | PathLike | None): the data root.
        limit (int | None): items per task / BLiMP paradigm / MMLU subject (lm-eval's ``--limit``).
        batch_size (int): rows per forward pass.
        backend (str): "lmdistill" (our scorer) or "harness" (lm-evaluation-harness, ``lmdistill[harness]``).
        device (str | None): "cpu", "cuda", ...; default CUDA when available.

    Returns:
        dict[str, dict]: model name -> task name -> task result.

    Raises:
        KeyError: an unknown task (the message lists the tasks) or backend.
        FileNotFoundError: a folder that is not a checkpoint or has no tokenizer files, or missing task data (names
            the path).
        ValueError: malformed task data (names ``file:line``); no model folders; tokenizer files that do not load.
        ImportError: ``backend="harness"`` without lm-eval installed.
    """
    import torch

    if not model_dirs:
        raise ValueError("lmdistill eval needs at least one model folder")
    if backend not in ("lmdistill", "harness"):
        raise KeyError(f"Unknown backend {backend!r}. Known: harness, lmdistill")
    specs = resolve_tasks(tasks)
    for model_dir in model_dirs:  # fail before spending time on the first model
        check_checkpoint_folder(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the user's task files (not the packaged ones) are recorded with each result: which file defined the task
    task_files = {s.name: s.origin for s in specs if s.definition is not None and not s.definition.packaged}
    out = Path(output_dir)
    evals: dict[str, dict[str, Any]] = {}
    for name, model_dir in zip(model_names(model_dirs), [Path(p) for p in model_dirs], strict=True):
        start = time.time()
        if backend == "harness":
            from lmdistill.evaluation.harness import evaluate_with_harness

            results = evaluate_with_harness(
                model_dir, specs, data_root=data_root, limit=limit, batch_size=batch_size, device=device
            )
        else:
            model, tokenizer = _load(model_dir)
            results = evaluate_tasks(
                model.to(device),
                tokenizer,
                specs,
                data_root=data_root,
                limit=limit,
                batch_size=batch_size,
                progress=f"eval {name}",
            )
        evals[name] = results
        payload = {
            "model": str(model_dir),
            "backend": backend,
            "tasks": [s.name for s in specs],
            **({"task_files": task_files} if task_files else {}),
            "limit": limit,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.time() - start, 1),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "results": results,
        }
        write_json(out / name / "results.json", payload)
        logger.info("%s: wrote %s", name, out / name / "results.json")
    write_text(out / "comparison.md", f"# Zero-shot evaluation ({backend})\n\n{task_table(evals)}")
    plot_tasks(evals, out / "tasks.png")
    return evals
