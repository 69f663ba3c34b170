"""The space file: its schema, its cross-field checks and its loading.

Owns: every setting a search reads, parsed once into frozen pydantic models
(:mod:`~kdsearch.config.schema`), checked (:mod:`~kdsearch.config.checks`) and loaded from YAML
with ``--set`` overrides and absolute paths (:mod:`~kdsearch.config.load`).
May import: :mod:`kdsearch.storage`; the model registry and data layouts only inside the
functions that check names and folders. Never torch or Ray at import.
"""

from kdsearch.config.checks import format_validation_error, search_space_problems
from kdsearch.config.load import final_space, load_space, teacher_clip
from kdsearch.config.schema import (
    COST_METRICS,
    INFEASIBLE,
    PRETRAINED,
    SEARCHABLE,
    Agreement,
    Asha,
    Choice,
    Clip,
    ConfigError,
    Constraints,
    Data,
    Experiment,
    HyperBand,
    IntRange,
    LogUniform,
    Median,
    NoScheduler,
    Pretrain,
    Resources,
    Search,
    SpaceConfig,
    Student,
    Teacher,
    Tracking,
    Uniform,
    WarmStart,
    searched_values,
    trial_student,
)

__all__ = [
    "COST_METRICS", "INFEASIBLE", "PRETRAINED", "SEARCHABLE", "Agreement", "Asha", "Choice", "Clip",
    "ConfigError", "Constraints", "Data",
    "Experiment", "HyperBand", "IntRange", "LogUniform", "Median", "NoScheduler", "Pretrain",
    "Resources",
    "Search", "SpaceConfig", "Student", "Teacher", "Tracking", "Uniform", "WarmStart",
    "final_space", "format_validation_error", "load_space", "search_space_problems",
    "searched_values", "teacher_clip", "trial_student",
]
