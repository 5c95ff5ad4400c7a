"""Teachers: frozen models, their ensemble, the offline top-k cache of its distribution, input gradients."""

from lmdistill.teachers.cache import TeacherCache, cache_spec, ensure_cache
from lmdistill.teachers.ensemble import ENSEMBLE_RULES, TeacherEnsemble, freeze
from lmdistill.teachers.gradients import input_gradients, predicted_log_prob

__all__ = [
    "ENSEMBLE_RULES",
    "TeacherCache",
    "TeacherEnsemble",
    "cache_spec",
    "ensure_cache",
    "freeze",
    "input_gradients",
    "predicted_log_prob",
]
