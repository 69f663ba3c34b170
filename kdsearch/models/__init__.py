"""Registry of student and teacher models for video action recognition, the normalised wrapper
(:mod:`~kdsearch.models.normalized`) and the checkpoint format
(:mod:`~kdsearch.models.checkpoints`).

May import: :mod:`kdsearch.storage` (checkpoints read from a URI). Never the data, training,
search or tracking modules.

Every model maps clips ``[B, 3, T, H, W]`` (normalised with ``spec.mean``/``spec.std``) to
logits ``[B, num_classes]``::

    from kdsearch.models import create_model, get_head, list_models

    list_models("teacher")  # ['mc3_18', 'mvit_v2_s', 'r2plus1d_18', 'r3d_18', ...]
    teacher = create_model("r3d_18", num_classes=4, weights="kinetics400", role="teacher")
    get_head(teacher)  # Linear(in_features=512, out_features=4): the layer to fine-tune first

Published weights live at ``weights_path(spec)`` in the torch hub cache (``TORCH_HOME``).
``create_model`` downloads a missing file there on first use, as torchvision does, with the
published hash checked, once per machine (``fetch_weights``: concurrent processes share one
download). With ``KDSEARCH_OFFLINE=1`` (``offline_from_env()``) nothing downloads and a missing
file is an error naming its URL and where to place it.
"""

from kdsearch.models import _tiny, _zoo  # noqa: F401  (importing registers the models)
from kdsearch.models._download import OFFLINE_ENV, fetch_weights, offline_from_env
from kdsearch.models._registry import create_model, get_spec, list_models, register_model
from kdsearch.models._spec import (
    ModelSpec,
    Role,
    UnknownModelError,
    WeightsError,
    get_head,
    mark_head,
)
from kdsearch.models._weights import weights_path
from kdsearch.models._zoo import FrameResNet
from kdsearch.models.normalized import Normalized, build_model

__all__ = [
    "FrameResNet",
    "ModelSpec",
    "Normalized",
    "OFFLINE_ENV",
    "Role",
    "UnknownModelError",
    "WeightsError",
    "build_model",
    "create_model",
    "fetch_weights",
    "get_head",
    "get_spec",
    "list_models",
    "mark_head",
    "offline_from_env",
    "register_model",
    "weights_path",
]
