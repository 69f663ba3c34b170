"""Orchestration: Ray, the teacher stage, Tune (Optuna + ASHA) and the MLflow records."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import mlflow
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

from kdsearch.cache import prepare_cache
from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.datasets import load_dataset, prepare_data
from kdsearch.progress import Progress
from kdsearch.searcher import make_searcher
from kdsearch.teacher import prepare_teacher
from kdsearch.tracking import (
    ROLE,
    STATUS,
    MLflowTrials,
    fixed_params,
    log_data,
    log_evaluation,
    log_metrics,
    log_params,
    start_child,
)
from kdsearch.trainable import make_trainable
from kdsearch.trial import TrialContext


@dataclasses.dataclass(frozen=True)
class TrialRow:
    trial_id: str
    run_id: str | None
    status: str
    epochs: int
    value: float | None
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    experiment_id: str
    parent_run_id: str
    rows: list[TrialRow]  # best first
    best: TrialRow | None
    teacher_metrics: dict[str, float]
    seconds: float
    interrupted: bool  # stopped (Ctrl-C) before every trial finished


def init_ray(cfg: SpaceConfig, address: str | None) -> None:
    """Join the cluster at ``address``/RAY_ADDRESS, else start a local Ray on loopback."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # The legacy reporter honours verbose=0; kdsearch draws its own progress line.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                              "configure_logging": True}
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():  # a caller (a notebook, a test) already connected
        pass
    elif address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", **kwargs)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.resources.gpus_per_trial > 0 and gpus == 0:
        raise ConfigError([f"resources.gpus_per_trial: {cfg.resources.gpus_per_trial} asks for "
                           "GPUs but the Ray cluster has none; set it to 0 to train on CPUs"])


def _artifact_root(cfg: SpaceConfig) -> str | None:
    """Beside a SQLite store, artifacts go to ``mlartifacts/`` next to the database file
    (MLflow's default is ``./mlruns`` under whatever directory the process runs in)."""
    uri = cfg.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server chooses its own artifact store
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / cfg.experiment.name).as_uri()


def _start_parent(client: MlflowClient, cfg: SpaceConfig, space_path: Path) -> tuple[str, str]:
    experiment = client.get_experiment_by_name(cfg.experiment.name)
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment(cfg.experiment.name,
                                                   artifact_location=_artifact_root(cfg)))
    run = client.create_run(experiment_id, run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={ROLE: "search", STATUS: "running"})
    run_id = run.info.run_id
    client.log_artifact(run_id, str(space_path))
    client.log_text(run_id, yaml.safe_dump(cfg.model_dump(), sort_keys=False),
                    "resolved_space.yaml")
    log_params(client, run_id, {"num_samples": cfg.search.num_samples,
                                "sampler": cfg.search.sampler,
                                "scheduler": cfg.search.scheduler.name,
                                "metric": cfg.search.metric})
    return experiment_id, run_id


def _scheduler(cfg: SpaceConfig) -> Any:
    sched = cfg.search.scheduler
    if sched.name == "none":
        return None
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch", max_t=cfg.student.epochs, grace_period=sched.grace_period,
        reduction_factor=sched.reduction_factor)


def _tune(cfg: SpaceConfig, ctx: TrialContext, callbacks: list[Any]) -> tune.ResultGrid:
    searcher = make_searcher(cfg.search, cfg.student.epochs) if cfg.search.space else None
    tuner = tune.Tuner(
        make_trainable(ctx),
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric, mode=cfg.search.mode, search_alg=searcher,
            scheduler=_scheduler(cfg), num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent),
        run_config=tune.RunConfig(
            name=f"{cfg.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(cfg.storage) / "ray"), callbacks=callbacks, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    return tuner.fit()


def _rows(results: tune.ResultGrid, trials: MLflowTrials, cfg: SpaceConfig) -> list[TrialRow]:
    rows = []
    for result in (results[i] for i in range(len(results))):
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        epochs = int(metrics.get("epoch", 0))
        # The callback saw how each trial ended; one it never saw end was interrupted.
        status = trials.status.get(trial_id, "interrupted")
        rows.append(TrialRow(trial_id, trials.runs.get(trial_id), status, epochs,
                             metrics.get(cfg.search.metric), dict(result.config or {})))
    sign = -1 if cfg.search.mode == "max" else 1
    return sorted(rows, key=lambda r: (r.status != "completed", r.value is None,
                                       sign * (r.value or 0)))


def _say(message: str) -> None:
    print(message, flush=True)


def run_search(cfg: SpaceConfig, space_path: Path, address: str | None = None,
               say: Any = None) -> SearchOutcome:
    say = say or _say
    start = time.monotonic()
    prepare_data(cfg.data)
    data = load_dataset(cfg.data, cfg.student.clip, Path(cfg.storage) / "indexes", log=say)
    init_ray(cfg, address)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-migration chatter
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri)
    experiment_id, parent_id = _start_parent(client, cfg, space_path)
    try:
        log_data(client, parent_id, data)
        teacher = prepare_teacher(cfg, data, log=say)
        teacher_run = start_child(client, experiment_id, parent_id, f"teacher-{cfg.teacher.model}",
                                  {ROLE: "teacher", "kdsearch.teacher.reused": str(teacher.reused),
                                   "kdsearch.teacher.path": str(teacher.path)})
        log_params(client, teacher_run, {**cfg.teacher.model_dump(),
                                         **fixed_params(cfg, data.classes)})
        log_evaluation(client, teacher_run, teacher.metrics, data.classes)
        client.set_terminated(teacher_run)
        log_metrics(client, parent_id, {f"teacher_{k}": v for k, v in teacher.metrics.items()
                                        if k.startswith("val")})
        cache = prepare_cache(cfg, data, teacher.path, log=say) if cfg.teacher.cache else None
        client.set_tag(parent_id, "kdsearch.cache", str(cache or "off"))
        ctx = TrialContext(cfg, data.classes, str(teacher.path), data.train, data.val,
                           None if cache is None else str(cache))
        mlflow_cb = MLflowTrials(client, experiment_id, parent_id, cfg, data.classes)
        progress = Progress(cfg.search.metric, cfg.search.mode, cfg.student.epochs,
                            cfg.search.num_samples)
        say(f"search: {cfg.search.num_samples} trials, {cfg.search.max_concurrent} at a time")
        results = _tune(cfg, ctx, [mlflow_cb, progress])
        mlflow_cb.close_open_runs()
        rows = _rows(results, mlflow_cb, cfg)
        best = next((r for r in rows if r.status == "completed"), None)
        interrupted = sum(r.status != "interrupted" for r in rows) < cfg.search.num_samples
        _finish_parent(client, parent_id, cfg, best, interrupted)
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        client.set_tag(parent_id, STATUS, "interrupted" if interrupted else "failed")
        client.set_terminated(parent_id, "KILLED" if interrupted else "FAILED")
        raise
    return SearchOutcome(experiment_id, parent_id, rows, best, teacher.metrics,
                         time.monotonic() - start, interrupted)


def _finish_parent(client: MlflowClient, parent_id: str, cfg: SpaceConfig,
                   best: TrialRow | None, interrupted: bool) -> None:
    if best is not None:
        log_params(client, parent_id, {f"best.{k}": v for k, v in best.config.items()})
        if best.value is not None:
            log_metrics(client, parent_id, {f"best_{cfg.search.metric}": best.value})
        if best.run_id:
            client.set_tag(parent_id, "kdsearch.best_run_id", best.run_id)
    if interrupted:
        client.set_tag(parent_id, STATUS, "interrupted")
        client.set_terminated(parent_id, "KILLED")
        return
    client.set_tag(parent_id, STATUS, "completed" if best else "failed")
    client.set_terminated(parent_id, "FINISHED" if best else "FAILED")
