"""Cross-field checks of a space file that pydantic's per-field validation cannot make, and
pydantic's errors as one line per problem (``dotted.path: value rule``)."""

from __future__ import annotations

import math
import reprlib
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError

from kdsearch.config.schema import (
    SEARCHABLE,
    Choice,
    IntRange,
    LogUniform,
    Search,
    SpaceConfig,
    Student,
    Uniform,
)
from kdsearch.text import did_you_mean


def _range_problems(name: str, dist: Uniform | LogUniform | IntRange) -> list[str]:
    where = f"search.space.{name}"
    problems = []
    if not dist.low < dist.high:
        problems.append(f"{where}.high: {excerpt(dist.high)} must be greater than low "
                        f"({excerpt(dist.low)})")
    if (isinstance(dist, LogUniform) or getattr(dist, "log", False)) and dist.low <= 0:
        problems.append(f"{where}.low: {excerpt(dist.low)} must be > 0 for a log scale")
    for end in ("low", "high"):
        value = getattr(dist, end)
        rule = _value_problem(name, value)
        if rule:
            problems.append(f"{where}.{end}: {excerpt(value)} {rule}")
    return problems


def _value_problem(name: str, value: Any) -> str | None:
    """The rule ``value`` breaks as a value of student setting ``name``, or None: the bounds
    are the ``Student`` field's own constraints, so the schema is their one source."""
    if name == "backbone":
        from kdsearch.models import list_models

        if value not in list_models("student"):
            students = list_models("student")
            return (f"is not a registered student (valid: {', '.join(students)})"
                    f"{did_you_mean(str(value)[:100], students)}")
        return None
    field = Student.model_fields[name]
    if get_origin(field.annotation) is Literal:
        allowed = get_args(field.annotation)
        return None if value in allowed else (f"is not one of {', '.join(map(str, allowed))}"
                                              f"{did_you_mean(str(value)[:100], allowed)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "is not a finite number"
    bounds = {type(rule).__name__: getattr(rule, type(rule).__name__.lower())
              for rule in field.metadata if isinstance(rule, Ge | Gt | Le | Lt)}
    if field.annotation is int and (value != int(value) or value < bounds.get("Ge", value)):
        return f"must be an integer >= {bounds['Ge']}" if "Ge" in bounds else "must be an integer"
    if "Ge" in bounds and "Le" in bounds and not bounds["Ge"] <= value <= bounds["Le"]:
        return f"is outside [{bounds['Ge']}, {bounds['Le']}]"
    if "Gt" in bounds and not value > bounds["Gt"]:
        return f"must be > {bounds['Gt']}"
    if "Ge" in bounds and not value >= bounds["Ge"]:
        return f"must be >= {bounds['Ge']}"
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
            problems.append(f"search.space.{key(name)}: unknown setting (searchable: "
                            f"{', '.join(SEARCHABLE)}){did_you_mean(key(name), SEARCHABLE)}")
        elif isinstance(dist, Choice):
            for i, value in enumerate(dist.values):
                rule = _value_problem(name, value)
                if rule:
                    problems.append(f"search.space.{name}.values[{i}]: {excerpt(value)} {rule}")
        elif _categorical(name):
            problems.append(f"search.space.{name}.type: {dist.type!r} must be 'choice' "
                            "for a categorical setting")
        else:
            problems.extend(_range_problems(name, dist))
    return problems


def _categorical(name: str) -> bool:
    """A student setting whose values are names (``str`` or a ``Literal``): only a choice
    can search it."""
    annotation = Student.model_fields[name].annotation
    return annotation is str or get_origin(annotation) is Literal


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
                    problems.append(f"{where}: {excerpt(value)} is not one of "
                                    f"search.space.{parent}.values {excerpt(other.values)}")
    return problems


def _point_problems(search: Search) -> list[str]:
    """Every point sets searched settings only, each inside its distribution."""
    problems = []
    for i, point in enumerate(search.points_to_evaluate):
        for name, value in point.items():
            where = f"search.points_to_evaluate[{i}].{key(name)}"
            dist = search.space.get(name)
            if dist is None:
                problems.append(f"{where}: not a searched setting (searched: "
                                f"{', '.join(search.space) or 'none'})")
            elif isinstance(dist, Choice):
                if value not in dist.values:
                    problems.append(f"{where}: {excerpt(value)} is not one of "
                                    f"{excerpt(dist.values)}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{where}: {excerpt(value)} is not a number")
            elif not dist.low <= value <= dist.high:
                problems.append(f"{where}: {excerpt(value)} is outside [{excerpt(dist.low)}, "
                                f"{excerpt(dist.high)}]")
    return problems


def format_validation_error(err: ValidationError) -> list[str]:
    """pydantic's errors as ``dotted.path: value rule`` lines, with the closest valid name
    for a misspelt key or value, and at most a short excerpt of the value."""
    lines = []
    for e in err.errors():
        loc = ".".join(_loc_part(p) for p in e["loc"] if not _is_union_tag(p))
        loc = loc.replace(".[", "[")
        ctx = e.get("ctx") or {}
        if e["type"] == "extra_forbidden":
            name = key(str(e["loc"][-1]))
            lines.append(f"{loc}: unknown key{did_you_mean(name, _allowed_keys(e['loc'][:-1]))}")
        elif e["type"] == "missing":
            lines.append(f"{loc}: missing (required)")
        elif e["type"] == "union_tag_invalid":
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            tag = str(ctx.get("tag", ""))
            lines.append(f"{loc}.{ctx.get('discriminator', 'type').strip(chr(39))}: "
                         f"{excerpt(tag)} is not one of {', '.join(tags)}"
                         f"{did_you_mean(tag, tags) if len(tag) <= 100 else ''}")
        elif e["type"] == "literal_error":
            allowed = [t.strip(" '") for t in
                       str(ctx.get("expected", "")).replace(" or ", ", ").split(",")]
            value = e.get("input")
            lines.append(f"{loc}: {excerpt(value)} input should be one of {', '.join(allowed)}"
                         f"{did_you_mean(value, allowed) if isinstance(value, str) else ''}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            # A model validator's message starts with its field: "train_split: must ..."
            if e["type"] == "value_error" and isinstance(e.get("input"), dict):
                lines.append(f"{loc}.{msg}")
            else:
                lines.append(f"{loc}: {excerpt(e.get('input'))} {msg[0].lower()}{msg[1:]}")
    return lines


def key(name: str, limit: int = 60) -> str:
    """A key of the space file as a message names it: cut to ``limit`` characters."""
    return name if len(name) <= limit else name[:limit] + "..."


def excerpt(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: a message never echoes a huge
    input (a YAML alias bomb expands to megabytes)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxdict = 6
    short.maxlevel = 2
    text = short.repr(value)
    return text if len(text) <= 2 * limit else text[:2 * limit] + "..."


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the space file accepts at ``loc`` (a pydantic error location, union tags
    included), for "did you mean"."""
    annotation: Any = SpaceConfig
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    model = _model(annotation)
    return list(model.model_fields) if model is not None else []


def _step(annotation: Any, part: int | str) -> Any:
    annotation = _unwrap(annotation)
    model = _model(annotation)
    if model is not None:
        field = model.model_fields.get(str(part))
        return None if field is None else field.annotation
    origin = get_origin(annotation)
    if origin is dict:
        return get_args(annotation)[1]
    if origin is list:
        return get_args(annotation)[0]
    if origin in (Union, UnionType):  # a tagged union: ``part`` names the member
        for member in get_args(annotation):
            inner = _model(_unwrap(member))
            tag = inner and next((f for f in ("type", "name") if f in inner.model_fields), None)
            if inner is not None and isinstance(tag, str) and part in get_args(
                    inner.model_fields[tag].annotation):
                return inner
    return None


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation,
                                                                      BaseModel) else None


def _loc_part(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else key(str(part))


def _is_union_tag(part: int | str) -> bool:
    return part in ("uniform", "loguniform", "int", "choice", "asha", "hyperband", "median",
                    "agreement", "none", "str", "int", "float", "bool"
                    ) and not isinstance(part, int)
