"""Recipe discovery and loading: packaged names or YAML files, ``method`` dispatch, overrides, validation.

A recipe names its ``method`` (``lmdistill.methods.METHODS``); the method's module declares the recipe dataclass
that validates the rest of the file. A recipe without ``method`` is a Baby Llama recipe (the first method, whose
recipes predate the key).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmdistill.config.schema import ConfigError, apply_overrides, from_dict
from lmdistill.registry import did_you_mean

__all__ = ["DEFAULT_METHOD", "list_recipes", "load_recipe", "read_recipe_data", "recipe_path"]

DEFAULT_METHOD = "babyllama"


def _packaged_recipes() -> dict[str, Path]:
    folder = resources.files("lmdistill") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> dict[str, dict[str, str]]:
    """Packaged recipe names mapped to ``{"method": ..., "description": first line}``."""
    out = {}
    for name, path in sorted(_packaged_recipes().items()):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        text = str(data.get("description", "")).strip()
        out[name] = {
            "method": str(data.get("method", DEFAULT_METHOD)),
            "description": text.splitlines()[0] if text else "",
        }
    return out


def recipe_path(name_or_path: str) -> Path:
    """Resolve a packaged recipe name (``babyllama-cpu``) or a YAML file path.

    Raises:
        FileNotFoundError: naming the path, or the packaged recipes when a name is unknown.
    """
    packaged = _packaged_recipes()
    if name_or_path in packaged:
        return packaged[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {path}")
        return path
    raise FileNotFoundError(
        f"unknown recipe {name_or_path!r}.{did_you_mean(name_or_path, list(packaged))} "
        f"Packaged recipes: {', '.join(sorted(packaged))}; or pass a path to a .yaml file."
    )


def read_recipe_data(path: Path) -> dict[str, Any]:
    """The parsed YAML mapping of a recipe file.

    Raises:
        ConfigError: not valid YAML or UTF-8, or not a mapping (one line starting with the file, and its line and
            column for a YAML syntax error).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); a recipe is a UTF-8 YAML file"
        ) from None
    data = data if data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: recipe: expected a mapping, got {type(data).__name__}")
    return data


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """``"FILE:LINE:COLUMN: not valid YAML: <problem> (<context> at line L)"`` on one line."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None)
    if not problem:  # not a MarkedYAMLError: its text, on one line
        return f"{where}: not valid YAML: {' '.join(str(err).split())}"
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        context = f"{context} at line {context_mark.line + 1}"
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Any:
    """Load, override and validate a recipe with its method's recipe class.

    Args:
        name_or_path (str): packaged recipe name or YAML path.
        overrides (list[str]): ``a.b=c`` items applied before validation.

    Returns:
        The method's validated recipe dataclass (e.g. ``BabyLlamaRecipe``); its ``method`` names the method.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ConfigError: a key or value is wrong, or the method is unknown (the message starts with the file, or with
            "command line" for a bad override, and the key path).
    """
    from lmdistill.methods import get_recipe_section

    path = recipe_path(name_or_path)
    data = read_recipe_data(path)
    _absolute_task_files(data, path.parent)  # the file's own entries: relative to the file
    try:
        data = apply_overrides(data, overrides or [])
    except ConfigError as err:
        raise ConfigError(f"command line: {err}") from None
    _absolute_task_files(data, Path.cwd())  # entries from the command line: relative to the working folder
    try:
        method = get_recipe_section(str(data.get("method", DEFAULT_METHOD)))
        data = method.normalize_recipe(data)
        return from_dict(method.Recipe, data)
    except ConfigError as err:
        source = _source_of(str(err), overrides or [])
        raise ConfigError(f"{source or path}: {err}") from None


def _source_of(message: str, overrides: list[str]) -> str | None:
    """Where a recipe error comes from: ``command line (override K=V)`` when an override set its key, else None."""
    failing = message.split(":", 1)[0].strip()
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key and (failing == key or failing.startswith(key + ".")):
            return f"command line (override {item})"
    return None


def _absolute_task_files(data: dict[str, Any], base: Path) -> None:
    """Make ``evaluation.task_files`` absolute (the run folder's recipe.yaml then works from anywhere)."""
    evaluation = data.get("evaluation")
    files = evaluation.get("task_files") if isinstance(evaluation, dict) else None
    if isinstance(files, list):
        evaluation["task_files"] = [
            str((base / f).resolve()) if isinstance(f, str) and not Path(f).expanduser().is_absolute() else f
            for f in files
        ]
