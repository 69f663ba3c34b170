"""kdsearch.models.export: every student exports to ONNX and computes what PyTorch does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import onnxruntime as ort
import pytest
import torch
from torch import nn

from kdsearch.models import Normalized, build_model, list_models
from kdsearch.models.export import (
    ATOL,
    ExportError,
    check_onnx,
    export_onnx,
    onnx_latency_ms,
)

from .helpers import NUM_CLASSES

# Every student runs on clips far below its native input (even 1x8x8); 4x32x32 still leaves
# every stage a feature map larger than 1x1. An export costs about the same at any clip: the
# time goes into tracing the model, not into running it.
CLIP = (4, 32)
#: Students that do not export, with the reason the ExportError must name: none today.
NOT_EXPORTABLE: dict[str, str] = {}


def _clips(batch: int) -> torch.Tensor:
    frames, crop = CLIP
    return torch.rand(batch, 3, frames, crop, crop)


class Exported(NamedTuple):
    model: nn.Module
    path: Path
    state_before: dict[str, torch.Tensor]  # the model's state dict before the export


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A tiny3d in training mode, exported once for the tests below (an export takes ~1 s)."""
    torch.manual_seed(0)
    model = build_model("tiny3d", NUM_CLASSES, "none", "student").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("tiny") / "tiny3d.onnx"
    export_onnx(model, CLIP, path, name="tiny3d")
    return Exported(model, path, before)


@pytest.mark.parametrize("name", list_models("student"))
def test_every_student_exports_and_matches_pytorch(name: str, tmp_path: Path) -> None:
    model = build_model(name, NUM_CLASSES, "none", "student")
    path = tmp_path / f"{name}.onnx"
    if name in NOT_EXPORTABLE:
        with pytest.raises(ExportError, match=NOT_EXPORTABLE[name]):
            export_onnx(model, CLIP, path, name=name)
        return
    export_onnx(model, CLIP, path, name=name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["clips"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 3):
        (logits,) = session.run(None, {"clips": _clips(batch).numpy()})
        assert logits.shape == (batch, NUM_CLASSES)
    parity = check_onnx(path, model, _clips(3))
    assert parity.ok, parity
    assert parity.clips == 3


def test_export_leaves_the_callers_model_as_it_was(tiny: Exported) -> None:
    assert tiny.model.training  # the export ran on an eval-mode copy
    state = tiny.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny.state_before.items())
    assert [p.name for p in tiny.path.parent.iterdir()] == ["tiny3d.onnx"]  # no temporary left


def test_a_changed_weight_fails_the_parity_check(tiny: Exported) -> None:
    model, path = copy.deepcopy(tiny.model), tiny.path
    assert check_onnx(path, model, _clips(3)).ok
    head = model.get_submodule("model.fc")
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.bias[0] += 0.1
    parity = check_onnx(path, model, _clips(3))
    assert not parity.ok
    assert parity.max_abs_diff > ATOL


class _Eigenvalues(nn.Module):
    """Eigenvalues of each clip's Gram matrix: ``linalg_eigh`` has no ONNX function."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.flatten(2)
        return torch.linalg.eigvalsh(x @ x.transpose(1, 2))


def test_an_operator_without_onnx_function_raises_one_line(tmp_path: Path) -> None:
    model = Normalized(_Eigenvalues(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ExportError) as caught:
        export_onnx(model, CLIP, tmp_path / "eig.onnx", name="eig3d")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("eig3d: cannot export to ONNX: ")
    assert "linalg_eigh" in message
    assert list(tmp_path.iterdir()) == []


def test_latency_is_positive_and_p90_at_least_the_median(tiny: Exported) -> None:
    median, p90 = onnx_latency_ms(tiny.path, CLIP, runs=5, warmup=1)
    assert 0 < median <= p90
