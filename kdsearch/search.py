"""Orchestration: Ray, the teacher stage, Tune (Optuna + ASHA) and the MLflow records."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import ray
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial
from ray import tune

from kdsearch.config import Asha, ConfigError, HyperBand, Median, SpaceConfig
from kdsearch.datasets import DatasetSplits, load_dataset, prepare_data
from kdsearch.placement import teacher_and_cache
from kdsearch.progress import Progress
from kdsearch.publish import publish
from kdsearch.resume import (
    SearchRecord,
    mark_finished,
    new_search_name,
    search_to_resume,
    searches_root,
    unfinished_searches,
    write_record,
)
from kdsearch.searcher import make_searcher, warm_trials
from kdsearch.storage import join, local_dir, redact, tune_storage
from kdsearch.teacher import TeacherResult
from kdsearch.tracking import (
    ROLE,
    STATUS,
    MLflowTrials,
    close_open_runs,
    completed_trials,
    fixed_params,
    log_data,
    log_evaluation,
    log_metrics,
    log_params,
    start_child,
    trial_runs,
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
    checkpoint: tune.Checkpoint | None = None  # the last one: it scored ``value``


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    experiment_id: str
    parent_run_id: str
    rows: list[TrialRow]  # best first
    best: TrialRow | None
    teacher_metrics: dict[str, float]
    seconds: float
    interrupted: bool  # stopped (Ctrl-C) before every trial finished


def init_ray(cfg: SpaceConfig, address: str | None, say: Any = print) -> SpaceConfig:
    """Join the cluster at ``address``/RAY_ADDRESS, else start a local Ray on loopback.

    Returns the configuration trials run with: GPUs asked of a cluster without any are an
    error, or with ``resources.allow_cpu`` a warning and CPU trials.
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # The legacy reporter honours verbose=0; kdsearch draws its own progress line.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshots after every checkpoint are what a resume relies on (see _checkpointing).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
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
    wanted = cfg.resources.gpus_per_trial
    if wanted > 0 and gpus == 0 and (most := _autoscaler_max_gpus()):
        say(f"no GPU node is up yet; the autoscaler can add up to {most:g} GPUs and trials "
            "wait for them")
        return cfg
    if wanted > 0 and gpus == 0:
        if not cfg.resources.allow_cpu:
            raise ConfigError([f"resources.gpus_per_trial: {wanted} asks for GPUs but the Ray "
                               "cluster has none; set it to 0, or resources.allow_cpu: true "
                               "to train on CPUs"])
        say(f"warning: resources.gpus_per_trial is {wanted} but the Ray cluster has no GPU; "
            "trials run on CPUs (resources.allow_cpu)")
        return cfg.model_copy(update={"resources": cfg.resources.model_copy(
            update={"gpus_per_trial": 0})})
    return cfg


def _autoscaler_max_gpus() -> float:
    """GPUs the cluster's autoscaler may add (GPU worker groups scaled to zero), 0 when
    unknown. Ray has no public API for this; its private one may move between releases."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - any failure means "unknown", never a crash
        return 0.0
    return float(most.get("GPU", 0))


def redacted_config(cfg: SpaceConfig) -> dict[str, Any]:
    """The resolved space file with credentials stripped from every location."""
    raw = cfg.model_dump()
    raw["storage"] = redact(raw["storage"])
    raw["data"]["root"] = redact(raw["data"]["root"])
    if raw["teacher"].get("cache_dir"):
        raw["teacher"]["cache_dir"] = redact(raw["teacher"]["cache_dir"])
    return dict(raw)


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
    # The "Model training" view of the MLflow UI (it shows new experiments as GenAI ones).
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment(
                         cfg.experiment.name, artifact_location=_artifact_root(cfg),
                         tags={"mlflow.experimentKind": "custom_model_development"}))
    run = client.create_run(experiment_id, run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={ROLE: "search", STATUS: "running"})
    run_id = run.info.run_id
    client.log_artifact(run_id, str(space_path))
    client.log_text(run_id, yaml.safe_dump(redacted_config(cfg), sort_keys=False),
                    "resolved_space.yaml")
    log_params(client, run_id, {"num_samples": cfg.search.num_samples,
                                "sampler": cfg.search.sampler,
                                "scheduler": cfg.search.scheduler.name,
                                "metric": cfg.search.metric, "mode": cfg.search.mode,
                                "searched": ",".join(cfg.search.space)})
    return experiment_id, run_id


def _scheduler(cfg: SpaceConfig) -> Any:
    sched, max_t = cfg.search.scheduler, cfg.student.epochs
    if isinstance(sched, Asha):
        return tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor)
    if isinstance(sched, HyperBand):
        # Tune's synchronous HyperBandScheduler pauses trials until their bracket catches up
        # (and ran every trial to max_t under a concurrency limit here): the asynchronous form.
        return tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    if isinstance(sched, Median):
        return tune.schedulers.MedianStoppingRule(
            time_attr="epoch", grace_period=sched.grace_period,
            min_samples_required=sched.min_samples_required)
    return None


def _tuner(cfg: SpaceConfig, ctx: TrialContext, name: str, callbacks: list[Any],
           resume: bool, warm: Sequence[FrozenTrial] = ()) -> tune.Tuner:
    """A new Tuner for search ``name``, or the one saved there, restored (searcher state,
    finished trials and the trials' last checkpoints included)."""
    trainable = make_trainable(ctx)
    # A URI storage (s3://...) becomes a path plus the pyarrow filesystem that holds it.
    storage_path, filesystem = tune_storage(searches_root(cfg))
    if resume:
        return tune.Tuner.restore(f"{storage_path.rstrip('/')}/{name}", trainable,
                                  resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=filesystem)
    searcher = (make_searcher(cfg.search, cfg.student.epochs, warm) if cfg.search.space
                else None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric, mode=cfg.search.mode, search_alg=searcher,
            scheduler=_scheduler(cfg), num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent,
            # A finished trial's process runs the next one: no new Python, torch import or
            # CUDA context per trial (benchmarks/search_quality.py --overhead). Safe: a trial
            # keeps no state outside kdsearch.trial.fit, and a failed one's process is not
            # reused.
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            callbacks=callbacks, verbose=0, **_checkpointing(filesystem is not None),
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures)),
    )


def _checkpointing(remote: bool) -> dict[str, Any]:
    """Checkpoints a resume after a driver crash can rely on.

    Tune deletes a trial's older checkpoints as new ones arrive, and a resume starts each
    trial from the checkpoint named in the last saved experiment state. Locally that state is
    written whenever a trial checkpoints, so keeping two suffices. In an object store the
    state is uploaded every ``sync_period`` seconds while trials upload checkpoints at once:
    the state can name a checkpoint already deleted (seen on S3), so every checkpoint stays
    (expire them with a bucket lifecycle rule) and the state is uploaded every 10 s.
    """
    if not remote:
        return {"checkpoint_config": tune.CheckpointConfig(num_to_keep=2)}
    return {"checkpoint_config": tune.CheckpointConfig(num_to_keep=None),
            "sync_config": tune.SyncConfig(sync_period=10)}


def _rows(results: tune.ResultGrid, runs: dict[str, tuple[str, str]], cfg: SpaceConfig
          ) -> list[TrialRow]:
    rows = []
    for result in (results[i] for i in range(len(results))):
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        epochs = int(metrics.get("epoch", 0))
        run_id, status = runs.get(trial_id, (None, "interrupted"))
        rows.append(TrialRow(trial_id, run_id, status, epochs,
                             metrics.get(cfg.search.metric), dict(result.config or {}),
                             result.checkpoint))
    sign = -1 if cfg.search.mode == "max" else 1
    return sorted(rows, key=lambda r: (r.status != "completed", r.value is None,
                                       sign * (r.value or 0)))


def _say(message: str) -> None:
    print(message, flush=True)


def run_search(cfg: SpaceConfig, space_path: Path, address: str | None = None,
               say: Any = None, resume: str | None = None) -> SearchOutcome:
    """Run a search; ``resume`` ("latest" or a search's name) continues an unfinished one."""
    say = say or _say
    start = time.monotonic()
    prior = search_to_resume(cfg, resume) if resume else None
    if prior is None:
        _mention_unfinished(cfg, say)
    prepare_data(cfg.data)
    data = load_dataset(cfg.data, cfg.student.clip, local_dir(cfg.storage, "indexes"), log=say)
    as_given = cfg.model_dump(mode="json")  # what --resume compares its space file with
    cfg = init_ray(cfg, address, say)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-migration chatter
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri)
    warm = _warm_start(client, cfg, say) if prior is None else []
    if prior is None:
        experiment_id, parent_id = _start_parent(client, cfg, space_path)
        record = SearchRecord(new_search_name(cfg), cfg.experiment.name, experiment_id,
                              parent_id, time.time(), False, as_given)
    else:
        record = prior
        experiment_id, parent_id = prior.experiment_id, prior.parent_run_id
        client.update_run(parent_id, status="RUNNING")
        client.set_tag(parent_id, STATUS, "running")
        say(f"resuming search {prior.name} (started {prior.when}, MLflow run {parent_id})")
    try:
        teacher, cache = teacher_and_cache(cfg, data, say)
        if prior is None:  # a resumed search recorded its teacher when it started
            _record_teacher(cfg, data, teacher, client, experiment_id, parent_id)
        client.set_tag(parent_id, "kdsearch.cache", redact(cache) if cache else "off")
        ctx = TrialContext(cfg, data.classes, str(teacher.path), data.train, data.val,
                           None if cache is None else str(cache))
        callbacks = [MLflowTrials(client, experiment_id, parent_id, cfg, data.classes,
                                  redacted_config(cfg)),
                     Progress(cfg.search.metric, cfg.search.mode, cfg.student.epochs,
                              cfg.search.num_samples)]
        write_record(cfg, record)
        say(f"search: {cfg.search.num_samples} trials, {cfg.search.max_concurrent} at a time "
            f"({redact(join(searches_root(cfg), record.name))})")
        results = _tuner(cfg, ctx, record.name, callbacks, resume=prior is not None,
                         warm=warm).fit()
        close_open_runs(client, experiment_id, parent_id)
        rows = _rows(results, trial_runs(client, experiment_id, parent_id), cfg)
        best = next((r for r in rows if r.status == "completed"), None)
        interrupted = sum(r.status != "interrupted" for r in rows) < cfg.search.num_samples
        if not interrupted:
            publish(client, cfg, data.classes, experiment_id, parent_id, rows, say)
        _finish_parent(client, parent_id, cfg, best, interrupted)
        if not interrupted:
            mark_finished(cfg, record)
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        client.set_tag(parent_id, STATUS, "interrupted" if interrupted else "failed")
        client.set_terminated(parent_id, "KILLED" if interrupted else "FAILED")
        raise
    return SearchOutcome(experiment_id, parent_id, rows, best, teacher.metrics,
                         time.monotonic() - start, interrupted)


def _warm_start(client: MlflowClient, cfg: SpaceConfig, say: Any) -> list[FrozenTrial]:
    """The completed trials of ``search.warm_start.experiment``, for the sampler."""
    warm = cfg.search.warm_start
    if warm is None or not cfg.search.space:
        return []
    source = client if warm.tracking_uri is None else MlflowClient(warm.tracking_uri)
    trials = warm_trials(cfg.search, completed_trials(source, warm.experiment,
                                                      cfg.search.metric))
    say(f"warm start: {len(trials)} completed trials of experiment {warm.experiment!r} told "
        "to the sampler")
    return trials


def _mention_unfinished(cfg: SpaceConfig, say: Any) -> None:
    unfinished = unfinished_searches(cfg)
    if unfinished:
        latest = unfinished[0]
        say(f"note: search {latest.name} of this experiment (started {latest.when}) did not "
            "finish; this is a new search. To continue that one instead: python -m "
            "kdsearch.run SPACE.yaml --resume")


def _record_teacher(cfg: SpaceConfig, data: DatasetSplits, teacher: TeacherResult,
                    client: MlflowClient, experiment_id: str, parent_id: str) -> None:
    log_data(client, parent_id, data)
    teacher_run = start_child(client, experiment_id, parent_id, f"teacher-{cfg.teacher.model}",
                              {ROLE: "teacher", "kdsearch.teacher.reused": str(teacher.reused),
                               "kdsearch.teacher.path": redact(teacher.path)})
    log_params(client, teacher_run, {**cfg.teacher.model_dump(),
                                     **fixed_params(cfg, data.classes)})
    log_evaluation(client, teacher_run, teacher.metrics, data.classes)
    client.set_terminated(teacher_run)
    log_metrics(client, parent_id, {f"teacher_{k}": v for k, v in teacher.metrics.items()
                                    if k.startswith("val")})


def _finish_parent(client: MlflowClient, parent_id: str, cfg: SpaceConfig,
                   best: TrialRow | None, interrupted: bool) -> None:
    if best is not None and best.run_id:
        client.set_tag(parent_id, "kdsearch.best_run_id", best.run_id)
    if interrupted:
        # Params are write-once in MLflow: the best.* params wait for the resumed search.
        client.set_tag(parent_id, STATUS, "interrupted")
        client.set_terminated(parent_id, "KILLED")
        return
    if best is not None:
        log_params(client, parent_id, {f"best.{k}": v for k, v in best.config.items()})
        if best.value is not None:
            log_metrics(client, parent_id, {f"best_{cfg.search.metric}": best.value})
    client.set_tag(parent_id, STATUS, "completed" if best else "failed")
    client.set_terminated(parent_id, "FINISHED" if best else "FAILED")
