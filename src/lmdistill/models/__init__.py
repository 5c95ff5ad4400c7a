"""Models: build from a recipe architecture or load (folder, Hub id, GGUF), and the families' label rules.

The names below are imported on first use (PEP 562): ``resolve_model_path`` needs no torch, the rest do.
"""

from __future__ import annotations

from lmdistill.lazy import lazy_exports

_EXPORTS = {
    "FAMILIES": "families",
    "IGNORE_INDEX": "families",
    "ModelFamily": "families",
    "build_model": "build",
    "count_parameters": "build",
    "family_of": "families",
    "get_family": "families",
    "load_model": "build",
    "load_model_tokenizer": "build",
    "resolve_model_path": "paths",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
