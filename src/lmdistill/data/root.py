"""Where recipes find their data: ``--data-root``, else ``LMDISTILL_DATA``, else ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataRootError", "checkout_data_root", "resolve_data_root"]

_REPO_ROOT = Path(__file__).resolve().parents[3]  # src/lmdistill/data/root.py -> repository root (editable install)


class DataRootError(FileNotFoundError):
    """No data root could be found; the message says how to provide one."""


def resolve_data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root folder.

    Order: ``explicit`` (the ``--data-root`` flag), else the ``LMDISTILL_DATA`` environment variable, else
    ``../shared/data`` beside the repository (or beside the current folder) when it exists.

    Raises:
        DataRootError: the chosen folder does not exist, or none was found; the message says how to get data.
    """
    for origin, value in (("--data-root", explicit), ("LMDISTILL_DATA", os.environ.get("LMDISTILL_DATA"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataRootError(f"data root from {origin} does not exist or is not a folder: {path}")
            return path.resolve()
    for candidate in (_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    raise DataRootError(
        "no data root found: pass --data-root DIR or set LMDISTILL_DATA=DIR, where DIR holds corpus/<source>/"
        "{train,dev}.txt and blimp/*.jsonl (see the README, 'Data'); ../shared/data beside the repository is "
        "used when it exists. With internet, `lmdistill data fetch` writes one from the Hugging Face Hub."
    )


def checkout_data_root() -> Path | None:
    """``../shared/data`` beside the source checkout (the first place looked in), or None outside a checkout."""
    if not (_REPO_ROOT / "pyproject.toml").is_file():
        return None
    return _REPO_ROOT.parent / "shared" / "data"
