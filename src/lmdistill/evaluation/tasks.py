r"""Zero-shot tasks: data under the data root plus a small spec each, written as lm-evaluation-harness 0.4.13 has them.

Every task is multiple choice: a :class:`Doc` has one ``(context, continuation)`` request per choice and a gold
index. ``acc`` takes the choice with the highest log-likelihood; ``acc_norm`` divides each log-likelihood by the
length of the choice text in characters first (lm-eval's ``acc_norm``). Ties go to the first choice (argmax).

Each packaged task is a task file, ``lmdistill/tasks/<name>.yaml`` (format: :mod:`lmdistill.evaluation.taskfile`):

| task | data (under the data root) | lm-eval task | requests per item |
|---|---|---|---|
| blimp | blimp/<paradigm>.jsonl | blimp_<paradigm> | ``("", " " + good)``, ``("", " " + bad)`` |
| arc_easy | zero_shot/arc_easy/test.jsonl | arc_easy | ``("Question: q\nAnswer:", " " + choice)`` |
| arc_easy_validation | zero_shot/arc_easy/validation.jsonl | arc_easy on its validation split | as arc_easy |
| winogrande | zero_shot/winogrande/dev.jsonl | winogrande (partial) | ``(sentence up to option, " " + rest)`` |
| mmlu | zero_shot/mmlu/test/<subject>_test.csv | mmlu_<subject>, zero-shot | ``(description + question, " A")``.. |
| hellaswag | zero_shot/hellaswag/hellaswag_val.jsonl | hellaswag | ``(activity: context, " " + ending)`` |

Adding a task is one more such file: ``lmdistill eval --task-file my_task.yaml`` or
:func:`~lmdistill.evaluation.taskfile.register_task_file` (see the README, "Adding an evaluation task"). A task
can also be written in Python: a loader (data root -> list of :class:`Doc`) and a :class:`TaskSpec` in
:data:`TASKS`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmdistill.data.root import resolve_data_root
from lmdistill.evaluation.spec import Doc, TaskSpec
from lmdistill.evaluation.taskfile import load_packaged_tasks
from lmdistill.registry import Registry

__all__ = [
    "TASKS",
    "Doc",
    "TaskSpec",
    "get_task",
    "load_docs",
    "mmlu_subjects",
    "resolve_tasks",
    "task_data_problems",
    "task_specs",
]

TASKS: Registry[TaskSpec] = Registry("task")


def get_task(name: str) -> TaskSpec:
    """The spec registered as ``name``.

    Raises:
        KeyError: an unknown name; the message lists the known tasks and the closest matches.
    """
    return TASKS.get(name)


def load_docs(spec: TaskSpec | str, data_root: str | os.PathLike[str] | None = None, limit: int | None = None):
    """Load a task's items.

    Args:
        spec (TaskSpec | str): the task or its name.
        data_root (str | PathLike | None): the data root; None resolves it as ``resolve_data_root`` does.
        limit (int | None): the first N items of each finest sub-group (a BLiMP paradigm, an MMLU subject), or
            of the task when it has none, as lm-eval's ``--limit``; None = all.

    Returns:
        list[Doc]: the items, in file order.

    Raises:
        KeyError: an unknown task or sub-task (the message lists the known ones).
        FileNotFoundError: a missing data file (the message names the path and the data root).
        ValueError: ``limit`` < 0, or a malformed row (the message names ``file:line``).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    spec = get_task(spec) if isinstance(spec, str) else spec
    return spec.loader(resolve_data_root(data_root), spec, limit)


def resolve_tasks(tasks: Sequence[str | TaskSpec] | str) -> list[TaskSpec]:
    """Task specs from names ("blimp,arc_easy" or a list) or specs, in order, without duplicates.

    Raises:
        KeyError: an unknown task name; the message lists the known tasks.
        ValueError: no tasks.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    specs = [get_task(t) if isinstance(t, str) else t for t in tasks]
    if not specs:
        raise ValueError("no tasks to evaluate")
    return list({s.name: s for s in specs}.values())


def task_specs(config: Any) -> list[TaskSpec]:
    """The task specs of a recipe's ``evaluation`` section (``EvaluationConfig``), BLiMP options applied.

    Raises:
        KeyError: an unknown task name.
    """
    specs = resolve_tasks(config.tasks) if config.tasks else []
    subsets = tuple(config.blimp_paradigms) if config.blimp_paradigms is not None else None
    return [
        s.replace(subsets=subsets, target_delimiter=config.blimp_target_delimiter) if s.name == "blimp" else s
        for s in specs
    ]


def task_data_problems(evaluation: Any, data_root: Path) -> list[str]:
    """What is missing or malformed in the data of a recipe's evaluation tasks (empty: every task loads).

    Each task reads its first item (of each BLiMP paradigm and MMLU subject), so a missing folder or file fails
    here, before anything trains, rather than after the models are trained.
    """
    problems = []
    for spec in task_specs(evaluation):
        try:
            load_docs(spec, data_root, limit=1)
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"evaluation task {spec.name}: {err}")
    return problems


def mmlu_subjects(root: Path) -> list[str]:
    """Sorted MMLU subjects found as ``<root>/zero_shot/mmlu/test/<subject>_test.csv`` (57 in MMLU)."""
    return get_task("mmlu").definition.available_subsets(root)


for _spec in load_packaged_tasks():
    TASKS.register(_spec.name)(_spec)
