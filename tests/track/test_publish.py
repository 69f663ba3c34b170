"""kdsearch.track.publish, and picking the best configuration: what one real short search
leaves in MLflow, read through a real ``mlflow server`` (REST API and the UI in headless
Chromium), the registered best student, and ``kdsearch.best``'s space file trained by
``kdsearch.run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from kdsearch.testing import (
    TINY_SPACE,
    browser_executable,
    mlflow_server,
    screenshot_runs,
    write_tiny_space,
)

ARTIFACTS = Path(os.environ.get("KDSEARCH_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def searched(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real search (Ray Tune, Optuna, ASHA) into a local SQLite store."""
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    folder = tmp_path_factory.mktemp("search")
    search = {**TINY_SPACE["search"], "num_samples": 4}
    path = write_tiny_space(folder, search=search, student={**TINY_SPACE["student"],
                                                            "epochs": 3},
                            tracking={"top_k": 2}, report={"kd_baseline": False, "onnx": True})
    cfg = load_space(path, cwd=folder)
    said: list[str] = []
    outcome = run_search(cfg, path, say=said.append)
    assert outcome.best is not None
    return {"folder": folder, "cfg": cfg, "outcome": outcome, "said": said,
            "store": f"sqlite:///{folder / 'mlflow.db'}"}


@pytest.fixture(scope="module")
def server(searched: dict[str, Any]) -> Iterator[str]:
    with mlflow_server(searched["store"]) as uri:
        yield uri


def _api(server: str, endpoint: str, body: dict[str, Any] | None = None,
         **query: str) -> dict[str, Any]:
    url = f"{server}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def _artifacts(server: str, run_id: str, path: str = "") -> set[str]:
    listed = _api(server, "artifacts/list", run_id=run_id, path=path)
    return {f["path"] for f in listed.get("files", [])}


def test_the_server_shows_the_search(searched: dict[str, Any], server: str) -> None:
    experiment = _api(server, "experiments/get-by-name", experiment_name="tiny")["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the training view
    runs = _api(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                         "max_results": 100})["runs"]

    def tags_of(run: dict[str, Any]) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    (parent,) = [r for r in runs if tags_of(r)["kdsearch.role"] == "search"]
    parent_id = parent["info"]["run_id"]
    trials = [r for r in runs if tags_of(r)["kdsearch.role"] == "trial"]
    assert len(trials) == 4
    assert all(tags_of(r)["mlflow.parentRunId"] == parent_id for r in trials)  # nested

    # The parent: the space file, the teacher's accuracy, the trials table and the plots.
    parent_metrics = {m["key"] for m in parent["data"]["metrics"]}
    assert {"teacher_val_acc", "best_val_acc"} <= parent_metrics
    assert {"space.yaml", "resolved_space.yaml", "report"} <= _artifacts(server, parent_id)
    report = _artifacts(server, parent_id, "report")
    assert {"report/trials.parquet", "report/trials.csv",
            "report/search_report.html", "report/plots"} <= report
    plots = _artifacts(server, parent_id, "report/plots")
    assert {"report/plots/optimization_history.png", "report/plots/learning_curves.png",
            "report/plots/alpha_temperature.png"} <= plots

    completed = [r for r in trials if tags_of(r)["kdsearch.status"] == "completed"]
    assert completed
    for run in trials:
        run_id, tags = run["info"]["run_id"], tags_of(run)
        params = {p["key"] for p in run["data"]["params"]}
        assert {"alpha", "temperature", "lr", "backbone", "teacher", "data_format",
                "epochs", "clip_frames", "crop_size"} <= params
        assert {"kdsearch.status", "kdsearch.epochs_run", "kdsearch.trial_id",
                "kdsearch.node", "kdsearch.device"} <= set(tags)
        assert tags["kdsearch.device"] == "cpu"
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"val_acc", "val_video_acc", "val_macro_f1", "best_val_acc", "last_val_acc",
                "best_val_video_acc", "last_val_macro_f1"} <= metrics
        assert any(key.startswith("val_class_acc.") for key in metrics)
        history = _api(server, "metrics/get-history", run_id=run_id, metric_key="val_acc")
        steps = sorted(m["step"] for m in history["metrics"])
        assert steps == list(range(1, int(tags["kdsearch.epochs_run"]) + 1))  # per epoch
        assert {"trial_space.yaml", "confusion_matrix.png"} <= _artifacts(server, run_id)
    # The top-k (2) completed trials, in the search's ranking, keep their student checkpoint.
    top = [r.run_id for r in searched["outcome"].rows if r.status == "completed"][:2]
    with_checkpoint = {r["info"]["run_id"] for r in trials
                       if "checkpoint" in _artifacts(server, r["info"]["run_id"])}
    assert with_checkpoint == set(top)
    assert {"checkpoint/student.pt"} == _artifacts(server, top[0], "checkpoint")


def test_the_runs_page_renders_in_chromium(searched: dict[str, Any], server: str) -> None:
    if browser_executable() is None:
        if os.environ.get("KDSEARCH_REQUIRE_BROWSER"):
            pytest.fail("KDSEARCH_REQUIRE_BROWSER is set but no Chromium was found")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    outcome = searched["outcome"]
    trial_names = [f"trial-{row.trial_id}" for row in outcome.rows]
    shot = ARTIFACTS / "mlflow-runs-page.png"
    text = screenshot_runs(server, outcome.experiment_id, ["search-", *trial_names], shot,
                           columns=("val_acc", "alpha", "temperature"))
    assert all(name in text for name in trial_names)  # the nested trial runs, expanded
    assert "val_acc" in text and "alpha" in text  # the columns a reader compares
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_registered_student_predicts_like_its_checkpoint_and_needs_no_pickle(
        searched: dict[str, Any], no_pickle: None) -> None:
    import kdsearch
    from kdsearch.models import build_model

    outcome, cfg = searched["outcome"], searched["cfg"]
    client = MlflowClient(searched["store"])
    (version,) = client.search_model_versions("name = 'tiny-student'")
    assert version.run_id == outcome.best.run_id
    assert version.tags["teacher"] == "small3d"
    assert float(version.tags["alpha"]) == pytest.approx(outcome.best.config["alpha"])
    assert float(version.tags["value"]) == pytest.approx(outcome.best.value, abs=1e-4)
    assert len(version.tags["sha256"]) == 64
    assert any("registered as tiny-student version 1" in line for line in searched["said"])

    uri = f"models:/tiny-student/{version.version}"
    loaded = kdsearch.load_student(uri, tracking_uri=searched["store"])  # pickle refused
    assert loaded.classes == ("dribble", "kick", "run", "walk")
    assert loaded.backbone == outcome.best.config["backbone"]
    folder = client.download_artifacts(outcome.best.run_id, "checkpoint",
                                       str(searched["folder"] / "download"))
    state = torch.load(Path(folder) / "student.pt", map_location="cpu", weights_only=True)
    student = build_model(state["settings"]["backbone"], 4, "none", "student")
    student.load_state_dict(state["student"])
    clip = cfg.student.clip
    clips = torch.from_numpy(np.random.default_rng(1).random(
        (3, 3, clip.num_frames, clip.crop_size, clip.crop_size), dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(clips), student.eval()(clips))
    mlflow.set_tracking_uri(searched["store"])
    served = mlflow.pyfunc.load_model(uri)  # what `mlflow models serve` loads, pickle refused
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(served.predict(clips.numpy())),
                                   student(clips))


def test_best_exports_a_space_file_that_trains(searched: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.run import main

    folder, outcome = searched["folder"], searched["outcome"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    chosen = subprocess.run([sys.executable, "-m", "kdsearch.best", "--experiment", "tiny"],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert f"best: run {outcome.best.run_id}" in chosen.stdout
    space = yaml.safe_load((folder / "best.yaml").read_text())
    assert space["search"]["space"] == {} and space["search"]["num_samples"] == 1
    for name in ("alpha", "temperature", "backbone"):
        assert space["student"][name] == outcome.best.config[name]

    # Trained as `python -m kdsearch.run best.yaml` in that folder would (on this session's Ray).
    monkeypatch.chdir(folder)
    assert main(["best.yaml"]) == 0
    client = MlflowClient(searched["store"])
    experiment = client.get_experiment_by_name("tiny-final")
    (trial,) = client.search_runs([experiment.experiment_id],
                                  "tags.`kdsearch.role` = 'trial'")
    assert trial.data.tags["kdsearch.status"] == "completed"
    assert trial.data.tags["kdsearch.epochs_run"] == "3"
    assert float(trial.data.params["alpha"]) == pytest.approx(outcome.best.config["alpha"])
    assert trial.data.params["backbone"] == outcome.best.config["backbone"]


def test_registering_repairs_an_interrupted_publish(searched: dict[str, Any]) -> None:
    """A driver killed inside publish left the student logged but unregistered and its run
    reopened: the resumed search registers that model (not a second one) and closes the run;
    a third attempt changes nothing."""
    from kdsearch.models import build_model
    from kdsearch.track.model import RUN_SHA_TAG, load_student, log_student, write_release
    from kdsearch.track.publish import register_best

    outcome, cfg = searched["outcome"], searched["cfg"]
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"registered_model": "tiny-repair"})})
    row = [r for r in outcome.rows if r.status == "completed"][1]
    client = MlflowClient(searched["store"])
    mlflow.set_tracking_uri(searched["store"])
    classes = tuple(cfg.data.classes or ("dribble", "kick", "run", "walk"))
    clip = cfg.student.clip.model_dump()
    data, sha = write_release(searched["folder"] / "repair",
                              build_model("tiny3d", len(classes), "none", "student"),
                              "tiny3d", classes, clip)
    client.set_tag(row.run_id, RUN_SHA_TAG, sha)  # as publishing does before logging
    with mlflow.start_run(run_id=row.run_id):
        assert log_student(data, sha, classes, clip, None) is None  # logged, not registered
    client.update_run(row.run_id, status="RUNNING")  # as the kill left it

    def logged() -> list[Any]:
        return list(client.search_logged_models(
            [outcome.experiment_id], filter_string=f"source_run_id = '{row.run_id}'"))

    assert register_best(client, cfg, classes, row) == (
        "best student: registered as tiny-repair version 1")
    assert len(logged()) == 1 and client.get_run(row.run_id).info.status == "FINISHED"
    assert register_best(client, cfg, classes, row) == (
        "best student: already registered as tiny-repair version 1")
    assert len(logged()) == 1
    (version,) = client.search_model_versions("name = 'tiny-repair'")
    assert version.tags["sha256"] == sha
    assert load_student("models:/tiny-repair/1", tracking_uri=searched["store"]).classes == classes


def test_every_trial_records_its_students_cost_and_best_picks_within_limits(
        searched: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from kdsearch.best import main

    outcome, folder = searched["outcome"], searched["folder"]
    client = MlflowClient(searched["store"])
    runs = client.search_runs([outcome.experiment_id], "tags.`kdsearch.role` = 'trial'")
    params = {"tiny3d": 107892, "tiny_r2plus1d": 108009}  # 4 classes
    for run in runs:
        metrics = run.data.metrics
        assert metrics["student_params"] == params[run.data.params["backbone"]]
        assert metrics["student_gflops"] > 0 and metrics["cpu_latency_ms"] > 0
        assert 0 < metrics["latency_ms"] <= metrics["latency_p90_ms"]
    # The front of val_acc against latency: tagged on its trials' runs and on the parent.
    front = [r for r in runs if r.data.tags.get("kdsearch.pareto") == "true"]
    parent = client.get_run(outcome.parent_run_id)
    assert front and sorted(parent.data.tags["kdsearch.pareto"].split(",")) == sorted(
        r.data.tags["kdsearch.trial_id"] for r in front)
    table = pq.read_table(Path(client.download_artifacts(
        outcome.parent_run_id, "report/trials.parquet", str(folder / "front")))).to_pylist()
    assert {r["trial_id"] for r in table if r["pareto"]} == {
        r.data.tags["kdsearch.trial_id"] for r in front}
    assert all(r["metric.latency_ms"] > 0 for r in table if r["status"] == "completed")

    completed = [r for r in outcome.rows if r.status == "completed"]
    small = [r for r in completed if r.config["backbone"] == "tiny3d"]
    assert small and len(small) < len(completed)  # this seed completes both backbones
    store = ["--experiment", "tiny", "--tracking-uri", searched["store"],
             "--out", str(folder / "within.yaml")]
    # The best tiny3d trial: the only backbone under 0.10795 M parameters.
    assert main([*store, "--max-params-m", "0.10795"]) == 0
    printed = capsys.readouterr().out
    assert f"best: run {small[0].run_id}" in printed
    assert "within params_m 0.10795" in printed and "params M" in printed
    assert main([*store, "--max-params-m", "0.01"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no completed trial meets --max-params-m 0.01; the closest")
    assert "params_m 0.1079 > 0.01" in err


def test_the_best_student_is_registered_as_onnx_and_agrees_with_pytorch(
        searched: dict[str, Any]) -> None:
    import onnxruntime

    from kdsearch.models import build_model
    from kdsearch.models.export import ATOL, OPSET

    outcome, cfg = searched["outcome"], searched["cfg"]
    client = MlflowClient(searched["store"])
    (version,) = client.search_model_versions("name = 'tiny-student-onnx'")
    assert version.run_id == outcome.best.run_id
    tags = version.tags
    assert tags["onnx_opset"] == str(OPSET) and tags["onnx_same_predictions"] == "true"
    assert float(tags["onnx_max_abs_diff"]) <= ATOL and float(tags["onnx_cpu_latency_ms"]) > 0
    # The input example and every validation clip (4 classes x 2 videos, 1 clip each).
    assert tags["onnx_checked_clips"] == "9"
    said = next(line for line in searched["said"] if "tiny-student-onnx" in line)
    assert said.startswith(f"best student as ONNX (opset {OPSET}): registered as "
                           "tiny-student-onnx version 1; logits within ")

    from mlflow.artifacts import download_artifacts

    model = Path(download_artifacts("models:/tiny-student-onnx/1", tracking_uri=searched["store"],
                                    dst_path=str(searched["folder"] / "onnx")))
    (model_file,) = model.rglob("*.onnx")
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    checkpoint = client.download_artifacts(outcome.best.run_id, "checkpoint/student.pt",
                                           str(searched["folder"] / "onnx-checkpoint"))
    state = torch.load(checkpoint, weights_only=True)
    student = build_model(state["settings"]["backbone"], 4, "none", "student")
    student.load_state_dict(state["student"])
    clip = cfg.student.clip
    clips = np.random.default_rng(2).random(
        (5, 3, clip.num_frames, clip.crop_size, clip.crop_size), dtype=np.float32)
    (logits,) = session.run(["logits"], {"clips": clips})  # a batch of 5: dynamic
    with torch.no_grad():
        np.testing.assert_allclose(logits, student.eval()(torch.from_numpy(clips)).numpy(),
                                   atol=ATOL)
    meta = yaml.safe_load((model / "MLmodel").read_text())["metadata"]
    assert meta["classes"] == ["dribble", "kick", "run", "walk"]
    assert meta["clip"]["num_frames"] == clip.num_frames
    assert len(meta["normalisation"]["mean"]) == len(meta["normalisation"]["std"]) == 3


def test_a_student_that_does_not_export_is_reported_and_publishing_goes_on(
        searched: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.models.export import ExportError
    from kdsearch.track import publish

    outcome, cfg = searched["outcome"], searched["cfg"]
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"registered_model": "tiny-unexported"})})
    row = [r for r in outcome.rows if r.status == "completed" and r.checkpoint][1]

    def unexportable(*args: Any, **kwargs: Any) -> None:
        raise ExportError("tiny3d: cannot export to ONNX: no ONNX operator for aten::frobnicate")

    monkeypatch.setattr(publish, "export_checked", unexportable)
    client = MlflowClient(searched["store"])
    said = publish.register_onnx(client, cfg, ("dribble", "kick", "run", "walk"), row, None)
    assert said == ("warning: the best student is not exported to ONNX: tiny3d: cannot "
                    "export to ONNX: no ONNX operator for aten::frobnicate")
    assert client.get_run(row.run_id).data.tags["kdsearch.onnx_error"].endswith("frobnicate")
    assert client.search_model_versions("name = 'tiny-unexported-onnx'") == []


def test_best_exports_a_chosen_trial_to_onnx(searched: dict[str, Any],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from kdsearch.best import main

    outcome, folder = searched["outcome"], searched["folder"]
    second = [r for r in outcome.rows if r.status == "completed"][1]  # top_k 2: checkpointed
    out = folder / "second.onnx"
    assert main(["--experiment", "tiny", "--tracking-uri", searched["store"], "--trial",
                 second.trial_id, "--export", str(out), "--out",
                 str(folder / "second.yaml")]) == 0
    printed = capsys.readouterr().out
    assert f"picked: run {second.run_id}, trial {second.trial_id}" in printed
    assert f"exported {out} (ONNX opset 18, dynamic batch): agrees with PyTorch on 16 random " \
           "clips" in printed
    assert out.stat().st_size > 10_000
    assert (folder / "second.yaml").read_text().startswith("# A trial picked with --trial")
    assert main(["--experiment", "tiny", "--tracking-uri", searched["store"], "--trial",
                 "nope"]) == 2
    assert capsys.readouterr().err == (
        "error: --trial nope: not a completed trial of this search\n")
