"""Model entries of the registry, its errors, and the classification head of a built model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

Role = Literal["student", "teacher"]
ROLES: tuple[str, ...] = ("student", "teacher")
SOURCES: tuple[str, ...] = ("torchvision", "pytorchvideo", "kdsearch")
# Number of classes of the head each published checkpoint was trained with.
PRETRAINED_CLASSES: dict[str, int] = {"kinetics400": 400, "imagenet": 1000}

# Normalisation of the weights' training data; clips must be normalised with the same values.
KINETICS_TV_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_TV_STD = (0.22803, 0.22145, 0.216989)
KINETICS_PTV_MEAN = (0.45, 0.45, 0.45)
KINETICS_PTV_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Attribute set on every built model: dotted path of its final nn.Linear.
HEAD_ATTR = "kdsearch_head"


class UnknownModelError(ValueError):
    """A model name that is not registered, or not registered for the requested role."""


class WeightsError(ValueError):
    """Weights that were asked for but cannot be found, read or loaded into the model."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where a model comes from, what input it expects, which weights exist.

    ``clip`` is the recommended ``(num_frames, crop_size)`` and ``stride`` its frame stride;
    every model except ``mvit_v2_s`` also runs on other clip shapes (``T >= 4``,
    ``H = W >= 32``). ``weights_file`` is the
    checkpoint's basename in ``torch.hub.get_dir()/checkpoints`` and ``weights_url`` where it
    is downloaded from on first use (``kdsearch.models.fetch_weights``).
    """

    name: str
    roles: frozenset[str]
    source: str
    clip: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: str | None
    weights_file: str | None
    weights_url: str | None
    description: str
    # The model scores every frame (``frame_logits``), so videos can also be decided by vote.
    frame_level: bool = False
    # Frames between the sampled frames of the recommended clip (at 25-30 fps): with ``clip``
    # the input the weights were trained on, which a teacher gets by default (teacher.clip).
    stride: int = 2

    def __post_init__(self) -> None:
        if not self.roles or not self.roles <= set(ROLES):
            raise ValueError(
                f"ModelSpec '{self.name}': roles is {sorted(self.roles)}, but must be a "
                f"non-empty subset of {list(ROLES)}"
            )
        if self.source not in SOURCES:
            raise ValueError(
                f"ModelSpec '{self.name}': source is '{self.source}', but must be one of "
                f"{list(SOURCES)}"
            )
        if self.pretrained is not None and self.pretrained not in PRETRAINED_CLASSES:
            raise ValueError(
                f"ModelSpec '{self.name}': pretrained is '{self.pretrained}', but must be None "
                f"or one of {list(PRETRAINED_CLASSES)}"
            )
        if self.pretrained is not None and not (self.weights_file and self.weights_url):
            raise ValueError(
                f"ModelSpec '{self.name}': pretrained is '{self.pretrained}', so weights_file "
                "and weights_url must be set"
            )


def mark_head(model: nn.Module, path: str | None = None) -> nn.Module:
    """Record on ``model`` the dotted path of its classification layer (an ``nn.Linear``).

    Without ``path`` the model keeps its mark, or else its last ``nn.Linear`` is marked.
    """
    path = head_path(model) if path is None else path
    if not isinstance(model.get_submodule(path), nn.Linear):
        raise TypeError(f"head '{path}' of {type(model).__name__} is not an nn.Linear")
    setattr(model, HEAD_ATTR, path)
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the model in .module, torch.compile in ._orig_mod.
    while not hasattr(model, HEAD_ATTR):
        inners = [getattr(model, attr, None) for attr in ("module", "_orig_mod")]
        inner = next((m for m in inners if isinstance(m, nn.Module)), None)
        if inner is None:
            break
        model = inner
    return model


def head_path(model: nn.Module) -> str:
    """Dotted path of the head; falls back to the last ``nn.Linear`` for unmarked models."""
    model = _unwrap(model)
    path = getattr(model, HEAD_ATTR, None)
    if isinstance(path, str):
        return path
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no `{HEAD_ATTR}` attribute and no nn.Linear layer; "
            "build it with kdsearch.models.create_model"
        )
    return linears[-1]


def get_head(model: nn.Module) -> nn.Module:
    """The final classification layer of a model from ``create_model`` (for head-only tuning)."""
    return _unwrap(model).get_submodule(head_path(model))


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the head for a freshly initialised ``nn.Linear(in_features, num_classes)``."""
    path = head_path(model)
    old = model.get_submodule(path)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"head '{path}' of {type(model).__name__} is not an nn.Linear")
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    setattr(model, HEAD_ATTR, path)
