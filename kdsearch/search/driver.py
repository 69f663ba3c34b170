"""The driver of a search: data, Ray, the teacher stage, the trials through Tune, and the MLflow
records, in that order (:func:`run_search`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial
from ray import tune

from kdsearch.config import COST_METRICS, ConfigError, SpaceConfig
from kdsearch.data.dataset import (
    DatasetSplits,
    known_class_count,
    load_dataset,
    prepare_data,
)
from kdsearch.models.cost import check_constraints
from kdsearch.search.baseline import kd_baseline
from kdsearch.search.cluster import init_ray
from kdsearch.search.progress import Progress
from kdsearch.search.resume import (
    SearchRecord,
    discard_record,
    mark_finished,
    new_search_name,
    search_to_resume,
    searches_root,
    unfinished_searches,
    write_record,
)
from kdsearch.search.space import warm_trials
from kdsearch.search.stopping import AgreementASHA
from kdsearch.search.teacher_task import teacher_and_cache
from kdsearch.search.tuner import make_scheduler, make_tuner
from kdsearch.search.weights import fetch_search_weights
from kdsearch.storage import (
    credentials_to_environment,
    join,
    local_dir,
    redact,
    tune_storage,
)
from kdsearch.text import plural, python_command
from kdsearch.track.callback import MLflowTrials
from kdsearch.track.publish import publish
from kdsearch.track.runs import (
    close_open_runs,
    completed_trials,
    drop_lost_trials,
    drop_open_children,
    fail_parent,
    finish_parent,
    log_stopping,
    record_teacher,
    redacted_config,
    reopen_parent,
    report_location,
    start_parent,
    trial_statuses,
    trials_link,
)
from kdsearch.track.schema import (
    KdGain,
    Status,
    TrialRow,
    best_row,
    finite,
    rank_rows,
    small_val_warning,
)
from kdsearch.train.trial import TrialContext, validation_clips


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    experiment_id: str
    parent_run_id: str
    rows: list[TrialRow]  # best first
    best: TrialRow | None
    teacher_metrics: dict[str, float]
    seconds: float
    interrupted: bool  # stopped (Ctrl-C) before every trial finished
    trials_link: str = ""  # the MLflow UI page of the trials, best first
    report: str | None = None  # the HTML report, when the search wrote one
    warnings: list[str] = dataclasses.field(default_factory=list)  # early stops to doubt
    kd_gain: KdGain | None = None  # the best configuration with and without its teacher
    publish_failed: list[str] = dataclasses.field(default_factory=list)  # retried by --resume
    name: str = ""  # the search's folder name (what --resume takes)


def _rows(results: tune.ResultGrid, runs: dict[str, tuple[str, str]], cfg: SpaceConfig
          ) -> list[TrialRow]:
    """Every trial Tune knows of, joined with its MLflow run's status, best first."""
    rows = []
    for result in (results[i] for i in range(len(results))):
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        epochs = int(metrics.get("epoch", 0))
        run_id, status = runs.get(trial_id, (None, Status.INTERRUPTED.value))
        cost = {key: float(metrics[key]) for key in COST_METRICS if key in metrics}
        rows.append(TrialRow(trial_id, run_id, status, epochs,
                             finite(metrics.get(cfg.search.metric)),
                             dict(result.config or {}), result.checkpoint, cost))
    return rank_rows(rows, cfg.search.mode)


def _trial_ids(results: tune.ResultGrid) -> set[str]:
    """The ids of the trials Tune knows (as ``_rows`` reads them)."""
    return {str((r.metrics or {}).get("trial_id") or Path(r.path).name)
            for r in (results[i] for i in range(len(results)))}


def _say(message: str) -> None:
    print(message, flush=True)


def run_search(cfg: SpaceConfig, space_path: Path, address: str | None = None,
               say: Any = None, resume: str | None = None) -> SearchOutcome:
    """Run a search; ``resume`` ("latest" or a search's name) continues an unfinished one.

    The search record is written before anything expensive, so a driver killed at any point
    can be resumed; each stage then keeps or skips what an earlier attempt finished (the
    teacher resumes from its last epoch, the cache and the index are reused when whole, Tune
    restores its trials, the KD baseline keeps its finished runs, publishing runs again)."""
    say = say or _say
    start = time.monotonic()
    prior = search_to_resume(cfg, resume) if resume else None
    as_given = cfg.redacted()  # what --resume compares its space file with
    if prior is None:
        # A limit no student meets: one line, nothing written.
        check_constraints(cfg, known_class_count(cfg.data))
        _mention_unfinished(cfg, space_path, say)
        record = SearchRecord(new_search_name(cfg), cfg.experiment.name, None, None,
                              time.time(), False, as_given)
        write_record(cfg, record)  # from here on, a killed driver leaves a search to resume
    else:
        record = prior
        say(f"resuming search {prior.name} (started {prior.when}"
            + (f", MLflow run {prior.parent_run_id})" if prior.parent_run_id else ")"))
    # Before Ray starts: its workers inherit them, Tune's stored state then holds none.
    credentials_to_environment(cfg.storage)
    try:
        data = _prepare(cfg, say)
        cfg = init_ray(cfg, address, say)
    except ConfigError:
        if record.parent_run_id is None:
            discard_record(cfg, record)  # bad input: nothing half-written
        raise
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-migration chatter
    # MLflow prints a link per finished run, built from the tracking URI as given (with any
    # credentials in it); kdsearch prints its own, redacted.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient(cfg.tracking_uri)
    restoring = prior is not None and _tune_saved(cfg, record.name)
    try:
        warm = [] if restoring else _warm_start(client, cfg, say)
    except ConfigError:
        if record.parent_run_id is None:
            discard_record(cfg, record)
        raise
    if record.parent_run_id is None:
        experiment_id, parent_id = start_parent(client, cfg, space_path, record.name)
        record = dataclasses.replace(record, experiment_id=experiment_id,
                                     parent_run_id=parent_id)
        write_record(cfg, record)
    else:
        experiment_id, parent_id = record.experiment_id or "", record.parent_run_id
        reopen_parent(client, parent_id)
        if (dropped := drop_open_children(client, experiment_id, parent_id)):
            say(f"resume: {plural(dropped, 'run')} a killed driver left half-written "
                "deleted; written again")
    try:
        teacher, cache = teacher_and_cache(cfg, data, say)
        record_teacher(client, cfg, data, teacher, experiment_id, parent_id)
        client.set_tag(parent_id, "kdsearch.cache", redact(cache) if cache else "off")
        ctx = TrialContext(cfg, data.classes, str(teacher.path), data.train, data.val,
                           None if cache is None else str(cache))
        callbacks = [MLflowTrials(client, experiment_id, parent_id, cfg, data.classes,
                                  redacted_config(cfg)),
                     Progress(cfg.search.metric, cfg.search.mode, cfg.student.epochs,
                              cfg.search.num_samples, start=start)]
        say(f"search: {cfg.search.num_samples} trials, {cfg.search.max_concurrent} at a time "
            f"({redact(join(searches_root(cfg), record.name))})")
        scheduler = make_scheduler(cfg.search, cfg.student.epochs, len(data.val))
        results = make_tuner(cfg, ctx, record.name, callbacks, resume=restoring,
                             warm=warm, scheduler=scheduler).fit()
        if isinstance(scheduler, AgreementASHA) and not restoring:
            # A restored search runs the scheduler Tune restored, not this one.
            log_stopping(client, parent_id, scheduler.decisions())
        if prior is not None:
            lost = drop_lost_trials(client, experiment_id, parent_id, _trial_ids(results))
            if lost:
                say(f"resume: {len(lost)} trial(s) started before the stop but unknown to Tune's "
                    f"last snapshot were sampled anew; their runs are deleted "
                    f"({', '.join(lost)})")
        close_open_runs(client, experiment_id, parent_id)
        rows = _rows(results, trial_statuses(client, experiment_id, parent_id), cfg)
        best = best_row(rows, cfg.search.mode)
        interrupted = (sum(r.status != Status.INTERRUPTED for r in rows)
                       < cfg.search.num_samples)
        warnings: list[str] = []
        failed: list[str] = []
        # Before publish: the report states what the teacher added.
        kd = None if interrupted else kd_baseline(client, ctx, best, experiment_id, parent_id,
                                                  say)
        if not interrupted:
            clips = (validation_clips(ctx) if best is not None and cfg.report.onnx
                     else None)
            warnings, failed = publish(client, cfg, data.classes, experiment_id, parent_id,
                                       rows, say, clips)
        finish_parent(client, parent_id, cfg, best, interrupted)
        if not interrupted and not failed:
            mark_finished(cfg, record)  # a failed publish step is retried by --resume
    except BaseException as err:
        fail_parent(client, parent_id, isinstance(err, KeyboardInterrupt))
        raise
    link = trials_link(cfg.tracking_uri, experiment_id, parent_id, cfg.search.metric,
                       cfg.search.mode)
    report = None if interrupted else report_location(client, parent_id)
    return SearchOutcome(experiment_id, parent_id, rows, best, teacher.metrics,
                         time.monotonic() - start, interrupted, link, report, warnings, kd,
                         failed, record.name)


def _prepare(cfg: SpaceConfig, say: Any) -> DatasetSplits:
    """The data (generated, copied, probed and checked) and the published weights."""
    prepare_data(cfg.data, log=say)
    fetch_search_weights(cfg, log=say)  # once, here: no trial downloads
    data = load_dataset(cfg.data, cfg.student.clip, local_dir(cfg.storage, "indexes"), log=say)
    if (warning := small_val_warning(cfg.search.metric, len(data.val))) is not None:
        say(f"warning: {warning}")
    return data


def _tune_saved(cfg: SpaceConfig, name: str) -> bool:
    """Whether Tune saved search ``name``'s experiment state (a driver killed before the
    trials started leaves none: the resumed search starts its trials afresh)."""
    storage_path, filesystem = tune_storage(searches_root(cfg))
    return bool(tune.Tuner.can_restore(f"{storage_path.rstrip('/')}/{name}",
                                       storage_filesystem=filesystem))


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


def _mention_unfinished(cfg: SpaceConfig, space_path: Path, say: Any) -> None:
    unfinished = unfinished_searches(cfg)
    if unfinished:
        latest = unfinished[0]
        say(f"note: search {latest.name} of this experiment (started {latest.when}) did not "
            f"finish; this is a new search. To continue that one instead: {python_command()} -m "
            f"kdsearch.run {space_path} --resume")
