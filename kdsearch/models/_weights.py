"""Reading weights from local files: where published weights live in the torch hub cache,
checkpoints (plain or nested state dicts) and whether they fit a model.

Published weights are kept where ``torch.hub`` caches them (``torch.hub.get_dir()/checkpoints``,
which honours ``TORCH_HOME``); :mod:`kdsearch.models._download` puts them there on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsearch.models._spec import ModelSpec, WeightsError, head_path

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pyth")
# Keys under which training scripts commonly nest the state dict (pytorchvideo: "model_state").
_NESTED_KEYS = ("model_state", "state_dict", "model")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW_KEYS = 3


def weights_path(spec: ModelSpec) -> Path:
    """Where the published weights of ``spec`` are expected: the torch hub checkpoint cache."""
    if spec.weights_file is None:
        raise WeightsError(f"model '{spec.name}' has no published weights (available: none)")
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_file


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint (plain or nested state dict) with ``weights_only=True``."""
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises pickle, zip and runtime errors alike
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"weights file '{path}' could not be read: {reason}") from err
    if isinstance(obj, Mapping):
        nested = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is not None:
            obj = obj[nested]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(
            f"weights file '{path}' holds no state dict (expected a dict of tensors, possibly "
            f"under one of {list(_NESTED_KEYS)})"
        )
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _show(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
    return ", ".join(keys[:_SHOW_KEYS]) + more


def _mismatch_report(
    model: nn.Module, state: Mapping[str, torch.Tensor], skip_prefix: str | None
) -> tuple[str, bool]:
    """Describe keys of ``state`` that do not fit ``model``; also say if the head differs."""
    own = model.state_dict()

    def skipped(key: str) -> bool:
        # Checkpoints from old PyTorch versions lack BatchNorm's num_batches_tracked counter.
        return key.endswith("num_batches_tracked") or (
            skip_prefix is not None and key.startswith(skip_prefix)
        )

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    head_differs = skip_prefix is not None and any(
        k.startswith(skip_prefix) for k in missing + shape
    )
    parts = []
    if bad := [k for k in missing if not skipped(k)]:
        parts.append(f"missing keys: {_show(bad)}")
    if bad := [k for k in unexpected if not skipped(k)]:
        parts.append(f"unexpected keys: {_show(bad)}")
    if bad := [k for k in shape if not skipped(k)]:
        first = bad[0]
        parts.append(
            f"shape mismatch: {_show(bad)} ({first}: checkpoint {list(state[first].shape)}, "
            f"model {list(own[first].shape)})"
        )
    return "; ".join(parts), head_differs


def load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, name: str, skip_head: bool
) -> None:
    """Load ``state`` read from ``path`` into ``model``; every key must fit.

    With ``skip_head`` the head's keys may be absent or shaped for another number of classes
    (a backbone checkpoint): they are then skipped, leaving the model's fresh head in place.
    """
    head_prefix = head_path(model) + "." if skip_head else None
    report, head_differs = _mismatch_report(model, state, skip_prefix=head_prefix)
    if report:
        raise WeightsError(f"weights file '{path}' does not fit model '{name}': {report}")
    if head_prefix is not None and head_differs:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    model.load_state_dict(state, strict=False)
