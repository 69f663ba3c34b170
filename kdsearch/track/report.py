"""The end-of-search report: a table of every trial and plots a person reads at a glance.

``write_report`` turns what the driver knows of each trial (``TrialRecord``) into files in one
directory, which the caller logs to the parent MLflow run:

- ``trials.parquet`` and ``trials.csv``: one row per trial, best first (``trials_table``);
- ``plots/*.png``: Optuna's matplotlib plots (optimization history, learning curves, parallel
  coordinates, parameter importances) and a hand-drawn map of alpha against temperature;
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
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from kdsearch.track.schema import STATUS_ORDER, Status, ranked

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: Table order of the statuses (the one ranking's); a status not listed sorts last.
STATUSES = tuple(s.value for s in STATUS_ORDER)
_STATES = {Status.COMPLETED.value: TrialState.COMPLETE, Status.PRUNED.value: TrialState.PRUNED}
#: Every file stem under plots/ this module may write (stale ones are removed).
_PLOT_NAMES = ("optimization_history", "learning_curves", "parallel_coordinate",
               "param_importances", "alpha_temperature", "metric_vs_alpha",
               "metric_vs_temperature")


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial of the search, as the driver saw it."""

    trial_id: str
    run_id: str | None
    status: str  # "completed" | "pruned" | "failed" | "interrupted" | "running"
    epochs: int  # epochs trained
    params: dict[str, Any]  # sampled values, keys of search.space (failed trials may miss some)
    metrics: dict[str, float]  # final metrics ("val_acc", "val_class_acc.kick", ...); may be empty
    history: dict[int, float]  # epoch -> value of search.metric at that epoch


def final_value(record: TrialRecord, metric: str) -> float | None:
    """The trial's value of the search metric: its last epoch's, else its final metrics'."""
    if record.history:
        return _as_float(record.history[max(record.history)])
    return _as_float(record.metrics.get(metric))


# --- the study ------------------------------------------------------------------------------

def study_from_records(records: Sequence[TrialRecord], search: Search) -> optuna.Study:
    """An in-memory study with one trial per record, in the records' order.

    completed -> COMPLETE (value: ``final_value``), pruned -> PRUNED, anything else -> FAIL.
    As in the searcher, a completed trial without a finite value is FAIL. Every record is
    added, even one without params; params missing or outside their distribution are left out,
    and so are non-finite epoch values. User attrs: trial_id, run_id, status, epochs.
    """
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    space = optuna_space(search)
    for record in records:
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


# --- the table ------------------------------------------------------------------------------

def trials_table(records: Sequence[TrialRecord], search: Search) -> pa.Table:
    """One row per trial, best first.

    Order: by status (``STATUSES``); completed trials by the metric in the search's direction;
    the others by how far they got (epochs), then by the metric; missing/NaN values last.
    Columns: rank, trial_id, run_id, status, epochs, <search.metric>, param.<name> per searched
    param in space order (float64, int64, or string for a choice), then metric.<name> (float64,
    null when missing) for every final metric, sorted by name.
    """
    rows = _ranked(records, search)
    metric_names = sorted({name for record in records for name, value in record.metrics.items()
                           if _as_float(value) is not None})
    columns: dict[str, pa.Array] = {
        "rank": pa.array(range(1, len(rows) + 1), pa.int64()),
        "trial_id": pa.array([r.trial_id for r in rows], pa.string()),
        "run_id": pa.array([r.run_id for r in rows], pa.string()),
        "status": pa.array([r.status for r in rows], pa.string()),
        "epochs": pa.array([r.epochs for r in rows], pa.int64()),
        search.metric: pa.array([final_value(r, search.metric) for r in rows], pa.float64()),
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


# --- the plots ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Plot:
    name: str  # file stem under plots/
    title: str
    png: Callable[[], Figure]  # called inside _matplotlib_scope()
    html: Callable[[], go.Figure]


def _plots(study: optuna.Study, search: Search) -> list[_Plot]:
    """The plots this study can show, in page order."""
    from optuna.visualization import matplotlib as vm

    vp = optuna.visualization
    metric = search.metric
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    curves = [t for t in study.get_trials(deepcopy=False,
                                          states=(TrialState.COMPLETE, TrialState.PRUNED))
              if t.intermediate_values]
    params = [name for name in search.space if any(name in t.params for t in complete)]
    varying = [name for name in params
               if len({repr(t.params[name]) for t in complete if name in t.params}) > 1]
    plots = []
    if complete:
        plots.append(_Plot(
            "optimization_history", f"{metric} by trial",
            lambda: _figure(vm.plot_optimization_history(study, target_name=metric)),
            lambda: vp.plot_optimization_history(study, target_name=metric)))
    if curves:
        asha = " (short lines: stopped early by ASHA)" if search.scheduler.name == "asha" else ""
        plots.append(_Plot(
            "learning_curves", f"{metric} per epoch{asha}",
            lambda: _figure(_curves_axes(vm.plot_intermediate_values(study), metric, study)),
            lambda: vp.plot_intermediate_values(study).update_layout(
                xaxis_title="epoch", yaxis_title=metric)))
    if len(complete) >= 2 and params:
        plots.append(_Plot(
            "parallel_coordinate", "searched settings of the completed trials",
            lambda: _figure(vm.plot_parallel_coordinate(study, params, target_name=metric)),
            lambda: vp.plot_parallel_coordinate(study, params, target_name=metric)))
    if len(complete) >= 2 and len(varying) >= 2:
        plots.append(_Plot(
            "param_importances", f"importance of each setting for {metric}",
            lambda: _figure(vm.plot_param_importances(study, params=varying,
                                                      target_name=metric)),
            lambda: vp.plot_param_importances(study, params=varying, target_name=metric)))
    scatter = _scatter(study, search)
    if scatter is not None:
        plots.append(_Plot(scatter.name, scatter.title, lambda: _scatter_png(scatter),
                           lambda: _scatter_plotly(scatter)))
    return plots


@contextmanager
def _matplotlib_scope() -> Iterator[None]:
    """Optuna draws through pyplot and sets its ggplot style globally: undo both on exit."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        with matplotlib.rc_context():
            yield
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def _figure(ax: Any) -> Figure:
    fig = ax.get_figure(root=True)
    fig.set_size_inches(9, 5.5)
    return fig


def _curves_axes(ax: Any, metric: str, study: optuna.Study) -> Any:
    ax.set(title="Learning curves", xlabel="epoch", ylabel=metric)
    # Optuna labels lines "Trial<number>": name them by trial id, as the table does.
    ids = {f"Trial{t.number}": str(t.user_attrs.get("trial_id", t.number))
           for t in study.trials}
    for line in ax.get_lines():
        line.set_label(ids.get(str(line.get_label()), line.get_label()))
    if ax.get_legend() is not None:
        ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    # One entry per trial: past a dozen it only hides the curves.
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) > 12:
        legend.remove()
    return ax


_Point = tuple[float, float, float, str]


@dataclasses.dataclass(frozen=True)
class _Scatter:
    """alpha against temperature coloured by the metric, or the metric against the one of them
    searched. Points are (x, y, metric value, trial_id)."""

    name: str
    title: str
    metric: str
    x_label: str
    y_label: str
    x_log: bool
    y_log: bool
    coloured: bool
    reverse: bool  # lower is better: reverse the colour map so the best is always bright
    completed: list[_Point]
    pruned: list[_Point]
    best: _Point


def _scatter(study: optuna.Study, search: Search) -> _Scatter | None:
    space = optuna_space(search)
    names = [name for name in ("alpha", "temperature") if name in space]
    if not names:
        return None
    completed: list[_Point] = []
    pruned: list[_Point] = []
    for trial in study.get_trials(deepcopy=False,
                                  states=(TrialState.COMPLETE, TrialState.PRUNED)):
        coords = [_as_float(trial.params.get(name)) for name in names]
        if trial.state == TrialState.COMPLETE:
            value = trial.value
        else:
            step = trial.last_step
            value = math.nan if step is None else trial.intermediate_values[step]
        x, y = (coords[0], coords[1]) if len(names) == 2 else (coords[0], value)
        if x is None or y is None or math.isnan(y):
            continue
        point = (x, y, value if value is not None else math.nan, trial.user_attrs["trial_id"])
        (completed if trial.state == TrialState.COMPLETE else pruned).append(point)
    if not completed:
        return None
    pick = max if search.mode == "max" else min
    best = pick(completed, key=lambda point: point[2])
    logs = [getattr(space[name], "log", False) for name in names]
    if len(names) == 2:
        return _Scatter(name="alpha_temperature", metric=search.metric,
                        title=f"alpha and temperature against {search.metric}",
                        x_label="alpha (KD weight)", y_label="temperature", x_log=logs[0],
                        y_log=logs[1], coloured=True, reverse=search.mode == "min",
                        completed=completed, pruned=pruned, best=best)
    return _Scatter(name=f"metric_vs_{names[0]}", metric=search.metric,
                    title=f"{search.metric} against {names[0]}", x_label=names[0],
                    y_label=search.metric, x_log=logs[0], y_log=False, coloured=False,
                    reverse=False, completed=completed, pruned=pruned, best=best)


def _scatter_png(s: _Scatter) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if s.pruned:
        ax.scatter([p[0] for p in s.pruned], [p[1] for p in s.pruned], s=14, c="0.65",
                   label=_pruned_label(s))
    colours: dict[str, Any] = {"c": "tab:blue"}
    if s.coloured:
        colours = {"c": [p[2] for p in s.completed],
                   "cmap": "viridis_r" if s.reverse else "viridis"}
    points = ax.scatter([p[0] for p in s.completed], [p[1] for p in s.completed], s=50,
                        edgecolors="black", linewidths=0.5, label="completed", **colours)
    if s.coloured:
        fig.colorbar(points, ax=ax, label=s.metric)
    ax.scatter([s.best[0]], [s.best[1]], marker="*", s=320, facecolors="none",
               edgecolors="red", linewidths=1.5, label=f"best: {s.best[3]} ({s.best[2]:.4g})")
    ax.set(title=s.title, xlabel=s.x_label, ylabel=s.y_label)
    if s.x_log:
        ax.set_xscale("log")
    if s.y_log:
        ax.set_yscale("log")
    ax.legend(loc="best", fontsize=8)
    return fig


def _pruned_label(s: _Scatter) -> str:
    return "pruned" if s.coloured else "pruned (value when stopped)"


def _scatter_plotly(s: _Scatter) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    if s.pruned:
        fig.add_trace(go.Scatter(x=[p[0] for p in s.pruned], y=[p[1] for p in s.pruned],
                                 mode="markers", name=_pruned_label(s),
                                 text=[p[3] for p in s.pruned],
                                 marker={"size": 6, "color": "lightgrey"}))
    marker: dict[str, Any] = {"size": 11, "line": {"width": 0.5, "color": "black"}}
    if s.coloured:
        marker.update(color=[p[2] for p in s.completed], colorscale="Viridis", showscale=True,
                      reversescale=s.reverse,
                      colorbar={"title": {"text": s.metric}})
    fig.add_trace(go.Scatter(x=[p[0] for p in s.completed], y=[p[1] for p in s.completed],
                             mode="markers", name="completed", marker=marker,
                             text=[f"{p[3]}: {p[2]:.4g}" for p in s.completed]))
    fig.add_trace(go.Scatter(x=[s.best[0]], y=[s.best[1]], mode="markers", name="best",
                             text=[s.best[3]], marker={"symbol": "star-open", "size": 22,
                                                       "color": "red"}))
    fig.update_layout(title=s.title, xaxis_title=s.x_label, yaxis_title=s.y_label,
                      legend={"orientation": "h", "y": -0.2})
    if s.x_log:
        fig.update_xaxes(type="log")
    if s.y_log:
        fig.update_yaxes(type="log")
    return fig


# --- the files ------------------------------------------------------------------------------

def write_report(records: Sequence[TrialRecord], search: Search, out_dir: Path) -> list[Path]:
    """Write the table, the plots that make sense and the HTML page into ``out_dir``.

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
    figures: list[tuple[str, go.Figure]] = []
    for plot in _plots(study_from_records(records, search), search):
        png = _draw_png(plot, plot_dir / f"{plot.name}.png")
        if png is not None:
            written.append(png)
        interactive = _attempt(plot.name, plot.html)
        if interactive is not None:
            figures.append((plot.title, interactive))
    for name in _PLOT_NAMES:
        stale = plot_dir / f"{name}.png"
        if stale not in written:
            stale.unlink(missing_ok=True)
    page = out_dir / "search_report.html"
    page.write_text(_page(records, search, table, figures), encoding="utf-8")
    return [*written, page]


def _draw_png(plot: _Plot, path: Path) -> Path | None:
    def draw() -> Path:
        plot.png().savefig(path, dpi=100, bbox_inches="tight")
        return path

    with _matplotlib_scope():
        drawn = _attempt(plot.name, draw)
    if drawn is None:
        path.unlink(missing_ok=True)
    return drawn


def _attempt(name: str, draw: Callable[[], Any]) -> Any:
    """``draw()``, or None when it raised (logged: a report never fails for want of a plot)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # PED-ANOVA warns that a small study's importances "may be inaccurate": they are.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.importance")
            # matplotlib: a parallel-coordinate axis whose completed trials share one value.
            warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
            result = draw()
    except Exception as err:  # optuna, matplotlib and plotly each have their own errors
        log.warning("search report: %s not drawn: %s: %s", name, type(err).__name__, err)
        return None
    return result


def _page(records: Sequence[TrialRecord], search: Search, table: pa.Table,
          figures: list[tuple[str, go.Figure]]) -> str:
    counts = {status: sum(r.status == status for r in records) for status in STATUSES}
    others = len(records) - sum(counts.values())
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()
                        if n or status in ("completed", "pruned", "failed"))
    summary += f", {others} other" if others else ""
    sections = [f"<h2>{html.escape(title)}</h2>\n" +
                fig.to_html(include_plotlyjs=i == 0, full_html=False, default_height="520px")
                for i, (title, fig) in enumerate(figures)]
    title = f"kdsearch report: {search.metric} ({search.mode}), {len(records)} trials"
    return "\n".join([
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>",
        "</head><body>", f"<h1>{html.escape(title)}</h1>",
        f"<p class='summary'>Trials: {html.escape(summary)}.</p>", *sections,
        "<h2>trials, best first</h2>", _html_table(table), "</body></html>"])


def _html_table(table: pa.Table) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.column_names)
    rows = ["<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>"
            for row in table.to_pylist()]
    return "\n".join(["<table>", f"<tr>{head}</tr>", *rows, "</table>"])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
