"""kdsearch.best on a real MLflow SQLite store, written by hand the way a search writes it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from kdsearch.best import main
from kdsearch.config import SEARCHABLE, final_space
from kdsearch.config.load import load_space
from kdsearch.text import python_command
from kdsearch.track.schema import PARENT, ROLE, STATUS, TRIAL_SPACE

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "search_spaces" / "demo.yaml"
T0 = int(time.time() * 1000) - 3_600_000

# trial id -> (status, metric history, sampled settings)
Trials = Mapping[str, tuple[str, Sequence[float], Mapping[str, Any]]]


def sampled(alpha: float, temperature: float, lr: float, backbone: str) -> dict[str, Any]:
    return {"alpha": alpha, "temperature": temperature, "lr": lr, "backbone": backbone}


NEW = {  # the search the default picks: the best completed one is a_1, a_2 is within noise
    "a_1": ("completed", [0.5, 0.7, 0.80], sampled(0.3, 4.0, 0.002, "tiny3d_wide")),
    "a_2": ("completed", [0.6, 0.78], sampled(0.7, 2.5, 0.0005, "tiny3d")),
    "a_3": ("completed", [0.4, 0.60], sampled(0.1, 8.0, 0.009, "tiny_r2plus1d")),
    "a_4": ("pruned", [0.95], sampled(0.5, 1.5, 0.001, "tiny3d")),
    "a_5": ("failed", [0.99], sampled(0.2, 3.0, 0.003, "tiny3d")),
    "a_6": ("running", [0.97], sampled(0.8, 5.0, 0.004, "tiny3d")),
}
OLD = {  # an older search, clearly separated on 1000 validation videos
    "o_1": ("completed", [0.7, 0.90], sampled(0.6, 12.0, 0.0004, "tiny_r2plus1d")),
    "o_2": ("completed", [0.3, 0.50], sampled(0.4, 2.0, 0.006, "tiny3d")),
}
UNFINISHED = {"u_1": ("pruned", [0.99], sampled(0.5, 4.0, 0.001, "tiny3d")),
              "u_2": ("running", [0.98], sampled(0.5, 4.0, 0.001, "tiny3d"))}
LOSS = {
    "l_1": ("completed", [1.2, 0.45], sampled(0.25, 6.0, 0.0015, "tiny3d_wide")),
    "l_2": ("completed", [1.1, 0.90], sampled(0.75, 2.0, 0.005, "tiny3d")),
    "l_3": ("pruned", [0.10], sampled(0.5, 4.0, 0.001, "tiny3d")),
}
TIED = {"t_1": ("completed", [0.75], sampled(0.3, 4.0, 0.002, "tiny3d")),
        "t_2": ("completed", [0.75], sampled(0.6, 2.0, 0.001, "tiny3d"))}


def add_search(client: MlflowClient, experiment_id: str, space: Mapping[str, Any],
               trials: Trials, start: int, metric: str = "val_acc", mode: str | None = "max",
               val_videos: int | None = 100, trial_spaces: bool = True) -> str:
    """A parent run and its trial runs, tagged, logged and with artifacts as a search does."""
    parent = client.create_run(experiment_id, run_name=f"search-{start}", start_time=start,
                               tags={ROLE: "search", STATUS: "completed"}).info.run_id
    params = {"metric": metric, "num_samples": len(trials),
              "searched": "alpha,temperature,lr,backbone", **({"mode": mode} if mode else {})}
    client.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
    if val_videos is not None:
        client.log_metric(parent, "data_val_videos", val_videos)
    client.log_text(parent, yaml.safe_dump(dict(space), sort_keys=False), "resolved_space.yaml")
    teacher = client.create_run(experiment_id, run_name="teacher", start_time=start + 1,
                                tags={PARENT: parent, ROLE: "teacher"}).info.run_id
    client.log_metric(teacher, metric, 0.0 if metric == "val_loss" else 1.0)
    for i, (trial_id, (status, history, values)) in enumerate(trials.items()):
        run = client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                                start_time=start + 2 + i,
                                tags={PARENT: parent, ROLE: "trial", STATUS: status,
                                      "kdsearch.trial_id": trial_id}).info.run_id
        settings = {n: values.get(n, space["student"][n]) for n in SEARCHABLE}
        fixed = {"teacher": space["teacher"]["model"], "epochs": space["student"]["epochs"]}
        client.log_batch(run, params=[Param(k, str(v)) for k, v in {**settings,
                                                                   **fixed}.items()],
                         metrics=[Metric(metric, v, start + step, step)
                                  for step, v in enumerate(history, 1)])
        if trial_spaces:
            client.log_text(run, yaml.safe_dump(final_space(space, values), sort_keys=False),
                            TRIAL_SPACE)
    return parent


@pytest.fixture(scope="module")
def base_space(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("cwd")
    return load_space(DEMO, cwd=cwd).model_dump(mode="json")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, base_space: dict[str, Any]
          ) -> dict[str, str]:
    """One store for every test: experiment name or search -> id, and "uri"."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    ids = {"uri": uri}

    def experiment(name: str) -> str:
        return client.create_experiment(name, artifact_location=(root / name).as_uri())

    demo = experiment("demo")
    ids["old"] = add_search(client, demo, base_space, OLD, T0, val_videos=1000)
    ids["new"] = add_search(client, demo, base_space, NEW, T0 + 1000)
    ids["unfinished"] = add_search(client, demo, base_space, UNFINISHED, T0 + 2000)
    add_search(client, experiment("stuck"), base_space, UNFINISHED, T0)
    add_search(client, experiment("loss"), base_space, LOSS, T0, metric="val_loss", mode=None,
               trial_spaces=False)
    add_search(client, experiment("tied"), base_space, TIED, T0, val_videos=None)
    return ids


def best(store: Mapping[str, str], out: Path, *args: str) -> int:
    return main(["--tracking-uri", store["uri"], "--out", str(out), *args])


def table(stdout: str) -> list[list[str]]:
    """The ranked rows: rank, run id, trial id, value, params..."""
    return [line.split() for line in stdout.splitlines() if line[:4].strip().isdigit()]


def test_best_completed_trial_of_latest_search(tmp_path: Path, store: dict[str, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "best.yaml"
    assert best(store, out, "--experiment", "demo") == 0
    stdout = capsys.readouterr().out
    assert f"run {store['new']}, completed" in stdout  # skips the search with none completed
    assert "later searches have no completed trial" in stdout
    rows = table(stdout)
    assert [row[2] for row in rows] == ["a_1", "a_2", "a_3"]  # pruned/failed/running never
    assert rows[0][3:] == ["0.8000", "0.3", "4", "0.002", "tiny3d_wide"]
    assert "trial a_1, val_acc 0.8000" in stdout
    assert ("note: 1 trial is within one standard error (0.040, 100 validation videos) of the "
            "best: a_2; their ranking is noise.") in stdout
    python = python_command()  # the interpreter running this, as a user would type it
    assert f"wrote {out}: train the final student with  {python} -m kdsearch.run {out}" in stdout
    assert out.read_text().startswith("# The best trial of experiment demo: run ")
    cfg = load_space(out, cwd=tmp_path)
    assert cfg.experiment.name == "demo-final"
    assert cfg.search.space == {} and cfg.search.num_samples == 1
    assert cfg.search.scheduler.name == "none"
    assert {n: getattr(cfg.student, n) for n in NEW["a_1"][2]} == NEW["a_1"][2]
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]  # no temporary file left


def test_search_option_picks_an_older_search(tmp_path: Path, store: dict[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "old.yaml"
    assert best(store, out, "--experiment", "demo", "--search", store["old"], "--top", "1") == 0
    stdout = capsys.readouterr().out
    assert [row[2] for row in table(stdout)] == ["o_1"]
    assert "the best is ahead of the next (o_2) by 0.4000, more than the noise" in stdout
    assert "within one standard error" not in stdout
    assert load_space(out, cwd=tmp_path).student.backbone == "tiny_r2plus1d"


def test_val_loss_is_minimised_and_rebuilt_without_trial_space(
        tmp_path: Path, store: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loss.yaml"
    assert best(store, out, "--experiment", "loss") == 0
    stdout = capsys.readouterr().out
    assert [row[2] for row in table(stdout)] == ["l_1", "l_2"]  # the pruned l_3 is lower
    assert "ranked by val_loss (min)" in stdout
    assert f"has no {TRIAL_SPACE}; rebuilt" in stdout
    assert "no noise estimate for val_loss" in stdout
    cfg = load_space(out, cwd=tmp_path)
    assert cfg.experiment.name == "loss-final" and cfg.search.space == {}
    assert {n: getattr(cfg.student, n) for n in LOSS["l_1"][2]} == LOSS["l_1"][2]
    raw = yaml.safe_load(out.read_text())
    assert isinstance(raw["student"]["lr"], float) and isinstance(raw["student"]["batch_size"],
                                                                  int)


def test_exact_ties_are_reported_without_validation_counts(
        tmp_path: Path, store: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert best(store, tmp_path / "b.yaml", "--experiment", "tied") == 0
    stdout = capsys.readouterr().out
    assert "1 trial is tied with the best (val_acc 0.7500)" in stdout
    assert "standard error" not in stdout


def test_no_completed_trial_exits_1(tmp_path: Path, store: dict[str, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.yaml"
    assert best(store, out, "--experiment", "stuck") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "1 pruned" in err and "1 running" in err
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--experiment", "nope"], ["'nope'", "demo, loss, stuck, tied"]),
    (["--experiment", "demo", "--search", "0" * 32], ["--search", "no such run"]),
    (["--experiment", "loss", "--search", "NEW"], ["not a search of experiment 'loss'"]),
])
def test_bad_input_exits_2(tmp_path: Path, store: dict[str, str], args: list[str],
                           words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = [store["new"] if a == "NEW" else a for a in args]
    assert best(store, tmp_path / "b.yaml", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert all(w in err for w in words), err


def test_missing_database_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--experiment", "demo"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow database at {tmp_path / 'mlflow.db'}" in err and "--tracking-uri" in err
    assert main(["--experiment", "demo", "--tracking-uri", "sqlite:///elsewhere/m.db"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point(tmp_path: Path, store: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "kdsearch.best", "--experiment", "demo",
                           "--tracking-uri", store["uri"]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # MLflow stays quiet
    assert "wrote best.yaml: train the final student with" in done.stdout
    assert (tmp_path / "best.yaml").is_file()


def test_a_best_trial_whose_settings_were_never_recorded_is_refused(
        tmp_path: Path, base_space: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    demo = client.create_experiment("killed", artifact_location=(tmp_path / "a").as_uri())
    parent = add_search(client, demo, base_space,
                        {"k_1": ("completed", [0.6], sampled(0.3, 4.0, 0.002, "tiny3d"))}, T0,
                        trial_spaces=False)
    # The best trial's run as a driver killed after creating it leaves it: no params, no
    # space file; its metrics came later from the resumed search's Tune.
    run = client.create_run(demo, run_name="trial-k_2", start_time=T0 + 9,
                            tags={PARENT: parent, ROLE: "trial", STATUS: "completed",
                                  "kdsearch.trial_id": "k_2"}).info.run_id
    client.log_metric(run, "val_acc", 0.9, step=1)
    out = tmp_path / "best.yaml"
    assert main(["--tracking-uri", uri, "--out", str(out), "--experiment", "killed"]) == 2
    capsys.readouterr()  # MLflow's table-creation chatter
    assert main(["--tracking-uri", uri, "--out", str(out), "--experiment", "killed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: run {run} (trial k_2) has no recorded value of alpha, temperature, "
                   f"lr, backbone, kd_loss and no {TRIAL_SPACE}: its sampled settings were never "
                   "written (the search's driver was killed); resume that search "
                   f"({python_command()} -m kdsearch.run SPACE.yaml --resume) to record them"]
    assert not out.exists()  # never the student's defaults in place of the trial's settings
