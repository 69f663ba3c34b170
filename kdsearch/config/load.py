"""Reading a space file: YAML, ``--set`` overrides, validation and path resolution; and
writing the space file that trains one sampled configuration once (:func:`final_space`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdsearch.config.checks import excerpt, format_validation_error, search_space_problems
from kdsearch.config.schema import (
    PRETRAINED,
    SEARCHABLE,
    Choice,
    Clip,
    ConfigError,
    SpaceConfig,
)
from kdsearch.storage import is_uri
from kdsearch.text import did_you_mean


def load_space(path: str | Path, overrides: Sequence[str] = (), cwd: Path | None = None
               ) -> SpaceConfig:
    """Parse, override, validate and resolve a space file; raise ConfigError on any problem."""
    raw = read_yaml(Path(path))
    raw = apply_overrides(raw, overrides)
    try:
        return validate(raw, cwd or Path.cwd())
    except ConfigError as err:
        raise ConfigError([_with_source(line, overrides) for line in err.problems]) from None


def _with_source(problem: str, overrides: Sequence[str]) -> str:
    """A problem with a value that ``--set`` gave says so (the others are the file's)."""
    where = problem.split(":", 1)[0]
    for item in overrides:
        key = item.partition("=")[0]
        if where == key or where.startswith((f"{key}.", f"{key}[")):
            text = item if len(item) <= 80 else item[:80] + "..."
            return f"{problem} (from --set {text})"
    return problem


#: A space file is a few KB; these stop a huge or hostile one before it is parsed or expanded.
MAX_FILE_BYTES = 1 << 20
#: Values a document may hold with every alias expanded: a real space file holds a few
#: hundred, a YAML alias bomb (``b: [*a, *a, ...]`` nested) billions from a few hundred bytes.
MAX_NODES = 100_000


class _TooLarge(yaml.YAMLError):
    """The document's aliases expand to more than :data:`MAX_NODES` values, or refer to
    themselves."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts every document's values with aliases expanded before
    constructing anything: an alias bomb is rejected in milliseconds, and nothing downstream
    (validation, messages) ever walks billions of shared references."""

    def compose_document(self) -> yaml.Node:
        node: yaml.Node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _TooLarge("an alias refers to the value that contains it")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_)
                    for k, v in node.value)
    open_.discard(key)
    if size > MAX_NODES:
        raise _TooLarge(f"its aliases expand to more than {MAX_NODES} values (a space file "
                        "holds a few hundred)")
    sizes[key] = size
    return size


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with aliases bounded (:class:`_BoundedLoader`); raises
    ``yaml.YAMLError`` or ValueError (an integer of more than 4300 digits)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"{path}: no such space file"])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: {size} bytes; a space file must be at most "
                           f"{MAX_FILE_BYTES} bytes"])
    try:
        data = parse_yaml(path.read_text(errors="replace"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"{where}: invalid YAML: {_short(problem)}"]) from None
    except (ValueError, RecursionError) as err:  # a 5000-digit integer; nesting too deep
        problem = ("nested too deeply" if isinstance(err, RecursionError)
                   else f"a value cannot be read ({_short(str(err), 60)})")
        raise ConfigError([f"{path}: invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: a space file must be a mapping of sections, "
                           f"got {type(data).__name__}"])
    return data


def _short(text: str, limit: int = 120) -> str:
    """A message part (PyYAML's problem, which may quote the input) cut to ``limit``."""
    return text if len(text) <= limit else text[:limit] + "..."


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (numbers, lists...)."""
    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {_short(item, 80)}: expected dotted.key=value")
            continue
        try:
            value = parse_yaml(text) if text else ""
        except _TooLarge as err:
            problems.append(f"--set {_short(item, 80)}: {err}")
            continue
        except (yaml.YAMLError, ValueError, RecursionError):
            value = text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def validate(raw: dict[str, Any], cwd: Path) -> SpaceConfig:
    try:
        cfg = SpaceConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None
    problems = search_space_problems(cfg.search) + _model_problems(cfg)
    if problems:
        raise ConfigError(problems)
    cfg = resolve_paths(cfg, cwd)
    problems = _path_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _model_problems(cfg: SpaceConfig) -> list[str]:
    from kdsearch.models import list_models

    problems = []
    teachers, students = list_models("teacher"), list_models("student")
    if cfg.teacher.model not in teachers:
        problems.append(f"teacher.model: {excerpt(cfg.teacher.model)} is not a registered teacher "
                        f"(valid: {', '.join(teachers)})"
                        f"{did_you_mean(cfg.teacher.model, teachers)}")
    if "backbone" not in cfg.search.space and cfg.student.backbone not in students:
        problems.append(f"student.backbone: {excerpt(cfg.student.backbone)} is not a registered "
                        f"student (valid: {', '.join(students)})"
                        f"{did_you_mean(cfg.student.backbone, students)}")
    if cfg.search.metric == "val_vote_acc":
        problems += _vote_problems(cfg, students)
    if cfg.teacher.model in teachers:
        problems += _teacher_clip_problems(cfg)
    if cfg.search.metric == "val_loss" and cfg.search.mode != "min":
        problems.append("search.mode: 'max' is wrong for metric val_loss; use min")
    if cfg.search.metric != "val_loss" and cfg.search.mode != "max":
        problems.append(f"search.mode: 'min' is wrong for metric {cfg.search.metric}; use max")
    return problems


def teacher_clip(cfg: SpaceConfig) -> Clip:
    """The clip the teacher sees: ``teacher.clip``, or the teacher model's native input from
    the registry (its frames, stride and crop). It covers the same time span and crop box as
    the student's clip (kdsearch.data.video.PairedClipDataset)."""
    if cfg.teacher.clip is not None:
        return cfg.teacher.clip
    from kdsearch.models import get_spec

    spec = get_spec(cfg.teacher.model)
    return Clip(num_frames=spec.clip[0], stride=spec.stride, crop_size=spec.clip[1])


def _teacher_clip_problems(cfg: SpaceConfig) -> list[str]:
    from kdsearch.models import get_spec

    clip, spec = cfg.teacher.clip, get_spec(cfg.teacher.model)
    # MViT's positional embeddings fix its input; every other model takes any clip shape.
    if (clip is not None and cfg.teacher.model == "mvit_v2_s"
            and (clip.num_frames, clip.crop_size) != spec.clip):
        return [f"teacher.clip: mvit_v2_s takes exactly {spec.clip[0]} frames at "
                f"{spec.clip[1]} px, not {clip.num_frames} at {clip.crop_size}; leave "
                "teacher.clip out to use its native input"]
    return []


def _vote_problems(cfg: SpaceConfig, students: list[str]) -> list[str]:
    from kdsearch.models import get_spec

    space = cfg.search.space.get("backbone")
    names = space.values if isinstance(space, Choice) else [cfg.student.backbone]
    frame_level = [n for n in students if get_spec(n).frame_level]
    bad = [str(n) for n in names if n in students and not get_spec(str(n)).frame_level]
    if bad:
        return [f"search.metric: val_vote_acc needs frame-level students, but "
                f"{', '.join(bad)} score whole clips (frame-level: {', '.join(frame_level)})"]
    return []


def _absolute(value: str, cwd: Path) -> str:
    """An absolute path; a URI (``s3://...``, see kdsearch.storage) is kept as written."""
    if is_uri(value):
        return value
    return str((cwd / Path(value).expanduser()).resolve())


def resolve_paths(cfg: SpaceConfig, cwd: Path) -> SpaceConfig:
    """Make every path absolute, relative ones against ``cwd`` (the start directory)."""
    data = cfg.data.model_copy(update={"root": _absolute(cfg.data.root, cwd)})
    teacher, student = cfg.teacher, cfg.student
    if teacher.weights not in PRETRAINED:
        teacher = teacher.model_copy(update={"weights": _absolute(teacher.weights, cwd)})
    if teacher.cache_dir:
        teacher = teacher.model_copy(update={"cache_dir": _absolute(teacher.cache_dir, cwd)})
    if teacher.pretrain is not None:
        source = teacher.pretrain.data
        source = source.model_copy(update={"root": _absolute(source.root, cwd)})
        teacher = teacher.model_copy(update={
            "pretrain": teacher.pretrain.model_copy(update={"data": source})})
    if student.weights not in PRETRAINED:
        student = student.model_copy(update={"weights": _absolute(student.weights, cwd)})
    uri = _tracking_uri(cfg.tracking.uri or "sqlite:///mlflow.db", cwd, "tracking.uri")
    tracking = cfg.tracking.model_copy(update={"uri": uri})
    search = cfg.search
    if search.warm_start is not None and search.warm_start.tracking_uri is not None:
        warm = search.warm_start.model_copy(update={"tracking_uri": _tracking_uri(
            search.warm_start.tracking_uri, cwd, "search.warm_start.tracking_uri")})
        search = search.model_copy(update={"warm_start": warm})
    return cfg.model_copy(update={"data": data, "teacher": teacher, "student": student,
                                  "tracking": tracking, "search": search,
                                  "storage": _absolute(cfg.storage, cwd)})


def _tracking_uri(uri: str, cwd: Path, where: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + _absolute(uri.removeprefix("sqlite:///"), cwd)
    if "://" not in uri:
        raise ConfigError([f"{where}: {excerpt(uri, 200)} must be a URI (sqlite:///path, "
                           "http://host)"])
    return uri


def _split_problems(cfg: SpaceConfig) -> list[str]:
    """The declared layout must match the folders and list files; listing them is cheap (the
    videos themselves are probed later, and unusable ones are skipped, not fatal)."""
    from kdsearch.data.layouts import LayoutError, list_split

    data = cfg.data
    root = Path(data.root)
    fmt = "video_folder" if data.format == "synthetic" else data.format
    try:
        train = list_split(root, fmt, data.train_split, data.classes)
    except LayoutError as err:
        return [f"data.train_split: {err}"]
    if data.val_split is None:
        return []
    try:
        list_split(root, fmt, data.val_split, train.classes)
    except LayoutError as err:
        return [f"data.val_split: {err}"]
    return []


def _path_problems(cfg: SpaceConfig) -> list[str]:
    problems = []
    if is_uri(cfg.data.root):
        problems.extend(_uri_root_problems(cfg))
    elif cfg.data.format != "synthetic" and not Path(cfg.data.root).is_dir():
        problems.append(f"data.root: {excerpt(cfg.data.root, 200)} is not a directory")
    elif cfg.data.format != "synthetic":  # the synthetic set is generated later
        problems.extend(_split_problems(cfg))
    space = cfg.search.space.get("backbone")
    backbones = space.values if isinstance(space, Choice) else [cfg.student.backbone]
    candidates = [("teacher", cfg.teacher.model, cfg.teacher.weights)]
    candidates += [("student", str(name), cfg.student.weights) for name in backbones]
    for section, model, weights in candidates:
        if weights == "none":
            continue
        if weights not in PRETRAINED:
            if not Path(weights).is_file():
                problems.append(f"{section}.weights: {excerpt(weights, 200)} is not a file")
            continue
        problems.extend(_pretrained_problems(section, model, weights, cfg.offline))
    return sorted(set(problems), key=problems.index)


def _uri_root_problems(cfg: SpaceConfig) -> list[str]:
    """A data root in an object store: copied to each node's disk on first use, where its
    layout is checked; here only that it exists and can be read."""
    from kdsearch import storage

    root = storage.redact(cfg.data.root)
    if cfg.data.format == "synthetic":
        return [f"data.root: {excerpt(root, 200)} is a URI, but format synthetic generates its "
                "videos on local disk; use a local path"]
    try:
        found = storage.is_dir(cfg.data.root)
    except OSError as err:
        return [f"data.root: {excerpt(root, 200)} cannot be read: {_short(str(err))}"]
    return [] if found else [f"data.root: {excerpt(root, 200)} is not a directory (no objects "
                             "under it)"]


def _pretrained_problems(section: str, model: str, weights: str, offline: bool) -> list[str]:
    """A missing file of published weights is a problem only offline: else the search
    downloads it before it starts (kdsearch.search.weights)."""
    from kdsearch.models import WeightsError, get_spec, offline_from_env, weights_path

    spec = get_spec(model)
    if weights == "pretrained" and spec.pretrained is None:
        return [f"{section}.weights: 'pretrained' but {model} has no pretrained weights; "
                "use none"]
    if weights != "pretrained" and spec.pretrained != weights:
        return [f"{section}.weights: {excerpt(weights)} is not available for {model} "
                f"(available: none{', ' + spec.pretrained if spec.pretrained else ''})"]
    try:
        offline = offline or offline_from_env()
    except WeightsError as err:  # a KDSEARCH_OFFLINE value that is neither on nor off
        return [str(err)]
    if offline and not weights_path(spec).is_file():
        return [f"{section}.weights: {model} needs its {spec.pretrained} weights in "
                f"{weights_path(spec)}; download {spec.weights_url} and place it there (no "
                "network access at run time)"]
    return []


def final_space(space: Mapping[str, Any], sampled: Mapping[str, Any],
                experiment: str | None = None) -> dict[str, Any]:
    """The space file (a dict) that trains one configuration once: ``space`` with the
    ``sampled`` student settings fixed and no search left."""
    out: dict[str, Any] = copy.deepcopy(dict(space))
    student = out.setdefault("student", {})
    for name, value in sampled.items():
        if name in SEARCHABLE:
            student[name] = value.item() if hasattr(value, "item") else value  # numpy scalars
    search = out.setdefault("search", {})
    search.update(space={}, num_samples=1, max_concurrent=1, scheduler={"name": "none"})
    if experiment is not None:
        out.setdefault("experiment", {})["name"] = experiment
    return out
