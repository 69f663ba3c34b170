"""The plots of the search report: the optimization history (every trial in the order trials
started, pruned ones at their value when stopped), Optuna's matplotlib and plotly plots
(learning curves, parallel coordinates, parameter importances) and a map of alpha against
temperature, each drawn from an in-memory Optuna study. A plot that cannot be drawn is
logged and left out (:func:`attempt`), never an error."""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from kdsearch.config import Search
from kdsearch.search.space import optuna_space
from kdsearch.track.schema import finite

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

log = logging.getLogger("kdsearch.track.report")

#: Every file stem under plots/ the report may write (stale ones are removed).
PLOT_NAMES = ("optimization_history", "learning_curves", "epoch_agreement",
              "parallel_coordinate",
              "param_importances", "alpha_temperature", "metric_vs_alpha",
              "metric_vs_temperature", "front")


# --- the plots ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plot:
    name: str  # file stem under plots/
    title: str
    png: Callable[[], Figure]  # called inside _matplotlib_scope()
    html: Callable[[], go.Figure]


def plots_of(study: optuna.Study, search: Search,
             agreement: Sequence[Any] = ()) -> list[Plot]:
    """The plots this study can show, in page order; ``agreement``: the
    ``kdsearch.track.report.EpochAgreement`` of each epoch, drawn when any is defined."""
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
    history = _history(study, search)
    if history is not None:
        plots.append(Plot("optimization_history", history.title,
                          lambda: _history_png(history), lambda: _history_plotly(history)))
    if curves:
        asha = (" (short lines: stopped early)" if search.scheduler.name != "none" else "")
        plots.append(Plot(
            "learning_curves", f"{metric} per epoch{asha}",
            lambda: _figure(_curves_axes(vm.plot_intermediate_values(study), metric, study)),
            lambda: vp.plot_intermediate_values(study).update_layout(
                xaxis_title="epoch", yaxis_title=metric)))
    if any(a.rho is not None for a in agreement):
        points = list(agreement)
        plots.append(Plot("epoch_agreement", f"how well each epoch's {metric} ranked the "
                          "completed trials as their last epoch did",
                          lambda: _agreement_png(points, metric),
                          lambda: _agreement_plotly(points, metric)))
    if len(complete) >= 2 and params:
        plots.append(Plot(
            "parallel_coordinate", "searched settings of the completed trials",
            lambda: _figure(vm.plot_parallel_coordinate(study, params, target_name=metric)),
            lambda: vp.plot_parallel_coordinate(study, params, target_name=metric)))
    if len(complete) >= 2 and len(varying) >= 2:
        plots.append(Plot(
            "param_importances", f"importance of each setting for {metric}",
            lambda: _figure(vm.plot_param_importances(study, params=varying,
                                                      target_name=metric)),
            lambda: vp.plot_param_importances(study, params=varying, target_name=metric)))
    scatter = _scatter(study, search)
    if scatter is not None:
        plots.append(Plot(scatter.name, scatter.title, lambda: _scatter_png(scatter),
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


@dataclasses.dataclass(frozen=True)
class _History:
    """Every trial with a value, in the order trials started (the study's order): completed
    ones at their final value, pruned ones at their value when stopped; and the best completed
    value so far after each trial."""

    title: str
    metric: str
    completed: list[tuple[int, float, str]]  # (position from 1, value, trial_id)
    pruned: list[tuple[int, float, str]]
    best_so_far: list[tuple[int, float]]  # from the first completed trial on


def _history(study: optuna.Study, search: Search) -> _History | None:
    completed: list[tuple[int, float, str]] = []
    pruned: list[tuple[int, float, str]] = []
    best_so_far: list[tuple[int, float]] = []
    better = max if search.mode == "max" else min
    best: float | None = None
    for position, trial in enumerate(study.get_trials(deepcopy=False), start=1):
        trial_id = str(trial.user_attrs.get("trial_id", trial.number))
        if trial.state == TrialState.COMPLETE and (value := finite(trial.value)) is not None:
            completed.append((position, value, trial_id))
            best = value if best is None else better(best, value)
        elif trial.state == TrialState.PRUNED and trial.last_step is not None:
            last = finite(trial.intermediate_values[trial.last_step])
            if last is not None:
                pruned.append((position, last, trial_id))
        if best is not None:
            best_so_far.append((position, best))
    if not completed and not pruned:
        return None
    return _History(f"{search.metric} by trial, in the order the trials started",
                    search.metric, completed, pruned, best_so_far)


def _history_png(h: _History) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if h.pruned:
        ax.scatter([p[0] for p in h.pruned], [p[1] for p in h.pruned], s=18, c="0.6",
                   label="pruned (value when stopped)")
    if h.completed:
        ax.scatter([p[0] for p in h.completed], [p[1] for p in h.completed], s=36,
                   c="tab:blue", label="completed")
    if h.best_so_far:
        ax.step([p[0] for p in h.best_so_far], [p[1] for p in h.best_so_far], where="post",
                c="tab:red", label="best completed so far")
    ax.set(title=h.title, xlabel="trial (in the order started)", ylabel=h.metric)
    ax.legend(loc="best", fontsize=8)
    return fig


def _history_plotly(h: _History) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    if h.pruned:
        fig.add_trace(go.Scatter(x=[p[0] for p in h.pruned], y=[p[1] for p in h.pruned],
                                 mode="markers", name="pruned (value when stopped)",
                                 text=[p[2] for p in h.pruned],
                                 marker={"size": 7, "color": "lightgrey"}))
    if h.completed:
        fig.add_trace(go.Scatter(x=[p[0] for p in h.completed], y=[p[1] for p in h.completed],
                                 mode="markers", name="completed",
                                 text=[p[2] for p in h.completed], marker={"size": 9}))
    if h.best_so_far:
        fig.add_trace(go.Scatter(x=[p[0] for p in h.best_so_far],
                                 y=[p[1] for p in h.best_so_far], mode="lines",
                                 line={"shape": "hv", "color": "red"},
                                 name="best completed so far"))
    fig.update_layout(title=h.title, xaxis_title="trial (in the order started)",
                      yaxis_title=h.metric, legend={"orientation": "h", "y": -0.2})
    return fig


def _agreement_png(points: Sequence[Any], metric: str) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = [p for p in points if p.rho is not None]
    ax.plot([p.epoch for p in shown], [p.rho for p in shown], marker="o",
            label="rank correlation with the last epoch")
    stops = [p for p in shown if p.stopped]
    if stops:
        ax.scatter([p.epoch for p in stops], [p.rho for p in stops], s=140, facecolors="none",
                   edgecolors="red", label="trials were stopped here")
    ax.axhline(0.5, color="0.5", ls="--", lw=1, label="0.5: below, a poor judge")
    n = max(p.trials for p in shown)
    ax.set(title=f"{metric}: each epoch against the last, over {n} completed trials",
           xlabel="epoch", ylabel="Spearman rank correlation", ylim=(-1.05, 1.05))
    ax.legend(loc="best", fontsize=8)
    return fig


def _agreement_plotly(points: Sequence[Any], metric: str) -> go.Figure:
    import plotly.graph_objects as go

    shown = [p for p in points if p.rho is not None]
    fig = go.Figure(go.Scatter(
        x=[p.epoch for p in shown], y=[p.rho for p in shown], mode="lines+markers",
        name="rank correlation with the last epoch",
        text=[f"{p.trials} completed trials; {p.stopped} stopped here" for p in shown]))
    stops = [p for p in shown if p.stopped]
    if stops:
        fig.add_trace(go.Scatter(x=[p.epoch for p in stops], y=[p.rho for p in stops],
                                 mode="markers", name="trials were stopped here",
                                 marker={"size": 16, "symbol": "circle-open", "color": "red"}))
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey")
    fig.update_layout(xaxis_title="epoch", yaxis_title="Spearman rank correlation",
                      yaxis_range=[-1.05, 1.05], legend={"orientation": "h", "y": -0.2})
    return fig


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
        coords = [finite(trial.params.get(name)) for name in names]
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


def front_plot(search: Search, points: Sequence[tuple[str, float | None, float | None]],
               front: Sequence[str]) -> Plot | None:
    """The search metric against the front's second objective (the student's latency unless
    ``search.objectives`` says otherwise) for the completed trials ``points`` = (trial id,
    metric, cost), the Pareto-optimal ones (``front``, best first) joined by a line."""
    (metric, _), (cost, _) = search.front()[:2]
    usable = [(t, float(y), float(x)) for t, y, x in points
              if y is not None and x is not None and finite(y) is not None
              and finite(x) is not None]
    if not usable:
        return None
    on_front = sorted((p for p in usable if p[0] in set(front)), key=lambda p: p[2])
    title = f"{metric} against {cost}: the Pareto front"

    def png() -> Figure:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 5.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.scatter([p[2] for p in usable], [p[1] for p in usable], s=30, c="tab:blue",
                   label="completed trials")
        ax.plot([p[2] for p in on_front], [p[1] for p in on_front], "-o", c="red",
                markersize=8, markerfacecolor="none", label="Pareto front")
        for trial, y, x in on_front:
            ax.annotate(trial, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(title=title, xlabel=cost, ylabel=metric)
        ax.legend(loc="best", fontsize=8)
        return fig

    def html() -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[p[2] for p in usable], y=[p[1] for p in usable],
                                 mode="markers", name="completed trials",
                                 text=[p[0] for p in usable]))
        fig.add_trace(go.Scatter(x=[p[2] for p in on_front], y=[p[1] for p in on_front],
                                 mode="lines+markers", name="Pareto front",
                                 text=[p[0] for p in on_front],
                                 marker={"size": 12, "symbol": "circle-open", "color": "red"}))
        return fig.update_layout(title=title, xaxis_title=cost, yaxis_title=metric)

    return Plot("front", title, png, html)


def draw_png(plot: Plot, path: Path) -> Path | None:
    def draw() -> Path:
        plot.png().savefig(path, dpi=100, bbox_inches="tight")
        return path

    with _matplotlib_scope():
        drawn = attempt(plot.name, draw)
    if drawn is None:
        path.unlink(missing_ok=True)
    return drawn


def attempt(name: str, draw: Callable[[], Any]) -> Any:
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
