"""MLflow records: one parent run per search, one child run per trial.

Every write happens on the driver through ``MlflowClient`` (explicit run ids, no global
active run), so trials never need to reach the tracking store and nothing is logged twice.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from kdsearch.best import PARENT, ROLE, STATUS, TRIAL_SPACE, final_space
from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.datasets import DatasetSplits
from kdsearch.storage import redact
from kdsearch.trial import TrialSettings

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


def _is_metric(key: str) -> bool:
    return key.startswith(("val_", "train_")) or key == "lr"


def log_evaluation(client: MlflowClient, run_id: str, metrics: Mapping[str, Any],
                   classes: Sequence[str], step: int = 0) -> None:
    """Scalar metrics, and the confusion matrix as numbers and as an image."""
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if _is_metric(k)}, step)
    confusion = metrics.get(CONFUSION)
    if confusion is not None:
        log_confusion(client, run_id, confusion, classes)


def log_confusion(client: MlflowClient, run_id: str, confusion: Sequence[Sequence[int]],
                  classes: Sequence[str]) -> None:
    from kdsearch.metrics import confusion_figure

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


class MLflowTrials(Callback):
    """Tune callback (driver side) that mirrors every trial into a nested MLflow run.

    Exactly one run per trial, also across a resume after a driver crash: a trial's run is
    found again by its ``kdsearch.trial_id`` tag, reopened, and epochs it already logged are
    not logged twice.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, parent_id: str,
                 cfg: SpaceConfig, classes: tuple[str, ...], space: Mapping[str, Any]) -> None:
        self.client, self.experiment_id, self.parent_id = client, experiment_id, parent_id
        self.cfg, self.classes = cfg, classes
        self.space = space  # the resolved space file, credentials redacted
        self.runs: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.logged: dict[str, int] = {}  # trial id -> last epoch logged
        self.placed: dict[str, tuple[str, ...]] = {}  # trial id -> where its last epoch ran
        self.max_t = cfg.student.epochs

    def get_state(self) -> dict[str, Any]:
        # Saved with Tune's experiment snapshots; MLflow itself stays the source of truth.
        return {"runs": dict(self.runs), "status": dict(self.status),
                "logged": dict(self.logged)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.runs, self.status = dict(state["runs"]), dict(state["status"])
        self.logged = dict(state.get("logged", {}))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.status.pop(trial.trial_id, None)  # a resumed or retried trial runs again
        run_id = self.runs.get(trial.trial_id) or self._find_run(trial.trial_id)
        if run_id is not None:
            # Resumed or retried: the run holds the epochs logged before, maybe more than the
            # checkpoint the trial restarts from (they are not logged again).
            self.runs[trial.trial_id] = run_id
            history = self.client.get_metric_history(run_id, "val_loss")
            self.logged[trial.trial_id] = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATUS, "running")
            return
        run_id = start_child(self.client, self.experiment_id, self.parent_id,
                             f"trial-{trial.trial_id}",
                             {ROLE: "trial", STATUS: "running",
                              "kdsearch.trial_id": trial.trial_id})
        self.runs[trial.trial_id] = run_id
        settings = TrialSettings.resolve(self.cfg.student, trial.config)
        params = {**vars(settings), **fixed_params(self.cfg, self.classes)}
        log_params(self.client, run_id, params)
        # This trial as a space file of its own: `python -m kdsearch.run` trains it again.
        self.client.log_text(run_id, yaml.safe_dump(final_space(self.space, trial.config),
                                                    sort_keys=False), TRIAL_SPACE)

    def _find_run(self, trial_id: str) -> str | None:
        """The run of ``trial_id`` created before a driver crash (after the last snapshot of
        this callback's state), if any."""
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT}` = '{self.parent_id}' and "
            f"tags.`kdsearch.trial_id` = '{trial_id}'", max_results=1)
        return str(found[0].info.run_id) if found else None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        run_id = self.runs.get(trial.trial_id)
        epoch = int(result.get("epoch", 0))
        if run_id is None or epoch <= self.logged.get(trial.trial_id, 0):
            return  # an epoch re-run after a resume from an older checkpoint: logged already
        metrics = {k: v for k, v in result.items() if _is_metric(k)}
        log_metrics(self.client, run_id, metrics, step=epoch)
        self.logged[trial.trial_id] = epoch
        self._tag_placement(trial.trial_id, run_id, result)

    def _tag_placement(self, trial_id: str, run_id: str, result: dict) -> None:
        """Node and device tags, updated when a retried or resumed trial moves."""
        node = f"{result.get('hostname', '?')} ({result.get('node_ip', '?')})"
        where = (node, str(result.get("node_id", "")), str(result.get("device", "")))
        if self.placed.get(trial_id) == where:
            return
        self.placed[trial_id] = where
        for key, value in zip(("kdsearch.node", "kdsearch.node_id", "kdsearch.device"), where,
                              strict=True):
            if value:
                self.client.set_tag(run_id, key, value)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._finish(trial, "completed" if epochs >= self.max_t else "pruned")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "failed", error=error_message(trial))

    def _finish(self, trial: Any, status: str, error: str | None = None) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id in self.status:
            return
        self.status[trial.trial_id] = status
        last = trial.last_result or {}
        self.client.set_tag(run_id, STATUS, status)
        self.client.set_tag(run_id, "kdsearch.epochs_run", str(last.get("epoch", 0)))
        if error:
            self.client.set_tag(run_id, "kdsearch.error", error[:5000])
        log_metrics(self.client, run_id, self._final_metrics(run_id))
        if last.get(CONFUSION) is not None:  # the last epoch's, like the reported metric
            log_confusion(self.client, run_id, last[CONFUSION], self.classes)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


    def _final_metrics(self, run_id: str) -> dict[str, float]:
        """best_* and last_* of the headline metrics, from the run's whole history (a resumed
        trial's earlier epochs included)."""
        final = {}
        for key in FINAL_METRICS:
            history = sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
            if history:
                values = [m.value for m in history]
                final[f"best_{key}"] = min(values) if key == "val_loss" else max(values)
                final[f"last_{key}"] = values[-1]
        return final


def completed_trials(client: MlflowClient, experiment: str, metric: str
                     ) -> list[tuple[dict[str, str], float]]:
    """(params, final ``metric``) of every completed trial run in ``experiment``."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError([f"search.warm_start.experiment: {experiment!r} is not an "
                           f"experiment of {redact(client.tracking_uri)}"])
    runs = client.search_runs([found.experiment_id], f"tags.`{ROLE}` = 'trial' and "
                              f"tags.`{STATUS}` = 'completed'", max_results=50000)
    return [(dict(r.data.params), float(r.data.metrics[metric])) for r in runs
            if metric in r.data.metrics]


def trial_runs(client: MlflowClient, experiment_id: str, parent_id: str
               ) -> dict[str, tuple[str, str]]:
    """trial id -> (run id, kdsearch.status) of every trial run of a search, from MLflow."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT}` = '{parent_id}' and "
                              f"tags.`{ROLE}` = 'trial'", max_results=50000)
    return {r.data.tags["kdsearch.trial_id"]: (r.info.run_id, r.data.tags.get(STATUS, ""))
            for r in runs}


def close_open_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> None:
    """Mark trials that never finished (the search was stopped) ``interrupted``, so no run
    stays RUNNING forever in the UI."""
    for run_id, status in trial_runs(client, experiment_id, parent_id).values():
        if status == "running":
            client.set_tag(run_id, STATUS, "interrupted")
            client.set_terminated(run_id, "KILLED")


def error_message(trial: Any) -> str:
    """The failed trial's exception as one line ("NonFiniteLossError: ..."), or where to look."""
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    return lines[-1] if lines else f"see {trial.error_file or 'the Ray trial log'}"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)):\s*(.*)$")
