"""kdsearch.search.baseline: a real search on the tiny synthetic set trains its best
configuration again without the teacher and both on a second seed, records what the teacher
added on the parent run, and none of those runs ever counts as a trial."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from kdsearch.search.baseline import Job, jobs
from kdsearch.testing import TINY_SPACE, write_tiny_space
from kdsearch.track.schema import KD_OF, KD_SEED, KD_TEACHER, trial_runs

BASELINE = "tags.`kdsearch.role` = 'kd_baseline'"


def _baseline_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Any]:
    return client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and {BASELINE}")


@pytest.fixture(scope="module")
def searched(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real search of 2 trials, then its baseline on 2 seeds: 3 more tiny trainings."""
    from kdsearch.config.load import load_space
    from kdsearch.search.driver import run_search

    folder = tmp_path_factory.mktemp("baseline")
    path = write_tiny_space(folder, search={**TINY_SPACE["search"], "num_samples": 2},
                            report={"kd_seeds": 2, "onnx": False})
    cfg = load_space(path, cwd=folder)
    said: list[str] = []
    outcome = run_search(cfg, path, say=said.append)
    assert outcome.best is not None and not outcome.interrupted
    client = MlflowClient(cfg.tracking_uri)
    # (teacher, seed) -> val_acc, read before any test changes a run
    values = {(r.data.tags[KD_TEACHER], int(r.data.tags[KD_SEED])): r.data.metrics["val_acc"]
              for r in _baseline_runs(client, outcome.experiment_id, outcome.parent_run_id)}
    return {"folder": folder, "path": path, "cfg": cfg, "outcome": outcome, "said": said,
            "client": client, "values": values}


def test_the_jobs_pair_each_seed_and_leave_out_the_best_trial() -> None:
    assert jobs(3, 0) == [Job(False, 0), Job(False, 1), Job(True, 1), Job(False, 2),
                          Job(True, 2)]
    assert jobs(1, 7) == [Job(False, 7)]


def test_the_parent_run_records_what_the_teacher_added(searched: dict[str, Any]) -> None:
    from kdsearch.track.report import kd_gain_line

    client, outcome = searched["client"], searched["outcome"]
    parent = client.get_run(outcome.parent_run_id).data
    values = searched["values"]
    assert sorted(values) == [("off", 0), ("off", 1), ("on", 1)]
    kd = [outcome.best.value, values[("on", 1)]]  # the best trial is the run on seed 0
    no_teacher = [values[("off", 0)], values[("off", 1)]]
    metrics = parent.metrics
    assert metrics["kd_student_val_acc"] == pytest.approx(sum(kd) / 2)
    assert metrics["no_teacher_val_acc"] == pytest.approx(sum(no_teacher) / 2)
    # mode max: positive = the teacher helped
    assert metrics["kd_gain"] == pytest.approx(metrics["kd_student_val_acc"]
                                               - metrics["no_teacher_val_acc"])
    # two values each: s^2 = (a - b)^2 / 2, so s^2 / n = (a - b)^2 / 4
    se = math.sqrt((kd[0] - kd[1]) ** 2 / 4 + (no_teacher[0] - no_teacher[1]) ** 2 / 4)
    assert metrics["kd_gain_se"] == pytest.approx(se)
    n_val = metrics["data_val_videos"]
    p = metrics["kd_student_val_acc"]
    assert metrics["kd_val_se"] == pytest.approx(math.sqrt(p * (1 - p) / n_val))
    assert (metrics["kd_runs"], metrics["no_teacher_runs"]) == (2, 2)
    gain = outcome.kd_gain
    assert gain is not None and gain.gain == pytest.approx(metrics["kd_gain"])
    assert parent.tags["kdsearch.kd_verdict"] == gain.verdict
    said = searched["said"]
    assert ("kd baseline: training the best configuration without the teacher, 2 seeds each "
            "with and without it (the best trial is one; 3 runs, 2 at a time)") in said
    assert sum(bool(re.match(r"kd baseline [123]/3: with(out)? the teacher, seed \d: val_acc",
                             line)) for line in said) == 3
    assert kd_gain_line(gain) in said
    # The report's headline says it too.
    page = Path(outcome.report).read_text(encoding="utf-8")
    line = kd_gain_line(gain)
    assert line[0].upper() + line[1:] in page


def test_baseline_runs_are_nested_tagged_and_never_trials(searched: dict[str, Any],
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from kdsearch.best import main as best_main

    client, outcome, cfg = searched["client"], searched["outcome"], searched["cfg"]
    runs = _baseline_runs(client, outcome.experiment_id, outcome.parent_run_id)
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED" and tags["kdsearch.status"] == "completed"
        assert tags[KD_OF] == outcome.best.run_id
        assert float(params["alpha"]) == (0.0 if tags[KD_TEACHER] == "off"
                                          else pytest.approx(outcome.best.config["alpha"]))
        assert params["backbone"] == outcome.best.config["backbone"]
    trials = trial_runs(client, outcome.experiment_id, outcome.parent_run_id)
    assert len(trials) == len(outcome.rows) == 2
    assert {r.run_id for r in outcome.rows} == {r.info.run_id for r in trials}
    # Even a baseline run far better than every trial is not a trial: kdsearch.best picks a
    # trial, and counts 2.
    for run in runs:
        client.log_batch(run.info.run_id, metrics=[Metric("val_acc", 1.0, 0, 99)])
    out = tmp_path / "best.yaml"
    assert best_main(["--experiment", "tiny", "--tracking-uri", cfg.tracking_uri,
                      "--search", outcome.parent_run_id, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"best: run {outcome.best.run_id}," in printed
    (counts,) = re.findall(r"^trials: (.*); ranked by", printed, re.M)
    assert sum(int(n) for n in re.findall(r"(\d+) \w+", counts)) == 2, counts
    # The report's table lists the trials only.
    table = Path(outcome.report).parent / "trials.csv"
    assert len(table.read_text().strip().splitlines()) == 1 + 2


def _context(searched: dict[str, Any], cfg: Any, teacher: Path) -> Any:
    """The search's trial context, without its cache (the teacher runs online)."""
    from kdsearch.data.dataset import load_dataset
    from kdsearch.storage import local_dir
    from kdsearch.train.trial import TrialContext

    data = load_dataset(cfg.data, cfg.student.clip, local_dir(cfg.storage, "indexes"),
                        log=lambda _: None)
    return TrialContext(cfg, data.classes, str(teacher), data.train, data.val, None)


def test_a_failed_baseline_run_is_recorded_and_the_rest_still_measured(
        searched: dict[str, Any]) -> None:
    """No cache and no teacher file: the run with the teacher fails, those without it train;
    the gain is measured from one run with the teacher (no standard error: said so)."""
    from kdsearch.search.baseline import kd_baseline
    from kdsearch.track.report import kd_gain_line
    from kdsearch.track.runs import start_parent

    cfg, client, outcome = searched["cfg"], searched["client"], searched["outcome"]
    ctx = _context(searched, cfg, searched["folder"] / "no-teacher.pt")
    experiment_id, parent_id = start_parent(client, cfg, searched["path"],
                                            f"again-{time.time_ns()}")
    said: list[str] = []
    gain = kd_baseline(client, ctx, outcome.best, experiment_id, parent_id, said.append)
    assert gain is not None and (gain.kd_runs, gain.no_teacher_runs) == (1, 2)
    assert gain.se is None and gain.verdict == "unknown"
    assert any(line.startswith("warning: kd baseline") and "with the teacher, seed 1 failed"
               in line for line in said), said
    assert kd_gain_line(gain) in said and "1 and 2 seeds: no standard error" in said[-1]
    runs = _baseline_runs(client, experiment_id, parent_id)
    (failed,) = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.tags["kdsearch.status"] == "failed"
    assert failed.data.tags["kdsearch.error"]
    metrics = client.get_run(parent_id).data.metrics
    assert "kd_gain" in metrics and "kd_gain_se" not in metrics
    # Run again (a resumed search): what finished is kept, only the failed run is retried.
    said.clear()
    kd_baseline(client, ctx, outcome.best, experiment_id, parent_id, said.append)
    assert "(the best trial is one; 1 run, 2 at a time)" in said[0]
    again = _baseline_runs(client, experiment_id, parent_id)
    assert sorted(r.info.status for r in again) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]


def test_kd_baseline_false_trains_nothing(searched: dict[str, Any]) -> None:
    """(A whole search with it off: tests/track/test_runs.py, whose runs are exactly the
    parent, the teacher and the trials.)"""
    from kdsearch.config.schema import Report
    from kdsearch.search.baseline import kd_baseline
    from kdsearch.track.runs import start_parent

    cfg = searched["cfg"].model_copy(update={"report": Report(kd_baseline=False)})
    client, outcome = searched["client"], searched["outcome"]
    experiment_id, parent_id = start_parent(client, cfg, searched["path"],
                                            f"again-{time.time_ns()}")
    said: list[str] = []
    ctx = _context(searched, cfg, searched["folder"] / "no-teacher.pt")
    assert kd_baseline(client, ctx, outcome.best, experiment_id, parent_id, said.append) is None
    assert said == [] and _baseline_runs(client, experiment_id, parent_id) == []
    assert "kd_gain" not in client.get_run(parent_id).data.metrics
