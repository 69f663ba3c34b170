"""Reading a space file: YAML, ``--set`` overrides, validation and path resolution."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdsearch.config import (
    PRETRAINED,
    ConfigError,
    SpaceConfig,
    format_validation_error,
    search_space_problems,
)


def load_space(path: str | Path, overrides: Sequence[str] = (), cwd: Path | None = None
               ) -> SpaceConfig:
    """Parse, override, validate and resolve a space file; raise ConfigError on any problem."""
    raw = read_yaml(Path(path))
    raw = apply_overrides(raw, overrides)
    return validate(raw, cwd or Path.cwd())


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"{path}: no such space file"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: a space file must be a mapping of sections, "
                           f"got {type(data).__name__}"])
    return data


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (numbers, lists...)."""
    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {item}: expected dotted.key=value")
            continue
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
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
        problems.append(f"teacher.model: {cfg.teacher.model!r} is not a registered teacher "
                        f"(valid: {', '.join(teachers)})")
    if "backbone" not in cfg.search.space and cfg.student.backbone not in students:
        problems.append(f"student.backbone: {cfg.student.backbone!r} is not a registered "
                        f"student (valid: {', '.join(students)})")
    if cfg.search.metric == "val_loss" and cfg.search.mode != "min":
        problems.append("search.mode: 'max' is wrong for metric val_loss; use min")
    if cfg.search.metric != "val_loss" and cfg.search.mode != "max":
        problems.append(f"search.mode: 'min' is wrong for metric {cfg.search.metric}; use max")
    return problems


def _absolute(value: str, cwd: Path) -> str:
    return str((cwd / Path(value).expanduser()).resolve())


def resolve_paths(cfg: SpaceConfig, cwd: Path) -> SpaceConfig:
    """Make every path absolute, relative ones against ``cwd`` (the start directory)."""
    data = cfg.data.model_copy(update={"root": _absolute(cfg.data.root, cwd)})
    teacher, student = cfg.teacher, cfg.student
    if teacher.weights not in PRETRAINED:
        teacher = teacher.model_copy(update={"weights": _absolute(teacher.weights, cwd)})
    if student.weights not in PRETRAINED:
        student = student.model_copy(update={"weights": _absolute(student.weights, cwd)})
    uri = cfg.tracking.uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + _absolute(uri.removeprefix("sqlite:///"), cwd)
    elif "://" not in uri:
        raise ConfigError([f"tracking.uri: {uri!r} must be a URI (sqlite:///path, http://host)"])
    tracking = cfg.tracking.model_copy(update={"uri": uri})
    return cfg.model_copy(update={"data": data, "teacher": teacher, "student": student,
                                  "tracking": tracking,
                                  "storage": _absolute(cfg.storage, cwd)})


def _split_problems(cfg: SpaceConfig) -> list[str]:
    """Both splits must hold videos of the same classes; listing folders is cheap."""
    from kdsearch.data import scan_video_folder

    try:
        names, _ = scan_video_folder(Path(cfg.data.root), cfg.data.train_split, cfg.data.classes)
        scan_video_folder(Path(cfg.data.root), cfg.data.val_split, names)
    except ValueError as err:
        return [f"data.root: {err}"]
    return []


def _path_problems(cfg: SpaceConfig) -> list[str]:
    from kdsearch.models import get_spec, weights_path

    problems = []
    if cfg.data.format != "synthetic" and not Path(cfg.data.root).is_dir():
        problems.append(f"data.root: {cfg.data.root!r} is not a directory")
    elif cfg.data.format == "video_folder":
        problems.extend(_split_problems(cfg))
    for section, model, weights in (("teacher", cfg.teacher.model, cfg.teacher.weights),
                                    ("student", cfg.student.backbone, cfg.student.weights)):
        if weights == "none":
            continue
        if weights not in PRETRAINED:
            if not Path(weights).is_file():
                problems.append(f"{section}.weights: {weights!r} is not a file")
            continue
        spec = get_spec(model)
        if spec.pretrained != weights:
            problems.append(f"{section}.weights: {weights!r} is not available for {model} "
                            f"(available: none{', ' + spec.pretrained if spec.pretrained else ''})")
        elif not weights_path(spec).is_file():
            problems.append(f"{section}.weights: {weights!r} needs {weights_path(spec)}; "
                            f"download {spec.weights_url} and place it there (no network "
                            "access at run time)")
    return problems
