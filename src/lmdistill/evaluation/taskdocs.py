"""Reading a task file's data: its data files (one, or one per sub-task), their rows, and the items (Docs).

:class:`TaskDefinition` is a task file as :mod:`lmdistill.evaluation.taskschema` checked it (format:
:mod:`lmdistill.evaluation.taskfile`). It finds the data files under the data root (or next to the task file),
reads their rows (``jsonl``, ``json`` or ``csv``), keeps those with the ``fields`` and passing the ``filter``,
and renders each row's templates into a :class:`~lmdistill.evaluation.spec.Doc`; a row that does not fit is a
:class:`~lmdistill.evaluation.readers.MalformedRowError` naming ``file:line``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdistill.evaluation.readers import MalformedRowError, data_file, read_csv, read_jsonl, require
from lmdistill.evaluation.spec import Doc, TaskSpec
from lmdistill.evaluation.templates import Expression, Template, TemplateError
from lmdistill.registry import did_you_mean

__all__ = ["Choices", "Gold", "TaskDefinition"]

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
    """A parsed task file (see :mod:`lmdistill.evaluation.taskfile` for what each key means).

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
