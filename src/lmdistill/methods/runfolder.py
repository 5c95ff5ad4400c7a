"""The run folder every method writes: what it was started with, resume checks, its lock, results.json.

::

    RUN/recipe.yaml        the resolved recipe, for people to read
    RUN/run.json           what the folder was started with: recipe.yaml's SHA-256, the resolved recipe and the
                           SHA-256 of every data file; every resume is checked against it, however it is invoked
    RUN/.lock              held (``flock``) by the one process that runs in the folder; holds that process's PID
                           (the holder also removes what killed writers left under temporary names)
    RUN/invocations.jsonl  one line per ``lmdistill run`` invocation that ended (start, seconds, outcome)
    RUN/results.json       recipe, versions, data provenance, per-model results; written by the method's last stage

A folder in which nothing has been trained yet (no checkpoint, final model, cache shard or result: a first run
that failed on a bad path, say) may start again with another recipe or other data; once a stage has produced
something, a resume must match what the folder was started with.

Under ``accelerate launch`` every process calls these functions; only rank 0 writes and holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lmdistill.atomic import write_json, write_text
from lmdistill.config.schema import flatten, from_dict, to_dict, to_yaml
from lmdistill.distributed import process_state

__all__ = [
    "LOCK_FILE",
    "RECORD_FILE",
    "Invocation",
    "RunFolderError",
    "check_run_folder",
    "clear_record",
    "record_recipe",
    "remove_stale_temporaries",
    "results_payload",
    "run_lock",
    "run_recorded",
    "stage_outputs",
    "versions",
    "write_results",
]

log = logging.getLogger(__name__)

RECORD_FILE = "run.json"
LOCK_FILE = ".lock"
# what attempts that failed before recording a recipe may leave (with ``models/`` holding no stage output)
_NOT_A_RUN_YET = {"tokenizer", "models", "invocations.jsonl", RECORD_FILE, LOCK_FILE}


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked: it holds another run, another recipe or data, or is in use."""


# ------------------------------------------------------------------------------------------ what the folder holds


def stage_outputs(run_dir: Path) -> list[str]:
    """What the run's stages have produced (paths relative to ``run_dir``): models, checkpoints, caches, results.

    Metrics logs and the tokenizer are not counted: they are redone from scratch by a stage that has no
    checkpoint.
    """
    run_dir = Path(run_dir)
    found = [p for p in (run_dir / "results.json",) if p.exists()]
    for stage in sorted((run_dir / "models").glob("*")):
        found += [p for p in (stage / "final", stage / "eval.json") if p.exists()]
        found += sorted((stage / "checkpoints").glob("step-*"))
    cache = run_dir / "teacher-cache"
    if cache.is_dir() and any(p.is_file() for p in cache.rglob("*")):
        found.append(cache)
    return [str(p.relative_to(run_dir)) for p in found]


def check_run_folder(
    recipe: Any, run_dir: Path, resume: bool, data_files: dict[str, str | None] | None = None
) -> bool:
    """Check that ``recipe`` (and the data) may run in ``run_dir``; say whether the folder must start again.

    A folder with output of its stages (``stage_outputs``) may only be resumed (``resume``) with the recipe and
    data files it was started with (``RUN/run.json``), and with its ``recipe.yaml`` as it was written. A folder
    whose stages produced nothing yet starts again with this recipe and data when they differ (True is returned:
    the caller clears its record with ``clear_record`` before preparing the data).

    Args:
        recipe: the method's validated recipe dataclass.
        run_dir (Path): the run folder.
        resume (bool): whether the caller continues the run.
        data_files (dict | None): data file (relative path) -> SHA-256 (None: missing) as they are now; None skips
            the data check.

    Returns:
        bool: True when the folder holds a record of another recipe or other data but nothing else, so that it
        starts again.

    Raises:
        RunFolderError: the folder holds a run and ``resume`` is False; its ``recipe.yaml`` was edited, or the
            recipe or a data file differs from what the run started with (every differing key or file is named);
            or ``resume`` is True and the folder is not a run folder.
    """
    saved = run_dir / "recipe.yaml"
    if not saved.exists():
        if stage_outputs(run_dir):  # only a hand can remove it: nothing says what these outputs were made with
            raise RunFolderError(
                f"{run_dir} holds {', '.join(stage_outputs(run_dir)[:4])} but no recipe.yaml, so nothing says what "
                "they were made with: put its recipe.yaml back, or choose another --run-dir"
            )
        if resume and run_dir.exists() and any(p.name not in _NOT_A_RUN_YET for p in run_dir.iterdir()):
            raise RunFolderError(f"--resume: {run_dir} has no recipe.yaml, so it is not a run folder")
        return False
    problems = _recipe_problems(recipe, run_dir) + _data_problems(run_dir, data_files)
    outputs = stage_outputs(run_dir)
    if not outputs:
        if problems:
            log.warning(
                "%s: nothing has been trained there yet, so it starts again with this recipe and data (%s)",
                run_dir,
                "; ".join(problems),
            )
        return bool(problems)
    shown = ", ".join(outputs[:4]) + (f" and {len(outputs) - 4} more" if len(outputs) > 4 else "")
    if not resume:
        raise RunFolderError(
            f"run folder {run_dir} already holds a run ({shown}): resume it with --resume, or choose another --run-dir"
        )
    if problems:
        raise RunFolderError(
            f"cannot resume {run_dir}: " + "; ".join(problems) + f". It already holds {shown}, made with the recipe "
            f"and data it was started with ({run_dir / RECORD_FILE}); resume with those, or start a new run folder"
        )
    return False


def _recipe_problems(recipe: Any, run_dir: Path) -> list[str]:
    """How ``recipe.yaml`` and ``recipe`` differ from the recipe the folder was started with (empty: not at all)."""
    saved = run_dir / "recipe.yaml"
    text = saved.read_text(encoding="utf-8")
    record = _read_record(run_dir)
    cls = type(recipe)
    if record is None:  # a folder of an older lmdistill: recipe.yaml is all there is
        original = flatten(to_dict(from_dict(cls, yaml.safe_load(text))))
        return _differ("the recipe being resumed differs from its recipe.yaml at", original, flatten(to_dict(recipe)))
    original = flatten(to_dict(from_dict(cls, record["recipe"])))
    new = flatten(to_dict(recipe))
    problems, edited = [], None
    if _sha256(text) != record.get("recipe_sha256"):
        try:
            edited = flatten(to_dict(from_dict(cls, yaml.safe_load(text))))
        except Exception as err:  # noqa: BLE001 - any parse or validation error is reported the same way
            problems.append(f"{saved} was edited after the run started and is no longer a valid recipe ({err})")
        else:
            problems += _differ(f"{saved} was edited after the run started; it differs at", original, edited)
    if edited != new:  # resumed from the edited recipe.yaml: its keys were named above
        problems += _differ("the recipe being resumed differs from the one the run started with at", original, new)
    return problems


def _differ(what: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not diffs:
        return []
    shown = ", ".join(f"{k} (started with {old.get(k)!r}, now {new.get(k)!r})" for k in diffs[:8])
    return [f"{what}: {shown}" + (f" and {len(diffs) - 8} more" if len(diffs) > 8 else "")]


def _data_problems(run_dir: Path, now: dict[str, str | None] | None) -> list[str]:
    """The data files whose SHA-256 differs from the one recorded when the run started."""
    record = _read_record(run_dir)
    before = record.get("data_files") if record else None
    if now is None or before is None:
        return []
    changed = []
    for name in sorted(before.keys() | now.keys()):
        old, new = before.get(name), now.get(name)
        if old == new:
            continue
        if new is None:
            changed.append(f"{name} (missing now)")
        elif old is None:
            changed.append(f"{name} (not read when the run started)")
        else:
            changed.append(f"{name} (SHA-256 {old[:12]}... when the run started, now {new[:12]}...)")
    if not changed:
        return []
    return [f"data files changed since the run started: {', '.join(changed)} (restore them to resume)"]


def _read_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:  # written atomically: only a hand edit gets here
        raise RunFolderError(f"{path} is not valid JSON ({err}); it records what the run started with") from None
    if not isinstance(record, dict) or not isinstance(record.get("recipe"), dict):
        raise RunFolderError(f"{path} does not record a recipe; it records what the run started with")
    return record


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_recipe(recipe: Any, run_dir: Path, data_files: dict[str, str | None] | None = None) -> None:
    """Record what the run starts with: ``RUN/run.json``, then ``RUN/recipe.yaml``; a folder keeps its record.

    run.json holds the resolved recipe, recipe.yaml's SHA-256 and the data files' SHA-256; both are written
    atomically.

    A folder of an older lmdistill (a recipe.yaml and no run.json) gets its run.json now, from its recipe.yaml.
    """
    saved = run_dir / "recipe.yaml"
    if saved.exists() and (run_dir / RECORD_FILE).exists():
        return
    text = saved.read_text(encoding="utf-8") if saved.exists() else to_yaml(recipe)
    record = {
        "recipe_sha256": _sha256(text),
        "recipe": to_dict(recipe),
        "data_files": data_files,
        "recorded": _iso(time.time()),
    }
    if saved.exists():
        log.info("%s: a folder of an earlier lmdistill; recording what it runs with in %s", run_dir, RECORD_FILE)
    write_json(run_dir / RECORD_FILE, record)  # first: a recipe.yaml always has its record
    if not saved.exists():
        write_text(saved, text)


def clear_record(run_dir: Path) -> None:
    """Forget what a folder without stage outputs was started with (``recipe.yaml`` first, then ``run.json``)."""
    for name in ("recipe.yaml", RECORD_FILE):
        (run_dir / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ the lock


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` (an exclusive, non-blocking ``flock``) while the block runs: one process per folder.

    The lock file holds the PID, host and command of its holder, so a second process is told who runs there.
    The kernel releases the lock when its holder ends, however it ends (a ``kill -9`` too). Under
    ``accelerate launch`` only rank 0 takes it and every rank learns whether it got it.

    Raises:
        RunFolderError: another process holds the lock (its PID is named).
    """
    state = process_state()
    held, error = None, None
    if state.is_main_process:
        try:
            held = _acquire(Path(run_dir))
        except RunFolderError as err:
            error = str(err)
    if state.num_processes > 1:  # every rank stops, or none
        from accelerate.utils import broadcast_object_list

        box = [error]
        broadcast_object_list(box, from_process=0)
        error = box[0]
    if error is not None:
        raise RunFolderError(error)
    _HELD.add(Path(run_dir).resolve())
    try:
        yield
    finally:
        _HELD.discard(Path(run_dir).resolve())
        if held is not None:
            _release(*held)


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Remove what killed writers left under temporary names (``.NAME.XXXX.tmp``, see ``lmdistill.atomic``).

    Only while this process holds the folder's lock (``run_lock``), when no other writer can be at work there, and
    before any stage starts; does nothing otherwise. Returns the removed paths, relative to ``run_dir``.
    """
    run_dir = Path(run_dir)
    if run_dir.resolve() not in _HELD or not process_state().is_main_process:
        return []
    found = list(run_dir.rglob(".*.tmp"))
    stale = [p for p in found if not any(q.name.endswith(".tmp") for q in p.relative_to(run_dir).parents)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        log.info("%s: removed %d temporary file(s) of an earlier, killed process", run_dir, len(stale))
    return [str(p.relative_to(run_dir)) for p in stale]


_HELD: set[Path] = set()  # run folders whose lock this process holds


def _acquire(run_dir: Path) -> tuple[int | None, Path, bool]:
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            raise RunFolderError(_in_use(run_dir, holder)) from None
        except OSError as err:  # a file system without flock (some network mounts)
            os.close(fd)
            log.warning("%s: cannot lock %s (%s); nothing stops a second run in this folder", run_dir, path, err)
            return None, path, created
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: lock the new one
    else:
        raise RunFolderError(f"cannot lock {path}: it keeps being replaced")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _iso(time.time()), "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    return fd, path, created


def _in_use(run_dir: Path, holder_text: str) -> str:
    try:
        holder = json.loads(holder_text)
    except json.JSONDecodeError:
        holder = {}
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if pid is None:
        return f"run folder {run_dir} is in use by another process (holding {run_dir / LOCK_FILE}); wait for it to end"
    command = " ".join(holder.get("argv") or [])
    return (
        f"run folder {run_dir} is in use by process {pid} on {holder.get('host', '?')} (started "
        f"{holder.get('started', '?')}: {command or '?'}); wait for it to end, or stop it with `kill -INT {pid}` "
        "(it saves a checkpoint) and resume with --resume"
    )


def _release(fd: int | None, path: Path, created: bool) -> None:
    if fd is not None:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # ours (not one made after a hand `rm .lock`)
                path.unlink()  # while still held: a process that opened it before finds it locked
        except FileNotFoundError:
            pass
        os.close(fd)
    if created:  # a run that failed before writing anything leaves no empty folder behind
        try:
            path.parent.rmdir()
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise


# ------------------------------------------------------------------------------------------- time and results


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


def run_recorded(
    run_dir: Path, stages: Callable[[Invocation], dict[str, Any]], report: Callable[[Path], Any]
) -> dict[str, Any]:
    """A method's whole run under the folder's lock: its ``stages``, the invocation's record, then its ``report``.

    The invocation is recorded in ``invocations.jsonl`` as finished, interrupted (Ctrl-C, ``TrainingInterrupted``)
    or failed, once the folder has a recipe; the report is written by rank 0 after stages that finished.

    Args:
        run_dir (Path): the run folder.
        stages (Callable): the invocation -> results.json's payload (every process runs it).
        report (Callable): the run folder -> writes report.md (rank 0 only).

    Returns:
        dict: what ``stages`` returned.
    """
    main_process = process_state().is_main_process
    with run_lock(run_dir):  # one process per run folder, from the first check to the report
        invocation = Invocation(run_dir)
        outcome = "failed"
        try:
            payload = stages(invocation)
            outcome = "finished"
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        except Exception as err:  # noqa: BLE001 - recorded, then raised again
            outcome = "interrupted" if type(err).__name__ == "TrainingInterrupted" else "failed"
            raise
        finally:
            if main_process and (run_dir / "recipe.yaml").exists():
                invocation.end(outcome)
        if main_process:
            report(run_dir)
    return payload


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
