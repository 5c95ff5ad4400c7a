"""Reading task data files under the data root, with errors that name the file, the line and what was expected."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MalformedRowError", "data_file", "read_csv", "read_jsonl", "require"]


class MalformedRowError(ValueError):
    """A row of a task data file is not what its task expects; the message names ``file:line``."""


def data_file(root: Path, relative: str, task: str) -> Path:
    """``root / relative``, checked to exist.

    Args:
        root (Path): the data root.
        relative (str): the file's path under the root, e.g. "zero_shot/arc_easy/test.jsonl".
        task (str): the task that needs it, for the message.

    Returns:
        Path: the file.

    Raises:
        FileNotFoundError: the file does not exist; the message names the path and the data root.
    """
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"task {task}: data file not found: {path} (data root {root}; expected <data_root>/{relative}, "
            "see the README, 'Data')"
        )
    return path


def read_jsonl(path: Path, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, row)`` for the JSON objects of a JSON-lines file, skipping blank lines.

    Args:
        path (Path): the file.
        limit (int | None): stop after this many rows.

    Yields:
        tuple[str, dict]: ``"path:line"`` and the parsed object.

    Raises:
        MalformedRowError: a line that is not a JSON object (names ``path:line``).
    """
    count = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedRowError(f"{where}: malformed row, not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise MalformedRowError(f"{where}: malformed row, expected a JSON object, got {type(row).__name__}")
            count += 1
            yield where, row


def read_csv(path: Path, columns: tuple[str, ...], limit: int | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(where, row)`` for the rows of a CSV file with a header line, every cell a string.

    Args:
        path (Path): the file.
        columns (tuple[str, ...]): the header it must have (in any order; extra columns are ignored).
        limit (int | None): stop after this many rows.

    Yields:
        tuple[str, dict[str, str]]: ``"path:line"`` (the row's first line) and the row.

    Raises:
        MalformedRowError: a missing header column, or a row with too few or too many cells.
    """
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        missing = [c for c in columns if c not in (header or [])]
        if missing:
            raise MalformedRowError(f"{path}:1: header {header} lacks the columns {missing}")
        count, line_no = 0, reader.line_num + 1
        for cells in reader:
            where = f"{path}:{line_no}"
            line_no = reader.line_num + 1
            if limit is not None and count >= limit:
                return
            if not cells:
                continue
            if len(cells) != len(header):  # type: ignore[arg-type]
                expected = len(header)  # type: ignore[arg-type]
                raise MalformedRowError(f"{where}: malformed row, {len(cells)} cells where the header has {expected}")
            count += 1
            yield where, dict(zip(header, cells, strict=True))  # type: ignore[arg-type]


def require(row: dict[str, Any], where: str, **types: type | tuple[type, ...]) -> None:
    """Check that ``row`` has each key with a value of the given type.

    Raises:
        MalformedRowError: naming ``where``, the keys that are missing or of the wrong type, and what was expected.
    """
    bad = [f"{key} ({_name(tp)})" for key, tp in types.items() if not isinstance(row.get(key), tp)]
    if bad:
        raise MalformedRowError(f"{where}: malformed row, missing or wrongly typed keys: {', '.join(bad)}")


def _name(tp: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in tp) if isinstance(tp, tuple) else tp.__name__
