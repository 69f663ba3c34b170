"""The Tune callback (driver side) that mirrors every trial into a nested MLflow run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from kdsearch.config import (
    COST_METRICS,
    INFEASIBLE,
    SpaceConfig,
    final_space,
    searched_values,
    trial_student,
)
from kdsearch.track.runs import (
    CONFUSION,
    FINAL_METRICS,
    fixed_params,
    is_metric,
    log_confusion,
    log_metrics,
    log_params,
    start_child,
)
from kdsearch.track.schema import (
    EPOCHS_RUN,
    ERROR,
    INFEASIBLE_TAG,
    ROLE,
    STATUS,
    TRIAL_ID,
    TRIAL_SPACE,
    Status,
    ended_status,
    error_message,
    trial_runs,
)

#: parent run id -> (client, configuration) of the search running in this process: what a
#: callback unpickled by ``Tuner.restore`` writes with. Neither is ever pickled: the client
#: holds the tracking URI and the configuration every URI, credentials included.
_LIVE: dict[str, tuple[MlflowClient, SpaceConfig]] = {}


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
        self.costed: set[str] = set()  # trial ids whose student's cost is logged
        self.max_t = cfg.student.epochs
        _LIVE[parent_id] = (client, cfg)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment's tuner.pkl (in storage): no client,
        # no configuration, so no credential goes with them (self.space is redacted).
        return {k: v for k, v in self.__dict__.items() if k not in ("client", "cfg")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("costed", set())
        self.client, self.cfg = _LIVE[state["parent_id"]]  # the driver made one first

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
            self.client.set_tag(run_id, STATUS, Status.RUNNING.value)
            # A driver killed between creating the run and writing its settings: write them.
            self._describe(run_id, trial, set(self.client.get_run(run_id).data.params))
            return
        run_id = start_child(self.client, self.experiment_id, self.parent_id,
                             f"trial-{trial.trial_id}",
                             {ROLE: "trial", STATUS: Status.RUNNING.value,
                              TRIAL_ID: trial.trial_id})
        self.runs[trial.trial_id] = run_id
        self._describe(run_id, trial, set())

    def _describe(self, run_id: str, trial: Any, logged: set[str]) -> None:
        """The trial's settings as params (those not in ``logged`` yet: params are write-once)
        and the trial as a space file of its own (`python -m kdsearch.run` trains it
        again); the space file goes last, so its presence means both are written."""
        settings = searched_values(trial_student(self.cfg.student, trial.config))
        params = {**settings, **fixed_params(self.cfg, self.classes)}
        log_params(self.client, run_id, {k: v for k, v in params.items() if k not in logged})
        if logged >= set(params) and any(
                a.path == TRIAL_SPACE for a in self.client.list_artifacts(run_id)):
            return
        self.client.log_text(run_id, yaml.safe_dump(final_space(self.space, trial.config),
                                                    sort_keys=False), TRIAL_SPACE)

    def _find_run(self, trial_id: str) -> str | None:
        """The run of ``trial_id`` created before a driver crash (after the last snapshot of
        this callback's state), if any."""
        found = trial_runs(self.client, self.experiment_id, self.parent_id, trial_id=trial_id,
                           max_results=1)
        return str(found[0].info.run_id) if found else None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self._log_cost(trial.trial_id, run_id, result)
        if result.get(INFEASIBLE):
            self.client.set_tag(run_id, INFEASIBLE_TAG, str(result[INFEASIBLE])[:5000])
            return
        epoch = int(result.get("epoch", 0))
        if epoch <= self.logged.get(trial.trial_id, 0):
            return  # an epoch re-run after a resume from an older checkpoint: logged already
        metrics = {k: v for k, v in result.items() if is_metric(k) and k not in COST_METRICS}
        log_metrics(self.client, run_id, metrics, step=epoch)
        self.logged[trial.trial_id] = epoch
        self._tag_placement(trial.trial_id, run_id, result)

    def _log_cost(self, trial_id: str, run_id: str, result: dict) -> None:
        """The student's cost (measured once, sent with every result), logged once per run
        at step 0, also across a resume."""
        if trial_id in self.costed or not all(key in result for key in COST_METRICS):
            return
        self.costed.add(trial_id)
        if COST_METRICS[0] in self.client.get_run(run_id).data.metrics:
            return  # logged before a resume
        log_metrics(self.client, run_id, {key: result[key] for key in COST_METRICS}, step=0)

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
        self._finish(trial, ended_status(trial.last_result or {}, self.max_t))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, Status.FAILED, error=error_message(trial))

    def _finish(self, trial: Any, status: Status, error: str | None = None) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id in self.status:
            return
        self.status[trial.trial_id] = status.value
        last = trial.last_result or {}
        self.client.set_tag(run_id, STATUS, status.value)
        self.client.set_tag(run_id, EPOCHS_RUN, str(last.get("epoch", 0)))
        if error:
            self.client.set_tag(run_id, ERROR, error[:5000])
        log_metrics(self.client, run_id, self._final_metrics(run_id))
        if last.get(CONFUSION) is not None:  # the last epoch's, like the reported metric
            log_confusion(self.client, run_id, last[CONFUSION], self.classes)
        self.client.set_terminated(run_id, "FAILED" if status == Status.FAILED else "FINISHED")

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


