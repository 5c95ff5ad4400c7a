"""Checking a task file: its mapping, key by key, made into a :class:`~lmdistill.evaluation.spec.TaskSpec`.

:func:`task_from_dict` is strict: an unknown key (with "did you mean", or lm-eval's name for it), a missing one
or a wrong value is a :class:`TaskFileError` naming the file and the key. The keys are described in
:mod:`lmdistill.evaluation.taskfile`; the parsed task is a :class:`~lmdistill.evaluation.taskdocs.TaskDefinition`,
which reads the data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lmdistill.evaluation.spec import TaskSpec
from lmdistill.evaluation.taskdocs import Choices, Gold, TaskDefinition
from lmdistill.evaluation.templates import Expression, Template, TemplateError
from lmdistill.registry import did_you_mean

__all__ = ["TaskFileError", "task_from_dict"]

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


class TaskFileError(ValueError):
    """A task file is not valid; the message starts with the file and the key, e.g. ``my.yaml: gold.labels: ...``."""


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
        data (Mapping): the task file's keys (see :mod:`lmdistill.evaluation.taskfile`).
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
