"""The run folder every method writes: the resolved recipe, resume checks, time across invocations, results.json.

::

    RUN/recipe.yaml        the resolved recipe; a resumed run must match it (the differing keys are named)
    RUN/invocations.jsonl  one line per ``lmdistill run`` invocation that ended (start, seconds, outcome)
    RUN/results.json       recipe, versions, data provenance, per-model results; written by the method's last stage

Under ``accelerate launch`` every process calls these functions; only rank 0 writes.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmdistill.atomic import write_json, write_text
from lmdistill.config.recipes import read_recipe_data
from lmdistill.config.schema import ConfigError, flatten, from_dict, to_dict, to_yaml

__all__ = [
    "Invocation",
    "RunFolderError",
    "check_run_folder",
    "record_recipe",
    "results_payload",
    "versions",
    "write_results",
]


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (exists without --resume, or holds a different recipe)."""


def check_run_folder(recipe: Any, run_dir: Path, resume: bool) -> None:
    """Refuse a run folder that holds another run (without ``resume``) or another recipe (with it).

    Args:
        recipe: the method's validated recipe dataclass.
        run_dir (Path): the run folder.
        resume (bool): whether the caller continues the run.

    Raises:
        RunFolderError: the folder holds a run and ``resume`` is False; its ``recipe.yaml`` differs from ``recipe``
            (every differing key is named); or ``resume`` is True and the folder is not a run folder.
    """
    saved = run_dir / "recipe.yaml"
    if saved.exists():
        if not resume:
            raise RunFolderError(
                f"run folder {run_dir} already holds a run: resume it with --resume, or choose another --run-dir"
            )
        try:
            old = flatten(to_dict(from_dict(type(recipe), read_recipe_data(saved))))
        except ConfigError as err:
            message = str(err)
            raise ConfigError(message if message.startswith(str(saved)) else f"{saved}: {message}") from None
        new = flatten(to_dict(recipe))
        diffs = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diffs:
            shown = ", ".join(f"{k} (folder {old.get(k)!r}, now {new.get(k)!r})" for k in diffs[:8])
            more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
            raise RunFolderError(
                f"{saved} differs from the recipe being resumed at: {shown}{more}; resume with the same recipe "
                "and overrides, or start a new run folder"
            )
    elif resume and run_dir.exists() and any(p.name != "tokenizer" for p in run_dir.iterdir()):
        raise RunFolderError(f"--resume: {run_dir} has no recipe.yaml, so it is not a run folder")


def record_recipe(recipe: Any, run_dir: Path) -> None:
    """Write ``RUN/recipe.yaml`` (atomically): the resolved recipe later resumes are checked against."""
    write_text(run_dir / "recipe.yaml", to_yaml(recipe))


@dataclass
class Invocation:
    """The wall time of one ``lmdistill run`` on a run folder, added to those of the earlier invocations.

    ``RUN/invocations.jsonl`` has one line per invocation that ended (finished, failed or interrupted), so a
    resumed run reports the time of all its parts, and re-running a finished run adds only its own seconds.
    """

    run_dir: Path
    started: float = field(default_factory=time.time)

    @property
    def log(self) -> Path:
        """``RUN/invocations.jsonl``."""
        return self.run_dir / "invocations.jsonl"

    def earlier(self) -> list[dict[str, Any]]:
        """The records of the invocations that ended before this one."""
        if not self.log.is_file():
            return []
        records = []
        for line in self.log.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a killed process
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("seconds"), (int, float))]

    def end(self, outcome: str) -> None:
        """Append this invocation's record (rank 0 only: the caller decides)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"start": _iso(self.started), "seconds": round(time.time() - self.started, 1), "outcome": outcome}
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def created(self) -> str:
        """When the run began: the first invocation's start."""
        earlier = self.earlier()
        return earlier[0]["start"] if earlier and "start" in earlier[0] else _iso(self.started)

    def total_seconds(self) -> float:
        """Wall time of every earlier invocation plus this one so far."""
        return round(sum(r["seconds"] for r in self.earlier()) + time.time() - self.started, 1)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def results_payload(recipe: Any, invocation: Invocation, data: dict[str, Any], models: dict[str, Any]) -> dict:
    """results.json's payload: recipe, method, when and how long (over every invocation), versions, data, models."""
    return {
        "recipe_name": recipe.name,
        "method": recipe.method,
        "recipe": to_dict(recipe),
        "created": invocation.created(),
        "wall_time_s": invocation.total_seconds(),
        "invocations": len(invocation.earlier()) + 1,
        "versions": versions(),
        "data": data,
        "models": models,
    }


def write_results(run_dir: Path, payload: dict[str, Any]) -> None:
    """``RUN/results.json`` (atomically)."""
    write_json(run_dir / "results.json", payload)


def versions() -> dict[str, str]:
    """Versions of lmdistill, Python and the libraries a result depends on, and the platform."""
    import accelerate
    import tokenizers
    import torch
    import transformers

    import lmdistill

    return {
        "lmdistill": lmdistill.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "platform": platform.platform(),
    }
