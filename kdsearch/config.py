"""The space file: typed, frozen models of everything a search needs.

A space file is parsed once, completely, before Ray, MLflow or any data work starts.
Every problem is reported as one line naming the dotted path, the value and the rule.

Relative paths (``data.root``, ``teacher.weights``, ``storage``, ``tracking.uri`` for
``sqlite:///``) are resolved against the directory the command was started from, once, in
the driver: trials run in other working directories and only ever see absolute paths.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: Training settings a search may sample. Each one also has a fixed value in ``student``.
SEARCHABLE = ("alpha", "temperature", "lr", "backbone", "weight_decay", "momentum",
              "batch_size", "optimizer")
OPTIMIZERS = ("sgd", "adamw")
PRETRAINED = ("none", "pretrained", "kinetics400", "imagenet")


class ConfigError(Exception):
    """A space file problem; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        # Crosses process boundaries (a Ray task) with its lines intact.
        return ConfigError, (self.problems,)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Experiment(_Model):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")]


class SyntheticData(_Model):
    train_per_class: Annotated[int, Field(ge=2)] = 30
    val_per_class: Annotated[int, Field(ge=1)] = 10
    num_frames: Annotated[int, Field(ge=4)] = 32
    size: Annotated[int, Field(ge=16)] = 64
    fps: Annotated[int, Field(ge=1)] = 16
    seed: int = 0

    @field_validator("size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (H.264 stores colour at half resolution)")
        return value


class Data(_Model):
    """Where the videos are and how they are laid out (see the README's "Your data").

    ``train_split``/``val_split`` name split folders (``video_folder``, ``frame_folder``) or
    list files (``annotation_list``), relative to ``root``. ``val_split: null`` takes a
    stratified, seeded ``val_fraction`` of the training split for validation;
    ``train_split: null`` (folder layouts) reads class folders directly under ``root``.
    """

    format: Literal["synthetic", "video_folder", "frame_folder", "annotation_list"]
    root: str
    train_split: str | None = "train"
    val_split: str | None = "val"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: int = 0
    classes: list[str] | None = None
    frame_rate: Annotated[float, Field(gt=0)] | None = None  # frame folders store no fps
    short_videos: Literal["pad", "skip"] = "pad"
    synthetic: SyntheticData = SyntheticData()
    num_workers: Annotated[int, Field(ge=0)] = 0

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one class")
            repeated = sorted({name for name in value if value.count(name) > 1})
            if repeated:
                raise ValueError(f"repeats {', '.join(repeated)}; class names must be unique")
        return value

    @model_validator(mode="after")
    def _splits(self) -> Data:
        if self.train_split is None and self.format in ("annotation_list", "synthetic"):
            raise ValueError(f"train_split: must name the training "
                             f"{'list file' if self.format == 'annotation_list' else 'split'}"
                             f" for format {self.format}")
        if self.train_split is None and self.val_split is not None:
            raise ValueError("val_split: must be null when train_split is null (class folders "
                             "directly under root are split into train and val)")
        if self.format == "synthetic" and self.val_split is None:
            raise ValueError("val_split: must not be null for format synthetic")
        return self


class Clip(_Model):
    num_frames: Annotated[int, Field(ge=1)] = 8
    stride: Annotated[int, Field(ge=1)] = 2
    crop_size: Annotated[int, Field(ge=16)] = 64


class Teacher(_Model):
    model: str
    weights: str = "none"
    finetune: Literal["full", "head"] = "full"
    epochs: Annotated[int, Field(ge=0)] = 5
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    batch_size: Annotated[int, Field(ge=1)] = 8
    # Decode and run the teacher once per view before the trials (kdsearch.cache).
    cache: bool = True
    cache_views: Annotated[int, Field(ge=1)] = 4
    # A path every node shares, or a pyarrow filesystem URI; None: <storage>/cache.
    cache_dir: str | None = None


class Student(_Model):
    """Training settings shared by every trial; searched ones are overridden per trial."""

    backbone: str = "tiny3d"
    weights: str = "none"
    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 8
    clip: Clip = Clip()
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    momentum: Annotated[float, Field(ge=0, le=1)] = 0.9
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    temperature: Annotated[float, Field(gt=0)] = 4.0
    val_clips_per_video: Annotated[int, Field(ge=1)] = 1
    bf16: bool = True  # autocast on CUDA; ignored on the CPU
    channels_last: bool = True  # channels-last 3D memory format on CUDA; ignored on the CPU


#: ``when: {backbone: [x3d_xs, x3d_s]}``: sample this setting only when the searched
#: choice ``backbone`` took one of those values; otherwise the student's fixed value holds.
Condition = Annotated[dict[str, Annotated[list[str | int | float | bool], Field(min_length=1)]],
                      Field(min_length=1, max_length=1)]


class Uniform(_Model):
    type: Literal["uniform"]
    low: float
    high: float
    when: Condition | None = None


class LogUniform(_Model):
    type: Literal["loguniform"]
    low: float
    high: float
    when: Condition | None = None


class IntRange(_Model):
    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False
    when: Condition | None = None


class Choice(_Model):
    type: Literal["choice"]
    values: Annotated[list[str | int | float | bool], Field(min_length=1)]
    when: Condition | None = None


Distribution = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="type")]


class Asha(_Model):
    name: Literal["asha"] = "asha"
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(ge=2)] = 2


class HyperBand(_Model):
    """Asynchronous HyperBand: ASHA over several brackets, each with its own grace period
    (bracket b starts at grace_period * reduction_factor**b), so that trials which start slowly
    but finish well are not all judged after one epoch. No trial waits for another."""

    name: Literal["hyperband"]
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(ge=2)] = 2
    brackets: Annotated[int, Field(ge=1)] = 3


class Median(_Model):
    """Stop a trial whose best value is below the median of other trials at the same epoch."""

    name: Literal["median"]
    grace_period: Annotated[int, Field(ge=1)] = 1
    min_samples_required: Annotated[int, Field(ge=1)] = 3


class NoScheduler(_Model):
    name: Literal["none"]


class WarmStart(_Model):
    """Completed trials of an earlier MLflow experiment, told to the sampler before the first
    trial (they are not trained again)."""

    experiment: Annotated[str, Field(min_length=1)]
    tracking_uri: str | None = None  # None: this search's tracking.uri


class Search(_Model):
    space: dict[str, Distribution] = {}
    num_samples: Annotated[int, Field(ge=1)] = 12
    max_concurrent: Annotated[int, Field(ge=1)] = 2
    seed: int = 0
    metric: Literal["val_acc", "val_video_acc", "val_vote_acc", "val_macro_f1",
                    "val_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "random", "cmaes", "qmc"] = "tpe"
    scheduler: Annotated[Asha | HyperBand | Median | NoScheduler,
                         Field(discriminator="name")] = Asha()
    # Configurations to train first (e.g. a paper's hand-picked alpha and temperature).
    points_to_evaluate: list[dict[str, str | int | float | bool]] = []
    warm_start: WarmStart | None = None
    # false: Ray's stock OptunaSearch feedback (early-stopped trials count as COMPLETE),
    # kept only to measure what the fidelity-aware feedback is worth.
    fidelity_aware: bool = True


class Resources(_Model):
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0  # fractions pack trials on one GPU
    teacher_cpus: Annotated[int, Field(ge=1)] = 2
    allow_cpu: bool = False  # GPUs asked of a cluster without any: CPU trials, not an error
    max_failures: Annotated[int, Field(ge=0)] = 0  # retries of a trial, from its checkpoint


class Tracking(_Model):
    uri: str | None = None  # None: sqlite:///<start dir>/mlflow.db
    top_k: Annotated[int, Field(ge=0)] = 3  # the best k trials keep their student checkpoint
    # The Model Registry name of the best student; None: "<experiment.name>-student".
    registered_model: Annotated[str, Field(min_length=1)] | None = None


class SpaceConfig(_Model):
    experiment: Experiment
    data: Data
    teacher: Teacher
    student: Student = Student()
    search: Search = Search()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    storage: str = "kdsearch_results"

    @property
    def tracking_uri(self) -> str:
        assert self.tracking.uri is not None, "resolve_paths() sets tracking.uri"
        return self.tracking.uri


def _range_problems(name: str, dist: Uniform | LogUniform | IntRange) -> list[str]:
    where = f"search.space.{name}"
    problems = []
    if not dist.low < dist.high:
        problems.append(f"{where}.high: {dist.high} must be greater than low ({dist.low})")
    if (isinstance(dist, LogUniform) or getattr(dist, "log", False)) and dist.low <= 0:
        problems.append(f"{where}.low: {dist.low} must be > 0 for a log scale")
    for end in ("low", "high"):
        value = getattr(dist, end)
        rule = _value_problem(name, value)
        if rule:
            problems.append(f"{where}.{end}: {value} {rule}")
    return problems


def _value_problem(name: str, value: Any) -> str | None:
    """The rule ``value`` breaks as a fixed value of student setting ``name``, or None."""
    if name == "backbone":
        from kdsearch.models import list_models

        if value not in list_models("student"):
            return f"is not a registered student (valid: {', '.join(list_models('student'))})"
        return None
    if name == "optimizer":
        return None if value in OPTIMIZERS else f"is not one of {', '.join(OPTIMIZERS)}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "is not a finite number"
    bounds = {"alpha": (0, 1), "momentum": (0, 1)}
    if name in bounds and not bounds[name][0] <= value <= bounds[name][1]:
        return f"is outside [{bounds[name][0]}, {bounds[name][1]}]"
    if name in ("temperature", "lr") and value <= 0:
        return "must be > 0"
    if name == "weight_decay" and value < 0:
        return "must be >= 0"
    if name == "batch_size" and (value < 1 or value != int(value)):
        return "must be an integer >= 1"
    return None


def search_space_problems(search: Search) -> list[str]:
    problems = _value_problems(search)
    problems += _condition_problems(search)
    problems += _point_problems(search)
    if search.sampler == "cmaes":
        for name, dist in search.space.items():
            if isinstance(dist, Choice) or dist.when:
                what = "a choice" if isinstance(dist, Choice) else "conditional"
                problems.append(f"search.space.{name}: is {what}; search.sampler 'cmaes' "
                                "needs a continuous space (uniform, loguniform or int, "
                                "unconditional): use 'tpe'")
    return problems


def _value_problems(search: Search) -> list[str]:
    problems = []
    for name, dist in search.space.items():
        if name not in SEARCHABLE:
            problems.append(f"search.space.{name}: unknown setting (searchable: "
                            f"{', '.join(SEARCHABLE)})")
        elif isinstance(dist, Choice):
            for i, value in enumerate(dist.values):
                rule = _value_problem(name, value)
                if rule:
                    problems.append(f"search.space.{name}.values[{i}]: {value!r} {rule}")
        elif name in ("backbone", "optimizer"):
            problems.append(f"search.space.{name}.type: {dist.type!r} must be 'choice' "
                            "for a categorical setting")
        else:
            problems.extend(_range_problems(name, dist))
    return problems


def _condition_problems(search: Search) -> list[str]:
    """A condition names a searched choice declared before it, and values of that choice."""
    problems = []
    names = list(search.space)
    for position, (name, dist) in enumerate(search.space.items()):
        for parent, values in (dist.when or {}).items():
            where = f"search.space.{name}.when.{parent}"
            other = search.space.get(parent)
            if not isinstance(other, Choice) or parent not in names[:position]:
                problems.append(f"{where}: must name a searched choice declared before "
                                f"{name!r}")
                continue
            for value in values:
                if value not in other.values:
                    problems.append(f"{where}: {value!r} is not one of "
                                    f"search.space.{parent}.values {other.values}")
    return problems


def _point_problems(search: Search) -> list[str]:
    """Every point sets searched settings only, each inside its distribution."""
    problems = []
    for i, point in enumerate(search.points_to_evaluate):
        for name, value in point.items():
            where = f"search.points_to_evaluate[{i}].{name}"
            dist = search.space.get(name)
            if dist is None:
                problems.append(f"{where}: not a searched setting (searched: "
                                f"{', '.join(search.space) or 'none'})")
            elif isinstance(dist, Choice):
                if value not in dist.values:
                    problems.append(f"{where}: {value!r} is not one of {dist.values}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{where}: {value!r} is not a number")
            elif not dist.low <= value <= dist.high:
                problems.append(f"{where}: {value} is outside [{dist.low}, {dist.high}]")
    return problems


def format_validation_error(err: ValidationError) -> list[str]:
    """pydantic's errors as ``dotted.path: value rule`` lines."""
    lines = []
    for e in err.errors():
        loc = ".".join(_loc_part(p) for p in e["loc"] if not _is_union_tag(p))
        loc = loc.replace(".[", "[")
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{loc}: missing (required)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            # A model validator's message starts with its field: "train_split: must ..."
            if e["type"] == "value_error" and isinstance(e.get("input"), dict):
                lines.append(f"{loc}.{msg}")
            else:
                lines.append(f"{loc}: {e.get('input')!r} {msg[0].lower()}{msg[1:]}")
    return lines


def _loc_part(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def _is_union_tag(part: int | str) -> bool:
    return part in ("uniform", "loguniform", "int", "choice", "asha", "hyperband", "median",
                    "none", "str", "int",
                    "float", "bool") and not isinstance(part, int)
