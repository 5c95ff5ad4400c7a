r"""Zero-shot tasks written as data: a small YAML file per task (its data file, prompt, choices, gold, metrics).

The packaged tasks (``lmdistill/tasks/*.yaml``) are written this way, and a user adds one the same way, with
``lmdistill eval --task-file my_task.yaml`` or :func:`register_task_file`. A file, e.g.::

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

import glob
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmdistill.evaluation.readers import MalformedRowError, data_file, read_csv, read_jsonl, require
from lmdistill.evaluation.spec import Doc, TaskSpec
from lmdistill.evaluation.templates import Expression, Template, TemplateError
from lmdistill.registry import did_you_mean

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

SCORING = ("multiple_choice", "partial", "generate_until")
METRICS = ("acc", "acc_norm")
FORMATS = ("jsonl", "json", "csv")
TYPES: dict[str, type] = {
    "str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "null": type(None),
}  # fmt: skip
KEYS = (
    "name", "description", "source", "data", "fields", "filter", "limit", "subsets", "scoring", "context",
    "choices", "contexts", "continuation", "gold", "target_delimiter", "metrics", "groups", "verbalizer",
    "generate_until", "answer_parser",
)  # fmt: skip
DATA_KEYS = ("path", "format", "columns", "records")
#: keys each scoring mode needs, and keys it does not take
MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "multiple_choice": (
        ("context", "choices", "gold"),
        ("contexts", "continuation", "generate_until", "answer_parser"),
    ),
    "partial": (("contexts", "continuation", "gold"), ("context", "choices", "generate_until", "answer_parser")),
    "generate_until": (("context", "generate_until", "answer_parser"), ("choices", "contexts", "continuation")),
}
#: lm-eval task YAML keys, and what this format calls them
LM_EVAL_KEYS = {
    "task": "name",
    "doc_to_text": "context",
    "doc_to_choice": "choices",
    "doc_to_target": "gold",
    "metric_list": "metrics",
    "output_type": "scoring",
    "dataset_path": "data.path",
    "dataset_kwargs": "data",
    "test_split": "data.path (one file per split)",
    "validation_split": "data.path (one file per split)",
    "process_docs": "filter and fields",
    "generation_kwargs": "generate_until",
    "filter_list": "answer_parser",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PACKAGE_DIR = "tasks"


class TaskFileError(ValueError):
    """A task file is not valid; the message starts with the file and the key, e.g. ``my.yaml: gold.labels: ...``."""


# ------------------------------------------------------------------------------------------------ definition


@dataclass(frozen=True)
class Choices:
    """How a row's choice texts (or, with partial scoring, its contexts) are made.

    Attributes:
        field (str | None): a dotted field path holding the list.
        template (Template | None): with ``field``: applied to each element, which it sees as ``choice``.
        templates (tuple[Template, ...]): without ``field``: one template per choice.
    """

    field: str | None = None
    template: Template | None = None
    templates: tuple[Template, ...] = ()


@dataclass(frozen=True)
class Gold:
    """How a row's right choice is found: a constant ``index``, or ``field``'s value (an index, or a label).

    Attributes:
        index (int | None): the same choice for every row.
        field (str | None): the dotted path of the row's gold value.
        labels (tuple | None): fixed labels; the gold is the index of the value among them.
        labels_field (str | None): a field holding the labels.
    """

    index: int | None = None
    field: str | None = None
    labels: tuple[Any, ...] | None = None
    labels_field: str | None = None


@dataclass(frozen=True)
class TaskDefinition:
    """A parsed task file (see the module docstring for what each key means).

    Attributes:
        name (str): the task's name.
        origin (str): the file it was read from (for messages).
        text (str): the file's text, to tell a second registration of the same file from a clash.
        packaged (bool): one of the package's own tasks.
        base_dir (Path | None): the task file's folder (for ``./`` data paths).
        path (str): ``data.path`` as written.
        format (str): "jsonl", "json" or "csv".
        columns (tuple[str, ...]): the CSV header columns required.
        records (str | None): the dotted path of the record list in a JSON file.
        placeholder (str | None): the ``{name}`` of per-sub-task files.
        fields (tuple[tuple[str, tuple[type, ...]], ...]): required fields and their types.
        filter (Expression | None): rows where it is false are skipped.
        limit (int | None): at most this many items (per sub-task).
        scoring (str): "multiple_choice" or "partial".
        context (Template | None): the prompt (multiple choice).
        choices (Choices | None): the choice texts (multiple choice) or the contexts (partial).
        continuation (Template | None): the fixed continuation (partial).
        gold (Gold): the right choice.
        groups (tuple[tuple[str, Template], ...]): reported groups, coarsest first (the sub-task not included).
        reserved (dict): the reserved sections as written (verbalizer, generate_until, answer_parser).
    """

    name: str
    origin: str
    text: str
    packaged: bool
    base_dir: Path | None
    path: str
    format: str
    columns: tuple[str, ...]
    records: str | None
    placeholder: str | None
    fields: tuple[tuple[str, tuple[type, ...]], ...]
    filter: Expression | None
    limit: int | None
    scoring: str
    context: Template | None
    choices: Choices | None
    continuation: Template | None
    gold: Gold
    groups: tuple[tuple[str, Template], ...]
    reserved: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # -------------------------------------------------------------------------------------------- files

    def _resolve(self, root: Path, path: str | None = None) -> tuple[Path, bool]:
        """A data path (default ``data.path``, placeholder kept) made absolute, and whether it is under the root."""
        path = self.path if path is None else path
        full = Path(os.path.expanduser(path))
        if full.is_absolute():
            return full, False
        if path.startswith(("./", "../")):
            return (self.base_dir or Path.cwd()) / full, False
        return root / full, True

    def available_subsets(self, root: Path, task: str | None = None) -> list[str]:
        """Sorted names of the sub-task files matched by ``data.path``'s ``{name}``.

        Raises:
            FileNotFoundError: the folder does not exist, or no file matches.
        """
        task = task or self.name
        full, _ = self._resolve(root)
        prefix, suffix = str(full).split("{" + str(self.placeholder) + "}")
        folder = Path(os.path.dirname(prefix))
        if not folder.is_dir():
            raise FileNotFoundError(f"task {task}: folder not found: {folder} (data root {root})")
        pattern = glob.escape(prefix) + "*" + glob.escape(suffix)
        names = sorted(p[len(prefix) : len(p) - len(suffix)] for p in glob.glob(pattern) if os.path.isfile(p))
        if not names:
            raise FileNotFoundError(f"task {task}: no data files match {pattern} (data root {root})")
        return names

    def files(
        self, root: Path, subsets: Sequence[str] | None, task: str | None = None
    ) -> list[tuple[str | None, Path]]:
        """``[(sub-task or None, data file), ...]`` in order.

        Raises:
            FileNotFoundError: a missing file or folder (names the path and the data root).
            KeyError: an unknown sub-task (suggests close names, lists the known ones).
        """
        task = task or self.name
        if self.placeholder is None:
            return [(None, self._existing(root, self.path, task))]
        available = self.available_subsets(root, task)
        names = available if subsets is None else list(dict.fromkeys(subsets))
        for name in names:
            if name not in available:
                raise KeyError(
                    f"task {task}: unknown {self.placeholder} {name!r}.{did_you_mean(name, available)} "
                    f"Known: {', '.join(available)}"
                )
        return [
            (name, self._existing(root, self.path.replace("{" + self.placeholder + "}", name), task)) for name in names
        ]

    def _existing(self, root: Path, path: str, task: str) -> Path:
        full, under_root = self._resolve(root, path)
        if under_root:
            return data_file(root, path, task)
        if not full.is_file():
            raise FileNotFoundError(
                f"task {task}: data file not found: {full} (data.path {self.path!r} in {self.origin})"
            )
        return full

    # --------------------------------------------------------------------------------------------- rows

    def _records(self, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.format == "jsonl":
            yield from read_jsonl(path)
        elif self.format == "csv":
            yield from read_csv(path, self.columns)
        else:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                hint = "; it looks like JSON lines: set data.format: jsonl" if err.msg == "Extra data" else ""
                raise MalformedRowError(f"{path}:{err.lineno}: not valid JSON ({err.msg}){hint}") from None
            if self.records is not None:
                data = _lookup(data, self.records, f"{path}", "data.records")
            if not isinstance(data, list):
                raise MalformedRowError(
                    f"{path}: expected a JSON array of objects"
                    + (f" at {self.records!r}" if self.records else " (or set data.records to where it is)")
                    + f", got {type(data).__name__}"
                )
            for i, row in enumerate(data):
                where = f"{path}: record {i}"
                if not isinstance(row, dict):
                    raise MalformedRowError(
                        f"{where}: malformed row, expected a JSON object, got {type(row).__name__}"
                    )
                yield where, row

    def rows(self, path: Path, subset: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(where, variables)`` for the rows of one data file that pass ``fields`` and ``filter``.

        ``variables`` is the row, with the sub-task name added under ``{name}`` (it wins over a field so named).

        Raises:
            MalformedRowError: a malformed row, or a row the filter cannot be evaluated on (names ``file:line``).
        """
        types = dict(self.fields)
        for where, row in self._records(path):
            if types:
                require(row, where, **types)  # type: ignore[arg-type]
            variables = row if self.placeholder is None else {**row, self.placeholder: subset}
            if self.filter is not None:
                try:
                    keep = self.filter(variables)
                except TemplateError as err:
                    raise _row_error(where, "filter", err, variables) from None
                if not keep:
                    continue
            yield where, variables

    def doc(self, where: str, variables: Mapping[str, Any], subset: str | None, delimiter: str) -> Doc:
        """The item of one row.

        Raises:
            MalformedRowError: a template fails on the row, or its choices or gold are not what the task needs.
        """
        assert self.choices is not None
        if self.scoring == "partial":
            contexts = _choice_texts(self.choices, "contexts", where, variables)
            continuation = _render(self.continuation, "continuation", where, variables)  # type: ignore[arg-type]
            gold = _gold_index(self.gold, where, variables, len(contexts))
            return Doc(
                contexts=tuple(contexts),
                continuations=(delimiter + continuation,) * len(contexts),
                gold=gold,
                choice_lengths=tuple(len(c) for c in contexts),  # lm-eval's choices here are the contexts
                groups=self._groups(where, variables, subset),
            )
        context = _render(self.context, "context", where, variables)  # type: ignore[arg-type]
        texts = _choice_texts(self.choices, "choices", where, variables)
        return Doc(
            contexts=(context,) * len(texts),
            continuations=tuple(delimiter + t for t in texts),
            gold=_gold_index(self.gold, where, variables, len(texts)),
            choice_lengths=tuple(len(t) for t in texts),
            groups=self._groups(where, variables, subset),
        )

    def _groups(self, where: str, variables: Mapping[str, Any], subset: str | None) -> tuple[tuple[str, str], ...]:
        groups = tuple((name, _render(t, f"groups.{name}", where, variables)) for name, t in self.groups)
        return groups + (((self.placeholder, str(subset)),) if self.placeholder is not None else ())

    def load(self, root: Path, spec: TaskSpec, limit: int | None) -> list[Doc]:
        """The items of the task: the first ``limit`` kept rows of each sub-task file (the ``TaskSpec.loader``).

        Args:
            root (Path): the data root.
            spec (TaskSpec): the task (its ``subsets`` and ``target_delimiter`` apply).
            limit (int | None): items per sub-task; None = all (or the file's own ``limit``).

        Returns:
            list[Doc]: the items in sub-task, then file order.
        """
        limits = [n for n in (limit, self.limit) if n is not None]
        cap = min(limits) if limits else None
        docs: list[Doc] = []
        for subset, path in self.files(root, spec.subsets, spec.name):
            if cap == 0:
                continue
            count = 0
            for where, variables in self.rows(path, subset):
                docs.append(self.doc(where, variables, subset, spec.target_delimiter))
                count += 1
                if cap is not None and count >= cap:
                    break
        return docs


# ---------------------------------------------------------------------------------------- row helpers


def _lookup(data: Any, path: str, where: str, what: str) -> Any:
    """``data["a"]["b"][0]`` for the dotted path "a.b.0"."""
    node = data
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            keys = sorted(node) if isinstance(node, Mapping) else None
            known = f" (keys: {', '.join(map(str, keys))})" if keys is not None else ""
            close = did_you_mean(part, [str(k) for k in keys]) if keys else ""
            raise MalformedRowError(f"{where}: {what}: the row has no {path!r}{known}.{close}".rstrip("."))
    return node


def _row_error(where: str, what: str, err: Exception, variables: Mapping[str, Any]) -> MalformedRowError:
    message = f"{where}: {what}: {err}"
    missing = re.match(r"'([^']+)' is undefined", str(err))
    if missing:
        keys = [str(k) for k in variables]
        message += f" (the row has: {', '.join(keys)}).{did_you_mean(missing.group(1), keys)}".rstrip(".")
    return MalformedRowError(message)


def _render(template: Template, what: str, where: str, variables: Mapping[str, Any]) -> str:
    try:
        return template.render(variables)
    except TemplateError as err:
        raise _row_error(where, what, err, variables) from None
    except Exception as err:  # a method called in the template failed (e.g. list.index of a missing value)
        raise MalformedRowError(f"{where}: {what}: {type(err).__name__}: {err}") from None


def _choice_texts(choices: Choices, what: str, where: str, variables: Mapping[str, Any]) -> list[str]:
    if choices.field is None:
        return [_render(t, f"{what}.{i}", where, variables) for i, t in enumerate(choices.templates)]
    value = _lookup(variables, choices.field, where, what)
    if choices.template is None:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise MalformedRowError(f"{where}: {choices.field} must be a non-empty list of strings, got {value!r}")
        return value
    if not isinstance(value, list) or not value:
        raise MalformedRowError(f"{where}: {choices.field} must be a non-empty list, got {value!r}")
    return [_render(choices.template, f"{what}.template", where, {**variables, "choice": v}) for v in value]


def _one_of(labels: Sequence[Any]) -> str:
    texts = [str(x) for x in labels]
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} or {texts[-1]}"


def _gold_index(gold: Gold, where: str, variables: Mapping[str, Any], n: int) -> int:
    if gold.index is not None:
        if gold.index >= n:
            raise MalformedRowError(f"{where}: gold {gold.index} is not an index of the {n} choices")
        return gold.index
    assert gold.field is not None
    value = _lookup(variables, gold.field, where, "gold")
    if gold.labels is None and gold.labels_field is None:
        digits = isinstance(value, str) and value.isascii() and value.isdigit()
        if not (digits or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)) or int(value) >= n:
            raise MalformedRowError(f"{where}: {gold.field} must index the {n} choices (0 to {n - 1}), got {value!r}")
        return int(value)
    if gold.labels is not None:
        labels: Any = gold.labels
    else:
        labels = _lookup(variables, gold.labels_field, where, "gold.labels")  # type: ignore[arg-type]
        if not isinstance(labels, list):
            raise MalformedRowError(f"{where}: {gold.labels_field} must be a list of labels, got {labels!r}")
    if len(labels) != n:
        name = gold.labels_field or "gold.labels"
        raise MalformedRowError(f"{where}: {name} has {len(labels)} labels for the {n} choices")
    for i, label in enumerate(labels):
        if label == value and type(label) is type(value):
            return i
    for i, label in enumerate(labels):
        if str(label) == str(value):
            return i
    raise MalformedRowError(f"{where}: {gold.field} must be {_one_of(labels)}, got {value!r}")


# ---------------------------------------------------------------------------------------------- parsing


class _Checker:
    """Parses one task file's mapping; every error names the file and the key."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def error(self, key: str, message: str) -> TaskFileError:
        return TaskFileError(f"{self.origin}: {key}: {message}")

    def keys(self, mapping: Mapping[str, Any], allowed: Sequence[str], prefix: str = "") -> None:
        for key in mapping:
            if key in allowed:
                continue
            name = f"{prefix}{key}"
            hint = LM_EVAL_KEYS.get(str(key)) if not prefix else None
            if hint:
                raise self.error(name, f"unknown key (it is lm-eval's name: in a task file it is {hint})")
            raise self.error(name, f"unknown key.{did_you_mean(str(key), list(allowed))} Known: {', '.join(allowed)}")

    def string(self, value: Any, key: str, *, empty: bool = True) -> str:
        if not isinstance(value, str) or (not empty and not value):
            hint = (
                " (quote it: YAML reads yes, no, on, off, true and false as booleans)"
                if isinstance(value, bool)
                else ""
            )
            raise self.error(key, f"must be a{' non-empty' if not empty else ''} string, got {value!r}{hint}")
        return value

    def mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping (key: value), got {value!r}")
        return value

    def integer(self, value: Any, key: str, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def template(self, value: Any, key: str) -> Template:
        source = self.string(value, key)
        try:
            return Template(source)
        except TemplateError as err:
            raise self.error(key, f"not a valid template: {err}") from None

    def path(self, value: Any, key: str) -> str:
        text = self.string(value, key, empty=False)
        if "{" in text or any(not part for part in text.split(".")):
            raise self.error(key, f"must be a field name or a dotted path such as choices.text, got {value!r}")
        return text

    def choices(self, value: Any, key: str) -> Choices:
        if isinstance(value, str):
            if "{" in value:
                raise self.error(
                    key,
                    f"a string is a field holding the list; for templates write a list, one per choice: [{value!r}]",
                )
            return Choices(field=self.path(value, key))
        if isinstance(value, list):
            if not value:
                raise self.error(key, "must not be empty")
            return Choices(templates=tuple(self.template(v, f"{key}.{i}") for i, v in enumerate(value)))
        if isinstance(value, Mapping):
            self.keys(value, ("field", "template"), f"{key}.")
            if "field" not in value:
                raise self.error(f"{key}.field", "missing: the field holding the list")
            template = self.template(value["template"], f"{key}.template") if "template" in value else None
            return Choices(field=self.path(value["field"], f"{key}.field"), template=template)
        raise self.error(key, f"must be a field name, a list of templates or {{field, template}}, got {value!r}")

    def gold(self, value: Any, key: str) -> Gold:
        if isinstance(value, int) and not isinstance(value, bool):
            return Gold(index=self.integer(value, key, 0))
        if isinstance(value, str):
            if "{" in value:
                raise self.error(key, "must be a field name, an integer or {field, labels}, not a template")
            return Gold(field=self.path(value, key))
        if isinstance(value, Mapping):
            self.keys(value, ("field", "labels"), f"{key}.")
            if "field" not in value:
                raise self.error(f"{key}.field", "missing: the field holding the gold value")
            gold_field = self.path(value["field"], f"{key}.field")
            labels = value.get("labels")
            if labels is None:
                return Gold(field=gold_field)
            if isinstance(labels, str):
                return Gold(field=gold_field, labels_field=self.path(labels, f"{key}.labels"))
            if isinstance(labels, list) and labels and all(isinstance(x, (str, int)) for x in labels):
                if len({str(x) for x in labels}) != len(labels):
                    raise self.error(f"{key}.labels", f"a label is given twice: {labels}")
                return Gold(field=gold_field, labels=tuple(labels))
            raise self.error(f"{key}.labels", f"must be a list of labels or a field holding one, got {labels!r}")
        raise self.error(key, f"must be an integer, a field name or {{field, labels}}, got {value!r}")

    def types(self, value: Any, key: str) -> tuple[tuple[str, tuple[type, ...]], ...]:
        out = []
        for name, spec in self.mapping(value, key).items():
            names = spec if isinstance(spec, list) else [spec]
            if not names:
                raise self.error(f"{key}.{name}", "must name a type")
            for t in names:
                if t not in TYPES:
                    close = did_you_mean(str(t), list(TYPES))
                    raise self.error(f"{key}.{name}", f"unknown type {t!r}.{close} Known: {', '.join(TYPES)}")
            out.append((str(name), tuple(TYPES[t] for t in names)))
        return tuple(out)

    def reserved(self, data: Mapping[str, Any], scoring: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "verbalizer" in data:
            verbalizer = self.mapping(data["verbalizer"], "verbalizer")
            if not verbalizer:
                raise self.error("verbalizer", "must map at least one label to its word(s)")
            for label, words in verbalizer.items():
                ok = isinstance(words, str) or (
                    isinstance(words, list) and words and all(isinstance(w, str) for w in words)
                )
                if not ok or not isinstance(label, (str, int)):
                    hint = " (quote it: YAML reads yes and no as booleans)" if isinstance(words, bool) else ""
                    raise self.error(f"verbalizer.{label}", f"must be a word or a list of words, got {words!r}{hint}")
            out["verbalizer"] = dict(verbalizer)
        if scoring == "generate_until":
            gen = self.mapping(data["generate_until"], "generate_until")
            self.keys(gen, ("until", "max_gen_toks"), "generate_until.")
            until = gen.get("until", [])
            until = [until] if isinstance(until, str) else until
            if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
                raise self.error("generate_until.until", f"must be a string or a list of strings, got {until!r}")
            if "max_gen_toks" in gen:
                self.integer(gen["max_gen_toks"], "generate_until.max_gen_toks", 1)
            parser = self.mapping(data["answer_parser"], "answer_parser")
            self.keys(parser, ("regex", "group"), "answer_parser.")
            regex = self.string(parser.get("regex"), "answer_parser.regex", empty=False)
            try:
                compiled = re.compile(regex)
            except re.error as err:
                raise self.error("answer_parser.regex", f"not a valid regular expression: {err}") from None
            group = parser.get("group", 0)
            if not isinstance(group, (int, str)) or (isinstance(group, int) and not 0 <= group <= compiled.groups):
                raise self.error("answer_parser.group", f"must be a group of the regex (0 to {compiled.groups})")
            out.update(generate_until=dict(gen), answer_parser=dict(parser))
        return out


def task_from_dict(
    data: Any,
    origin: str = "<task>",
    *,
    base_dir: str | os.PathLike[str] | None = None,
    text: str | None = None,
    packaged: bool = False,
) -> TaskSpec:
    """A task from a task file's mapping (e.g. one written inline in a recipe).

    Args:
        data (Mapping): the task file's keys (see the module docstring).
        origin (str): where it comes from, for messages (a file path, "recipe evaluation.task_files.0").
        base_dir (str | PathLike | None): the folder ``./`` data paths are relative to.
        text (str | None): the source text (default: ``data`` as YAML), to recognise a repeated registration.
        packaged (bool): one of the package's own tasks.

    Returns:
        TaskSpec: the task (not registered; see :func:`register_task_file`).

    Raises:
        TaskFileError: an unknown key or a wrong value (the message names ``origin`` and the key).
        NotImplementedError: a valid file that uses a reserved section (verbalizer, generate_until).
    """
    c = _Checker(origin)
    if not isinstance(data, Mapping):
        raise TaskFileError(
            f"{origin}: a task file must be a mapping of keys (name, data, context, ...), got {data!r}"
        )
    c.keys(data, KEYS)
    if "name" not in data:
        raise c.error("name", "missing: the task's name for --tasks")
    name = c.string(data["name"], "name", empty=False)
    if not _NAME.fullmatch(name):
        raise c.error("name", f"must be letters, digits, '_', '-' or '.', got {name!r}")
    description = " ".join(c.string(data.get("description", ""), "description").split())
    source = c.string(data.get("source", ""), "source")

    if "data" not in data:
        raise c.error("data", "missing: the data file, {path: ..., format: ...}")
    raw_data = data["data"]
    source_data = {"path": raw_data} if isinstance(raw_data, str) else c.mapping(raw_data, "data")
    c.keys(source_data, DATA_KEYS, "data.")
    if "path" not in source_data:
        raise c.error("data.path", "missing: the data file, relative to the data root")
    path = c.string(source_data["path"], "data.path", empty=False)
    placeholders = re.findall(r"\{([^{}]*)\}", path)
    if len(placeholders) > 1 or path.count("{") != len(placeholders) or path.count("}") != len(placeholders):
        raise c.error("data.path", f"may hold one {{name}} for per-sub-task files, got {path!r}")
    placeholder = placeholders[0] if placeholders else None
    if placeholder is not None:
        if not _IDENTIFIER.fullmatch(placeholder):
            raise c.error("data.path", f"{{{placeholder}}} must be a name (letters, digits, '_')")
        if "/" in path.split("{", 1)[1]:
            raise c.error("data.path", f"{{{placeholder}}} must be in the file name, not in a folder")
    if base_dir is None and path.startswith(("./", "../")):
        raise c.error("data.path", "a ./ path is relative to the task file, and this task has none")
    extension = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}.get(
        Path(path.replace("{", "").replace("}", "")).suffix
    )
    fmt = source_data.get("format", extension)
    if fmt is None:
        raise c.error("data.format", f"missing, and {path!r} has no known extension: one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise c.error(
            "data.format", f"unknown format {fmt!r}.{did_you_mean(str(fmt), FORMATS)} Known: {', '.join(FORMATS)}"
        )
    columns: tuple[str, ...] = ()
    if "columns" in source_data:
        if fmt != "csv":
            raise c.error("data.columns", "only for format: csv")
        cols = source_data["columns"]
        if not isinstance(cols, list) or not all(isinstance(x, str) for x in cols):
            raise c.error("data.columns", f"must be a list of column names, got {cols!r}")
        columns = tuple(cols)
    records = None
    if "records" in source_data:
        if fmt != "json":
            raise c.error("data.records", "only for format: json")
        records = c.path(source_data["records"], "data.records")

    fields = c.types(data["fields"], "fields") if "fields" in data else ()
    filt = None
    if "filter" in data:
        expression = c.string(data["filter"], "filter", empty=False)
        try:
            filt = Expression(expression)
        except TemplateError as err:
            raise c.error("filter", f"not a valid expression: {err}") from None
    limit = c.integer(data["limit"], "limit", 1) if "limit" in data else None
    subsets = None
    if "subsets" in data:
        if placeholder is None:
            raise c.error("subsets", "needs per-sub-task files: a {name} in data.path")
        value = data["subsets"]
        if not isinstance(value, list) or not value or not all(isinstance(s, str) and s for s in value):
            raise c.error("subsets", f"must be a non-empty list of sub-task names, got {value!r}")
        subsets = tuple(value)

    scoring = data.get("scoring", "multiple_choice")
    if scoring not in MODES:
        raise c.error(
            "scoring", f"unknown mode {scoring!r}.{did_you_mean(str(scoring), SCORING)} Known: {', '.join(SCORING)}"
        )
    needed, unused = MODES[scoring]
    for key in needed:
        if key not in data:
            raise c.error(key, f"missing: scoring {scoring} needs {', '.join(needed)}")
    for key in unused:
        if key in data:
            raise c.error(key, f"not used with scoring {scoring} (it takes {', '.join(needed)})")
    context = c.template(data["context"], "context") if "context" in data else None
    choices = None
    if scoring == "multiple_choice":
        choices = c.choices(data["choices"], "choices")
    elif scoring == "partial":
        choices = c.choices(data["contexts"], "contexts")
    continuation = c.template(data["continuation"], "continuation") if "continuation" in data else None
    gold = c.gold(data["gold"], "gold") if "gold" in data else Gold()
    delimiter = c.string(data.get("target_delimiter", " "), "target_delimiter")

    metrics_value = data.get("metrics", ["acc"] if scoring != "generate_until" else ["exact_match"])
    metrics_value = [metrics_value] if isinstance(metrics_value, str) else metrics_value
    if not isinstance(metrics_value, list) or not metrics_value:
        raise c.error("metrics", f"must be a list such as [acc, acc_norm], got {metrics_value!r}")
    allowed = METRICS if scoring != "generate_until" else ("exact_match",)
    for i, m in enumerate(metrics_value):
        if m not in allowed:
            known = ", ".join(allowed)
            raise c.error(f"metrics.{i}", f"unknown metric {m!r}.{did_you_mean(str(m), allowed)} Known: {known}")
    if len(set(metrics_value)) != len(metrics_value):
        raise c.error("metrics", f"a metric is named twice: {metrics_value}")

    groups: list[tuple[str, Template]] = []
    for group, template in c.mapping(data.get("groups", {}), "groups").items():
        if not isinstance(group, str) or not _IDENTIFIER.fullmatch(group) or group == placeholder:
            raise c.error(f"groups.{group}", "must be a name (letters, digits, '_') other than the data.path's {name}")
        groups.append((group, c.template(template, f"groups.{group}")))

    reserved = c.reserved(data, scoring)
    if scoring == "generate_until":
        raise NotImplementedError(
            f"{origin}: scoring: generate_until (generation with answer_parser) is reserved for the rationale "
            "tasks and not implemented yet; the file is otherwise valid"
        )
    if "verbalizer" in reserved:
        raise NotImplementedError(
            f"{origin}: verbalizer: label verbalisers are reserved for the rationale tasks and not implemented "
            'yet; for multiple choice, write the words as choices (choices: ["yes", "no"]) and the label as gold'
        )
    definition = TaskDefinition(
        name=name,
        origin=origin,
        text=text if text is not None else yaml.safe_dump(dict(data), sort_keys=True),
        packaged=packaged,
        base_dir=Path(base_dir) if base_dir is not None else None,
        path=path,
        format=fmt,
        columns=columns,
        records=records,
        placeholder=placeholder,
        fields=fields,
        filter=filt,
        limit=limit,
        scoring=scoring,
        context=context,
        choices=choices,
        continuation=continuation,
        gold=gold,
        groups=tuple(groups),
        reserved=reserved,
    )
    return TaskSpec(
        name=name,
        description=description,
        loader=definition.load,
        metrics=tuple(metrics_value),
        group_keys=tuple(g for g, _ in groups) + ((placeholder,) if placeholder is not None else ()),
        source=source,
        target_delimiter=delimiter,
        subsets=subsets,
        origin=origin,
        definition=definition,
    )


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
