"""Cross-field checks of a space file that pydantic's per-field validation cannot make, and
pydantic's errors as one line per problem (``dotted.path: value rule``)."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError

from kdsearch.config.schema import (
    SEARCHABLE,
    Choice,
    IntRange,
    LogUniform,
    Search,
    Student,
    Uniform,
)


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
    """The rule ``value`` breaks as a value of student setting ``name``, or None: the bounds
    are the ``Student`` field's own constraints, so the schema is their one source."""
    if name == "backbone":
        from kdsearch.models import list_models

        if value not in list_models("student"):
            return f"is not a registered student (valid: {', '.join(list_models('student'))})"
        return None
    field = Student.model_fields[name]
    if get_origin(field.annotation) is Literal:
        allowed = get_args(field.annotation)
        return None if value in allowed else f"is not one of {', '.join(map(str, allowed))}"
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
