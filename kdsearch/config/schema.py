"""The space file's schema: typed, frozen models of everything a search needs.

A space file is parsed once, completely, before Ray, MLflow or any data work starts.
Every problem is reported as one line naming the dotted path, the value and the rule.

Relative paths (``data.root``, ``teacher.weights``, ``storage``, ``tracking.uri`` for
``sqlite:///``) are resolved against the directory the command was started from, once, in
the driver: trials run in other working directories and only ever see absolute paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from kdsearch.storage import redact_all

PRETRAINED = ("none", "pretrained", "kinetics400", "imagenet")

# Upper bounds: far above any real search, low enough that a typo (an extra three zeros) or a
# hostile file stops at validation instead of allocating, looping or filling a disk for days.
# docs/space-file.md states each one next to its key.
MAX_EPOCHS = 10_000
MAX_TRIALS = 100_000  # search.num_samples, and the counts that compare with it
MAX_CONCURRENT = 1_000
MAX_VIEWS = 1_000  # teacher.cache_views
MAX_VAL_CLIPS = 100  # student.val_clips_per_video
MAX_FRAMES = 512  # a clip's num_frames
MAX_STRIDE = 64
MAX_CROP = 1_024  # a clip's crop_size, pixels
MAX_BATCH = 4_096
MAX_WORKERS = 256  # data.num_workers
MAX_CLASSES = 100_000
MAX_PER_CLASS = 100_000  # synthetic videos per class
MAX_SEED = 2**32 - 1  # numpy's seeds are unsigned 32-bit
MAX_KD_SEEDS = 100
MAX_TOP_K = 1_000
MAX_CPUS = 1_024
MAX_GPUS = 64
MAX_FAILURES = 1_000
MAX_POINTS = 1_000  # search.points_to_evaluate
MAX_PATH = 4_096  # characters of a path or URI (Linux's PATH_MAX)

#: A name that becomes a folder (``mlartifacts/<experiment.name>``, search records) or goes
#: into an MLflow filter string: no separators, quotes or spaces, never ``.`` or ``..``.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name_rule(longest: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > longest or not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"must be 1-{longest} letters, digits, '.', '_' or '-', the first "
                             "a letter or digit (it names folders and MLflow queries)")
        return value
    return AfterValidator(check)


#: ``experiment.name``; ``tracking.registered_model`` defaults to it + "-student", so it
#: allows a little more.
Name = Annotated[str, _name_rule(100)]
ModelName = Annotated[str, _name_rule(128)]
Location = Annotated[str, Field(max_length=MAX_PATH)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


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
    name: Name


class SyntheticData(_Model):
    train_per_class: Annotated[int, Field(ge=2, le=MAX_PER_CLASS)] = 30
    val_per_class: Annotated[int, Field(ge=1, le=MAX_PER_CLASS)] = 10
    num_frames: Annotated[int, Field(ge=4, le=4 * MAX_FRAMES)] = 32
    size: Annotated[int, Field(ge=16, le=MAX_CROP)] = 64
    fps: Annotated[int, Field(ge=1, le=1_000)] = 16
    seed: Seed = 0

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
    root: Location
    train_split: Location | None = "train"
    val_split: Location | None = "val"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: Seed = 0
    classes: Annotated[list[str], Field(max_length=MAX_CLASSES)] | None = None
    frame_rate: Annotated[float, Field(gt=0, le=1_000)] | None = None  # frame folders: no fps
    short_videos: Literal["pad", "skip"] = "pad"
    synthetic: SyntheticData = SyntheticData()
    num_workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] = 0

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
    num_frames: Annotated[int, Field(ge=1, le=MAX_FRAMES)] = 8
    stride: Annotated[int, Field(ge=1, le=MAX_STRIDE)] = 2
    crop_size: Annotated[int, Field(ge=16, le=MAX_CROP)] = 64


class Pretrain(_Model):
    """Train the teacher on a larger, related labelled set before fine-tuning it on ``data``:
    what Kinetics-400 is to a real teacher (the demo's stand-in), or footage of related
    actions a team has labelled before. It starts from ``teacher.weights``; its head is
    replaced for the target classes."""

    data: Data
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    lr: Annotated[float, Field(gt=0)] = 2e-3


class Teacher(_Model):
    model: Annotated[str, Field(max_length=100)]
    weights: Location = "none"
    finetune: Literal["full", "head"] = "full"
    epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 5
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 8
    # The teacher's own input; None: the model's native clip from the registry. Its clips
    # cover the same time span and crop box as the student's (kdsearch.data.video).
    clip: Clip | None = None
    pretrain: Pretrain | None = None
    # Decode and run the teacher once per view before the trials (kdsearch.train.cache).
    cache: bool = True
    cache_views: Annotated[int, Field(ge=1, le=MAX_VIEWS)] = 4
    # A path every node shares, or a pyarrow filesystem URI; None: <storage>/cache.
    cache_dir: Location | None = None


#: Marks a ``Student`` field that ``search.space`` may sample; its constraints bound the
#: sampled values too (``kdsearch.config.checks``).
_SEARCHABLE = {"searchable": True}


class Student(_Model):
    """Training settings shared by every trial; searched ones are overridden per trial."""

    alpha: Annotated[float, Field(ge=0, le=1, json_schema_extra=_SEARCHABLE)] = 0.5
    temperature: Annotated[float, Field(gt=0, json_schema_extra=_SEARCHABLE)] = 4.0
    lr: Annotated[float, Field(gt=0, json_schema_extra=_SEARCHABLE)] = 1e-3
    backbone: Annotated[str, Field(max_length=100, json_schema_extra=_SEARCHABLE)] = "tiny3d"
    weight_decay: Annotated[float, Field(ge=0, json_schema_extra=_SEARCHABLE)] = 1e-4
    momentum: Annotated[float, Field(ge=0, le=1, json_schema_extra=_SEARCHABLE)] = 0.9
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH, json_schema_extra=_SEARCHABLE)] = 8
    optimizer: Annotated[Literal["sgd", "adamw"], Field(json_schema_extra=_SEARCHABLE)] = "adamw"
    # The teacher term (kdsearch.train.losses, docs/distillation.md); "kd" uses temperature.
    kd_loss: Annotated[Literal["kd", "dkd", "dist"], Field(json_schema_extra=_SEARCHABLE)] = "kd"
    # DKD (also at temperature). alpha 1, beta 8: mdistiller's defaults, at T 4 as here.
    dkd_alpha: Annotated[float, Field(ge=0, json_schema_extra=_SEARCHABLE)] = 1.0
    dkd_beta: Annotated[float, Field(ge=0, json_schema_extra=_SEARCHABLE)] = 8.0
    # Epochs of linear warm-up of the DKD term, counted from 1 (0 or 1: none). mdistiller
    # warms up over 20 of 240 epochs, which would keep a 10-epoch trial below full strength
    # throughout (at most half strength); 2 keeps its purpose (epoch 1 at half strength: a
    # fresh student is not hit by beta 8 at once) and gives the full term from epoch 2 on.
    dkd_warmup: Annotated[int, Field(ge=0, le=MAX_EPOCHS, json_schema_extra=_SEARCHABLE)] = 2
    # DIST: the authors' ImageNet setting (tau 1, beta = gamma = 1), mmrazor's defaults.
    dist_tau: Annotated[float, Field(gt=0, json_schema_extra=_SEARCHABLE)] = 1.0
    dist_beta: Annotated[float, Field(ge=0, json_schema_extra=_SEARCHABLE)] = 1.0
    dist_gamma: Annotated[float, Field(ge=0, json_schema_extra=_SEARCHABLE)] = 1.0
    weights: Location = "none"
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    clip: Clip = Clip()
    val_clips_per_video: Annotated[int, Field(ge=1, le=MAX_VAL_CLIPS)] = 1
    bf16: bool = True  # autocast on CUDA; ignored on the CPU
    channels_last: bool = True  # channels-last 3D memory format on CUDA; ignored on the CPU


#: Training settings a search may sample, in the order they are declared in ``Student``. Each
#: one also has a fixed value in ``student``.
SEARCHABLE: tuple[str, ...] = tuple(
    name for name, field in Student.model_fields.items()
    if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("searchable"))


def trial_student(student: Student, sampled: Mapping[str, Any]) -> Student:
    """The student settings one trial trains with: ``student`` with the sampled values of
    searchable settings put in (other keys are ignored), validated by the same constraints."""
    values = {name: _plain(sampled[name]) for name in SEARCHABLE if name in sampled}
    if "batch_size" in values and isinstance(values["batch_size"], float):
        values["batch_size"] = int(values["batch_size"])
    return Student.model_validate({**student.model_dump(), **values})


def searched_values(student: Student) -> dict[str, Any]:
    """The searchable settings of ``student`` as plain values, in declaration order."""
    return {name: getattr(student, name) for name in SEARCHABLE}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars

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
    grace_period: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1
    reduction_factor: Annotated[float, Field(ge=2, le=100)] = 2


class HyperBand(_Model):
    """Asynchronous HyperBand: ASHA over several brackets, each with its own grace period
    (bracket b starts at grace_period * reduction_factor**b), so that trials which start slowly
    but finish well are not all judged after one epoch. No trial waits for another."""

    name: Literal["hyperband"]
    grace_period: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1
    reduction_factor: Annotated[float, Field(ge=2, le=100)] = 2
    brackets: Annotated[int, Field(ge=1, le=16)] = 3


class Median(_Model):
    """Stop a trial whose best value is below the median of other trials at the same epoch."""

    name: Literal["median"]
    grace_period: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1
    min_samples_required: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 3


class Agreement(_Model):
    """ASHA that stops at a rung only once the search has seen that rung rank trials as the
    final epoch does (rank correlation at least ``min_agreement`` over ``min_pairs`` trials
    that reached both), and never a trial within one standard error of the metric (on the
    validation videos) of the rung's cutoff (kdsearch.search.stopping)."""

    name: Literal["agreement"] = "agreement"
    grace_period: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 1
    reduction_factor: Annotated[float, Field(ge=2, le=100)] = 2
    min_agreement: Annotated[float, Field(ge=-1, le=1)] = 0.5
    min_pairs: Annotated[int, Field(ge=2, le=MAX_TRIALS)] = 5
    noise_margin: bool = True


class NoScheduler(_Model):
    name: Literal["none"]


class WarmStart(_Model):
    """Completed trials of an earlier MLflow experiment, told to the sampler before the first
    trial (they are not trained again)."""

    experiment: Name
    tracking_uri: Location | None = None  # None: this search's tracking.uri


#: What a trial measures of its student before training (kdsearch.models.cost), logged as
#: metrics of its run: the parameter count, GFLOPs of one clip, batch-1 latency on the
#: trial's device (median and 90th percentile) and on the CPU with one thread.
COST_METRICS = ("student_params", "student_gflops", "latency_ms", "latency_p90_ms",
                "cpu_latency_ms")

#: The result key of a trial whose student exceeds ``search.constraints`` (its value: the
#: limits exceeded); such a trial reports once, untrained, and ends as ``infeasible``.
INFEASIBLE = "infeasible"

PositiveLimit = Annotated[float, Field(gt=0, le=1e9)]


class Constraints(_Model):
    """Limits a student must meet, checked before it trains: ``latency_ms`` on the trial's own
    device (a GPU when ``resources.gpus_per_trial`` > 0, else its CPUs), ``cpu_latency_ms``
    on one CPU thread, ``params_m`` in millions of parameters, ``gflops`` per clip."""

    latency_ms: PositiveLimit | None = None
    cpu_latency_ms: PositiveLimit | None = None
    params_m: PositiveLimit | None = None
    gflops: PositiveLimit | None = None

    def limits(self) -> dict[str, tuple[str, float, float]]:
        """name -> (the cost metric it limits, the limit, the metric's scale to the name's
        unit), for the limits set."""
        scales = {"latency_ms": ("latency_ms", 1.0), "cpu_latency_ms": ("cpu_latency_ms", 1.0),
                  "params_m": ("student_params", 1e-6), "gflops": ("student_gflops", 1.0)}
        return {name: (scales[name][0], limit, scales[name][1])
                for name, limit in self.model_dump().items() if limit is not None}

    def over(self, cost: Mapping[str, float]) -> dict[str, float]:
        """How far a student of ``cost`` is over each limit set (<= 0 when it meets it): the
        constraint values Optuna's samplers take."""
        return {name: cost[metric] * scale - limit
                for name, (metric, limit, scale) in self.limits().items()}

    def violations(self, cost: Mapping[str, float]) -> list[str]:
        """Each limit ``cost`` exceeds, as ``"latency_ms 31.2 > 20"``."""
        return [f"{name} {cost[metric] * scale:.4g} > {limit:g}"
                for name, (metric, limit, scale) in self.limits().items()
                if cost[metric] * scale > limit]


ValMetric = Literal["val_acc", "val_video_acc", "val_vote_acc", "val_macro_f1", "val_loss"]
CostMetric = Literal["latency_ms", "latency_p90_ms", "cpu_latency_ms", "student_params",
                     "student_gflops"]


class Objective(_Model):
    metric: ValMetric | CostMetric
    mode: Literal["max", "min"]


class Search(_Model):
    space: dict[str, Distribution] = {}
    num_samples: Annotated[int, Field(ge=1, le=MAX_TRIALS)] = 12
    max_concurrent: Annotated[int, Field(ge=1, le=MAX_CONCURRENT)] = 2
    seed: Seed = 0
    metric: ValMetric = "val_acc"
    mode: Literal["max", "min"] = "max"
    # A multi-objective search (e.g. val_acc max and latency_ms min): Optuna samples towards
    # the whole front; the first objective is search.metric (ranking, the best trial), and
    # every trial trains to the end (no scheduler: see docs/constraints.md).
    objectives: Annotated[list[Objective], Field(min_length=2, max_length=3)] | None = None
    sampler: Literal["tpe", "random", "cmaes", "qmc"] = "tpe"
    scheduler: Annotated[Asha | HyperBand | Median | Agreement | NoScheduler,
                         Field(discriminator="name")] = Agreement()
    # Configurations to train first (e.g. a paper's hand-picked alpha and temperature).
    points_to_evaluate: Annotated[list[dict[str, str | int | float | bool]],
                                  Field(max_length=MAX_POINTS)] = []
    warm_start: WarmStart | None = None
    # Limits on the student's cost: a trial that exceeds one ends as infeasible before it
    # trains, and never wins.
    constraints: Constraints = Constraints()

    @model_validator(mode="before")
    @classmethod
    def _default_scheduler_name(cls, data: Any) -> Any:
        # `scheduler: {grace_period: 2}` (or `--set search.scheduler.grace_period=2` on a file
        # that names none) tunes the default scheduler, not an unnamed one.
        scheduler = data.get("scheduler") if isinstance(data, Mapping) else None
        if isinstance(scheduler, Mapping) and "name" not in scheduler:
            return {**data, "scheduler": {"name": Agreement().name, **scheduler}}
        if isinstance(data, Mapping) and data.get("objectives") and scheduler is None:
            # Many objectives: every trial trains to the end (one metric cannot stop them).
            return {**data, "scheduler": {"name": "none"}}
        return data

    @model_validator(mode="after")
    def _first_objective_is_the_metric(self) -> Search:
        if not self.objectives:
            return self
        first = self.objectives[0]
        if first.metric in COST_METRICS:
            raise ValueError(f"objectives[0].metric: {first.metric} is a cost; the first "
                             "objective is the validation metric the trials are ranked by "
                             "(e.g. val_acc)")
        if "metric" in self.model_fields_set and self.metric != first.metric or (
                "mode" in self.model_fields_set and self.mode != first.mode):
            raise ValueError(f"metric/mode: {self.metric} ({self.mode}) differ from "
                             f"objectives[0] ({first.metric}, {first.mode}); give one")
        if self.scheduler.name != "none":
            raise ValueError(f"scheduler: {self.scheduler.name!r} stops trials by one metric, "
                             "which would cut trials the front needs; a search with "
                             "objectives runs every trial to the end (scheduler none)")
        if self.sampler == "cmaes":
            raise ValueError("sampler: 'cmaes' optimises one objective; use 'tpe'")
        if self.warm_start is not None:
            raise ValueError("warm_start: an earlier search's trials carry one value each; "
                             "a search with objectives starts without them")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: {', '.join(names)} name a metric twice")
        object.__setattr__(self, "metric", first.metric)
        object.__setattr__(self, "mode", first.mode)
        return self

    def front(self) -> list[tuple[str, str]]:
        """The (metric, mode) pairs the Pareto front is taken over: the objectives, or the
        search's metric against the student's latency."""
        if self.objectives:
            return [(o.metric, o.mode) for o in self.objectives]
        return [(self.metric, self.mode), ("latency_ms", "min")]


class Resources(_Model):
    cpus_per_trial: Annotated[float, Field(gt=0, le=MAX_CPUS)] = 1
    # Fractions pack trials on one GPU.
    gpus_per_trial: Annotated[float, Field(ge=0, le=MAX_GPUS)] = 0
    teacher_cpus: Annotated[int, Field(ge=1, le=MAX_CPUS)] = 2
    allow_cpu: bool = False  # GPUs asked of a cluster without any: CPU trials, not an error
    max_failures: Annotated[int, Field(ge=0, le=MAX_FAILURES)] = 0  # retries, from a checkpoint


class Tracking(_Model):
    uri: Location | None = None  # None: sqlite:///<start dir>/mlflow.db
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] = 3  # the best k keep their checkpoint
    # The Model Registry name of the best student; None: "<experiment.name>-student".
    registered_model: ModelName | None = None


class Report(_Model):
    """What a finished search measures besides its trials."""

    # Train the best configuration again without the teacher (alpha 0) and both on
    # ``kd_seeds`` seeds in all, and record what distillation added (kdsearch.search.baseline).
    kd_baseline: bool = True
    kd_seeds: Annotated[int, Field(ge=1, le=MAX_KD_SEEDS)] = 3
    # Export the best student to ONNX, checked against PyTorch, and register it beside the
    # PyTorch model (kdsearch.track.publish.register_onnx).
    onnx: bool = True


class SpaceConfig(_Model):
    experiment: Experiment
    data: Data
    teacher: Teacher
    student: Student = Student()
    search: Search = Search()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    report: Report = Report()
    storage: Location = "kdsearch_results"
    # Published weights from the torch hub cache only, never downloaded (also: --offline,
    # KDSEARCH_OFFLINE=1).
    offline: bool = False

    def redacted(self) -> dict[str, Any]:
        """The whole configuration as plain data with credentials stripped from every URI in
        it (``kdsearch.storage.redact_all``): the only form of it kdsearch prints, logs,
        pickles into Ray's state or stores."""
        redacted: dict[str, Any] = redact_all(self.model_dump(mode="json"))
        return redacted

    @property
    def tracking_uri(self) -> str:
        assert self.tracking.uri is not None, "resolve_paths() sets tracking.uri"
        return self.tracking.uri
