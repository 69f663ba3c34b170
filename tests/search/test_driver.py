"""kdsearch.search.driver: real searches end to end (CLI, Ray Tune, Optuna, ASHA, MLflow) on
tiny data sets; warm starts from an earlier experiment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from kdsearch.config import ConfigError
from kdsearch.testing import TINY_SPACE, write_tiny_space

from .helpers import search_of, space_with, tune_run


def run_cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    return subprocess.run([sys.executable, "-m", "kdsearch.run", "space.yaml", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_search_records_every_trial_in_mlflow(ray_local: None, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    search = {**TINY_SPACE["search"], "num_samples": 4}
    write_tiny_space(tmp_path, search=search)
    proc = run_cli(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # Every command printed runs as printed: through this interpreter, activated or not.
    assert (f"{sys.executable} -m mlflow ui --backend-store-uri sqlite:///"
            f"{tmp_path / 'mlflow.db'}") in proc.stdout
    assert f"{sys.executable} -m kdsearch.best --experiment tiny" in proc.stdout
    assert "Ray: a private local Ray, 1 node, " in proc.stdout
    assert "trials 4/4 done" in proc.stderr
    assert "4 trials, best first, ranked by val_acc at the last epoch:" in proc.stdout
    heading = next(line for line in proc.stdout.splitlines() if line.startswith("trial "))
    assert heading.split()[-4:] == ["params", "M", "latency", "ms"]  # each student's cost
    (report,) = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
                 if line.startswith("the report:")]
    assert Path(report).is_file() and Path(report).name == "search_report.html"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    (teacher,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "teacher"]
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(trials) == 4
    assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "val_acc" in teacher.data.metrics
    # A tiny validation set is called out when the search starts, and in the report.
    n_val = int(parent.data.metrics["data_val_videos"])
    assert f"warning: only {n_val} validation videos: one standard error" in proc.stdout
    page = Path(report).read_text(encoding="utf-8")
    headline = page[page.index("<section class='headline'>"):page.index("</section>")]
    assert f"Teacher small3d: val_acc {teacher.data.metrics['val_acc']:.4f}." in headline
    assert (f"{int(parent.data.metrics['data_train_videos'])} training videos, {n_val} "
            "validation videos.") in headline
    assert "Trials: " in headline and f"Only {n_val} validation videos" in headline
    statuses = {r.data.tags["kdsearch.status"] for r in trials}
    assert statuses <= {"completed", "pruned"} and "completed" in statuses
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert {"alpha", "temperature", "backbone", "lr", "teacher", "epochs",
                "crop_size"} <= set(run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        epochs = int(run.data.tags["kdsearch.epochs_run"])
        assert [m.step for m in history] == list(range(1, epochs + 1))
        expected = "completed" if epochs == 2 else "pruned"
        assert run.data.tags["kdsearch.status"] == expected
        assert {"train_ce", "train_kd", "val_video_acc", "val_loss"} <= set(run.data.metrics)
    # The printed link opens this search's trials, filtered and sorted; the parent run's
    # description holds it too.
    link = (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?searchFilter="
            f"tags.%60mlflow.parentRunId%60%20%3D%20%27{parent.info.run_id}%27%20and%20"
            "tags.%60kdsearch.role%60%20%3D%20%27trial%27&orderByKey=metrics.%60val_acc%60"
            "&orderByAsc=false")
    assert link in proc.stdout
    assert link in parent.data.tags["mlflow.note.content"]
    best_id = parent.data.tags["kdsearch.best_run_id"]
    best = client.get_run(best_id)
    assert best.data.tags["kdsearch.status"] == "completed"
    completed = [r for r in trials if r.data.tags["kdsearch.status"] == "completed"]
    assert best.data.metrics["val_acc"] == max(r.data.metrics["val_acc"] for r in completed)
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["val_acc"]
    assert parent.data.params["best.backbone"] == best.data.params["backbone"]
    assert parent.data.tags["kdsearch.status"] == "completed"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "resolved_space.yaml"} <= artifacts
    assert (tmp_path / "mlartifacts" / "tiny").is_dir() and not (tmp_path / "mlruns").exists()

    # A second search on the same data and teacher settings reuses both (here in this
    # process, on this session's Ray: the command line was checked above).
    from kdsearch.run import main

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["space.yaml", "--set", "search.num_samples=1"]) == 0
    again = capsys.readouterr().out
    assert "teacher small3d: reusing" in again
    assert "cache: reusing" in again
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = mlflow.search_runs(experiment_names=["tiny"],
                                 filter_string="tags.`kdsearch.role` = 'search'")
    assert len(parents) == 2


def test_gpus_requested_on_a_cluster_without_gpus_fail_at_start(tmp_path: Path) -> None:
    write_tiny_space(tmp_path, resources={"cpus_per_trial": 1, "gpus_per_trial": 1})
    proc = run_cli(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: resources.gpus_per_trial: 1.0 asks for GPUs but the Ray cluster has none")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failing_trial_is_recorded_and_the_search_goes_on(ray_local: None,
                                                             tmp_path: Path) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    # lr 1e30 with SGD diverges in the first step: that trial fails, the others run.
    search = {**TINY_SPACE["search"], "num_samples": 2,
              "space": {"lr": {"type": "choice", "values": [1e30]}}}
    path = write_tiny_space(tmp_path, search=search,
                            student={**TINY_SPACE["student"], "optimizer": "sgd", "epochs": 1})
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert outcome.best is None
    assert [r.status for r in outcome.rows] == ["failed", "failed"]
    client = MlflowClient(cfg.tracking_uri)
    trials = client.search_runs([outcome.experiment_id],
                                filter_string="tags.`kdsearch.role` = 'trial'")
    assert len(trials) == 2
    for run in trials:
        assert run.data.tags["kdsearch.status"] == "failed"
        assert run.info.status == "FAILED"
        assert "NonFiniteLossError: training loss became" in run.data.tags["kdsearch.error"]
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["kdsearch.status"] == "failed"


def test_a_trial_diverging_in_its_last_step_fails_and_never_ranks(ray_local: None,
                                                                  tmp_path: Path) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    # One training batch per epoch (batch_size 64 > 16 videos): lr 1e30 breaks the weights in
    # the step after the only, finite loss, so only the evaluation can see it.
    search = {**TINY_SPACE["search"], "num_samples": 2,
              "space": {"lr": {"type": "choice", "values": [1e30, 1e-3]}},
              "points_to_evaluate": [{"lr": 1e30}, {"lr": 1e-3}]}
    student = {**TINY_SPACE["student"], "optimizer": "sgd", "epochs": 1, "batch_size": 64}
    path = write_tiny_space(tmp_path, search=search, student=student)
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert [r.status for r in outcome.rows] == ["completed", "failed"]
    best = outcome.best
    assert best is not None and best.config["lr"] == 1e-3
    assert best.value is not None and 0.0 <= best.value <= 1.0
    client = MlflowClient(cfg.tracking_uri)
    (failed,) = client.search_runs([outcome.experiment_id], filter_string=(
        "tags.`kdsearch.role` = 'trial' and tags.`kdsearch.status` = 'failed'"))
    assert failed.info.status == "FAILED"
    error = failed.data.tags["kdsearch.error"]
    assert error.startswith("NonFiniteMetricError: validation logits became "), error
    assert " after epoch 1 (" in error
    assert "val_acc" not in failed.data.metrics  # the diverged epoch was never reported
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["kdsearch.best_run_id"] == best.run_id


def test_a_student_over_a_constraint_ends_infeasible_untrained_and_never_wins(
        ray_local: None, tmp_path: Path) -> None:
    """Also a multi-objective search (val_acc against latency): Optuna takes both values,
    no scheduler stops a trial, the front is tagged."""
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    # tiny3d has 107,892 parameters, tiny_r2plus1d 108,009: a limit between them.
    search = {**TINY_SPACE["search"], "num_samples": 2,
              "space": {"backbone": {"type": "choice", "values": ["tiny3d", "tiny_r2plus1d"]}},
              "points_to_evaluate": [{"backbone": "tiny_r2plus1d"}, {"backbone": "tiny3d"}],
              "constraints": {"params_m": 0.10795}, "scheduler": None,
              "objectives": [{"metric": "val_acc", "mode": "max"},
                             {"metric": "latency_ms", "mode": "min"}]}
    path = write_tiny_space(tmp_path, search=search,
                            student={**TINY_SPACE["student"], "epochs": 2})
    cfg = load_space(path, cwd=tmp_path)
    outcome = run_search(cfg, path, say=lambda _: None)
    assert [(r.status, r.config["backbone"]) for r in outcome.rows] == [
        ("completed", "tiny3d"), ("infeasible", "tiny_r2plus1d")]
    assert outcome.best is not None and outcome.best.config["backbone"] == "tiny3d"
    client = MlflowClient(cfg.tracking_uri)
    runs = {r.data.params["backbone"]: r for r in client.search_runs(
        [outcome.experiment_id], filter_string="tags.`kdsearch.role` = 'trial'")}
    infeasible, trained = runs["tiny_r2plus1d"], runs["tiny3d"]
    assert infeasible.data.tags["kdsearch.status"] == "infeasible"
    assert infeasible.data.tags["kdsearch.infeasible"] == "params_m 0.108 > 0.10795"
    assert infeasible.data.tags["kdsearch.epochs_run"] == "0"
    assert infeasible.info.status == "FINISHED"
    assert "val_acc" not in infeasible.data.metrics  # never trained, never ranked
    assert infeasible.data.metrics["student_params"] == 108009
    assert trained.data.metrics["student_params"] == 107892
    for run in (infeasible, trained):
        for key in ("student_gflops", "latency_ms", "latency_p90_ms", "cpu_latency_ms"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [0] and history[0].value > 0, key
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["kdsearch.best_run_id"] == trained.info.run_id
    assert trained.data.tags["kdsearch.epochs_run"] == "2"  # no scheduler with objectives
    assert parent.data.tags["kdsearch.pareto"] == trained.data.tags["kdsearch.trial_id"]
    assert trained.data.tags["kdsearch.pareto"] == "true"
    assert "kdsearch.pareto" not in infeasible.data.tags


def test_a_constraint_no_student_meets_is_bad_input_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kdsearch.run import main

    search = {**TINY_SPACE["search"], "constraints": {"params_m": 0.05, "gflops": 100}}
    write_tiny_space(tmp_path, search=search)
    monkeypatch.chdir(tmp_path)
    assert main(["space.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: search.constraints: no student backbone meets them at clip 4x32")
    assert "a head of 4 classes" in err and "tiny3d: params_m 0.1079 > 0.05" in err
    assert "tiny_r2plus1d: params_m 0.108 > 0.05" in err
    assert main(["space.yaml"]) == 2
    assert capsys.readouterr().err == err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # nothing written


def test_ctrl_c_keeps_finished_work_and_leaves_no_run_open(tmp_path: Path) -> None:
    student = {**TINY_SPACE["student"], "epochs": 200}  # trials are still running at Ctrl-C
    write_tiny_space(tmp_path, student=student)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    proc = subprocess.Popen([sys.executable, "-m", "kdsearch.run", "space.yaml"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(2)
        experiment = (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("tiny")
        if experiment and any("val_acc" in r.data.metrics for r in client.search_runs(
                [experiment.experiment_id], "tags.`kdsearch.role` = 'trial'")):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "the search was interrupted" in err
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    (parent,) = [r for r in runs if r.data.tags.get("kdsearch.role") == "search"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["kdsearch.status"] == "interrupted"
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    # an interrupted trial keeps the epochs it ran
    assert any(r.data.tags["kdsearch.status"] == "interrupted" and "val_acc" in r.data.metrics
               for r in trials)


def _trial_runs(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string="tags.`kdsearch.role` = 'trial'")


def test_search_over_frame_folders_with_broken_videos(ray_local: None, tmp_path: Path) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search
    from kdsearch.testing.media import write_frame_folder

    root = tmp_path / "images"
    for split, n in (("train", 4), ("val", 2)):
        for name in ("kick", "run"):
            for i in range(n):
                write_frame_folder(root / split / name / f"{name}{i}", num_frames=10)
    (root / "train" / "kick" / "no_frames").mkdir()
    write_frame_folder(root / "train" / "run" / "one_frame", num_frames=1)
    data = {"format": "frame_folder", "root": "images", "classes": ["kick", "run"],
            "frame_rate": 10}
    student = {**TINY_SPACE["student"], "backbone": "resnet18_tsn"}
    search = {**TINY_SPACE["search"], "num_samples": 2, "metric": "val_vote_acc",
              "space": {"alpha": {"type": "uniform", "low": 0.1, "high": 0.9}}}
    path = write_tiny_space(tmp_path, data=data, student=student, search=search)
    cfg = load_space(path, cwd=tmp_path)
    said: list[str] = []
    outcome = run_search(cfg, path, say=said.append)
    assert outcome.best is not None
    assert "data: 2 classes, 8 training and 4 validation videos usable" in said
    assert "data: 2 videos skipped: 1 no_frames, 1 single_frame" in said

    client = MlflowClient(cfg.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["data_skipped"] == 2
    cache = Path(parent.data.tags["kdsearch.cache"])
    assert cache.parent == tmp_path / "kdsearch_results" / "cache"
    assert (cache / "meta.json").is_file()
    table = client.load_table(outcome.experiment_id, "data_issues.json",
                              run_ids=[outcome.parent_run_id])
    assert sorted(table["path"]) == ["train/kick/no_frames", "train/run/one_frame"]
    assert set(table["action"]) == {"skipped"}
    for run in _trial_runs(client, outcome.experiment_id):
        metrics = run.data.metrics
        assert {"val_vote_acc", "val_macro_f1", "val_class_acc.kick",
                "val_class_acc.run"} <= set(metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.json", "confusion_matrix.png"} <= artifacts
        matrix = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/confusion_matrix.json")
        assert matrix["classes"] == ["kick", "run"]
        assert sum(map(sum, matrix["matrix"])) == 4  # one prediction per validation video


def test_search_over_an_annotation_list(ray_local: None, tmp_path: Path) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search
    from kdsearch.testing.media import write_broken, write_test_video

    root = tmp_path / "clips"
    lines = ["path,label"]
    for name in ("kick", "run"):
        for i in range(5):
            ext = (".mp4", ".mkv", ".webm", ".avi", ".mov")[i]
            write_test_video(root / f"{name}{i}{ext}", num_frames=12)
            lines.append(f"{name}{i}{ext},{name}")
    write_broken(root / "cut.mp4", "truncated")
    lines += ["cut.mp4,kick", "gone.mp4,run"]
    (root / "all.csv").write_text("\n".join(lines) + "\n")
    data = {"format": "annotation_list", "root": "clips", "train_split": "all.csv",
            "val_split": None, "val_fraction": 0.4, "split_seed": 1}
    search = {**TINY_SPACE["search"], "num_samples": 1, "space": {}}
    teacher = {**TINY_SPACE["teacher"], "cache": False}  # the online path, through Ray
    path = write_tiny_space(tmp_path, data=data, search=search, teacher=teacher)
    cfg = load_space(path, cwd=tmp_path)
    said: list[str] = []
    outcome = run_search(cfg, path, say=said.append)
    assert outcome.best is not None
    usable = next(line for line in said if line.startswith("data: 2 classes"))
    train, val = [int(s) for s in usable.split() if s.isdigit()][1:3]
    assert val == 4 and train in (6, 7)  # cut.mp4 is used when its start still decodes
    assert any("gone.mp4: no such file" in line for line in said)
    assert (root / ".kdsearch" / "all.csv.parquet").is_file()
    client = MlflowClient(cfg.tracking_uri)
    (run,) = _trial_runs(client, outcome.experiment_id)
    assert run.data.tags["kdsearch.status"] == "completed"
    assert client.get_run(outcome.parent_run_id).data.tags["kdsearch.cache"] == "off"
    assert not (tmp_path / "kdsearch_results" / "cache").exists()


def test_data_without_a_usable_video_in_a_class_stops_before_anything_starts(
        tmp_path: Path) -> None:
    from kdsearch.testing.media import write_broken, write_test_video

    for split in ("train", "val"):
        write_test_video(tmp_path / "videos" / split / "kick" / "a.mp4", num_frames=12)
        write_broken(tmp_path / "videos" / split / "run" / "b.mp4", "not_video")
    write_tiny_space(tmp_path, data={"format": "video_folder", "root": "videos"})
    proc = run_cli(tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "  train/run/b.mp4: not a video" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "error: data: class 'run' has no usable video in the train split (skipped in that "
        "split: 1; see the reasons above)",
        "error: data: class 'run' has no usable video in the val split (skipped in that "
        "split: 1; see the reasons above)"]
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "kdsearch_results" / "ray").exists()


def test_teacher_weights_that_do_not_fit_stop_the_search_as_bad_input(
        ray_local: None, tmp_path: Path) -> None:
    import pytest
    import torch

    from kdsearch.config import ConfigError
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    path = write_tiny_space(tmp_path, teacher={**TINY_SPACE["teacher"], "weights": "bad.pt"})
    cfg = load_space(path, cwd=tmp_path)
    # The teacher stage runs as a Ray task; its ConfigError still reaches the caller as one.
    with pytest.raises(ConfigError, match=r"^teacher.weights: .*does not fit model 'small3d'"):
        run_search(cfg, path, say=lambda _: None)


def test_allow_cpu_runs_a_gpu_space_file_on_cpus(ray_local: None, tmp_path: Path) -> None:
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    path = write_tiny_space(tmp_path, search={**TINY_SPACE["search"], "num_samples": 1},
                            resources={"cpus_per_trial": 1, "gpus_per_trial": 0.5,
                                       "allow_cpu": True})
    said: list[str] = []
    outcome = run_search(load_space(path, cwd=tmp_path), path, say=said.append)
    assert outcome.best is not None
    assert ("warning: resources.gpus_per_trial is 0.5 but the Ray cluster has no GPU; trials "
            "run on CPUs (resources.allow_cpu)") in said
    assert "teacher stage: a Ray task with 2 CPUs and 0 GPUs" in said


# --- warm starts ------------------------------------------------------------------------------

def _earlier_experiment(store: str) -> None:
    """Completed, pruned and foreign trials, as an earlier search leaves them."""
    client = MlflowClient(store)
    experiment = client.create_experiment("earlier")
    rows = [("completed", {"alpha": "0.3", "lr": "0.001", "backbone": "tiny3d"}, 0.9),
            ("completed", {"alpha": "0.7", "lr": "0.005", "backbone": "tiny3d"}, 0.6),
            ("completed", {"alpha": "0.95", "lr": "0.001", "backbone": "tiny3d"}, 0.5),
            ("pruned", {"alpha": "0.1", "lr": "0.001", "backbone": "tiny3d"}, 0.4)]
    for status, params, value in rows:
        run = client.create_run(experiment, tags={"kdsearch.role": "trial",
                                                  "kdsearch.status": status}).info.run_id
        for key, text in params.items():
            client.log_param(run, key, text)
        client.log_metric(run, "val_acc", value, step=4)
        client.set_terminated(run)


def test_a_warm_start_tells_the_sampler_an_earlier_experiment(ray_local: None,
                                                              tmp_path: Path) -> None:
    from kdsearch.search.driver import _warm_start

    store = f"sqlite:///{tmp_path / 'earlier.db'}"
    _earlier_experiment(store)
    cfg = space_with(tmp_path, space={"alpha": {"type": "uniform", "low": 0.0, "high": 0.9},
                                      "lr": {"type": "loguniform", "low": 1e-4,
                                             "high": 1e-2}},
                     warm_start={"experiment": "earlier", "tracking_uri": store})
    said: list[str] = []
    warm = _warm_start(MlflowClient(cfg.tracking_uri), cfg, said.append)
    # Completed trials only; alpha 0.95 lies outside this space and is dropped from its trial.
    assert said == ["warm start: 3 completed trials of experiment 'earlier' told to the "
                    "sampler"]
    assert sorted(((t.params.get("alpha"), t.value) for t in warm), key=lambda p: -p[1]) == [
        (0.3, 0.9), (0.7, 0.6), (None, 0.5)]
    results, searcher = tune_run(search_of("tpe"), tmp_path / "tune", num_samples=3,
                                 warm=warm)
    told = [t for t in searcher.study.trials if t.user_attrs.get("warm_start")]
    assert len(told) == 3 and all(t.state == TrialState.COMPLETE for t in told)
    assert len(results) == 3  # and three new trials ran


def test_a_warm_start_from_a_missing_experiment_is_a_config_error(tmp_path: Path) -> None:
    from kdsearch.search.driver import _warm_start

    cfg = space_with(tmp_path, warm_start={"experiment": "nope"})
    with pytest.raises(ConfigError) as err:
        _warm_start(MlflowClient(cfg.tracking_uri), cfg, print)
    assert err.value.problems == [
        f"search.warm_start.experiment: 'nope' is not an experiment of {cfg.tracking_uri}"]
