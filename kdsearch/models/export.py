"""ONNX export of a trained student, its parity check against PyTorch, and its CPU latency.

The exported graph takes what :class:`~kdsearch.models.Normalized` takes: float clips in
[0, 1], ``clips`` of shape ``[N, 3, frames, crop, crop]`` (any ``N``), and gives ``logits``
``[N, num_classes]``; it normalises its input itself. ONNX Runtime on the CPU is the reference
runtime: :func:`check_onnx` is the only way to know that the file computes what PyTorch does,
and it is what the file is deployed with.

    export_onnx(student, (4, 160), Path("student.onnx"), name="x3d_xs")
    parity = check_onnx(Path("student.onnx"), student, torch.rand(8, 3, 4, 160, 160))
    median_ms, p90_ms = onnx_latency_ms(Path("student.onnx"), (4, 160))
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from kdsearch import storage

#: The opset torch.onnx's operator library (torchlib) is written in, so nothing is converted;
#: ONNX Runtime 1.32 (tested here) runs it.
OPSET = 18
#: Logits of ONNX Runtime and PyTorch may differ by at most this much (float32, absolute), and
#: every clip's top-1 class must be the same in both ("predictions equal", strictly). Summing
#: in another order and ONNX Runtime's folding of BatchNorm into the convolution move float32
#: logits by about 4e-7 of their size: measured 1e-5 at most on a trained tiny3d_wide (logits
#: up to 26) and 5e-6 on the zoo backbones scaled to logits of 10. 1e-3 leaves two orders of
#: magnitude for deeper networks and larger logits; a file that computes something else (other
#: normalisation, a missing layer, a changed weight) is off by 1e-2 or far more.
ATOL = 1e-3
INPUT_NAME = "clips"
OUTPUT_NAME = "logits"
#: Clips per ONNX Runtime call in :func:`check_onnx` (a few; one call of batch 1 besides).
_BATCH = 4
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportError(Exception):
    """A model that could not be exported: one line naming the model and the reason."""


@dataclass(frozen=True)
class Parity:
    """How far ONNX Runtime's logits are from PyTorch's on ``clips`` clips; ``ok`` when within
    :data:`ATOL` and with the same top-1 class for every clip."""

    max_abs_diff: float
    same_predictions: bool
    clips: int
    ok: bool


def export_onnx(
    model: nn.Module, clip: tuple[int, int], path: Path, *, opset: int = OPSET, name: str = ""
) -> None:
    """Write ``model`` (a :class:`~kdsearch.models.Normalized`) to ``path`` as ONNX.

    ``clip`` is ``(num_frames, crop_size)``; the batch dimension stays dynamic. The export runs
    on a CPU copy in eval mode, so the caller's model keeps its mode, device and weights. The
    file is written whole or not at all (:func:`kdsearch.storage.write_file`). Any failure
    raises :class:`ExportError`: ``<name>: cannot export to ONNX: <reason>``.
    """
    label = name or type(model).__name__
    frames, crop = clip
    # Batch 2: torch.export fixes a dimension it sees as 1, and the batch must stay free.
    sample = torch.rand(2, 3, frames, crop, crop)
    try:
        with _quiet():
            program = torch.onnx.export(
                _eval_copy(model), (sample,), None, dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
            assert program is not None
            data = program.model_proto.SerializeToString()
    except Exception as err:
        raise ExportError(f"{label}: cannot export to ONNX: {_reason(err)}") from err
    try:
        storage.write_file(Path(path), lambda f: f.write(data), digest=False)
    except OSError as err:
        raise ExportError(f"{label}: cannot write {path}: {err.strerror or err}") from err


def check_onnx(path: Path, model: nn.Module, clips: torch.Tensor) -> Parity:
    """Run ``clips`` through the ONNX file (ONNX Runtime, CPU) and through ``model`` (PyTorch,
    CPU, eval mode), in batches of a few and once with batch 1 (the batch is dynamic), and
    compare the logits."""
    if len(clips) == 0:
        raise ValueError("check_onnx needs at least one clip, but `clips` is empty")
    session = _session(path, threads=0)
    reference = _eval_copy(model)
    clips = clips.detach().float().cpu()
    batches = [clips[:1]] + [clips[i:i + _BATCH] for i in range(0, len(clips), _BATCH)]
    diff, same = 0.0, True
    for batch in batches:
        with torch.inference_mode():
            want = reference(batch).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        diff = max(diff, float(np.abs(got - want).max()))
        same = same and bool((got.argmax(1) == want.argmax(1)).all())
    return Parity(max_abs_diff=diff, same_predictions=same, clips=len(clips),
                  ok=diff <= ATOL and same)


def onnx_latency_ms(
    path: Path, clip: tuple[int, int], *, runs: int = 20, warmup: int = 3, threads: int = 1
) -> tuple[float, float]:
    """Median and 90th percentile milliseconds of one clip (batch 1) in ONNX Runtime on the CPU
    with ``threads`` intra-op threads, after ``warmup`` untimed runs."""
    if runs < 1:
        raise ValueError(f"The value of `runs` is {runs}, but must be `runs >= 1`")
    session = _session(path, threads=threads, spin=True)  # as deployed: ONNX Runtime's default
    frames, crop = clip
    feed = {INPUT_NAME: np.random.default_rng(0).random((1, 3, frames, crop, crop),
                                                       dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.percentile(times, 90))


def _eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode: the caller's model is left as it was."""
    return copy.deepcopy(model).cpu().eval()


def _session(path: Path, threads: int, spin: bool = False) -> ort.InferenceSession:
    """A CPU session logging errors only (``threads`` 0: ONNX Runtime's default). Without
    ``spin`` its threads sleep between runs: spinning would slow the PyTorch model beside it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: on failure it prints whole graphs, and its warnings are for
    PyTorch's developers; the reason reaches the user in the ExportError."""
    with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        warnings.simplefilter("ignore")
        yield


def _reason(err: BaseException) -> str:
    """The first line of the innermost cause: the exporter wraps the real reason (an operator
    without an ONNX function, a data-dependent branch) in generic "step n/3" errors."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
