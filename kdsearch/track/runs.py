"""The runs of a search in MLflow: the parent run's life (created, the teacher and data
recorded, finished), the trial runs' queries, and the helpers every writer uses.

Every write happens on the driver through ``MlflowClient`` (explicit run ids, no global
active run), so trials never need to reach the tracking store and nothing is logged twice.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.storage import redact, redact_text
from kdsearch.track.schema import (
    BASELINE_ROLE,
    BEST_RUN,
    DESCRIPTION,
    ERROR,
    KD_OF,
    KD_SEED,
    KD_TEACHER,
    KD_VERDICT,
    MAX_RESULTS,
    PARENT,
    RESOLVED_SPACE,
    ROLE,
    SEARCH_NAME,
    STATUS,
    TRIAL_ID,
    KdGain,
    Status,
    TrialRow,
    baseline_query,
    kd_metrics,
    trial_query,
    trial_runs,
)

if TYPE_CHECKING:
    from kdsearch.data.dataset import DatasetSplits
    from kdsearch.train.teacher import TeacherResult

CONFUSION = "val_confusion"
FINAL_METRICS = ("val_acc", "val_video_acc", "val_vote_acc", "val_macro_f1", "val_loss")


def fixed_params(cfg: SpaceConfig, classes: tuple[str, ...]) -> dict[str, Any]:
    """The settings every trial shares that a reader needs to compare runs."""
    clip = cfg.student.clip
    return {"teacher": cfg.teacher.model, "teacher_weights": cfg.teacher.weights,
            "data_format": cfg.data.format, "data_root": redact(cfg.data.root),
            "num_classes": len(classes), "classes": ",".join(classes),
            "epochs": cfg.student.epochs, "clip_frames": clip.num_frames,
            "clip_stride": clip.stride, "crop_size": clip.crop_size}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any],
                step: int = 0) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, int | float) and math.isfinite(float(v))]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_stopping(client: MlflowClient, run_id: str,
                 decisions: Sequence[Mapping[str, Any]]) -> None:
    """What an ``agreement`` scheduler decided at each rung, on the parent run: metrics
    ``stopping.<what>`` with step = the rung's epoch (agreement, pairs, cutoff, stopped,
    unknown: let through as the rung's agreement was not established, within_noise, kept)."""
    for rung in decisions:
        log_metrics(client, run_id, {f"stopping.{key}": value for key, value in rung.items()
                                     if key != "epoch" and value is not None},
                    step=int(rung["epoch"]))


def is_metric(key: str) -> bool:
    return key.startswith(("val_", "train_")) or key == "lr"


def log_evaluation(client: MlflowClient, run_id: str, metrics: Mapping[str, Any],
                   classes: Sequence[str], step: int = 0) -> None:
    """Scalar metrics, and the confusion matrix as numbers and as an image."""
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if is_metric(k)}, step)
    confusion = metrics.get(CONFUSION)
    if confusion is not None:
        log_confusion(client, run_id, confusion, classes)


def log_confusion(client: MlflowClient, run_id: str, confusion: Sequence[Sequence[int]],
                  classes: Sequence[str]) -> None:
    from kdsearch.train.metrics import confusion_figure  # matplotlib: loaded when drawn

    client.log_dict(run_id, {"classes": list(classes), "rows": "true class",
                             "columns": "predicted class",
                             "matrix": [list(map(int, row)) for row in confusion]},
                    "confusion_matrix.json")
    # A bare Figure (no pyplot): nothing global keeps it alive after this call.
    figure = confusion_figure(confusion, classes, title="validation, per video")
    client.log_figure(run_id, figure, "confusion_matrix.png")


def log_data(client: MlflowClient, run_id: str, data: DatasetSplits) -> None:
    """What the search trained on, and every video it left out or used with care."""
    skipped = sum(issue.action == "skipped" for issue in data.issues)
    log_metrics(client, run_id, {"data_train_videos": len(data.train),
                                 "data_val_videos": len(data.val), "data_skipped": skipped})
    client.set_tag(run_id, "kdsearch.data_fingerprint", data.fingerprint)
    if data.issues:
        client.log_table(run_id, data=data.issue_table(), artifact_file="data_issues.json")


def start_child(client: MlflowClient, experiment_id: str, parent_id: str, name: str,
                tags: Mapping[str, str]) -> str:
    run = client.create_run(experiment_id, run_name=name, tags={PARENT: parent_id, **tags})
    return run.info.run_id


def redacted_config(cfg: SpaceConfig) -> dict[str, Any]:
    """The resolved space file with credentials stripped from every URI in it."""
    return cfg.redacted()


def start_parent(client: MlflowClient, cfg: SpaceConfig, space_path: Path, search: str
                 ) -> tuple[str, str]:
    """The experiment (created on first use) and the parent run of search ``search`` (its
    folder's name): a new one, or the one an earlier attempt created before it was killed
    (found by its ``kdsearch.search`` tag), so that a search has one parent run whatever
    point it was killed at."""
    experiment = client.get_experiment_by_name(cfg.experiment.name)
    if experiment is not None:
        found = client.search_runs([experiment.experiment_id],
                                   f"tags.`{ROLE}` = 'search' and tags.`{SEARCH_NAME}` = "
                                   f"'{search}'", max_results=1)
        if found:
            return experiment.experiment_id, found[0].info.run_id
    # The "Model training" view of the MLflow UI (it shows new experiments as GenAI ones).
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment(
                         cfg.experiment.name, artifact_location=_artifact_root(cfg),
                         tags={"mlflow.experimentKind": "custom_model_development"}))
    run = client.create_run(experiment_id, run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={ROLE: "search", STATUS: Status.RUNNING.value,
                                  SEARCH_NAME: search})
    run_id = run.info.run_id
    # The space file as written (comments kept), credentials stripped from its URIs.
    client.log_text(run_id, redact_text(space_path.read_text(encoding="utf-8")),
                    space_path.name)
    client.log_text(run_id, yaml.safe_dump(redacted_config(cfg), sort_keys=False),
                    RESOLVED_SPACE)
    log_params(client, run_id, {"num_samples": cfg.search.num_samples,
                                "sampler": cfg.search.sampler,
                                "scheduler": cfg.search.scheduler.name,
                                "metric": cfg.search.metric, "mode": cfg.search.mode,
                                "searched": ",".join(cfg.search.space)})
    return experiment_id, run_id


def _artifact_root(cfg: SpaceConfig) -> str | None:
    """Beside a SQLite store, artifacts go to ``mlartifacts/`` next to the database file
    (MLflow's default is ``./mlruns`` under whatever directory the process runs in)."""
    uri = cfg.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server chooses its own artifact store
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / cfg.experiment.name).as_uri()


def completed_trials(client: MlflowClient, experiment: str, metric: str
                     ) -> list[tuple[dict[str, str], float]]:
    """(params, final ``metric``) of every completed trial run in ``experiment``."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError([f"search.warm_start.experiment: {experiment!r} is not an "
                           f"experiment of {redact(client.tracking_uri)}"])
    runs = trial_runs(client, found.experiment_id, status=Status.COMPLETED)
    return [(dict(r.data.params), float(r.data.metrics[metric])) for r in runs
            if metric in r.data.metrics]


def trial_statuses(client: MlflowClient, experiment_id: str, parent_id: str
                   ) -> dict[str, tuple[str, str]]:
    """trial id -> (run id, kdsearch.status) of every trial run of a search, from MLflow."""
    return {r.data.tags[TRIAL_ID]: (r.info.run_id, r.data.tags.get(STATUS, ""))
            for r in trial_runs(client, experiment_id, parent_id)}


def close_open_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> None:
    """Mark trials that never finished (the search was stopped) ``interrupted``, so no run
    stays RUNNING forever in the UI."""
    for run_id, status in trial_statuses(client, experiment_id, parent_id).values():
        if status == Status.RUNNING:
            client.set_tag(run_id, STATUS, Status.INTERRUPTED.value)
            client.set_terminated(run_id, "KILLED")


def drop_lost_trials(client: MlflowClient, experiment_id: str, parent_id: str,
                     known: set[str]) -> list[str]:
    """Delete the trial runs of a resumed search that its restored Tune run does not know: the
    driver died after such a trial started but before Tune's next snapshot, so Tune sampled
    another trial in its place. Without this the search would count that trial twice. The
    runs are deleted the MLflow way (restorable); their trial ids are returned."""
    # Only runs still RUNNING: a lost trial's run was left open when the driver died, while a
    # trial Tune knows but reports no metrics of (one that failed at once) has been closed.
    lost = {trial_id: run_id for trial_id, (run_id, status) in
            trial_statuses(client, experiment_id, parent_id).items()
            if trial_id not in known and status == Status.RUNNING}
    for run_id in lost.values():
        client.set_tag(run_id, STATUS, Status.INTERRUPTED.value)
        client.set_terminated(run_id, "KILLED")
        client.delete_run(run_id)
    return sorted(lost)


def log_baseline_run(client: MlflowClient, experiment_id: str, parent_id: str, *, of_run: str,
                     seed: int, teacher: bool, params: Mapping[str, Any],
                     metrics: Mapping[str, Any], error: str | None = None) -> str:
    """One finished training of the KD baseline (``kdsearch.search.baseline``), nested under
    the search's run. Its role is ``kd_baseline``, never ``trial``: no trial query, ranking,
    report table, registry step or resume counts it. Created once it has ended, so that an
    interrupted baseline leaves no run open."""
    side = "on" if teacher else "off"
    status = Status.COMPLETED if error is None else Status.FAILED
    tags = {ROLE: BASELINE_ROLE, KD_SEED: str(seed), KD_TEACHER: side, KD_OF: of_run,
            STATUS: status.value, **({ERROR: error[:5000]} if error else {})}
    run_id = start_child(client, experiment_id, parent_id,
                         f"kd-baseline-teacher-{side}-seed-{seed}", tags)
    log_params(client, run_id, params)
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if is_metric(k)},
                step=int(metrics.get("epoch", 0)))
    client.set_terminated(run_id, "FINISHED" if error is None else "FAILED")
    return run_id


def baseline_results(client: MlflowClient, experiment_id: str, parent_id: str, of_run: str,
                     metric: str) -> dict[tuple[bool, int], float]:
    """(teacher on, seed) -> final ``metric`` of the completed KD baseline runs of search
    ``parent_id`` that trained run ``of_run``'s configuration: what a resumed search keeps."""
    runs = client.search_runs([experiment_id], baseline_query(parent_id),
                              max_results=MAX_RESULTS)
    return {(r.data.tags.get(KD_TEACHER) == "on", int(r.data.tags[KD_SEED])):
            float(r.data.metrics[metric]) for r in runs
            if r.data.tags.get(KD_OF) == of_run and metric in r.data.metrics}


def log_kd_gain(client: MlflowClient, parent_id: str, gain: KdGain) -> None:
    """What the teacher added, on the parent run: ``kdsearch.track.schema.kd_metrics`` and
    the verdict as a tag (to filter searches by it in the UI)."""
    log_metrics(client, parent_id, kd_metrics(gain))
    client.set_tag(parent_id, KD_VERDICT, gain.verdict)


def drop_open_children(client: MlflowClient, experiment_id: str, parent_id: str) -> int:
    """Delete the teacher and KD-baseline runs of a search that a killed driver left RUNNING
    (each is written whole once its work has ended, so an open one is half-written); a
    resumed search writes them again. Trial runs are Tune's to resume. Returns how many."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT}` = '{parent_id}' and "
                              "attributes.status = 'RUNNING'", max_results=MAX_RESULTS)
    dropped = 0
    for run in runs:
        if run.data.tags.get(ROLE) in ("teacher", BASELINE_ROLE):
            client.set_terminated(run.info.run_id, "KILLED")
            client.delete_run(run.info.run_id)
            dropped += 1
    return dropped


def record_teacher(client: MlflowClient, cfg: SpaceConfig, data: DatasetSplits,
                   teacher: TeacherResult, experiment_id: str, parent_id: str) -> None:
    """The data counts on the parent run, and the teacher as a run of its own; each part
    skipped when an earlier attempt of the same search (resumed) wrote it already."""
    parent = client.get_run(parent_id)
    if "data_train_videos" not in parent.data.metrics:
        log_data(client, parent_id, data)
    if client.search_runs([experiment_id], f"tags.`{PARENT}` = '{parent_id}' and "
                          f"tags.`{ROLE}` = 'teacher'", max_results=1):
        return  # recorded (a resume drops a half-written one first: drop_open_children)
    teacher_run = start_child(client, experiment_id, parent_id, f"teacher-{cfg.teacher.model}",
                              {ROLE: "teacher", "kdsearch.teacher.reused": str(teacher.reused),
                               "kdsearch.teacher.path": redact(teacher.path)})
    log_params(client, teacher_run, {**cfg.redacted()["teacher"],
                                     **fixed_params(cfg, data.classes)})
    log_evaluation(client, teacher_run, teacher.metrics, data.classes)
    if not any(k.startswith("teacher_") for k in parent.data.metrics):
        log_metrics(client, parent_id, {f"teacher_{k}": v for k, v in teacher.metrics.items()
                                        if k.startswith("val")})
    client.set_terminated(teacher_run)  # last: a FINISHED teacher run means all is recorded


def ui_address(tracking_uri: str) -> str:
    """Where the MLflow UI of ``tracking_uri`` answers: the tracking server itself, or the
    local ``mlflow ui`` a user starts on a database file (127.0.0.1:5000 by default)."""
    if tracking_uri.startswith(("http://", "https://")):
        return redact(tracking_uri).rstrip("/")
    return "http://127.0.0.1:5000"


def trials_link(tracking_uri: str, experiment_id: str, parent_id: str, metric: str,
                mode: str) -> str:
    """The MLflow UI page of one search's trials, best first: the runs filtered to the trial
    runs of ``parent_id`` and sorted by ``metric`` (MLflow's URL parameters; which columns
    show is kept by the UI itself and cannot be set by URL)."""
    query = urllib.parse.urlencode(
        {"searchFilter": trial_query(parent_id), "orderByKey": f"metrics.`{metric}`",
         "orderByAsc": "true" if mode == "min" else "false"}, quote_via=urllib.parse.quote)
    return f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}?{query}"


def report_location(client: MlflowClient, parent_id: str) -> str:
    """The search's HTML report: a local path when the artifacts are files, else its URI."""
    root = client.get_run(parent_id).info.artifact_uri.rstrip("/")
    uri = f"{root}/report/search_report.html"
    if uri.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(uri).path)
    return redact(uri)


def finish_parent(client: MlflowClient, parent_id: str, cfg: SpaceConfig,
                  best: TrialRow | None, interrupted: bool) -> None:
    experiment_id = client.get_run(parent_id).info.experiment_id
    link = trials_link(cfg.tracking_uri, experiment_id, parent_id, cfg.search.metric,
                       cfg.search.mode)
    client.set_tag(parent_id, DESCRIPTION,
                   f"The trials of this search, best first: [trials, sorted by "
                   f"{cfg.search.metric}]({link}). The report: `report/search_report.html` in "
                   "this run's artifacts.")
    if best is not None and best.run_id:
        client.set_tag(parent_id, BEST_RUN, best.run_id)
    if interrupted:
        # Params are write-once in MLflow: the best.* params wait for the resumed search.
        client.set_tag(parent_id, STATUS, Status.INTERRUPTED.value)
        client.set_terminated(parent_id, "KILLED")
        return
    if best is not None:
        log_params(client, parent_id, {f"best.{k}": v for k, v in best.config.items()})
        if best.value is not None:
            log_metrics(client, parent_id, {f"best_{cfg.search.metric}": best.value})
    client.set_tag(parent_id, STATUS, (Status.COMPLETED if best else Status.FAILED).value)
    client.set_terminated(parent_id, "FINISHED" if best else "FAILED")


def fail_parent(client: MlflowClient, parent_id: str, interrupted: bool) -> None:
    """The search stopped by an exception (``interrupted``: Ctrl-C)."""
    client.set_tag(parent_id, STATUS, (Status.INTERRUPTED if interrupted else Status.FAILED).value)
    client.set_terminated(parent_id, "KILLED" if interrupted else "FAILED")


def reopen_parent(client: MlflowClient, parent_id: str) -> None:
    client.update_run(parent_id, status="RUNNING")
    client.set_tag(parent_id, STATUS, Status.RUNNING.value)
