"""Teachers: frozen models and their ensemble."""

from lmdistill.teachers.ensemble import ENSEMBLE_RULES, TeacherEnsemble, freeze

__all__ = ["ENSEMBLE_RULES", "TeacherEnsemble", "freeze"]
