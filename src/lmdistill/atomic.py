"""Atomic file and folder writes: write under a temporary name in the same folder, then rename.

A crash or Ctrl-C in the middle of a write never leaves a half-written checkpoint, cache or result file
behind: readers see either the old file or the complete new one. The new bytes are fsynced before the rename and
the folder after it, so that after a power loss the name points at complete data, never at an empty file.

A process killed mid-write (SIGKILL, OOM killer) cannot run its cleanup: it leaves ``.NAME.XXXXXXXX.tmp`` beside
``NAME`` (and, when killed between the two renames that replace an existing folder, ``.NAME.old`` with ``NAME``
missing). ``remove_stale_temporaries`` clears those for the writer that owns the names, when it starts again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "remove_stale_temporaries", "write_json", "write_text"]

_TMP_SUFFIX = ".tmp"
_OLD_SUFFIX = ".old"


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path``'s data (a file) or its entries (a folder) to the disk."""
    if directory:
        try:  # some systems (Windows) cannot open a folder, some file systems refuse to fsync one: best effort
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # an I/O error here means the data may not be on the disk: let it raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Fsync every file and folder under ``root`` (itself included), deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                _fsync(path)
        _fsync(Path(folder), directory=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success rename it to ``path``, on error delete it.

    The temporary is ``.NAME.XXXXXXXX.tmp``; it is fsynced before the rename, the folder after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent, directory=True)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (whole), on error it is removed.

    The temporary is ``.NAME.XXXXXXXX.tmp``; its files and folders are fsynced before the rename, the parent folder
    after it. An existing ``path`` is first renamed to ``.NAME.old``, then removed once the new folder is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}{_OLD_SUFFIX}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _fsync(path.parent, directory=True)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
            _fsync(path.parent, directory=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def remove_stale_temporaries(folder: str | os.PathLike[str], name_pattern: str) -> list[str]:
    """Clear what killed ``atomic_dir`` / ``atomic_path`` writes of names matching ``name_pattern`` left in ``folder``.

    Call it only where no write of those names can be in progress (a writer that starts again over its own folder).
    ``.NAME.XXXXXXXX.tmp`` temporaries are removed. ``.NAME.old`` is the previous complete ``NAME``: it is renamed
    back to ``NAME`` when ``NAME`` is missing (killed between the two renames), else removed. Other files are kept.

    Args:
        folder (str | PathLike): where the writes went.
        name_pattern (str): a regular expression for the target names (e.g. ``"step-[0-9]+"``), matched in full.

    Returns:
        list[str]: one line per action, ``"removed PATH"`` or ``"restored NAME from PATH"``, in name order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = re.compile(rf"^\.(?P<name>{name_pattern})\.(?:[^/]+\.tmp|old)$")  # .NAME.XXXXXXXX.tmp, .NAME.old
    actions = []
    for entry in sorted(folder.iterdir()):
        match = stale.match(entry.name)
        if match is None:
            continue
        target = folder / match.group("name")
        if entry.name.endswith(_OLD_SUFFIX) and not target.exists():
            os.replace(entry, target)
            _fsync(folder, directory=True)
            actions.append(f"restored {target} from {entry}")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        actions.append(f"removed {entry}")
    return actions


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
