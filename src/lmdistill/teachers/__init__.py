"""Teachers: frozen models, their ensemble, and the offline top-k cache of its distribution."""

from lmdistill.teachers.cache import TeacherCache, cache_spec, ensure_cache
from lmdistill.teachers.ensemble import ENSEMBLE_RULES, TeacherEnsemble, freeze

__all__ = ["ENSEMBLE_RULES", "TeacherCache", "TeacherEnsemble", "cache_spec", "ensure_cache", "freeze"]
