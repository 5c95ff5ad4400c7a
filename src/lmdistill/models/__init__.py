"""Models: build from a recipe architecture or load (folder, Hub id, GGUF), and the families' label rules."""

from lmdistill.models.build import build_model, count_parameters, load_model, load_model_tokenizer, resolve_model_path
from lmdistill.models.families import FAMILIES, IGNORE_INDEX, ModelFamily, family_of, get_family

__all__ = [
    "FAMILIES",
    "IGNORE_INDEX",
    "ModelFamily",
    "build_model",
    "count_parameters",
    "family_of",
    "get_family",
    "load_model",
    "load_model_tokenizer",
    "resolve_model_path",
]
