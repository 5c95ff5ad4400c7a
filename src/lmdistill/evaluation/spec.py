"""What a zero-shot task is (:class:`TaskSpec`) and what one of its items is (:class:`Doc`).

Kept apart from :mod:`lmdistill.evaluation.tasks` (the registry of tasks) so that the task-file reader
(:mod:`lmdistill.evaluation.taskfile`) and the registry can both use them without importing each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Doc", "TaskSpec"]


@dataclass(frozen=True)
class Doc:
    """One multiple-choice item.

    Attributes:
        contexts (tuple[str, ...]): the context of each choice (the same string for all but partial scoring).
        continuations (tuple[str, ...]): the scored text of each choice, target delimiter included.
        gold (int): index of the right choice.
        choice_lengths (tuple[int, ...]): characters of each choice text (without the delimiter), for acc_norm.
        groups (tuple[tuple[str, str], ...]): sub-groups it is reported in, e.g. (("field", "syntax"),
            ("paradigm", "adjunct_island")), the finest last.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choice_lengths: tuple[int, ...]
    groups: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its data, how a row becomes a :class:`Doc`, and which metrics lm-eval reports for it.

    Attributes:
        name (str): the name recipes and ``--tasks`` use.
        description (str): one line for listings and reports.
        loader (Callable): ``loader(data_root, spec, limit) -> list[Doc]``.
        metrics (tuple[str, ...]): "acc" and, where lm-eval reports it, "acc_norm".
        group_keys (tuple[str, ...]): sub-groups reported (finest last; ``limit`` applies per finest group).
        source (str): the lm-eval task(s) it reproduces.
        target_delimiter (str): put before each continuation (lm-eval's default " ").
        subsets (tuple[str, ...] | None): only these sub-tasks (BLiMP paradigms, MMLU subjects); None = all.
        origin (str): the task file it was read from ("lmdistill/tasks/<name>.yaml" for a packaged one); ""
            for a task written in Python.
        definition (TaskDefinition | None): the parsed task file
            (:class:`~lmdistill.evaluation.taskfile.TaskDefinition`); None for a task written in Python.
    """

    name: str
    description: str
    loader: Callable[[Path, TaskSpec, int | None], list[Doc]]
    metrics: tuple[str, ...] = ("acc",)
    group_keys: tuple[str, ...] = ()
    source: str = ""
    target_delimiter: str = " "
    subsets: tuple[str, ...] | None = None
    origin: str = ""
    definition: Any = None

    def replace(self, **changes: object) -> TaskSpec:
        """A copy with some fields changed, e.g. ``spec.replace(subsets=("anatomy",))``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
