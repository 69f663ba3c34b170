"""What the teacher added: the best configuration trained again without its teacher (``alpha``
0) on the search's seed and budget, and both on further seeds, as Ray tasks with a trial's
resources; the parent MLflow run gets the means, the gain and its noise (``KdGain``).

The best trial itself is the run with the teacher on ``search.seed``; ``report.kd_seeds`` runs
of each side in all. A search's winner was picked among many trials, so its own value is
favoured by the pick; the further seeds dilute that, which is one more reason to run them.
The runs are nested under the search's run with the role ``kd_baseline``, so no trial query
(ranking, report table, ``kdsearch.best``, registry, resume) ever counts them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.tracking import MlflowClient

from kdsearch.config import searched_values, trial_student
from kdsearch.text import plural
from kdsearch.track.report import kd_gain_line
from kdsearch.track.runs import baseline_results, fixed_params, log_baseline_run, log_kd_gain
from kdsearch.track.schema import KdGain, TrialRow, finite, kd_gain
from kdsearch.train.trial import TrialContext, fit

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Job:
    """One training of the baseline: the best configuration with or without its teacher."""

    teacher: bool
    seed: int

    def __str__(self) -> str:
        return f"{'with' if self.teacher else 'without'} the teacher, seed {self.seed}"


def jobs(kd_seeds: int, seed: int) -> list[Job]:
    """The trainings besides the best trial (the teacher on ``seed``), a seed's pair together
    so that a baseline cut short still compares like with like."""
    seeds = [seed + i for i in range(kd_seeds)]
    return [job for s in seeds for job in (Job(False, s), Job(True, s)) if job != Job(True, seed)]


def kd_baseline(client: MlflowClient, ctx: TrialContext, best: TrialRow | None,
                experiment_id: str, parent_id: str, say: Say) -> KdGain | None:
    """Measure what the teacher added to ``best``'s configuration and record it on the parent
    run. None when ``report.kd_baseline`` is off, when there is nothing to compare, or when it
    could not be measured: then a warning says why, and the search's own results stand."""
    cfg = ctx.cfg
    if (not cfg.report.kd_baseline or best is None or best.run_id is None
            or finite(best.value) is None):
        return None
    if trial_student(cfg.student, best.config).alpha == 0:
        say("kd baseline: skipped, the best configuration has alpha 0 (no teacher already)")
        return None
    try:
        return _measure(client, ctx, best, (experiment_id, parent_id), say)
    except Exception as err:  # noqa: BLE001 - the trials are recorded: never lose the search
        message = f"kd baseline stopped: {type(err).__name__}: {err}"
        say(f"warning: {message}")
        client.set_tag(parent_id, "kdsearch.kd_error", message[:5000])
        return None


def _measure(client: MlflowClient, ctx: TrialContext, best: TrialRow, ids: tuple[str, str],
             say: Say) -> KdGain | None:
    cfg, metric, of_run = ctx.cfg, ctx.cfg.search.metric, best.run_id
    assert of_run is not None and best.value is not None
    # A resumed search keeps the runs an earlier attempt finished.
    found = baseline_results(client, *ids, of_run, metric)
    found[(True, cfg.search.seed)] = best.value
    todo = [j for j in jobs(cfg.report.kd_seeds, cfg.search.seed)
            if (j.teacher, j.seed) not in found]
    say(f"kd baseline: training the best configuration without the teacher, "
        f"{plural(cfg.report.kd_seeds, 'seed')} each with and without it (the best trial is "
        f"one; {plural(len(todo), 'run')}, {cfg.search.max_concurrent} at a time)")
    ended: list[Job] = []

    def record(job: Job, metrics: Mapping[str, Any], error: str | None) -> None:
        value = finite(metrics.get(metric))
        if error is None and value is None:
            error = f"no finite {metric} at the last epoch"
        settings = searched_values(trial_student(cfg.student, _sampled(best.config, job)))
        ended.append(job)
        log_baseline_run(client, *ids, of_run=of_run, seed=job.seed,
                         teacher=job.teacher, params={**fixed_params(cfg, ctx.classes),
                                                      **settings},
                         metrics=metrics, error=error)
        if error is not None or value is None:
            say(f"warning: kd baseline {len(ended)}/{len(todo)}: the run {job} failed "
                f"({error}); going on without it")
            return
        found[(job.teacher, job.seed)] = value
        say(f"kd baseline {len(ended)}/{len(todo)}: {job}: {metric} {value:.3f}")

    _train_all(ctx, best.config, todo, record)
    return _conclude(client, ctx, found, ids[1], say)


def _conclude(client: MlflowClient, ctx: TrialContext, found: dict[tuple[bool, int], float],
              parent_id: str, say: Say) -> KdGain | None:
    """The gain from what finished, recorded and said; None when a side has no run."""
    kd = [value for (teacher, _), value in sorted(found.items()) if teacher]
    no_teacher = [value for (teacher, _), value in sorted(found.items()) if not teacher]
    if not no_teacher:
        say("warning: kd baseline: no run without the teacher finished; nothing to compare")
        return None
    search = ctx.cfg.search
    gain = kd_gain(kd, no_teacher, metric=search.metric, mode=search.mode, n_val=len(ctx.val))
    log_kd_gain(client, parent_id, gain)
    say(kd_gain_line(gain))
    return gain


def _sampled(config: Mapping[str, Any], job: Job) -> dict[str, Any]:
    return dict(config) if job.teacher else {**config, "alpha": 0.0}


def _train_all(ctx: TrialContext, config: Mapping[str, Any], todo: list[Job],
               record: Callable[[Job, Mapping[str, Any], str | None], None]) -> None:
    """Train ``todo`` as Ray tasks with a trial's resources, at most ``search.max_concurrent``
    at once (the trials' limit: the cluster was sized for it); ``record`` each as it ends."""
    resources = ctx.cfg.resources
    task = ray.remote(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial,
                      max_retries=resources.max_failures)(_train)
    shared = ray.put(ctx)  # the video records travel once, not once per task
    waiting, running = list(todo), dict[ray.ObjectRef, Job]()
    try:
        while waiting or running:
            while waiting and len(running) < ctx.cfg.search.max_concurrent:
                job = waiting.pop(0)
                running[task.remote(shared, _sampled(config, job), job.seed)] = job
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ref)
            try:
                metrics = ray.get(ref)
            except ray.exceptions.RayError as err:
                record(job, {}, _reason(err))
                continue
            record(job, metrics, None)
    finally:
        for ref in running:  # Ctrl-C or an error while recording: no training left behind
            ray.cancel(ref, force=True)


def _train(ctx: TrialContext, sampled: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One baseline training, in a Ray worker: the last epoch's metrics."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # nothing here writes to MLflow
    torch.set_num_threads(max(1, int(ctx.cfg.resources.cpus_per_trial)))
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        last.clear()  # no checkpoint is kept: a failed run is retried from the start
        last.update(metrics)

    fit(ctx, sampled, report, seed=seed)
    return last


def _reason(err: Exception) -> str:
    """A failed task's exception as one line ("NonFiniteLossError: ...")."""
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
