"""kdsearch.track.model: the registered student is weights and plain data, read back without
pickle, and refused when its file was changed or carries code."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pytest
import torch

from kdsearch.models import build_model
from kdsearch.models.checkpoints import RELEASE_FILE
from kdsearch.track.model import (
    ModelFileError,
    load_student,
    log_student,
    write_release,
)

CLASSES = ("dribble", "kick", "run", "walk")
CLIP = {"num_frames": 4, "stride": 2, "crop_size": 32}


def _clips() -> torch.Tensor:
    return torch.rand(2, 3, CLIP["num_frames"], CLIP["crop_size"], CLIP["crop_size"],
                      generator=torch.Generator().manual_seed(1))


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny3d", len(CLASSES), "none", "student").eval()


def test_the_pickle_guard_bites(tmp_path: Path, no_pickle: None) -> None:
    """What the other tests rely on: with ``no_pickle`` a pickle-based load fails."""
    torch.save({"x": torch.ones(1)}, tmp_path / "a.pt")
    with pytest.raises(AssertionError, match="pickle was used"):
        torch.load(tmp_path / "a.pt", weights_only=False)


def test_a_release_loads_back_without_pickle(tmp_path: Path, no_pickle: None) -> None:
    student = _student()
    data, sha = write_release(tmp_path, student, "tiny3d", CLASSES, CLIP)
    assert len(sha) == 64 and (data / RELEASE_FILE).is_file()

    loaded = load_student(data)
    assert (loaded.backbone, loaded.classes, dict(loaded.clip)) == ("tiny3d", CLASSES, CLIP)
    assert not loaded.model.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(_clips()), student(_clips()))
    assert set(loaded.predict(_clips())) <= set(CLASSES)


class _Payload:
    """Unpickling this opens (creates) a file: what a planted model file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_a_model_file_carrying_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    student = _student()
    torch.save({"format": 1, "model": "tiny3d", "classes": list(CLASSES), "clip": CLIP,
                "state_dict": student.state_dict(), "extra": _Payload(marker)},
               tmp_path / RELEASE_FILE)
    with pytest.raises(ModelFileError, match="not a kdsearch model file"):
        load_student(tmp_path)
    assert not marker.exists()

    (tmp_path / RELEASE_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a kdsearch model file"):
        load_student(tmp_path / RELEASE_FILE)
    with pytest.raises(ModelFileError, match="no such file or folder"):
        load_student(tmp_path / "missing")


def test_a_registered_student_loads_in_one_call_and_a_changed_file_is_refused(
        tmp_path: Path, no_pickle: None) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("released", artifact_location=str(tmp_path / "art"))
    student = _student()
    data, sha = write_release(tmp_path / "release", student, "tiny3d", CLASSES, CLIP)
    with mlflow.start_run(experiment_id=experiment):
        version = log_student(data, sha, CLASSES, CLIP, "released-student")
    assert version == "1"
    client = mlflow.MlflowClient(store)
    client.set_model_version_tag("released-student", "1", "sha256", sha)
    client.set_registered_model_alias("released-student", "best", "1")

    for uri in ("models:/released-student/1", "models:/released-student@best"):
        loaded = load_student(uri, tracking_uri=store)
        with torch.no_grad():
            torch.testing.assert_close(loaded(_clips()), student(_clips()))
    served = mlflow.pyfunc.load_model("models:/released-student/1")  # MLflow's own loader
    torch.testing.assert_close(torch.from_numpy(served.predict(_clips().numpy())),
                               student(_clips()).detach())
    (stored,) = (tmp_path / "art").rglob(RELEASE_FILE)
    assert not list((tmp_path / "art").rglob("*.pkl"))

    changed = io.BytesIO()
    torch.save({**torch.load(stored, weights_only=True), "classes": ["a", "b", "c", "d"]},
               changed)
    stored.write_bytes(changed.getvalue())
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load_student("models:/released-student/1", tracking_uri=store)
    with pytest.raises(ModelFileError, match="released-student"):
        load_student("models:/released-student/7", tracking_uri=store)
