"""The end-of-search report: a table of every trial and plots a person reads at a glance.

``write_report`` turns what the driver knows of each trial (``TrialRecord``) into files in one
directory, which the caller logs to the parent MLflow run:

- ``trials.parquet`` and ``trials.csv``: one row per trial, best first (``trials_table``);
- ``plots/*.png``: the plots of :mod:`kdsearch.track.plots`;
- ``search_report.html``: the same plots, interactive (plotly), and the table, on one page
  that works offline (plotly.js is inlined once).

The plots are drawn from an in-memory Optuna study rebuilt from the records
(``study_from_records``) with the states the searcher gives trials (kdsearch.search.sampler):
COMPLETE, PRUNED (stopped early by ASHA; per-epoch values kept) and FAIL. Nothing here raises
on a small or odd search: a plot that cannot be drawn is not written, and the returned paths
say which were.
"""

from __future__ import annotations

import dataclasses
import html
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from kdsearch.config import Search
from kdsearch.search.space import fitted, optuna_space
from kdsearch.track.plots import PLOT_NAMES, attempt, draw_png, front_plot, plots_of
from kdsearch.track.schema import (
    STATUS_ORDER,
    KdGain,
    Status,
    finite,
    pareto_optimal,
    rank_correlation,
    ranked,
    small_val_warning,
    standard_error,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go


#: Table order of the statuses (the one ranking's); a status not listed sorts last.
STATUSES = tuple(s.value for s in STATUS_ORDER)
_STATES = {Status.COMPLETED.value: TrialState.COMPLETE, Status.PRUNED.value: TrialState.PRUNED}


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial of the search, as the driver saw it."""

    trial_id: str
    run_id: str | None
    status: str  # a kdsearch.track.schema.Status value
    epochs: int  # epochs trained
    params: dict[str, Any]  # sampled values, keys of search.space (failed trials may miss some)
    metrics: dict[str, float]  # final metrics ("val_acc", "val_class_acc.kick", ...); may be empty
    history: dict[int, float]  # epoch -> value of search.metric at that epoch
    started: float | None = None  # when it started (any clock; only the order counts)


@dataclasses.dataclass(frozen=True)
class SearchFacts:
    """What the report's headline says besides the trials; None where unknown."""

    teacher: str | None = None  # the teacher's model name
    teacher_value: float | None = None  # the teacher's search.metric on the validation set
    classes: int | None = None
    train_videos: int | None = None
    val_videos: int | None = None
    kd_gain: KdGain | None = None  # the best configuration with and without its teacher


#: Fewer completed trials than this and the importances and comparisons carry a warning:
#: fANOVA-style importances from a dozen points are mostly noise.
FEW_TRIALS = 20


def final_value(record: TrialRecord, metric: str) -> float | None:
    """The trial's value of the search metric: its last epoch's, else its final metrics'."""
    if record.history:
        return _as_float(record.history[max(record.history)])
    return _as_float(record.metrics.get(metric))


def kd_gain_line(gain: KdGain) -> str:
    """What distillation added, in one line (the report's headline, ``kdsearch.run``): the
    difference of the means in the metric's own units, its noise and ``KdGain.verdict``."""
    runs = (str(gain.kd_runs) if gain.kd_runs == gain.no_teacher_runs
            else f"{gain.kd_runs} and {gain.no_teacher_runs}")
    seeds = f"{runs} seed{'' if runs == '1' else 's'}"
    noise = ("lower is better; " if gain.mode == "min" else "") + (
        f"{seeds}: no standard error" if gain.se is None else f"SE {gain.se:.3f} over {seeds}")
    if gain.val_se is not None:
        noise += f"; validation noise {gain.val_se:.3f}"
    verdict = (gain.verdict if gain.se is not None
               else "not judged (that needs 2 or more seeds on each side: report.kd_seeds)")
    return (f"distillation: {gain.kd_mean - gain.no_teacher_mean:+.3f} {gain.metric} over the "
            f"same student without the teacher ({gain.kd_mean:.3f} against "
            f"{gain.no_teacher_mean:.3f}; {noise}): {verdict}")


# --- the study ------------------------------------------------------------------------------

def in_start_order(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The records in the order their trials started; those without a start time last, in
    the order given."""
    return sorted(records, key=lambda r: (r.started is None, r.started or 0.0))


def study_from_records(records: Sequence[TrialRecord], search: Search) -> optuna.Study:
    """An in-memory study with one trial per record, in the order the trials started
    (``in_start_order``).

    completed -> COMPLETE (value: ``final_value``), pruned -> PRUNED, anything else -> FAIL.
    As in the searcher, a completed trial without a finite value is FAIL. Every record is
    added, even one without params; params missing or outside their distribution are left out,
    and so are non-finite epoch values. User attrs: trial_id, run_id, status, epochs.
    """
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    space = optuna_space(search)
    for record in in_start_order(records):
        study.add_trial(_frozen_trial(record, search.metric, space))
    return study


def _frozen_trial(record: TrialRecord, metric: str,
                  space: dict[str, BaseDistribution]) -> FrozenTrial:
    value = final_value(record, metric)
    state = _STATES.get(record.status, TrialState.FAIL)
    if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        state = TrialState.FAIL
    params = {name: kept for name, dist in space.items()
              if (kept := fitted(dist, record.params.get(name))) is not None}
    history = {int(epoch): v for epoch, raw in record.history.items()
               if (v := _as_float(raw)) is not None and math.isfinite(v)}
    return optuna.trial.create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params=params, distributions={name: space[name] for name in params},
        intermediate_values=history,
        user_attrs={"trial_id": record.trial_id, "run_id": record.run_id,
                    "status": record.status, "epochs": record.epochs})


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


# --- early stopping, checked afterwards ------------------------------------------------------

#: Below this rank correlation with the last epoch, an epoch is a poor judge of trials...
POOR_AGREEMENT = 0.5
#: ... when measured over at least this many completed trials (over fewer it is noise: with
#: 3 trials a correlation of -0.5 comes from a single swapped pair).
AGREEMENT_TRIALS = 5


@dataclasses.dataclass(frozen=True)
class EpochAgreement:
    """How well trials' values at ``epoch`` ranked them as their last epoch did, over the
    completed trials (``rho``: Spearman's, None when undefined), and how many trials were
    stopped right after it."""

    epoch: int
    rho: float | None
    trials: int  # completed trials it was measured over
    stopped: int  # pruned trials whose last epoch was this one


def epoch_agreement(records: Sequence[TrialRecord], metric: str,
                    epochs: int) -> list[EpochAgreement]:
    """For each epoch before the last: its rank correlation with the last epoch over the
    completed trials, and the trials stopped there."""
    done = [r for r in records if r.status == Status.COMPLETED]
    finals = {r.trial_id: finite(r.history.get(epochs)) for r in done}
    found = []
    for epoch in range(1, epochs):
        pairs = [(v, final) for r in done
                 if (v := finite(r.history.get(epoch))) is not None
                 and (final := finals[r.trial_id]) is not None]
        rho = rank_correlation([a for a, _ in pairs], [b for _, b in pairs])
        stopped = sum(r.status == Status.PRUNED and r.epochs == epoch for r in records)
        found.append(EpochAgreement(epoch, rho, len(pairs), stopped))
    return found


def unsafe_stops(agreement: Sequence[EpochAgreement], metric: str) -> list[str]:
    """One line per epoch at which trials were stopped although it ranked the completed
    trials (at least ``AGREEMENT_TRIALS``) poorly against the last epoch, with what to
    change."""
    lines = []
    for a in agreement:
        if (a.stopped and a.rho is not None and a.rho < POOR_AGREEMENT
                and a.trials >= AGREEMENT_TRIALS):
            lines.append(
                f"{a.stopped} trial{'' if a.stopped == 1 else 's'} stopped at epoch {a.epoch}, "
                f"but {metric} at epoch {a.epoch} ranked the {a.trials} completed trials poorly "
                f"against the last epoch (rank correlation {a.rho:.2f}): the stopped ones may "
                "have included the best. Use search.scheduler {name: agreement} (stops only "
                "where an epoch is seen to rank well), a later grace_period, or {name: none}.")
    return lines


# --- the front ------------------------------------------------------------------------------

def front_values(record: TrialRecord, search: Search) -> list[float | None]:
    """The trial's coordinates on the front (``Search.front``): the search metric's final
    value, the other objectives' (costs) from its run."""
    return [final_value(record, metric) if metric == search.metric
            else _as_float(record.metrics.get(metric)) for metric, _ in search.front()]


def pareto_records(records: Sequence[TrialRecord], search: Search) -> list[TrialRecord]:
    """The completed trials no other completed trial beats on every objective of
    ``Search.front``, best first."""
    done = {r.trial_id: r for r in _ranked(records, search) if r.status == Status.COMPLETED}
    points = {key: [v if v is not None else math.nan for v in front_values(r, search)]
              for key, r in done.items()}
    return [done[key] for key in pareto_optimal(points, [m for _, m in search.front()])]


# --- the table ------------------------------------------------------------------------------

def trials_table(records: Sequence[TrialRecord], search: Search) -> pa.Table:
    """One row per trial, best first.

    Order: by status (``STATUSES``); completed trials by the metric in the search's direction;
    the others by how far they got (epochs), then by the metric; missing/NaN values last.
    Columns: rank, trial_id, run_id, status, epochs, <search.metric>, pareto (on the front of
    ``Search.front``), param.<name> per searched param in space order (float64, int64, or
    string for a choice), then metric.<name> (float64, null when missing) for every final
    metric, sorted by name (the student's cost among them).
    """
    rows = _ranked(records, search)
    front = {r.trial_id for r in pareto_records(records, search)}
    metric_names = sorted({name for record in records for name, value in record.metrics.items()
                           if _as_float(value) is not None})
    columns: dict[str, pa.Array] = {
        "rank": pa.array(range(1, len(rows) + 1), pa.int64()),
        "trial_id": pa.array([r.trial_id for r in rows], pa.string()),
        "run_id": pa.array([r.run_id for r in rows], pa.string()),
        "status": pa.array([r.status for r in rows], pa.string()),
        "epochs": pa.array([r.epochs for r in rows], pa.int64()),
        search.metric: pa.array([final_value(r, search.metric) for r in rows], pa.float64()),
        "pareto": pa.array([r.trial_id in front for r in rows], pa.bool_()),
    }
    for name, dist in optuna_space(search).items():
        kind, convert = _param_column(dist)
        columns[f"param.{name}"] = pa.array([convert(r.params.get(name)) for r in rows], kind)
    for name in metric_names:
        values = [_as_float(r.metrics.get(name)) for r in rows]
        columns[f"metric.{name}"] = pa.array(values, pa.float64())
    return pa.table(columns)


def _ranked(records: Sequence[TrialRecord], search: Search) -> list[TrialRecord]:
    return ranked(records, mode=search.mode, status=lambda r: r.status,
                  value=lambda r: final_value(r, search.metric),
                  trial_id=lambda r: r.trial_id, epochs=lambda r: r.epochs)


def _param_column(dist: BaseDistribution) -> tuple[pa.DataType, Callable[[Any], Any]]:
    if isinstance(dist, CategoricalDistribution):
        return pa.string(), lambda v: None if v is None else str(v)
    if isinstance(dist, IntDistribution):
        return pa.int64(), _as_int
    return pa.float64(), _as_float


def _as_int(value: Any) -> int | None:
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


# --- the files ------------------------------------------------------------------------------

def write_report(records: Sequence[TrialRecord], search: Search, out_dir: Path,
                 facts: SearchFacts | None = None) -> list[Path]:
    """Write the table, the plots that make sense and the HTML page into ``out_dir``;
    ``facts`` fill the page's headline (teacher, data) beside what the records tell.

    Returns the written paths: trials.parquet, trials.csv, plots/<name>.png for each plot
    drawn, search_report.html. A plot that cannot be drawn is logged and left out.
    """
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    table = trials_table(records, search)
    written = [out_dir / "trials.parquet", out_dir / "trials.csv"]
    pq.write_table(table, written[0])
    pa_csv.write_csv(table, written[1])
    figures: list[tuple[str, str, go.Figure]] = []
    budget = max((r.epochs for r in records if r.status == Status.COMPLETED), default=0)
    agreement = epoch_agreement(records, search.metric, budget)
    plots = plots_of(study_from_records(records, search), search, agreement)
    coordinates = [(r.trial_id, values[0], values[1]) for r in records
                   if r.status == Status.COMPLETED for values in [front_values(r, search)]]
    front = front_plot(search, coordinates,
                       [r.trial_id for r in pareto_records(records, search)])
    for plot in [*plots, *([front] if front else [])]:
        png = draw_png(plot, plot_dir / f"{plot.name}.png")
        if png is not None:
            written.append(png)
        interactive = attempt(plot.name, plot.html)
        if interactive is not None:
            figures.append((plot.name, plot.title, interactive))
    for name in PLOT_NAMES:
        stale = plot_dir / f"{name}.png"
        if stale not in written:
            stale.unlink(missing_ok=True)
    page = out_dir / "search_report.html"
    page.write_text(_page(records, search, table, figures, facts or SearchFacts()),
                    encoding="utf-8")
    return [*written, page]


#: The plots that compare trials or settings: a warning goes beside them when the search
#: cannot tell its trials apart.
COMPARISONS = ("parallel_coordinate", "param_importances", "alpha_temperature",
               "metric_vs_alpha", "metric_vs_temperature")
#: The table's columns shown at first; the rest are one click away.
KEY_COLUMNS = ("rank", "trial_id", "status", "epochs", "pareto", "metric.latency_ms",
               "metric.student_params")

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
          "table{border-collapse:collapse;font-size:13px}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
          ".headline{font-size:15px;background:#f4f6f8;padding:0.6em 1em;border-radius:6px}"
          ".warning{color:#8a4b00;background:#fff4e0;padding:0.4em 0.8em;border-radius:4px}")


def _page(records: Sequence[TrialRecord], search: Search, table: pa.Table,
          figures: list[tuple[str, str, go.Figure]], facts: SearchFacts) -> str:
    warnings = caveats(records, search, facts)
    sections = []
    for i, (name, title, fig) in enumerate(figures):
        note = ([f"<p class='warning'>{html.escape(w)}</p>" for w in warnings]
                if name in COMPARISONS else [])
        sections.append("\n".join([f"<h2>{html.escape(title)}</h2>", *note, fig.to_html(
            include_plotlyjs=i == 0, full_html=False, default_height="520px")]))
    title = f"kdsearch report: {search.metric} ({search.mode}), {len(records)} trials"
    key = [name for name in table.column_names
           if name in KEY_COLUMNS or name == search.metric or name.startswith("param.")]
    return "\n".join([
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>",
        "</head><body>", f"<h1>{html.escape(title)}</h1>",
        _headline(records, search, facts), *sections,
        "<h2>trials, best first</h2>", _html_table(table.select(key), strip="param."),
        f"<details><summary>every column ({table.num_columns}: run ids, every final metric; "
        "also in trials.csv and trials.parquet)</summary>", _html_table(table), "</details>",
        "</body></html>"])


def caveats(records: Sequence[TrialRecord], search: Search, facts: SearchFacts) -> list[str]:
    """Why the comparisons of this search may not tell its trials apart: too few completed
    trials, too few validation videos; empty when neither."""
    found = []
    done = sum(r.status == Status.COMPLETED for r in records)
    if done < FEW_TRIALS:
        found.append(f"Only {done} completed trial{'' if done == 1 else 's'}: importances "
                     "and patterns read from so few trials are rough guesses; "
                     f"{FEW_TRIALS} or more make them worth reading.")
    if (warning := _small_val(search, facts)) is not None:
        found.append(warning)
    return found


def _small_val(search: Search, facts: SearchFacts) -> str | None:
    if facts.val_videos is None:
        return None
    warning = small_val_warning(search.metric, facts.val_videos)
    return None if warning is None else warning[0].upper() + warning[1:] + "."


def _headline(records: Sequence[TrialRecord], search: Search, facts: SearchFacts) -> str:
    """The best configuration and its value with its noise, the teacher, the data and the
    trials by status, in a few lines."""
    lines = []
    best = next((r for r in _ranked(records, search) if r.status == Status.COMPLETED
                 and finite(final_value(r, search.metric)) is not None), None)
    if best is None:
        lines.append("No trial completed: there is no best configuration.")
    else:
        value = final_value(best, search.metric)
        se = standard_error(search.metric, value, facts.val_videos)
        noise = (f" ± {se:.3f} (one standard error on {facts.val_videos} validation videos)"
                 if se is not None else "")
        settings = ", ".join(f"{name} {_cell(best.params[name])}" for name in search.space
                             if name in best.params)
        lines.append(f"<b>Best: trial {html.escape(best.trial_id)}</b>, {search.metric} "
                     f"<b>{value:.4f}</b>{noise}" +
                     (f", with {html.escape(settings)}." if settings else "."))
    if facts.teacher is not None:
        teacher = (f"{search.metric} {facts.teacher_value:.4f}"
                   if facts.teacher_value is not None else "no value recorded")
        lines.append(f"Teacher {html.escape(facts.teacher)}: {teacher}.")
    if facts.kd_gain is not None:
        line = kd_gain_line(facts.kd_gain)
        lines.append(html.escape(line[0].upper() + line[1:]) + ".")
    counts = [f"{facts.classes} classes" if facts.classes is not None else None,
              f"{facts.train_videos} training videos" if facts.train_videos is not None
              else None,
              f"{facts.val_videos} validation videos" if facts.val_videos is not None
              else None]
    if any(counts):
        lines.append("Data: " + ", ".join(c for c in counts if c) + ".")
    lines.append(f"Trials: {html.escape(_status_counts(records))}.")
    if search.metric != "val_loss" and facts.val_videos:
        lines.append(f"A difference of one validation video is {1 / facts.val_videos:.3f} "
                     f"of {search.metric}.")
    body = "".join(f"<p>{line}</p>" for line in lines)
    warning = _small_val(search, facts)
    notes = f"<p class='warning'>{html.escape(warning)}</p>" if warning else ""
    return f"<section class='headline'>{body}{notes}</section>"


def _status_counts(records: Sequence[TrialRecord]) -> str:
    counts = {status: sum(r.status == status for r in records) for status in STATUSES}
    others = len(records) - sum(counts.values())
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()
                        if n or status in (Status.COMPLETED, Status.PRUNED, Status.FAILED))
    return summary + (f", {others} other" if others else "")


def _html_table(table: pa.Table, strip: str = "") -> str:
    head = "".join(f"<th>{html.escape(name.removeprefix(strip))}</th>"
                   for name in table.column_names)
    rows = ["<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>"
            for row in table.to_pylist()]
    return "\n".join(["<table>", f"<tr>{head}</tr>", *rows, "</table>"])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
