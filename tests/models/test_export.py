"""kdsearch.models.export: every student exports to ONNX and computes what PyTorch does."""

from __future__ import annotations

from pathlib import Path

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

# The smallest clip every student accepts is far below its native input; the graph (and so
# the export) is the same whatever the clip, only ONNX Runtime's work shrinks.
CLIP = (4, 32)
#: Students that do not export, with the reason the ExportError must name: none today.
NOT_EXPORTABLE: dict[str, str] = {}


def _clips(batch: int) -> torch.Tensor:
    frames, crop = CLIP
    return torch.rand(batch, 3, frames, crop, crop)


def _tiny(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = build_model("tiny3d", NUM_CLASSES, "none", "student")
    path = tmp_path / "tiny3d.onnx"
    export_onnx(model, CLIP, path, name="tiny3d")
    return model, path


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


def test_export_leaves_the_callers_model_as_it_was(tmp_path: Path) -> None:
    model = build_model("tiny3d", NUM_CLASSES, "none", "student").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, CLIP, tmp_path / "tiny3d.onnx")
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["tiny3d.onnx"]  # no temporary left


def test_a_changed_weight_fails_the_parity_check(tmp_path: Path) -> None:
    model, path = _tiny(tmp_path)
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


def test_latency_is_positive_and_p90_at_least_the_median(tmp_path: Path) -> None:
    _, path = _tiny(tmp_path)
    median, p90 = onnx_latency_ms(path, CLIP, runs=5, warmup=1)
    assert 0 < median <= p90
