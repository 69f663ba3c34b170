"""The MLflow schema of a search, and the one ranking of its trials.

Everything that names what a search records lives here, so that the writer
(:mod:`~kdsearch.track.callback`, :mod:`~kdsearch.track.runs`) and the readers
(:mod:`kdsearch.best`, :mod:`~kdsearch.track.publish`, the warm start) cannot disagree: the tag
and artifact names, the trial statuses, the queries that find a search's trials, and the order
"best first" used by the progress line, the results table, the report, the registered model and
``kdsearch.best``. Imports neither torch, Ray nor MLflow.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kdsearch.config import INFEASIBLE

# Tags and artifacts of a search's runs.
ROLE = "kdsearch.role"  # "search" (the parent run), "teacher", "trial" or "kd_baseline"
STATUS = "kdsearch.status"  # a Status value
PARENT = "mlflow.parentRunId"
TRIAL_ID = "kdsearch.trial_id"
SEARCH_NAME = "kdsearch.search"  # on the parent run: its search's folder name (resume.py)
PUBLISH_ERROR = "kdsearch.publish_error"  # on the parent run while a publish step failed
EPOCHS_RUN = "kdsearch.epochs_run"
BEST_RUN = "kdsearch.best_run_id"
ERROR = "kdsearch.error"
INFEASIBLE_TAG = "kdsearch.infeasible"  # on an infeasible trial's run: the limits exceeded
PARETO = "kdsearch.pareto"  # on the Pareto-optimal trials' runs ("true"); the parent: their ids
DESCRIPTION = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown)
TRIAL_SPACE = "trial_space.yaml"  # a trial's own space file: trains exactly that trial
RESOLVED_SPACE = "resolved_space.yaml"  # the search's space file, paths resolved
# The runs that measure what the teacher added (kdsearch.search.baseline): never trials, as
# every trial query asks for the role "trial".
BASELINE_ROLE = "kd_baseline"
KD_SEED = "kdsearch.kd_seed"  # the seed a baseline run trained on
KD_TEACHER = "kdsearch.teacher"  # "on" (the KD configuration) or "off" (alpha 0)
KD_OF = "kdsearch.kd_of_run"  # the run id of the trial whose configuration it trained
KD_VERDICT = "kdsearch.kd_verdict"  # on the parent run: KdGain.verdict
#: MLflow returns at most this many runs per query; a search has far fewer trials.
MAX_RESULTS = 50000


class Status(str, enum.Enum):
    """What became of a trial (the ``kdsearch.status`` tag; the parent run uses the same words
    for the search)."""

    RUNNING = "running"
    COMPLETED = "completed"  # trained every one of ``student.epochs`` epochs
    PRUNED = "pruned"  # stopped early by the scheduler
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the search stopped before the trial ended
    INFEASIBLE = "infeasible"  # its student exceeds search.constraints: never trained

    def __str__(self) -> str:
        return self.value


def status_of(epochs_run: int, epochs: int) -> Status:
    """A trial that ended without error: completed when it trained the whole budget."""
    return Status.COMPLETED if epochs_run >= epochs else Status.PRUNED


def ended_status(last: Mapping[str, Any], epochs: int) -> Status:
    """A trial that ended without error, from its last result: infeasible when its student
    exceeded ``search.constraints``, else as ``status_of``."""
    if last.get(INFEASIBLE):
        return Status.INFEASIBLE
    return status_of(int(last.get("epoch", 0)), epochs)


#: Ranking order of the statuses; a status not listed sorts last.
STATUS_ORDER = (Status.COMPLETED, Status.PRUNED, Status.INTERRUPTED, Status.RUNNING,
                Status.INFEASIBLE, Status.FAILED)


#: The MLflow filter for the parent runs of searches.
SEARCH_QUERY = f"tags.`{ROLE}` = 'search'"


def trial_query(parent_id: str | None = None, *, status: Status | None = None,
                trial_id: str | None = None) -> str:
    """The MLflow filter for the trial runs of search ``parent_id`` (any search when None)."""
    parts = [f"tags.`{ROLE}` = 'trial'"]
    if parent_id is not None:
        parts.insert(0, f"tags.`{PARENT}` = '{parent_id}'")
    if status is not None:
        parts.append(f"tags.`{STATUS}` = '{status.value}'")
    if trial_id is not None:
        parts.append(f"tags.`{TRIAL_ID}` = '{trial_id}'")
    return " and ".join(parts)


def baseline_query(parent_id: str, status: Status = Status.COMPLETED) -> str:
    """The MLflow filter for the KD baseline runs of search ``parent_id``."""
    return (f"tags.`{PARENT}` = '{parent_id}' and tags.`{ROLE}` = '{BASELINE_ROLE}' and "
            f"tags.`{STATUS}` = '{status.value}'")


def trial_runs(client: Any, experiment_id: str, parent_id: str | None = None, *,
               status: Status | None = None, trial_id: str | None = None,
               max_results: int = MAX_RESULTS) -> list[Any]:
    """The trial runs (MLflow ``Run`` objects) of a search, or of every search."""
    return list(client.search_runs([experiment_id], trial_query(
        parent_id, status=status, trial_id=trial_id), max_results=max_results))


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number, else None (missing, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


#: An accuracy's standard error above this cannot separate trials a few points apart: the
#: validation set is called too small when it is exceeded at an accuracy of 0.5.
NOISY_SE = 0.05


def standard_error(metric: str, value: float | None, n_val: float | None) -> float | None:
    """One binomial standard error, sqrt(p (1 - p) / n), of ``metric`` at ``value`` measured on
    ``n_val`` validation videos; None for ``val_loss`` (no such estimate) or without a count."""
    if metric == "val_loss" or not n_val or n_val <= 0:
        return None
    p = finite(value)
    if p is None or not 0.0 <= p <= 1.0:
        return None
    return math.sqrt(p * (1.0 - p) / n_val)


def small_val_warning(metric: str, n_val: int) -> str | None:
    """A warning when ``n_val`` validation videos are too few to separate trials by
    ``metric`` (one standard error at 0.5 above ``NOISY_SE``); None when they suffice."""
    se = standard_error(metric, 0.5, n_val)
    if se is None or se <= NOISY_SE:
        return None
    needed = math.ceil(0.25 / NOISY_SE**2)
    return (f"only {n_val} validation video{'' if n_val == 1 else 's'}: one standard error of "
            f"{metric} is up to {se:.3f}, so trials closer than that are not told apart by "
            f"this set; {needed} or more validation videos bring it under {NOISY_SE}")


#: Distillation helped (or hurt) when its gain is at least this many standard errors of the
#: gain away from zero: about a 95% two-sided interval that excludes zero.
KD_GAIN_SES = 2.0


@dataclasses.dataclass(frozen=True)
class KdGain:
    """The best configuration against the same student without its teacher (``alpha`` 0),
    each trained on several seeds and measured on the same validation videos.

    ``gain`` is mean(with teacher) - mean(without), negated when ``mode`` is min (val_loss),
    so that a positive gain means the teacher helped. ``se``: its standard error from the seed
    spread, sqrt(s_kd^2 / n_kd + s_nt^2 / n_nt), None with fewer than two runs on a side.
    ``val_se``: one binomial standard error of the metric on the validation videos (None for
    val_loss): how far a result on these videos may be from one on others.
    """

    metric: str
    mode: str
    kd_mean: float
    no_teacher_mean: float
    kd_runs: int
    no_teacher_runs: int
    se: float | None
    val_se: float | None = None

    @property
    def gain(self) -> float:
        difference = self.kd_mean - self.no_teacher_mean
        return difference if self.mode == "max" else -difference

    @property
    def verdict(self) -> str:
        """"helped" or "hurt" when the gain is ``KD_GAIN_SES`` standard errors or more from
        zero, else "within noise"; "unknown" without a standard error (one seed)."""
        if self.se is None:
            return "unknown"
        if abs(self.gain) > 0 and abs(self.gain) >= KD_GAIN_SES * self.se:
            return "helped" if self.gain > 0 else "hurt"
        return "within noise"


def kd_gain(kd: Sequence[float], no_teacher: Sequence[float], *, metric: str, mode: str,
            n_val: int | None) -> KdGain:
    """What the teacher added, from the final ``metric`` of each run with and without it."""
    if not kd or not no_teacher:
        raise ValueError(f"kd_gain: {len(kd)} runs with the teacher and {len(no_teacher)} "
                         "without, but each side needs at least one")
    se = None
    if len(kd) > 1 and len(no_teacher) > 1:
        se = math.sqrt(_variance(kd) / len(kd) + _variance(no_teacher) / len(no_teacher))
    kd_mean = sum(kd) / len(kd)
    return KdGain(metric, mode, kd_mean, sum(no_teacher) / len(no_teacher), len(kd),
                  len(no_teacher), se, standard_error(metric, kd_mean, n_val))


def _variance(values: Sequence[float]) -> float:
    """The sample variance (n - 1 in the denominator)."""
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def kd_metrics(gain: KdGain) -> dict[str, float]:
    """The parent run's metrics of a ``KdGain`` (an undefined standard error is left out)."""
    found = {f"kd_student_{gain.metric}": gain.kd_mean,
             f"no_teacher_{gain.metric}": gain.no_teacher_mean, "kd_gain": gain.gain,
             "kd_runs": float(gain.kd_runs), "no_teacher_runs": float(gain.no_teacher_runs)}
    for name, value in (("kd_gain_se", gain.se), ("kd_val_se", gain.val_se)):
        if value is not None:
            found[name] = value
    return found


def kd_gain_of(metrics: Mapping[str, float], metric: str, mode: str) -> KdGain | None:
    """The ``KdGain`` a parent run's metrics (``kd_metrics``) hold, or None."""
    names = (f"kd_student_{metric}", f"no_teacher_{metric}", "kd_runs", "no_teacher_runs")
    if not all(name in metrics for name in names):
        return None
    kd, no_teacher, kd_runs, no_teacher_runs = (metrics[name] for name in names)
    return KdGain(metric, mode, kd, no_teacher, int(kd_runs), int(no_teacher_runs),
                  metrics.get("kd_gain_se"), metrics.get("kd_val_se"))


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of ``a`` and ``b`` (ties share their mean rank); None when
    it is undefined (fewer than two pairs, or either side constant)."""
    if len(a) != len(b):
        raise ValueError(f"rank_correlation: {len(a)} values against {len(b)}")
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order) or values[order[end]] != values[order[start]]:
            for i in order[start:end]:
                ranks[i] = (start + end - 1) / 2
            start = end
    return ranks


T = TypeVar("T")


def ranked(items: Sequence[T], *, mode: str, status: Callable[[T], Any],
           value: Callable[[T], Any], trial_id: Callable[[T], str],
           epochs: Callable[[T], int] = lambda item: 0) -> list[T]:
    """``items`` best first: the one ranking of trials everywhere.

    By status (``STATUS_ORDER``); completed trials by ``value`` (the metric at their last
    epoch) in the direction of ``mode``; other trials by how far they got (``epochs``), then by
    value; a missing, NaN or infinite value after every finite one of its group; ties broken by
    trial id, so that every view names the same order.
    """
    sign = -1.0 if mode == "max" else 1.0
    order = [s.value for s in STATUS_ORDER]

    def key(item: T) -> tuple[int, int, bool, float, str]:
        state = str(status(item))
        group = order.index(state) if state in order else len(order)
        reached = 0 if state == Status.COMPLETED.value else -int(epochs(item))
        number = finite(value(item))
        return (group, reached, number is None, 0.0 if number is None else sign * number,
                str(trial_id(item)))

    return sorted(items, key=key)


def pareto_optimal(points: Mapping[str, Sequence[float]], modes: Sequence[str]) -> list[str]:
    """The keys of ``points`` that no other point dominates (as good in every objective and
    better in one), in the order given; ``modes``: "max" or "min" per objective. Points with
    a missing or non-finite coordinate are left out."""
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    usable = {key: [sign * float(v) for sign, v in zip(signs, values, strict=True)]
              for key, values in points.items()
              if all(finite(v) is not None for v in values)}

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a, strict=True)) and b != a
                   for b in usable.values())

    return [key for key, values in usable.items() if not dominated(values)]


@dataclasses.dataclass(frozen=True)
class TrialRow:
    """One trial at the end of a search: Tune's view (sampled values, last checkpoint) joined
    with its MLflow run."""

    trial_id: str
    run_id: str | None
    status: str
    epochs: int
    value: float | None  # search.metric at the last epoch
    config: dict[str, Any]
    checkpoint: Any = None  # ray.tune.Checkpoint of the last epoch: it scored ``value``
    cost: dict[str, float] = dataclasses.field(default_factory=dict)  # the student's cost


def rank_rows(rows: Sequence[TrialRow], mode: str) -> list[TrialRow]:
    return ranked(rows, mode=mode, status=lambda r: r.status, value=lambda r: r.value,
                  trial_id=lambda r: r.trial_id, epochs=lambda r: r.epochs)


def best_row(rows: Sequence[TrialRow], mode: str) -> TrialRow | None:
    """The best completed trial with a finite value, or None."""
    return next((r for r in rank_rows(rows, mode)
                 if r.status == Status.COMPLETED and finite(r.value) is not None), None)


def error_message(trial: Any) -> str:
    """A failed Tune trial's exception as one line ("NonFiniteLossError: ..."), or where to
    look; recorded as the ``kdsearch.error`` tag and printed by the progress line."""
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
