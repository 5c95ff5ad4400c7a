"""Typed recipe configuration: dataclasses validated in ``__post_init__``; YAML is only their serialisation.

- ``schema``: the machinery (strict ``from_dict``, ``a.b=c`` overrides, ``to_yaml``), independent of any method;
- ``sections``: the sections every method shares (data, tokenizer, model, train, distillation, loss, evaluation);
- ``recipes``: packaged recipes and ``load_recipe``, which dispatches on the recipe's ``method``;
- each method's own sections live beside it (``lmdistill.methods.babyllama`` holds ``BabyLlamaRecipe``).
"""

from typing import Any

from lmdistill.config.recipes import DEFAULT_METHOD, list_recipes, load_recipe, read_recipe_data, recipe_path
from lmdistill.config.schema import ConfigError, apply_overrides, flatten, from_dict, to_dict, to_yaml
from lmdistill.config.sections import (
    DIVERGENCE_NAMES,
    MODEL_FAMILIES,
    PRESETS,
    DataConfig,
    DistillationConfig,
    EvaluationConfig,
    FeatureLossConfig,
    LossConfig,
    ModelConfig,
    RecipeBase,
    SourceConfig,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_METHOD",
    "DIVERGENCE_NAMES",
    "MODEL_FAMILIES",
    "PRESETS",
    "ConfigError",
    "DataConfig",
    "DistillationConfig",
    "EvaluationConfig",
    "FeatureLossConfig",
    "LossConfig",
    "ModelConfig",
    "RecipeBase",
    "RecipeConfig",
    "SourceConfig",
    "TokenizerConfig",
    "TrainConfig",
    "apply_overrides",
    "flatten",
    "from_dict",
    "list_recipes",
    "load_recipe",
    "read_recipe_data",
    "recipe_path",
    "to_dict",
    "to_yaml",
]

_METHOD_SECTIONS = {
    "RecipeConfig": "BabyLlamaRecipe",
    "TeacherConfig": "TeacherConfig",
    "TeachersConfig": "TeachersConfig",
    "StudentConfig": "StudentConfig",
}


def __getattr__(name: str) -> Any:
    """Baby Llama's sections, under their earlier names (``RecipeConfig`` is ``BabyLlamaRecipe``)."""
    if name in _METHOD_SECTIONS:
        from lmdistill.methods import babyllama_recipe

        return getattr(babyllama_recipe, _METHOD_SECTIONS[name])
    raise AttributeError(f"module 'lmdistill.config' has no attribute {name!r}")
