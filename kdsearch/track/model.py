"""The student a search registers, and loading it back: weights and plain data, no pickle.

The best trial's student is logged to its run as an MLflow ``python_function`` model whose
data is one file, ``model.pt`` (:func:`kdsearch.models.checkpoints.save_release`: the
registry name that builds the network, the classes, the input clip, the weights), and whose
loader is this module, imported from the installed kdsearch, never from the artifact store.
The file's SHA-256 is kept in the tracking store (the trial run's tag and the model version's
tag ``sha256``), apart from the artifact store that holds the file.

- :func:`load_student` (``kdsearch.load_student``) takes ``models:/NAME/VERSION`` (or
  ``models:/NAME@alias``, ``runs:/...``, a local folder) and returns the network, its classes
  and its clip: it reads only ``model.pt``, with ``weights_only=True``, after checking it
  against the registered SHA-256.
- ``mlflow.pyfunc.load_model`` works too (``mlflow models serve`` uses it) and needs no
  pickle either, but it follows the model's ``MLmodel`` file, which whoever can write to the
  artifact store can change (docs/security.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsearch import storage
from kdsearch.models import Normalized
from kdsearch.models.checkpoints import RELEASE_FILE, read_release, save_release

MODEL_NAME = "student"  # the logged model's name inside the best trial's run
DATA = "student"  # the model's data folder (holds model.pt)
SHA_TAG = "sha256"  # the model version's tag with model.pt's SHA-256
RUN_SHA_TAG = "kdsearch.model_sha256"  # the same, on the trial run (set before logging)
INPUT = "float32 clips in [0, 1], shape (N, 3, frames, height, width)"


class ModelFileError(Exception):
    """A registered student that cannot be loaded: one line, naming the model and why."""


@dataclasses.dataclass(frozen=True)
class Student:
    """A registered student: call it on float clips in [0, 1], shape (N, 3, frames, height,
    width), for logits over ``classes``."""

    model: Normalized
    backbone: str
    classes: tuple[str, ...]
    clip: Mapping[str, int]

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips)  # type: ignore[no-any-return]

    def predict(self, clips: torch.Tensor) -> list[str]:
        """The class name of each clip."""
        with torch.no_grad():
            return [self.classes[i] for i in self(clips).argmax(1).tolist()]


def load_student(uri: str | os.PathLike[str], *, tracking_uri: str | None = None) -> Student:
    """The student at ``uri``, on the CPU in eval mode: ``models:/NAME/VERSION`` (or any MLflow
    model URI) or a local folder holding ``model.pt``. A registered file is checked against
    the SHA-256 the registry keeps for it; nothing in the download is unpickled or run."""
    text = os.fspath(uri)
    if not text.startswith(("models:/", "runs:/")) and "://" not in text:
        return _read(_release_in(Path(text)), text)
    import mlflow
    from mlflow.artifacts import download_artifacts

    expected = _registered_sha(text, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="kdsearch-model-") as tmp, quiet():
        try:
            local = Path(download_artifacts(artifact_uri=text, dst_path=tmp,
                                            tracking_uri=tracking_uri or mlflow.get_tracking_uri()))
        except Exception as err:  # noqa: BLE001 - MLflow's many errors for a missing model
            raise ModelFileError(f"{text}: {_first_line(err)}") from err
        path = _release_in(local)
        if expected is not None and storage.full_digest(path) != expected:
            raise ModelFileError(f"{text}: {RELEASE_FILE} does not match the SHA-256 the "
                                 "registry recorded for it; it was changed after it was "
                                 "registered")
        return _read(path, text)


def _release_in(folder: Path) -> Path:
    if not folder.exists():
        raise ModelFileError(f"{folder}: no such file or folder")
    for candidate in (folder / "data" / DATA / RELEASE_FILE, folder / DATA / RELEASE_FILE,
                      folder / RELEASE_FILE, folder):
        if candidate.is_file():
            return candidate
    raise ModelFileError(f"{folder}: no {RELEASE_FILE} (not a student kdsearch registered)")


def _read(path: Path, where: str) -> Student:
    try:
        model, info = read_release(path)
    except ValueError as err:
        raise ModelFileError(f"{where}: {err}") from err
    return Student(model, str(info["model"]), tuple(info["classes"]), dict(info["clip"]))


def _registered_sha(uri: str, tracking_uri: str | None) -> str | None:
    """The SHA-256 the registry keeps for a ``models:/`` URI's version (None when the URI is
    not a registered version or the version has none)."""
    if not uri.startswith("models:/"):
        return None
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        found = get_model_name_and_version(client, uri)
        if len(found) != 2:
            return None
        version = client.get_model_version(*found)
    except Exception as err:  # noqa: BLE001 - an unknown name, version or alias
        raise ModelFileError(f"{uri}: {_first_line(err)}") from err
    sha: str | None = version.tags.get(SHA_TAG)
    return sha


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def write_release(folder: Path, student: Normalized, backbone: str, classes: Sequence[str],
                  clip: Mapping[str, int]) -> tuple[Path, str]:
    """``folder/student/model.pt`` for :func:`log_student`; returns its data folder and
    SHA-256."""
    data = Path(folder) / DATA
    data.mkdir(parents=True, exist_ok=True)
    record = save_release(data / RELEASE_FILE, model=backbone, classes=classes, clip=clip,
                          state_dict=student.state_dict())
    return data, record["sha256"]


def log_student(data: Path, sha: str, classes: Sequence[str], clip: Mapping[str, int],
                registered_name: str | None) -> str | None:
    """Log the release in ``data`` to the active run as model ``student`` and register it as
    ``registered_name`` (unless None); returns the new version. The model's input example
    and signature are a float clip of the student's shape; its requirements are named, so
    that MLflow does not load the model in a subprocess to guess them."""
    import mlflow
    from mlflow.models import infer_signature

    example = example_clip(clip)
    predictor = _load_pyfunc(str(data))
    signature = infer_signature(example, predictor.predict(example))
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, loader_module=__name__, data_path=str(data),
            signature=signature, input_example=example, registered_model_name=registered_name,
            pip_requirements=requirements(),
            metadata={"classes": list(classes), "clip": dict(clip), "input": INPUT,
                      "sha256": sha, "load": "kdsearch.load_student(URI)"})
    version = info.registered_model_version
    return None if version is None else str(version)


def requirements() -> list[str]:
    found = []
    for package in ("kdsearch", "torch", "torchvision", "pytorchvideo", "numpy"):
        try:
            found.append(f"{package}=={importlib.metadata.version(package).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """MLflow's chatter (registry prints, download progress) kept off the caller's output."""
    log = logging.getLogger("mlflow")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


class _Predictor:
    """What ``mlflow.pyfunc.load_model`` returns the ``predict`` of: logits as a float32
    array for a float32 array of clips."""

    def __init__(self, student: Student) -> None:
        self.student = student

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        clips = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.student(clips).numpy()


def _load_pyfunc(data_path: str) -> _Predictor:
    """MLflow's entry point for ``loader_module`` models (``mlflow.pyfunc.load_model``)."""
    return _Predictor(_read(_release_in(Path(data_path)), data_path))


ONNX_MODEL = "student_onnx"  # the ONNX model's name inside the best trial's run
ONNX_ERROR = "kdsearch.onnx_error"  # on the best trial's run: why it was not exported


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """The student as ONNX, checked: where the file is, how it compares with PyTorch, how fast
    ONNX Runtime runs it on one CPU thread; ``problem`` when it is not fit to ship."""

    path: Path
    parity: Any  # kdsearch.models.export.Parity
    latency_ms: float
    latency_p90_ms: float

    @property
    def problem(self) -> str | None:
        from kdsearch.models.export import ATOL

        p = self.parity
        if p.ok:
            return None
        return (f"ONNX Runtime and PyTorch disagree on {p.clips} clips (largest logit "
                f"difference {p.max_abs_diff:.3g}, tolerance {ATOL:g}; same predictions: "
                f"{'yes' if p.same_predictions else 'no'})")

    def tags(self) -> dict[str, str]:
        from kdsearch.models.export import ATOL, OPSET

        return {"onnx_opset": str(OPSET), "onnx_max_abs_diff": f"{self.parity.max_abs_diff:.3g}",
                "onnx_tolerance": f"{ATOL:g}",
                "onnx_same_predictions": str(self.parity.same_predictions).lower(),
                "onnx_checked_clips": str(self.parity.clips),
                "onnx_cpu_latency_ms": f"{self.latency_ms:.4g}"}


def export_checked(student: Normalized, backbone: str, clip: Mapping[str, int], path: Path,
                   clips: torch.Tensor) -> OnnxExport:
    """Export ``student`` to ``path`` as ONNX (dynamic batch), check it against PyTorch on
    ``clips`` and time it in ONNX Runtime; raises ``kdsearch.models.export.ExportError`` (one
    line) when it does not export."""
    from kdsearch.models.export import check_onnx, export_onnx, onnx_latency_ms

    shape = (clip["num_frames"], clip["crop_size"])
    export_onnx(student, shape, path, name=backbone)
    parity = check_onnx(path, student, clips)
    latency, p90 = onnx_latency_ms(path, shape, threads=1)
    return OnnxExport(path, parity, latency, p90)


def example_clip(clip: Mapping[str, int]) -> np.ndarray:
    """The logged models' input example: one float clip in [0, 1] of the student's shape."""
    return np.random.default_rng(0).random(
        (1, 3, clip["num_frames"], clip["crop_size"], clip["crop_size"]), dtype=np.float32)


def log_onnx(exported: OnnxExport, student: Normalized, classes: Sequence[str],
             clip: Mapping[str, int], registered_name: str | None) -> str | None:
    """Log an exported student to the active run with MLflow's ONNX flavour (model
    ``student_onnx``), with its classes, clip and normalisation in the metadata, and register
    it as ``registered_name`` (unless None); returns the version."""
    import mlflow
    import onnx

    metadata = {
        "classes": list(classes), "clip": dict(clip), "input": INPUT,
        "normalisation": {"inside the model": "(clip - mean) / std per colour",
                          "mean": student.mean.flatten().tolist(),
                          "std": student.std.flatten().tolist()},
        **exported.tags()}
    example = example_clip(clip)
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        info = mlflow.onnx.log_model(
            onnx.load(str(exported.path)), name=ONNX_MODEL, input_example=example,
            registered_model_name=registered_name, metadata=metadata,
            pip_requirements=onnx_requirements(), save_as_external_data=False)
    version = info.registered_model_version
    return None if version is None else str(version)


def onnx_requirements() -> list[str]:
    found = []
    for package in ("onnx", "onnxruntime", "numpy"):
        try:
            found.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
