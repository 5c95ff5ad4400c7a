r"""Zero-shot tasks written as data: a small YAML file per task (its data file, prompt, choices, gold, metrics).

The packaged tasks (``lmdistill/tasks/*.yaml``) are written this way, and a user adds one the same way, with
``lmdistill eval --task-file my_task.yaml`` or :func:`register_task_file`. This module reads task files and
registers them (the public API); :mod:`lmdistill.evaluation.taskschema` checks a file's keys and
:mod:`lmdistill.evaluation.taskdocs` reads its data into items. A file, e.g.::

    name: arc_easy
    description: ARC-Easy, test split (Clark et al. 2018)
    data: {path: zero_shot/arc_easy/test.jsonl}
    fields: {question: str, choices: dict, answerKey: str}
    context: "Question: {{question}}\nAnswer:"
    choices: choices.text
    gold: {field: answerKey, labels: choices.label}
    metrics: [acc, acc_norm]

Keys (unknown keys are errors that name the file and the key, with "did you mean"):

name (required)
    The task's name for ``--tasks`` and recipes: letters, digits, ``_``, ``-``, ``.``.
description, source
    One line for listings; which lm-eval task it reproduces.
data (required)
    ``path``: the data file, relative to the data root (``./x`` or ``../x``: relative to the task file's folder;
    absolute paths as they are). One ``{name}`` in the file name makes sub-tasks, one per matching file (MMLU's
    ``zero_shot/mmlu/test/{subject}_test.csv``): ``name`` becomes a variable of the templates and the finest
    reported group, and ``limit`` applies per sub-task. ``format``: ``jsonl``, ``json`` (one array of objects,
    or the array at the dotted path ``records``) or ``csv`` (a header line; every cell a string; ``columns``:
    the header columns it must have); default from the file's extension. ``data: PATH`` is short for
    ``data: {path: PATH}``.
fields
    ``{field: type}`` that every row must have (``str``, ``int``, ``float``, ``bool``, ``list``, ``dict``,
    ``null``, or a list of them): a row without them is an error naming ``file:line``.
filter
    A Jinja2 expression; rows for which it is false are skipped (before ``limit``), e.g. ``label != -1``.
limit
    At most this many items (per sub-task); ``--limit`` can only lower it.
subsets
    Only these sub-tasks (file names matched by the ``{name}``); default all.
scoring
    ``multiple_choice`` (default): one context, one continuation per choice (lm-eval's ``multiple_choice``).
    ``partial``: the context varies and the continuation is fixed (WinoGrande's partial scoring, lm-eval's
    "multiple inputs"): ``contexts`` replaces ``context`` and ``choices``, and ``continuation`` is the
    template of the fixed text. ``generate_until``: reserved (see below).
context
    The prompt template. Templates are Jinja2 as lm-eval renders them (``{{ question.strip() }}``,
    ``{{ choices.text[0] }}``, lm-eval's ``regex_replace`` filter), in a sandbox: see
    :mod:`lmdistill.evaluation.templates`. A missing field is an error naming the row.
choices
    The choice texts: a field (dotted path, ``choices.text``) holding a list of strings; or a list of templates,
    one per choice (``[A, B, C, D]``, ``["{{ sol1 }}", "{{ sol2 }}"]``); or ``{field: PATH, template: T}``,
    the template applied to each element of the list as ``choice``.
gold
    The right choice: an integer; or a field holding the index (an int or a string of digits); or
    ``{field: PATH, labels: L}``, the index of the field's value in ``L``, a list (``[A, B, C, D]``) or a field
    holding one (``choices.label``; ``choices`` when the gold is the answer's text).
target_delimiter
    Put before each continuation; default ``" "`` (lm-eval's).
metrics
    ``acc`` and/or ``acc_norm`` (length-normalised by characters); default ``[acc]``.
groups
    ``{group: template}``: report the items' accuracy per value of each template as well, coarsest first (the
    ``{name}`` sub-task is added as the finest), e.g. ``{field: "{{ field }}"}``.
verbalizer, generate_until, answer_parser (reserved)
    Room for the rationale tasks: label words (``verbalizer: {0: "yes", 1: "no"}``), generation
    (``scoring: generate_until`` with ``generate_until: {until: ["\n"], max_gen_toks: 64}``) and parsing the
    answer out of the generated text (``answer_parser: {regex: "answer is (.*)", group: 1}``, compared with
    ``gold``'s field by ``metrics: [exact_match]``). Their shape is checked, then loading the file raises
    :class:`NotImplementedError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import yaml

from lmdistill.evaluation.spec import TaskSpec

# defined in taskdocs and taskschema; Choices, Gold and the format's tables (KEYS, MODES, ...) are not used
# here, only importable from here as before
from lmdistill.evaluation.taskdocs import Choices, Gold, TaskDefinition  # noqa: F401
from lmdistill.evaluation.taskschema import (  # noqa: F401
    DATA_KEYS,
    FORMATS,
    KEYS,
    LM_EVAL_KEYS,
    METRICS,
    MODES,
    SCORING,
    TYPES,
    TaskFileError,
    task_from_dict,
)

__all__ = [
    "TaskDefinition",
    "TaskFileError",
    "load_packaged_tasks",
    "load_task_file",
    "register_task_file",
    "register_task_files",
    "task_from_dict",
    "task_file_paths",
]

_PACKAGE_DIR = "tasks"


def _parse_text(text: str, origin: str, base_dir: Path | None, packaged: bool) -> TaskSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TaskFileError(f"{origin}: not valid YAML: {err}") from None
    return task_from_dict(data, origin, base_dir=base_dir, text=text, packaged=packaged)


def load_task_file(path: str | os.PathLike[str]) -> TaskSpec:
    """Read and check one task file.

    Args:
        path (str | PathLike): a YAML task file (see the module docstring for its keys).

    Returns:
        TaskSpec: the task, not yet registered: pass it to ``evaluate_tasks`` directly, or register it with
        :func:`register_task_file` so that ``--tasks`` and recipes find it by name.

    Raises:
        FileNotFoundError: no such file.
        TaskFileError: not valid YAML, an unknown key or a wrong value (names the file and the key).
        NotImplementedError: a reserved section (verbalizer, generate_until).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"task file not found: {file}")
    resolved = file.resolve()
    return _parse_text(resolved.read_text(encoding="utf-8"), str(resolved), resolved.parent, packaged=False)


def task_file_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The task files named: each path a YAML file, or a folder whose ``*.yaml`` / ``*.yml`` files are taken (sorted).

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without task files.
    """
    out: list[Path] = []
    for path in paths:
        p = Path(path).expanduser()
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file())
            if not found:
                raise FileNotFoundError(f"no task files (*.yaml) in the folder {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"task file not found: {p}")
    return out


def register_task_file(path: str | os.PathLike[str]) -> TaskSpec:
    """Read a task file and register it in :data:`~lmdistill.evaluation.tasks.TASKS`.

    Then ``--tasks``, recipes, ``evaluate_tasks`` and ``--list-tasks`` find it by name. Registering the same
    file (same path, same text) again returns the task registered first.

    Args:
        path (str | PathLike): the YAML task file.

    Returns:
        TaskSpec: the registered task.

    Raises:
        FileNotFoundError, TaskFileError, NotImplementedError: see :func:`load_task_file`.
        ValueError: another task of that name is registered already (a packaged one, or another file's).
    """
    from lmdistill.evaluation.tasks import TASKS

    spec = load_task_file(path)
    if spec.name in TASKS:
        old = TASKS.get(spec.name)
        if old.definition is not None and (old.origin, old.definition.text) == (spec.origin, spec.definition.text):
            return old
        packaged = old.definition is not None and old.definition.packaged
        where = "a packaged task" if packaged else old.origin or "a task written in Python"
        raise TaskFileError(f"{spec.origin}: name: a task {spec.name!r} is registered already ({where}); rename it")
    TASKS.register(spec.name)(spec)
    return spec


def register_task_files(paths: Iterable[str | os.PathLike[str]]) -> list[TaskSpec]:
    """:func:`register_task_file` for each file named (a folder stands for its ``*.yaml`` files), in order.

    Args:
        paths (Iterable[str | PathLike]): task files or folders of them (``--task-file``, a recipe's
            ``evaluation.task_files``).

    Returns:
        list[TaskSpec]: the registered tasks, in order.

    Raises:
        FileNotFoundError, TaskFileError, NotImplementedError, ValueError: see :func:`register_task_file`.
    """
    return [register_task_file(p) for p in task_file_paths(paths)]


def load_packaged_tasks() -> list[TaskSpec]:
    """The package's own tasks, read from ``lmdistill/tasks/*.yaml`` (sorted by file name)."""
    folder = resources.files("lmdistill") / _PACKAGE_DIR
    specs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            origin = f"lmdistill/{_PACKAGE_DIR}/{entry.name}"
            specs.append(_parse_text(entry.read_text(encoding="utf-8"), origin, None, packaged=True))
    return specs
