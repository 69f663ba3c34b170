"""What a finished search leaves in MLflow besides the per-epoch records.

The parent run gets the table of all trials and the plots (``report/``); the best
``tracking.top_k`` trials keep their student checkpoint; the best student is logged as
weights and plain data (:mod:`kdsearch.track.model`) and registered in the Model Registry.
Every step can run twice (a resumed search that crashed while publishing) without recording
anything twice.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from kdsearch.config import SpaceConfig, searched_values, trial_student
from kdsearch.models import Normalized
from kdsearch.models.checkpoints import STUDENT_FILE, load_student
from kdsearch.models.export import ExportError
from kdsearch.track.model import (
    MODEL_NAME,
    ONNX_ERROR,
    ONNX_MODEL,
    RUN_SHA_TAG,
    SHA_TAG,
    example_clip,
    export_checked,
    log_onnx,
    log_student,
    quiet,
    write_release,
)
from kdsearch.track.report import (
    SearchFacts,
    TrialRecord,
    epoch_agreement,
    pareto_records,
    unsafe_stops,
    write_report,
)
from kdsearch.track.schema import (
    PARETO,
    PUBLISH_ERROR,
    Status,
    TrialRow,
    best_row,
    kd_gain_of,
    trial_runs,
)


def publish(client: MlflowClient, cfg: SpaceConfig, classes: tuple[str, ...],
            experiment_id: str, parent_id: str, rows: Sequence[TrialRow],
            say: Callable[[str], None], clips: torch.Tensor | None = None
            ) -> tuple[list[str], list[str]]:
    """Report, early-stopping check, top-k checkpoints, registered best student and its ONNX
    export (checked on the input example and ``clips``, validation clips); returns the
    warnings of the early-stopping check and the steps that failed. A step that fails is
    tried again (``RETRY_DELAYS``), then reported: it does not cost the other steps, the
    trials' results are safe in MLflow and in Tune's storage, and the search stays unfinished
    so that ``--resume`` publishes again (every step can run twice without recording
    anything twice)."""
    best = best_row([r for r in rows if r.run_id], cfg.search.mode)
    records: list[TrialRecord] = []
    warnings: list[str] = []

    def report() -> None:
        records[:] = trial_records(client, cfg, experiment_id, parent_id, rows)
        log_report(client, cfg, parent_id, records, classes)
        log_pareto(client, cfg, parent_id, records)

    def check_stops() -> None:
        if records:  # read by the report's step
            warnings[:] = log_agreement(client, cfg, parent_id, records)

    steps: list[tuple[str, Callable[[], None]]] = [
        ("the trials table and plots", report),
        ("the early-stopping check", check_stops),
        ("the top trials' checkpoints", lambda: log_checkpoints(client, cfg, rows)),
    ]
    if best is not None:
        steps.append(("the best student in the Model Registry",
                      lambda: say(register_best(client, cfg, classes, best))))
        if cfg.report.onnx:
            steps.append(("the best student as ONNX",
                          lambda: say(register_onnx(client, cfg, classes, best, clips))))
    say(f"publishing: {', '.join(what for what, _ in steps)}")
    failed: list[str] = []
    for what, step in steps:
        message = _attempt(what, step, say)
        if message is not None:
            failed.append(message)
    if failed:
        client.set_tag(parent_id, PUBLISH_ERROR, "; ".join(failed)[:5000])
    elif PUBLISH_ERROR in client.get_run(parent_id).data.tags:
        client.delete_tag(parent_id, PUBLISH_ERROR)  # an earlier attempt's, now published
    return warnings, failed


#: Seconds between the tries of a publish step that failed (a tracking server restarting,
#: an object store throttling): three tries in all.
RETRY_DELAYS = (2.0, 8.0)


def _attempt(what: str, step: Callable[[], None], say: Callable[[str], None]) -> str | None:
    """Run ``step``, trying again after each of ``RETRY_DELAYS``; None when it succeeded,
    else the last failure as one line."""
    for delay in (*RETRY_DELAYS, None):
        try:
            step()
            return None
        except Exception as err:  # noqa: BLE001 - one failed step must not cost the others
            message = f"could not record {what}: {type(err).__name__}: {err}"
            if delay is None:
                say(f"warning: {message}")
                return message
            say(f"warning: {message}; trying again in {delay:.0f} s")
            time.sleep(delay)
    return None


def trial_records(client: MlflowClient, cfg: SpaceConfig, experiment_id: str, parent_id: str,
                  rows: Sequence[TrialRow]) -> list[TrialRecord]:
    """Each trial as the report sees it: Tune's sampled values, MLflow's metrics."""
    runs = {r.info.run_id: r for r in trial_runs(client, experiment_id, parent_id)}
    records = []
    for row in rows:
        run = runs.get(row.run_id or "")
        metrics = dict(run.data.metrics) if run else {}
        history = ({m.step: m.value for m in client.get_metric_history(
            row.run_id, cfg.search.metric)} if run and row.run_id else {})
        params = {k: v for k, v in row.config.items() if k in cfg.search.space}
        records.append(TrialRecord(row.trial_id, row.run_id, row.status, row.epochs, params,
                                   metrics, history, run.info.start_time if run else None))
    return records


def search_facts(client: MlflowClient, cfg: SpaceConfig, parent_id: str,
                 classes: Sequence[str]) -> SearchFacts:
    """The report's headline facts, from what the search logged on its parent run."""
    logged = client.get_run(parent_id).data.metrics

    def count(name: str) -> int | None:
        return None if name not in logged else int(logged[name])

    return SearchFacts(cfg.teacher.model, logged.get(f"teacher_{cfg.search.metric}"),
                       len(classes), count("data_train_videos"), count("data_val_videos"),
                       kd_gain_of(logged, cfg.search.metric, cfg.search.mode))


def log_agreement(client: MlflowClient, cfg: SpaceConfig, parent_id: str,
                  records: Sequence[TrialRecord]) -> list[str]:
    """The rank correlation of each epoch with the last over the completed trials, as the
    parent run's metric ``epoch_agreement`` (step = epoch), and trials stopped at an epoch that
    ranked poorly as ``epoch_stopped`` (step = epoch); the warnings about such stops."""
    agreement = epoch_agreement(records, cfg.search.metric, cfg.student.epochs)
    stamp = int(time.time() * 1000)
    measures = [Metric("epoch_agreement", a.rho, stamp, a.epoch) for a in agreement
                if a.rho is not None]
    measures += [Metric("epoch_stopped", float(a.stopped), stamp, a.epoch) for a in agreement]
    if measures:
        client.log_batch(parent_id, metrics=measures)
    warnings = unsafe_stops(agreement, cfg.search.metric)
    if warnings:
        client.set_tag(parent_id, "kdsearch.unsafe_stops", "\n".join(warnings)[:5000])
    return warnings


def log_pareto(client: MlflowClient, cfg: SpaceConfig, parent_id: str,
               records: Sequence[TrialRecord]) -> list[str]:
    """Tag the Pareto-optimal trials (``Search.front``): ``kdsearch.pareto`` "true" on their
    runs, and their trial ids, best first, on the parent run; returns those ids."""
    front = pareto_records(records, cfg.search)
    for record in front:
        if record.run_id:
            client.set_tag(record.run_id, PARETO, "true")
    ids = [r.trial_id for r in front]
    client.set_tag(parent_id, PARETO, ",".join(ids)[:5000])
    return ids


def log_report(client: MlflowClient, cfg: SpaceConfig, parent_id: str,
               records: Sequence[TrialRecord], classes: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="kdsearch-report-") as tmp:
        write_report(records, cfg.search, Path(tmp),
                     search_facts(client, cfg, parent_id, classes))
        client.log_artifacts(parent_id, tmp, "report")


def log_checkpoints(client: MlflowClient, cfg: SpaceConfig, rows: Sequence[TrialRow]) -> None:
    """The best ``tracking.top_k`` completed trials keep their last student checkpoint."""
    top = [r for r in rows if r.status == Status.COMPLETED and r.run_id and r.checkpoint]
    for rank, row in enumerate(top[:cfg.tracking.top_k], start=1):
        assert row.run_id is not None and row.checkpoint is not None
        with row.checkpoint.as_directory() as folder:
            client.log_artifact(row.run_id, str(Path(folder) / STUDENT_FILE), "checkpoint")
        client.set_tag(row.run_id, "kdsearch.rank", str(rank))


def checkpoint_student(row: TrialRow, num_classes: int) -> Normalized:
    """The trial's student as its last checkpoint left it, on the CPU, in eval mode."""
    assert row.checkpoint is not None
    with row.checkpoint.as_directory() as folder:
        return load_student(Path(folder), num_classes)


def registered_name(cfg: SpaceConfig) -> str:
    return cfg.tracking.registered_model or f"{cfg.experiment.name}-student"


def register_best(client: MlflowClient, cfg: SpaceConfig, classes: tuple[str, ...],
                  best: TrialRow) -> str:
    """Log the best student to its trial's run and register it; returns what was done.

    Each step is skipped when an earlier, interrupted attempt (a driver killed while
    publishing, then resumed) already did it: the run is never left reopened, the model is
    logged once and registered once.
    """
    assert best.run_id is not None
    name, run_id = registered_name(cfg), best.run_id
    run = client.get_run(run_id)
    ended = run.info.end_time or int(time.time() * 1000)  # reopening the run moves it
    done = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if done:
        version = str(done[0].version)
    else:
        logged = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
        with quiet():
            if logged:  # logged before the interruption, not registered yet
                version = str(mlflow.register_model(f"models:/{logged[0].model_id}",
                                                    name).version)
            else:
                version = _log_student(best, cfg, classes, name)
    client.set_terminated(run_id, "FINISHED", end_time=ended)
    value = "-" if best.value is None else f"{best.value:.4f}"
    settings = searched_values(trial_student(cfg.student, best.config))
    tags = {"val_metric": cfg.search.metric, "value": value, "teacher": cfg.teacher.model,
            **{key: str(setting) for key, setting in settings.items()},
            "trial_id": best.trial_id, "experiment": cfg.experiment.name}
    sha = client.get_run(run_id).data.tags.get(RUN_SHA_TAG)
    if sha:
        tags[SHA_TAG] = sha
    for key, text in tags.items():
        client.set_model_version_tag(name, version, key, text)
    client.set_tag(run_id, "kdsearch.registered_model", f"{name}/{version}")
    return f"best student: {'already ' if done else ''}registered as {name} version {version}"


def register_onnx(client: MlflowClient, cfg: SpaceConfig, classes: tuple[str, ...],
                  best: TrialRow, clips: torch.Tensor | None) -> str:
    """Export the best student to ONNX, check it against PyTorch on the input example and
    ``clips``, log it to the best trial's run with MLflow's ONNX flavour and register it as
    ``<registered name>-onnx``; returns what was done. A student that does not export, or
    whose export disagrees with PyTorch, is reported (the run's tag ``kdsearch.onnx_error``)
    and not registered: the search still finishes. Safe to run twice, as register_best."""
    assert best.run_id is not None
    name, run_id = f"{registered_name(cfg)}-onnx", best.run_id
    done = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if done:
        return f"best student as ONNX: already registered as {name} version {done[0].version}"
    run = client.get_run(run_id)
    ended = run.info.end_time or int(time.time() * 1000)
    logged = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{ONNX_MODEL}'")
    if logged:  # logged before an interruption, not registered yet
        with quiet():
            version = str(mlflow.register_model(f"models:/{logged[0].model_id}", name).version)
        return f"best student as ONNX: registered as {name} version {version}"
    student = checkpoint_student(best, len(classes))
    backbone = str(trial_student(cfg.student, best.config).backbone)
    clip = cfg.student.clip.model_dump()
    checked = torch.from_numpy(example_clip(clip))
    if clips is not None and len(clips):
        checked = torch.cat([checked, clips.float()])
    with tempfile.TemporaryDirectory(prefix="kdsearch-onnx-") as tmp:
        try:
            exported = export_checked(student, backbone, clip, Path(tmp) / "student.onnx",
                                      checked)
        except ExportError as err:
            client.set_tag(run_id, ONNX_ERROR, str(err)[:5000])
            return f"warning: the best student is not exported to ONNX: {err}"
        if exported.problem is not None:
            client.set_tag(run_id, ONNX_ERROR, exported.problem[:5000])
            return ("warning: the best student's ONNX export is not registered: "
                    f"{exported.problem}")
        with mlflow.start_run(run_id=run_id):
            version = str(log_onnx(exported, student, classes, clip, name))
    client.set_terminated(run_id, "FINISHED", end_time=ended)
    for key, text in exported.tags().items():
        client.set_model_version_tag(name, version, key, text)
    if ONNX_ERROR in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, ONNX_ERROR)
    p = exported.parity
    return (f"best student as ONNX (opset {exported.tags()['onnx_opset']}): registered as "
            f"{name} version {version}; logits within {p.max_abs_diff:.2g} of PyTorch on "
            f"{p.clips} clips, the same predictions; {exported.latency_ms:.3g} ms per clip in "
            "ONNX Runtime on one CPU thread")


def _log_student(best: TrialRow, cfg: SpaceConfig, classes: tuple[str, ...],
                 name: str) -> str:
    """The best trial's student, logged into its run as model ``student`` (weights and plain
    data: :mod:`kdsearch.track.model`) and registered as ``name``; returns the version."""
    assert best.run_id is not None
    student = checkpoint_student(best, len(classes))
    backbone = str(trial_student(cfg.student, best.config).backbone)
    clip = cfg.student.clip.model_dump()
    with tempfile.TemporaryDirectory(prefix="kdsearch-release-") as tmp:
        data, sha = write_release(Path(tmp), student, backbone, classes, clip)
        MlflowClient().set_tag(best.run_id, RUN_SHA_TAG, sha)  # before the artifact exists
        with mlflow.start_run(run_id=best.run_id):
            return str(log_student(data, sha, classes, clip, name))
