"""One registry for students and teachers: register, list, look up and build models by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from kdsearch.models._download import read_pretrained
from kdsearch.models._spec import (
    PRETRAINED_CLASSES,
    ROLES,
    ModelSpec,
    Role,
    UnknownModelError,
    WeightsError,
    mark_head,
    replace_head,
)
from kdsearch.models._weights import CHECKPOINT_SUFFIXES, load_state, read_state_dict

Builder = Callable[[int], nn.Module]

_REGISTRY: dict[str, tuple[ModelSpec, Builder]] = {}


def register_model(spec: ModelSpec, builder: Builder) -> None:
    """Add a model. ``builder(num_classes)`` returns it with an ``nn.Linear`` head of that size.

    When published weights are loaded, ``builder`` is called with the weights' original class
    count (400 for Kinetics-400, 1000 for ImageNet) and the head is replaced afterwards. The
    builder should mark its head with ``kdsearch.models.mark_head`` (otherwise the last
    ``nn.Linear`` is taken to be the head).
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"model '{spec.name}' is already registered")
    _REGISTRY[spec.name] = (spec, builder)


def _check_role(role: str | None) -> None:
    if role is not None and role not in ROLES:
        raise ValueError(f"role is '{role}', but must be None or one of {list(ROLES)}")


def list_models(role: Role | None = None) -> list[str]:
    """Sorted names of the registered models, optionally only those usable in ``role``."""
    _check_role(role)
    return sorted(n for n, (s, _) in _REGISTRY.items() if role is None or role in s.roles)


def get_spec(name: str, role: Role | None = None) -> ModelSpec:
    """The registry entry of ``name``; raises UnknownModelError listing the valid names."""
    _check_role(role)
    entry = _REGISTRY.get(name)
    if entry is None or (role is not None and role not in entry[0].roles):
        problem = f"unknown model '{name}'" if entry is None else f"model '{name}' is not a {role}"
        valid = ", ".join(list_models(role))
        raise UnknownModelError(f"{problem}; valid {role or 'model'}s: {valid}")
    return entry[0]


def _weights_source(weights: str | Path) -> str | Path:
    """'none', a pretrained kind, or the Path of a local checkpoint."""
    if isinstance(weights, str) and (weights == "none" or weights in PRETRAINED_CLASSES):
        return weights
    path = Path(weights)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise WeightsError(
            f"weights is '{weights}', but must be 'none', one of {list(PRETRAINED_CLASSES)} "
            f"or a path to a {'/'.join(CHECKPOINT_SUFFIXES)} file"
        )
    return path


def create_model(
    name: str, num_classes: int, weights: str | Path = "none", role: Role | None = None
) -> nn.Module:
    """Build a registered model for ``num_classes`` classes.

    Args:
        name: a name from ``list_models()``.
        num_classes: size of the new ``nn.Linear`` head (``get_head(model)``).
        weights: ``"none"`` (random init; seed with ``torch.manual_seed``), the model's
            ``spec.pretrained`` kind (``"kinetics400"``/``"imagenet"``) from the torch hub
            cache, downloaded there on first use unless ``KDSEARCH_OFFLINE=1``, or a local
            ``.pt/.pth/.pyth`` checkpoint, either of this model for ``num_classes`` (loaded
            whole) or of its backbone with another head.
        role: if given, ``name`` must be registered for this role.

    Returns:
        A model mapping ``[B, 3, T, H, W]`` clips to ``[B, num_classes]`` logits.
    """
    spec = get_spec(name, role)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes is {num_classes!r}, but must be an integer >= 1")
    source = _weights_source(weights)
    # Files are read before the model is built, so a bad one fails before any expensive work.
    if source == "none":
        return _build(name, num_classes)
    if isinstance(source, Path):
        state = read_state_dict(source)
        model = _build(name, num_classes)
        load_state(model, state, source, name, skip_head=True)
        return model
    if source != spec.pretrained:
        available = spec.pretrained or "none"
        raise WeightsError(f"model '{name}' has no {source} weights (available: {available})")
    path, state = read_pretrained(spec)
    model = _build(name, PRETRAINED_CLASSES[source])
    load_state(model, state, path, name, skip_head=False)
    replace_head(model, num_classes)
    return model


def _build(name: str, num_classes: int) -> nn.Module:
    """The registered builder's model, with its head marked and freshly initialised."""
    model = mark_head(_REGISTRY[name][1](num_classes))
    replace_head(model, num_classes)
    return model
