"""``lmdistill data fetch``: the recipes' public data from the Hugging Face Hub, converted into a data root.

Each source of :data:`~lmdistill.data.fetch_sources.SOURCES` is read with the ``datasets`` library (a packaged
builder over ``hf://datasets/<repo>@<commit>/<pattern>`` files: no dataset script runs) and converted into the files
the recipes read (see the README, "Data"). A source is converted into a temporary folder inside the root; only when
the whole conversion succeeded are its files moved into place, each by one rename, so an interrupted or failed fetch
leaves no half-written file and nothing of the failed source. The root then holds:

- ``fetch-manifest.json``: per source, the Hub id, the revision asked for and the commit it resolved to, the files
  read, the date, and every converted file's SHA-256, size and rows;
- ``PROVENANCE.md``: the same as a note for people (source id, revision, splits, licence, date fetched).

A second fetch skips a source whose files are all there with the manifest's checksums, and converts again one whose
files are missing or changed. Files that no fetch wrote (a data root assembled by hand) are never replaced unless
``force`` is given. One fetch at a time writes into a root (a lock file).

``mirror`` reads the same files from a local folder holding ``<repo>/<pattern>``, e.g. made with
``hf download REPO --repo-type dataset --revision REVISION --local-dir MIRROR/REPO``; the tests use it with tiny files
in the Hub's formats. This module does not import torch; ``datasets`` is imported only when a source is loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmdistill.atomic import remove_stale_temporaries, write_json, write_text
from lmdistill.data.corpus import file_sha256
from lmdistill.data.fetch_sources import CONVERSION_VERSION, SOURCES, HubSource
from lmdistill.data.root import DataRootError, checkout_data_root, resolve_data_root
from lmdistill.registry import did_you_mean

__all__ = [
    "MANIFEST",
    "PROVENANCE",
    "FetchError",
    "FetchResult",
    "default_fetch_root",
    "fetch_data",
    "needs_fetch",
    "plan_sources",
    "read_manifest",
    "verify_source",
]

logger = logging.getLogger(__name__)

MANIFEST = "fetch-manifest.json"
PROVENANCE = "PROVENANCE.md"
_PROVENANCE_MARK = "<!-- written by `lmdistill data fetch` from fetch-manifest.json; rewritten by every fetch -->"
_LOCK = ".fetch.lock"
_STAGING = "fetch-[a-z0-9_]+"  # the temporary folders' names: .fetch-<source>.XXXXXXXX.tmp


class FetchError(RuntimeError):
    """A source could not be fetched or converted; the message names the source and what to do."""


@dataclass
class FetchResult:
    """What became of one source."""

    name: str
    status: Literal["fetched", "present", "failed"]
    files: dict[str, int] = field(default_factory=dict)
    """Relative path -> rows, of the files the source wrote (or that were already there)."""
    message: str = ""


def default_fetch_root() -> Path:
    """Where a fetch writes without ``--root``: ``$LMDISTILL_DATA``, else ``../shared/data`` beside the checkout.

    That is where every command looks for data when given no ``--data-root`` (``resolve_data_root``).

    Raises:
        DataRootError: neither is set or known (an installed package outside a checkout): pass a root.
    """
    if os.environ.get("LMDISTILL_DATA"):
        return Path(os.environ["LMDISTILL_DATA"]).expanduser()
    beside = checkout_data_root()
    if beside is None:
        raise DataRootError("no data root to fetch into: pass --root DIR (then use --data-root DIR or LMDISTILL_DATA)")
    return beside


def needs_fetch(data_root: str | os.PathLike[str] | None = None, recipe: str = "babyllama-cpu") -> bool:
    """Whether ``make demo`` fetches before it runs: no data root resolves, or a fetch wrote the one that does.

    A root that a fetch wrote is fetched into again (which completes it and skips what is there) unless it also holds
    all that ``recipe`` reads (the local stand-in corpus is not on the Hub, so a fetched root alone never does).
    """
    try:
        root = resolve_data_root(data_root)
    except DataRootError:
        return True
    if not (root / MANIFEST).is_file():
        return False
    from lmdistill.config import load_recipe
    from lmdistill.methods import get_recipe_section

    loaded = load_recipe(recipe)
    return bool(get_recipe_section(loaded.method).validate_data(loaded, root))


def plan_sources(recipes: Sequence[str] = (), only: Sequence[str] = ()) -> tuple[list[HubSource], list[str]]:
    """The sources to fetch for ``recipes`` (their corpus and evaluation tasks) plus those named in ``only``.

    With neither, every source.

    Args:
        recipes (Sequence[str]): packaged recipe names or YAML files.
        only (Sequence[str]): source names (:data:`~lmdistill.data.fetch_sources.SOURCES`).

    Returns:
        tuple[list[HubSource], list[str]]: the sources in fetch order, and a note for each thing a recipe reads that
        no source provides (the local stand-in corpus, a task file of one's own).

    Raises:
        KeyError: an unknown source name (with a "did you mean").
        ConfigError, FileNotFoundError: a recipe that does not load.
    """
    for name in only:
        if name not in SOURCES:
            known = ", ".join(SOURCES)
            raise KeyError(f"unknown source {name!r}.{did_you_mean(name, list(SOURCES))} Sources: {known}")
    wanted, notes = set(only), []
    if recipes:
        from lmdistill.config import load_recipe

        by_corpus = {c: s.name for s in SOURCES.values() for c in s.corpus_sources}
        by_task = {t: s.name for s in SOURCES.values() for t in s.tasks}
        for recipe_name in recipes:
            recipe = load_recipe(recipe_name)
            corpus = [s.name for s in recipe.data.sources]
            wanted.update(by_corpus[c] for c in corpus if c in by_corpus)
            absent = [c for c in corpus if c not in by_corpus]
            if absent:
                notes.append(
                    f"recipe {recipe.name}: corpus sources {', '.join(absent)} are not on the Hub (the local "
                    "stand-in mixture, see the README, 'Data'); recipe babyllama-babylm-cpu reads the BabyLM corpus "
                    "that `--only babylm` fetches"
                )
            tasks = list(recipe.evaluation.tasks or [])
            wanted.update(by_task[t] for t in tasks if t in by_task)
            notes += [f"recipe {recipe.name}: no source provides task {t!r}" for t in tasks if t not in by_task]
    chosen = [s for s in SOURCES.values() if s.name in wanted] if (recipes or only) else list(SOURCES.values())
    return chosen, notes


def read_manifest(root: Path) -> dict[str, Any]:
    """``<root>/fetch-manifest.json`` (an empty one when there is none)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {"format": 1, "sources": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def _spec(source: HubSource) -> dict[str, Any]:
    """What a source's files depend on: a change of any of it means converting again."""
    return {
        "repo": source.repo,
        "revision": source.revision,
        "builder": source.builder,
        "inputs": source.inputs,
        "conversion": CONVERSION_VERSION,
    }


def verify_source(root: Path, entry: dict[str, Any] | None) -> list[str]:
    """Problems with a source's files against its manifest ``entry``: missing, or another SHA-256 (empty: all good)."""
    if not entry or not entry.get("files"):
        return ["not in the manifest"]
    problems = []
    for rel, info in entry["files"].items():
        path = Path(root) / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
            problems.append(f"{rel}: changed since it was fetched (SHA-256 differs)")
    return problems


@contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    """Hold ``<root>/.fetch.lock`` (exclusive, non-blocking ``flock``; nothing where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / _LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"another `lmdistill data fetch` is writing into {root}; wait for it to end") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _resolve_revision(source: HubSource) -> str | None:
    """The commit ``source.revision`` points at on the Hub now, or None when the Hub does not say."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.repo, revision=source.revision).sha
    except Exception as err:  # no network, an old huggingface_hub: the load below reports what matters
        logger.debug("%s: could not resolve revision %s: %s", source.repo, source.revision, err)
        return None


def _load(source: HubSource, base: str, cache_dir: str | None):
    """The source's splits (a ``datasets.DatasetDict``), each from its pattern under ``base``."""
    from datasets import load_dataset

    files = {split: f"{base}/{pattern}" for split, pattern in source.inputs.items()}
    return load_dataset(source.builder, data_files=files, cache_dir=cache_dir)


def _fetch_one(
    root: Path, source: HubSource, manifest: dict[str, Any], *, mirror: Path | None, force: bool, cache_dir: str | None
) -> dict[str, int]:
    """Convert one source into a temporary folder in ``root``, record it in the manifest, then move its files in.

    The manifest entry is written before the files are moved, so that after a crash between the renames the next
    fetch knows those paths are its own (their checksums then fail and the source is converted again).
    """
    old = manifest["sources"].get(source.name)
    if mirror is None:
        resolved = _resolve_revision(source)
        base = f"hf://datasets/{source.repo}@{resolved or source.revision}"
    else:
        resolved, base = None, str(mirror / source.repo)
    stage = Path(tempfile.mkdtemp(prefix=f".fetch-{source.name}.", suffix=".tmp", dir=root))
    try:
        try:
            splits = _load(source, base, cache_dir)
        except Exception as err:  # the datasets / huggingface_hub errors are many; say which files failed
            raise FetchError(
                f"{source.name}: could not read {base}/{{{', '.join(source.inputs.values())}}} "
                f"({type(err).__name__}: {err})"
            ) from err
        try:
            written = source.convert(splits, stage)
        except (KeyError, TypeError, ValueError) as err:
            raise FetchError(f"{source.name}: the Hub's rows are not in the expected form: {err!r}") from err
        owned = set(old["files"]) if old else set()
        foreign = sorted(rel for rel in written if (root / rel).exists() and rel not in owned)
        if foreign and not force:
            raise FetchError(
                f"{source.name}: {len(foreign)} files are already in {root} and were not written by a fetch (e.g. "
                f"{foreign[0]}): left alone; pass --force to replace them"
            )
        files = {}
        for rel, rows in written.items():
            path = stage / rel
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size, "rows": rows}
        manifest["sources"][source.name] = {
            **_spec(source),
            "resolved_revision": resolved,
            "mirror": None if mirror is None else str(mirror),
            "license": source.license,
            "fetched": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "files": files,
        }
        write_json(root / MANIFEST, manifest)
        for rel in written:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, root / rel)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def fetch_data(
    root: str | os.PathLike[str] | None = None,
    recipes: Sequence[str] = (),
    only: Sequence[str] = (),
    *,
    mirror: str | os.PathLike[str] | None = None,
    force: bool = False,
    cache_dir: str | None = None,
) -> list[FetchResult]:
    """Fetch the sources that ``recipes`` read and those in ``only`` (all of them with neither) into ``root``.

    Args:
        root (str | PathLike | None): the data root to write; None = :func:`default_fetch_root`. Created if missing.
        recipes (Sequence[str]): recipes whose corpus and evaluation data to fetch.
        only (Sequence[str]): source names to fetch as well.
        mirror (str | PathLike | None): read ``<mirror>/<repo>/<pattern>`` instead of the Hub.
        force (bool): convert every source again, and replace files no fetch wrote.
        cache_dir (str | None): the ``datasets`` cache (default: its own, ``~/.cache/huggingface/datasets``).

    Returns:
        list[FetchResult]: one per source, in order; a failed source does not stop the others.

    Raises:
        KeyError, ConfigError, FileNotFoundError: an unknown source or recipe (before anything is fetched).
        FetchError: another fetch holds the root.
    """
    sources, notes = plan_sources(recipes, only)
    for note in notes:
        logger.warning(note)
    root = Path(root).expanduser() if root is not None else default_fetch_root()
    root.mkdir(parents=True, exist_ok=True)
    mirror = Path(mirror).expanduser().resolve() if mirror is not None else None
    results = []
    with _root_lock(root):
        for action in remove_stale_temporaries(root, rf"{_STAGING}|fetch-manifest\.json|PROVENANCE(\.fetch)?\.md"):
            logger.info("%s (left by an interrupted fetch)", action)
        manifest = read_manifest(root)
        for source in sources:
            entry = manifest["sources"].get(source.name)
            same = entry is not None and {k: entry.get(k) for k in _spec(source)} == _spec(source)
            if same and not force and not verify_source(root, entry):
                logger.info("%s: present, checksums match the manifest", source.name)
                files = {rel: info["rows"] for rel, info in entry["files"].items()}
                results.append(FetchResult(source.name, "present", files))
                continue
            logger.info("%s: fetching %s (%s) -> %s", source.name, source.repo, source.revision, source.writes)
            try:
                written = _fetch_one(root, source, manifest, mirror=mirror, force=force, cache_dir=cache_dir)
            except FetchError as err:  # the result says why; the other sources go on
                results.append(FetchResult(source.name, "failed", message=str(err)))
                continue
            results.append(FetchResult(source.name, "fetched", written))
        _write_provenance(root, manifest)
    return results


def _write_provenance(root: Path, manifest: dict[str, Any]) -> Path | None:
    """Write the PROVENANCE note of the fetched sources (``PROVENANCE.fetch.md`` beside a note no fetch wrote)."""
    if not manifest["sources"]:
        return None
    path = root / PROVENANCE
    if path.is_file() and not path.read_text(encoding="utf-8").startswith(_PROVENANCE_MARK):
        path = root / "PROVENANCE.fetch.md"
    lines = [
        _PROVENANCE_MARK,
        "# Data fetched by `lmdistill data fetch`",
        "",
        "Read from the Hugging Face Hub with the `datasets` library and converted into the layout the recipes read",
        f"(see the lmdistill README, 'Data'). Every converted file's SHA-256 is in `{MANIFEST}`; a second fetch",
        "skips what is there and matches it. Licences differ: treat all of it as research-use data.",
        "",
        "| source | files | Hub dataset | revision (commit) | read (split: files) | licence | fetched |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, entry in manifest["sources"].items():
        source = SOURCES.get(name)
        commit = entry.get("resolved_revision") or ("local mirror" if entry.get("mirror") else "not resolved")
        read = "; ".join(f"{split}: `{pattern}`" for split, pattern in entry["inputs"].items())
        if len(entry["inputs"]) > 6:  # BabyLM: 20 files
            read = f"{len(entry['inputs'])} files, e.g. `{next(iter(entry['inputs'].values()))}`"
        writes = source.writes if source else f"{len(entry['files'])} files"
        lines.append(
            f"| {name} | `{writes}` | [{entry['repo']}](https://huggingface.co/datasets/{entry['repo']}) | "
            f"{entry['revision']} ({commit}) | {read} | {entry['license']} | {entry['fetched']} |"
        )
        notes += [f"- {name}: {note}" for note in (source.notes if source else ())]
    if notes:
        lines += ["", "## Notes", "", *notes]
    write_text(path, "\n".join(lines) + "\n")
    return path
