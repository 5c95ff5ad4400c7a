"""Methods: each one module that declares its recipe section and its stages, read top to bottom.

A method module provides:

- ``NAME`` and ``DESCRIPTION`` (shown by ``lmdistill recipes ls`` and ``lmdistill run --help``);
- ``Recipe``: its recipe dataclass (the shared sections of ``lmdistill.config.sections`` plus its own);
- ``normalize_recipe(data)``: shorthands applied to the parsed YAML before validation (may return it as is);
- ``run(recipe, run_dir, *, data_root, resume, cache_dir)``: every stage, resumable, returning results.json's
  payload;
- ``validate_data(recipe, data_root)``: the data problems found before anything trains (empty list: none).

The first four and ``validate_data`` live in a torch-free ``<name>_recipe`` module (``RECIPE_SECTIONS``), which
the method module re-exports: reading and checking a recipe (``lmdistill recipes show/validate``) then imports no
torch. The stage machinery every method shares lives once: ``lmdistill.methods.runfolder`` (run folder, resume
checks, ``run_recorded``, results.json) and ``lmdistill.methods.stages`` (corpus data, train or load a model,
evaluate it). Adding a method is adding its two modules here and its name to ``METHODS`` and ``RECIPE_SECTIONS``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lmdistill.config.schema import ConfigError
from lmdistill.registry import did_you_mean

__all__ = ["METHODS", "RECIPE_SECTIONS", "get_method", "get_recipe_section"]

METHODS: dict[str, str] = {
    "babyllama": "lmdistill.methods.babyllama",
    "stlm": "lmdistill.methods.stlm",
    "tinybert": "lmdistill.methods.tinybert",
}
"""Method name -> module. Planned: rationale."""

RECIPE_SECTIONS: dict[str, str] = {
    "babyllama": "lmdistill.methods.babyllama_recipe",
    "stlm": "lmdistill.methods.stlm_recipe",
    "tinybert": "lmdistill.methods.tinybert_recipe",
}
"""Method name -> the module of its recipe section alone (``NAME``, ``DESCRIPTION``, ``Recipe``,
``normalize_recipe``), importable without torch: what reading and checking a recipe needs."""


def get_method(name: str) -> ModuleType:
    """The module of method ``name``.

    Raises:
        ConfigError: an unknown method (the message lists the known ones and suggests the closest).
    """
    if name not in METHODS:
        raise ConfigError(
            f"method: unknown method {name!r}.{did_you_mean(name, list(METHODS))} Known: {', '.join(METHODS)}"
        )
    return importlib.import_module(METHODS[name])


def get_recipe_section(name: str) -> ModuleType:
    """The recipe-section module of method ``name`` (no torch import; ``get_method`` for its stages).

    Raises:
        ConfigError: an unknown method (as ``get_method``).
    """
    if name not in RECIPE_SECTIONS:
        get_method(name)  # raises the unknown-method error
        return importlib.import_module(METHODS[name])  # a method without a separate section module
    return importlib.import_module(RECIPE_SECTIONS[name])
