"""Search quality of the real Ray Tune + Optuna + scheduler stack, replayed on any objective.

    python benchmarks/search_quality.py                                  # the simulated family
    python benchmarks/search_quality.py --objective sim-faithful          # early epochs rank well
    python benchmarks/search_quality.py --table benchmarks/curves/demo.parquet   # recorded curves
    python benchmarks/search_quality.py --objective my_objective.py:Objective    # your own
    python benchmarks/search_quality.py --smoke [--table T.parquet]      # checks that it runs

Nothing is trained. An objective (``benchmarks/objectives.py``: the simulated family of
``benchmarks/sim_objective.py`` and its faithful variant, a learning-curve table recorded by
``benchmarks/record_curves.py`` replayed by nearest recorded configuration, or any object with
the attributes listed there) gives the value a trial of a configuration reports at each epoch
under a seed. Everything else is the real stack: one ``ray.init(num_cpus=--concurrency)``,
then per method and seed a ``tune.Tuner`` over a function trainable that reports
``{"epoch": e, METRIC: objective(config, e, seed)}`` for e = 1..``objective.epochs`` (METRIC:
``val_acc`` for a maximised objective, ``val_loss`` for a minimised one, unless it names its
own), ``max_concurrent_trials=--concurrency``, ``reuse_actors=--reuse-actors``. The seed is the
sampler's and the objective's (the same configuration reports the same curve under every
method of one seed: the sim's noise is seeded by the seed and the configuration; a table
replays recorded training seed number ``seed mod n``).

Methods, all over the objective's space and one seed, every searcher built by
``kdsearch.search.sampler.make_searcher`` and every scheduler by
``kdsearch.search.tuner.make_scheduler(search, epochs, n_val)`` from a
``kdsearch.config.Search``, so that what is measured is what kdsearch runs:

* ``random-full``: Optuna's RandomSampler, no scheduler (every trial trains to the end);
* ``tpe-full``: TPE (Optuna's defaults, seeded), no scheduler;
* ``default``: what a space file that names no sampler and no scheduler gets
  (``Search.model_validate({"space", "seed", "metric", "mode"})``): it follows kdsearch's
  defaults by construction;
* ``asha``: TPE with ``scheduler: {name: asha, grace_period: G, reduction_factor: R}``
  (kdsearch's fidelity-aware searcher: trials ASHA stopped reach Optuna as PRUNED);
* ``random-asha``: the same with the RandomSampler;
* ``optuna-asha``: Ray's stock feedback (``stock_feedback.stock_searcher``: trials ASHA
  stopped reach Optuna as COMPLETE with their last value) with TPE, and ASHA;
* ``agreement``: TPE with ``{name: agreement, grace_period: G, reduction_factor: R}``
  (``kdsearch.search.stopping.AgreementASHA``); its noise margin uses the objective's
  ``val_videos`` (a table's recorded validation count; none for the simulated objectives);
* ``hyperband``: TPE with ``{name: hyperband, grace_period: G, reduction_factor: R}``.

G and R are ``--grace-period`` and ``--reduction-factor`` (default: ``kdsearch.config.Asha``'s);
agreement's other options are ``--min-agreement``, ``--min-pairs`` and ``--noise-margin``
(default: ``kdsearch.config.Agreement``'s).

What is counted, in the driver: a ``tune.Callback``'s ``on_trial_result`` counts every reported
result as one epoch consumed (so trials still running when the budget runs out count too).
After each result it records the incumbent: of the trials that reported their last epoch, the
one with the best *observed* final value, which is what a user of the search would ship; its
regret is the optimum minus its noise-free final value (``true_final``; the other way round
for a minimised objective), and before the first trial finished it is the regret of the
objective's ``floor`` (chance for the sim, the worst recorded configuration for a table). A
``tune.Stopper`` whose ``stop_all`` reads the same counter ends the run when the epoch budget
(``--budget-trials`` x epochs) is used: every method gets the same budget.

The measure: the epochs consumed until the incumbent is within 1 % of the optimum in
noise-free terms (regret <= 0.01 x |optimum|); for objectives with a ``noise_se`` also until it
is within one such standard error (``epochs_to_target_se``: closer than one training seed's
spread cannot be told apart by training once). A run that never gets there is censored: +inf
in every statistic, never dropped. Only for ``random-full`` (the reference) a run that has not
got there when the budget is used goes on, up to ``--reference-extend`` times the budget, so
that its epochs-to-target are measured rather than censored; its regret curve stops at the
common budget like the others.

Printed: one line per run; per method the seeds that reached the target within the budget,
the median epochs with a bootstrap 95 % confidence interval of the median (2000 resamples of
the seeds; an interval reaching +inf prints its end as "> N"), the inter-quartile range, and
the median over random-full's; and the targets, each PASS, MISS or UNDECIDED (UNDECIDED only
where censored medians leave the comparison open; the confidence intervals say how firm a
PASS or MISS is):

* (a) default's median <= half of random-full's, and <= tpe-full's;
* (b) default never worse than random-full: median no later, and at least as many seeds
  within the budget;
* (c) default's median no more than 10 % above the better of random-full's and tpe-full's.

Written to ``--out``: ``search_quality_NAME.md`` (the table, the targets, epochs to target per
seed) and ``search_quality_NAME.png`` (median regret against epochs, inter-quartile band, log
y), NAME the objective's name; with ``--json OUT``, ``{"objective", "optimum",
"budget_epochs", "methods": {METHOD: [{"seed", "epochs_to_target", "regret": {"0.25",
"0.5", "1.0"}}]}}`` (epochs_to_target null: not reached within the run's epochs, which for
random-full may exceed budget_epochs; regret after 25 %, 50 % and 100 % of the budget; plus
``epochs_to_target_se`` where the objective has a noise_se).

Epochs cost nothing by default. Then a trial can race through all its epochs before the next
one has started, so fewer than ``--concurrency`` trials run at once (each run prints the mean
number of trials RUNNING when a result arrived) and the searcher knows more results than it
would with real training, where the running trials advance in lockstep. ``--epoch-seconds``
sleeps that long per epoch in the trial to restore the lockstep. Before the first run a
warm-up fit of no-op trials starts the worker processes (not with ``--smoke``).

``--overhead`` measures Ray Tune itself instead: trials that do no work (a function that
calls ``tune.report`` N times), ``--overhead-trials`` trials through Tune's default searcher,
no scheduler, ``max_concurrent_trials=--concurrency``, with ``reuse_actors`` True and False,
shapes (trials x results) ``--overhead-trials`` / 4 x 1, ``--overhead-trials`` x 1 and
``--overhead-trials`` x ``--overhead-results``, ``--overhead-repeats`` repeats, interleaved.
Timed: the wall time of ``Tuner.fit()`` (Tune's default loggers on, as in a kdsearch search).
Printed per setting: median seconds per trial and per result of the largest shape, and the
split of t(k, N) = fixed + k * (per trial + N * per result) fitted to the three shapes.
Written: ``--out``/search_quality_overhead.md.

Not measured: any training, data loading, checkpointing or MLflow; the quality runs turn off
Tune's per-trial file loggers (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``), which change only
their speed.

One script of about 850 lines, on purpose: what is counted, the statistics and the pages it
writes sit beside the runs that produce them, so that a documented number can be traced to
its code in one file (the objectives live in ``objectives.py``, the stock feedback in
``stock_feedback.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
# Trial processes unpickle the trainable, which imports objectives (and sim_objective) by name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
import objectives  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from stock_feedback import stock_searcher  # noqa: E402

from kdsearch.config import Agreement, Asha, Search  # noqa: E402
from kdsearch.search.sampler import make_searcher  # noqa: E402
from kdsearch.search.tuner import make_scheduler  # noqa: E402

METHODS = ("random-full", "tpe-full", "default", "asha", "random-asha", "optuna-asha",
           "agreement", "hyperband")
REFERENCE = "random-full"
TARGET = 0.01  # within 1 % of the optimum: regret <= TARGET * |optimum|


# ---------------------------------------------------------------------------- quality runs


@dataclass
class Ledger:
    """Every epoch of one run, counted in the driver; values signed so that larger is
    better (``sign`` = -1 for a minimised objective)."""

    max_t: int
    budget: int  # epochs every method gets
    limit: int  # epochs this run may use (> budget only for the extended reference)
    optimum: float
    sign: float
    true_final: Callable[[dict[str, Any]], float]
    metric: str
    floor: float  # the value before any trial finished
    noise_se: float | None
    epochs: int = 0
    trials: dict[str, int] = field(default_factory=dict)  # trial id: epochs it trained
    full: int = 0  # trials that reported epoch max_t
    best_observed: float = -math.inf
    regret: float = math.nan
    regrets: list[float] = field(default_factory=list)  # after epoch 1..budget
    reached_at: int | None = None  # within 1 % of the optimum
    reached_se_at: int | None = None  # within one noise_se of it
    running: int = 0  # sum over results of the trials RUNNING when it arrived

    def __post_init__(self) -> None:
        self.regret = self.sign * (self.optimum - self.floor)

    def record(self, trial_id: str, config: dict[str, Any], result: dict[str, Any],
               running: int) -> None:
        self.epochs += 1
        self.running += running
        epoch = int(result.get("epoch", 0))
        self.trials[trial_id] = max(self.trials.get(trial_id, 0), epoch)
        if epoch >= self.max_t:
            self.full += 1
            if self.sign * result[self.metric] > self.best_observed:
                self.best_observed = self.sign * float(result[self.metric])
                self.regret = self.sign * (self.optimum - self.true_final(config))
        if self.epochs <= self.budget:
            self.regrets.append(self.regret)
        if self.epochs <= self.limit and self.full:  # no target without an incumbent
            if self.reached_at is None and self.regret <= TARGET * abs(self.optimum):
                self.reached_at = self.epochs
            if (self.reached_se_at is None and self.noise_se is not None
                    and self.regret <= self.noise_se):
                self.reached_se_at = self.epochs

    def done(self) -> bool:
        if self.epochs >= self.limit:
            return True
        return self.epochs >= self.budget and (self.reached_at is not None
                                               or self.limit == self.budget)


class Counter(tune.Callback):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        running = sum(t.status == "RUNNING" for t in trials)
        self.ledger.record(trial.trial_id, trial.config, result, running)


class BudgetStopper(tune.Stopper):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.ledger.done()

    def stop_all(self) -> bool:
        return self.ledger.done()


def make_trainable(source: objectives.Source, seed: int, epochs: int, metric: str,
                   epoch_seconds: float = 0.0) -> Callable[[dict[str, Any]], None]:
    def replayed_trial(config: dict[str, Any]) -> None:
        import objectives

        objective = objectives.load(source)  # once per worker process
        for epoch in range(1, epochs + 1):
            if epoch_seconds:
                time.sleep(epoch_seconds)
            tune.report({"epoch": epoch, metric: float(objective(config, epoch, seed))})

    return replayed_trial


@dataclass
class RunResult:
    method: str
    seed: int
    reached_at: int | None
    reached_se_at: int | None
    regrets: list[float]
    trials: int
    full: int
    epochs: int
    told_complete: int  # trials the searcher told Optuna COMPLETE
    told_complete_early: int  # of those, stopped before max_t
    wall_s: float
    mean_running: float  # trials RUNNING when a result arrived, averaged over results


def method_search(method: str, objective: objectives.Objective, seed: int,
                  args: argparse.Namespace) -> Search:
    """The search section a space file would hold for ``method``."""
    section: dict[str, Any] = {"space": objective.space, "seed": seed,
                               "metric": objectives.metric(objective), "mode": objective.mode}
    if method == "default":
        return Search.model_validate(section)
    rungs = {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    sampler = "random" if method.startswith("random") else "tpe"
    scheduler = {"random-full": {"name": "none"}, "tpe-full": {"name": "none"},
                 "asha": {"name": "asha", **rungs}, "random-asha": {"name": "asha", **rungs},
                 "optuna-asha": {"name": "asha", **rungs},
                 "agreement": {"name": "agreement", **rungs,
                               "min_agreement": args.min_agreement,
                               "min_pairs": args.min_pairs,
                               "noise_margin": bool(args.noise_margin)},
                 "hyperband": {"name": "hyperband", **rungs}}[method]
    return Search.model_validate({**section, "sampler": sampler, "scheduler": scheduler})


def run_one(method: str, seed: int, args: argparse.Namespace, storage: Path,
            objective: objectives.Objective, source: objectives.Source,
            floor: float) -> RunResult:
    max_t = objective.epochs
    budget = args.budget_trials * max_t
    limit = budget * (args.reference_extend if method == REFERENCE else 1)
    metric = objectives.metric(objective)
    ledger = Ledger(max_t=max_t, budget=budget, limit=limit, optimum=objective.optimum,
                    sign=objectives.sign(objective),
                    true_final=lambda c: objectives.true_final(objective, c), metric=metric,
                    floor=floor, noise_se=objectives.noise_se(objective))
    search = method_search(method, objective, seed, args)
    searcher = (stock_searcher(search, max_t) if method == "optuna-asha"
                else make_searcher(search, max_t))
    name = f"{method}-{seed}"
    tuner = tune.Tuner(
        make_trainable(source, seed, max_t, metric, args.epoch_seconds),
        tune_config=tune.TuneConfig(
            metric=metric, mode=objective.mode, search_alg=searcher,
            scheduler=make_scheduler(search, max_t, objectives.val_videos(objective)),
            num_samples=limit + 4 * args.concurrency,  # never the limit: the stopper is
            max_concurrent_trials=args.concurrency, reuse_actors=args.reuse_actors),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0,
            stop=BudgetStopper(ledger), callbacks=[Counter(ledger)]),
    )
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    shutil.rmtree(storage / name, ignore_errors=True)
    complete = early = 0
    from optuna.trial import TrialState

    # Tune does not pass the result on which ASHA stops a trial to on_trial_result, so the
    # epochs a trial trained come from the ledger, not from Optuna's intermediate values.
    for trial_id, ot_trial in searcher._ot_trials.items():
        if searcher.study.trials[ot_trial.number].state == TrialState.COMPLETE:
            complete += 1
            early += ledger.trials.get(trial_id, 0) < max_t
    regrets = ledger.regrets + [ledger.regret] * (budget - len(ledger.regrets))
    return RunResult(method, seed, ledger.reached_at, ledger.reached_se_at, regrets[:budget],
                     len(ledger.trials), ledger.full, ledger.epochs, complete, early, wall,
                     ledger.running / max(1, ledger.epochs))


# ---------------------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile where +inf (censored) values sort last and stay inf."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(xs[hi]):
        return math.inf if pos > lo or math.isinf(xs[lo]) else xs[lo]
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median_ci(values: Sequence[float], resamples: int = 2000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median; +inf (censored) values take part as
    +inf, so an interval may end at +inf."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    samples = np.sort(x[np.random.default_rng(seed).integers(0, n, (resamples, n))], axis=1)
    # (inf + finite) / 2 and (inf + inf) / 2 are inf: no inf - inf, no nan.
    medians = np.sort((samples[:, (n - 1) // 2] + samples[:, n // 2]) / 2)
    lo = medians[int(math.floor((1 - level) / 2 * resamples))]
    hi = medians[int(math.ceil((1 + level) / 2 * resamples)) - 1]
    return float(lo), float(hi)


def epochs_of(runs: list[RunResult], se: bool = False) -> list[float]:
    reached = [r.reached_se_at if se else r.reached_at for r in runs]
    return [math.inf if e is None else float(e) for e in reached]


def fmt(value: float, cap: int) -> str:
    return f"> {cap}" if math.isinf(value) else f"{value:.0f}"


@dataclass
class Row:
    method: str
    reached: int  # seeds within the common budget
    reached_extended: int  # seeds within the run's own cap (differs for the reference)
    seeds: int
    median: float
    ci: tuple[float, float]
    q1: float
    q3: float
    cap: int  # the epochs a run of this method could use
    median_se: float  # median epochs to within one noise_se (inf: censored or no noise_se)
    trials: float  # median trials per run
    full: float  # median trials that reached max_t
    running: float  # mean trials RUNNING when a result arrived


def summarise(results: list[RunResult], methods: Sequence[str], budget: int,
              extend: int) -> list[Row]:
    rows = []
    for method in methods:
        runs = [r for r in results if r.method == method]
        eps = epochs_of(runs)
        rows.append(Row(method, sum(e <= budget for e in eps), sum(math.isfinite(e) for e in eps),
                        len(runs), quantile(eps, 0.5), median_ci(eps), quantile(eps, 0.25),
                        quantile(eps, 0.75), budget * (extend if method == REFERENCE else 1),
                        quantile(epochs_of(runs, se=True), 0.5),
                        statistics.median(r.trials for r in runs),
                        statistics.median(r.full for r in runs),
                        statistics.mean(r.mean_running for r in runs)))
    return rows


def table_lines(rows: list[Row], budget: int, with_se: bool) -> list[str]:
    ref = next((r for r in rows if r.method == REFERENCE), None)
    se_head, se_rule = (" median to 1 SE |", "---|") if with_se else ("", "")
    lines = [f"| method | reached in {budget} | median epochs | 95 % CI of median | IQR | "
             f"vs {REFERENCE} |{se_head} trials/run | full-budget trials/run | "
             "running/result |",
             "|---|---|---|---|---|---|" + se_rule + "---|---|---|"]
    for r in rows:
        ratio = "n/a" if ref is None else ratio_text(r, ref)
        reached = f"{r.reached}/{r.seeds}"
        if r.cap > budget:
            reached += f" ({r.reached_extended} in {r.cap})"
        se = f" {fmt(r.median_se, r.cap)} |" if with_se else ""
        lines.append(f"| {r.method} | {reached} | {fmt(r.median, r.cap)} | "
                     f"{fmt(r.ci[0], r.cap)} – {fmt(r.ci[1], r.cap)} | "
                     f"{fmt(r.q1, r.cap)} – {fmt(r.q3, r.cap)} | {ratio} |{se} "
                     f"{r.trials:.0f} | {r.full:.0f} | {r.running:.1f} |")
    return lines


def ratio_text(row: Row, ref: Row) -> str:
    if math.isinf(ref.median):
        return "n/a"
    if math.isinf(row.median):
        return f"> {row.cap / ref.median:.2f}"
    return f"{row.median / ref.median:.2f}"


Interval = tuple[float, float]  # the values a (possibly censored) median can take


def interval(row: Row, scale: float = 1.0) -> Interval:
    if math.isinf(row.median):  # censored: later than the run's cap, by how much unknown
        return (scale * math.nextafter(row.cap, math.inf), math.inf)
    return (scale * row.median, scale * row.median)


def at_most(x: Interval, y: Interval) -> bool | None:
    """x <= y: True or False where the intervals decide it, None where they overlap."""
    if x[1] <= y[0]:
        return True
    if x[0] > y[1]:
        return False
    return None


def verdict(checks: Sequence[bool | None]) -> str:
    if any(c is False for c in checks):
        return "MISS"
    return "PASS" if all(checks) else "UNDECIDED (censored medians)"


def target_lines(rows: list[Row]) -> list[str]:
    by = {r.method: r for r in rows}
    names = ("(a) default median <= 1/2 of random-full's and <= tpe-full's",
             "(b) default never worse than random-full (median, seeds within budget)",
             "(c) default median <= 1.1 x the better of random-full's and tpe-full's")
    needs = (("default", "random-full", "tpe-full"), ("default", "random-full"),
             ("default", "random-full", "tpe-full"))
    lines = []
    for name, need in zip(names, needs, strict=True):
        if any(m not in by for m in need):
            lines.append(f"target {name}: not measured (needs the methods {', '.join(need)})")
            continue
        d, r = by["default"], by["random-full"]
        if name.startswith("(a)"):
            t = by["tpe-full"]
            checks = [at_most(interval(d), interval(r, 0.5)), at_most(interval(d), interval(t))]
        elif name.startswith("(b)"):
            checks = [at_most(interval(d), interval(r)), d.reached >= r.reached]
        else:
            t = by["tpe-full"]
            better = min(interval(r), interval(t))
            checks = [at_most(interval(d), (1.1 * better[0], 1.1 * better[1]))]
        shown = [by[m] for m in need]
        lines.append(f"target {name}: {verdict(checks)} (median epochs "
                     + ", ".join(f"{x.method} {fmt(x.median, x.cap)} [{fmt(x.ci[0], x.cap)}, "
                                 f"{fmt(x.ci[1], x.cap)}], {x.reached}/{x.seeds} reached"
                                 for x in shown) + ")")
    return lines


# ---------------------------------------------------------------------------- outputs


def plot(results: list[RunResult], methods: Sequence[str], budget: int,
         objective: objectives.Objective, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(1, budget + 1)
    target = TARGET * abs(objective.optimum)
    for method in methods:
        runs = np.array([r.regrets for r in results if r.method == method])
        if runs.size == 0:
            continue
        runs = np.maximum(runs, target / 100 or 1e-6)  # zero regret on a log axis
        med = np.median(runs, axis=0)
        q1, q3 = np.percentile(runs, 25, axis=0), np.percentile(runs, 75, axis=0)
        (line,) = ax.plot(x, med, label=method, lw=1.8)
        ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="k", ls="--", lw=1, label="target: within 1 % of the optimum")
    se = objectives.noise_se(objective)
    if se:
        ax.axhline(se, color="k", ls=":", lw=1, label="within one seed's standard error")
    ax.set_yscale("log")
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel(f"regret of the incumbent (noise-free final {objectives.metric(objective)})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def regret_at(run: RunResult, fraction: float) -> float:
    """The regret after ``fraction`` of the budget's epochs."""
    return run.regrets[max(1, round(fraction * len(run.regrets))) - 1]


def json_report(results: list[RunResult], methods: Sequence[str], budget: int,
                objective: objectives.Objective) -> dict[str, Any]:
    with_se = objectives.noise_se(objective) is not None
    out: dict[str, Any] = {"objective": objective.name, "optimum": float(objective.optimum),
                           "budget_epochs": budget, "methods": {}}
    for method in methods:
        runs = []
        for r in sorted((r for r in results if r.method == method), key=lambda r: r.seed):
            run: dict[str, Any] = {"seed": r.seed, "epochs_to_target": r.reached_at,
                                   "regret": {str(f): regret_at(r, f) for f in (0.25, 0.5, 1.0)}}
            if with_se:
                run["epochs_to_target_se"] = r.reached_se_at
            runs.append(run)
        out["methods"][method] = runs
    return out


def describe(objective: objectives.Objective, draws: int = 400) -> list[str]:
    """What the objective is, in a few lines (share of the space near the optimum from
    ``draws`` uniform draws)."""
    s = objectives.sign(objective)
    finals = [s * (objective.optimum - objectives.true_final(objective, c))
              for c in objectives.draw(objective.space, draws, seed=1)]
    share = np.mean(np.array(finals) <= TARGET * abs(objective.optimum))
    lines = [f"objective {objective.name}: {objectives.metric(objective)} ({objective.mode}), "
             f"{objective.epochs} epochs per trial, optimum {objective.optimum:.4f}"
             + (f" at {format_config(objective.optimum_config)}"
                if hasattr(objective, "optimum_config") else "")
             + f"; {share * 100:.1f} % of {draws} uniform draws within 1 % of it"]
    se = objectives.noise_se(objective)
    if se is not None:
        lines.append(f"noise between training seeds: one standard error {se:.4f}")
    if objectives.val_videos(objective):
        lines.append(f"{objectives.val_videos(objective)} validation videos (agreement's "
                     "noise margin)")
    return lines


def format_config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in config.items())


def quality(args: argparse.Namespace) -> None:
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Without the file loggers the ResultGrid finds no per-trial metrics files and warns
    # about every trial; the results are read from the callback instead.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    total_start = time.perf_counter()
    source = objectives.parse(args.objective, args.table, args.metric)
    objectives.prepare(source)  # before ray.init: the workers inherit PYTHONPATH
    objective = objectives.load(source)
    floor = objectives.floor(objective)
    budget = args.budget_trials * objective.epochs
    about = describe(objective)
    print("\n".join(about))
    print(f"budget {budget} epochs ({args.budget_trials} x {objective.epochs}); "
          f"{REFERENCE} may go on to {budget * args.reference_extend}", flush=True)
    methods = args.methods
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    storage = Path(tempfile.mkdtemp(prefix="kdsearch-search-quality-"))
    results: list[RunResult] = []
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        if not args.smoke:  # start the worker processes once, outside any measured run
            time_noop(2 * args.concurrency, 1, args.reuse_actors, args.concurrency, storage,
                      "warmup")
        for seed in seeds:
            for method in methods:
                r = run_one(method, seed, args, storage, objective, source, floor)
                results.append(r)
                print(f"{method:<12} seed {seed:>2}: epochs to target "
                      f"{r.reached_at if r.reached_at is not None else '-':>5}"
                      + (f" (1 SE {r.reached_se_at if r.reached_se_at is not None else '-'})"
                         if objectives.noise_se(objective) is not None else "")
                      + f", trials {r.trials:>3} ({r.full} full), epochs used {r.epochs:>4}, "
                      f"told COMPLETE {r.told_complete} ({r.told_complete_early} before "
                      f"max_t), {r.mean_running:.1f} running, {r.wall_s:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    rows = summarise(results, methods, budget, args.reference_extend)
    with_se = objectives.noise_se(objective) is not None
    table, targets = table_lines(rows, budget, with_se), target_lines(rows)
    wall = time.perf_counter() - total_start
    print()
    print("\n".join(table))
    print("\n".join(targets))
    print(f"total wall time {wall:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"search_quality_{objective.name}{args.suffix}"
    title = (f"{objective.name}: {len(seeds)} seed{'s' * (len(seeds) > 1)}, budget {budget} "
             f"epochs, concurrency {args.concurrency}, grace {args.grace_period} rf "
             f"{args.reduction_factor:g}"
             + (f", {args.epoch_seconds:g} s per epoch" if args.epoch_seconds else ""))
    png = args.out / f"{stem}.png"
    plot(results, methods, budget, objective, png, title)
    md = args.out / f"{stem}.md"
    write_markdown(args, objective, about, table, targets, results, wall, md, png.name)
    written = [png, md]
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_report(results, methods, budget, objective),
                                        indent=1) + "\n")
        written.append(args.json)
    print("wrote " + ", ".join(map(str, written)))


def write_markdown(args: argparse.Namespace, objective: objectives.Objective,
                   about: list[str], table: list[str], targets: list[str],
                   results: list[RunResult], wall: float, path: Path, png: str) -> None:
    budget = args.budget_trials * objective.epochs
    command = "python benchmarks/search_quality.py " + " ".join(sys.argv[1:])
    early = {m: (sum(r.told_complete_early for r in results if r.method == m),
                 sum(r.told_complete for r in results if r.method == m)) for m in args.methods}
    default = Search()
    lines = [
        f"# Search quality on {objective.name}",
        "",
        f"`{command.strip()}` ({wall / 60:.1f} min wall on this machine). What is measured: "
        "the docstring of `benchmarks/search_quality.py`; the objectives: "
        "`benchmarks/objectives.py`.",
        "",
        *[f"- {line[0].upper()}{line[1:]}." for line in about],
        f"- {args.seeds} seed{'s' * (args.seeds > 1)}, budget {budget} epochs "
        f"({args.budget_trials} full trials) per run, {args.concurrency} trials at a time; "
        f"asha, random-asha, optuna-asha, agreement and hyperband with grace_period "
        f"{args.grace_period}, reduction_factor {args.reduction_factor:g}; default: sampler "
        f"{default.sampler}, scheduler {default.scheduler.model_dump()}. `{REFERENCE}` runs "
        f"without reaching the target go on up to {budget * args.reference_extend} epochs, "
        "so that the reference is measured, not censored.",
        "- Epochs to target: epochs consumed by all trials until the incumbent (best observed "
        "final value among trials that trained the full budget) is within 1 % of the "
        "optimum in noise-free terms; '> N': not within N epochs (censored, counted as +inf). "
        "The confidence interval: bootstrap over seeds, 2000 resamples.",
        f"- An epoch costs {args.epoch_seconds:g} s (`--epoch-seconds`, a sleep in the trial; "
        "0: free). running/result: trials RUNNING when a result arrived, averaged; below the "
        "concurrency when trials race through free epochs while others are still starting.",
        "",
        *table,
        "",
        *[f"- {t}" for t in targets],
        "",
        "Epochs to target per seed ('-': not within the run's epochs):",
        "",
        "| seed | " + " | ".join(args.methods) + " |",
        "|---|" + "---|" * len(args.methods),
        *[f"| {seed} | " + " | ".join(
            next((str(r.reached_at) if r.reached_at is not None else "-")
                 for r in results if r.method == m and r.seed == seed)
            for m in args.methods) + " |"
          for seed in sorted({r.seed for r in results})],
        "",
        "Trials the searcher told Optuna COMPLETE though a scheduler stopped them before the "
        "last epoch (all seeds): " + ", ".join(f"{m} {e} of {c}" for m, (e, c) in early.items())
        + ".",
        "",
        f"![median regret vs epochs]({png})",
        "",
        "Regret: the optimum minus the incumbent's noise-free final value (sign-adjusted for a "
        "minimised metric; the floor's regret before the first full-budget trial); lines are "
        "medians over seeds, bands the inter-quartile range.",
        "",
    ]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------- overhead


def make_noop(n_results: int) -> Callable[[dict[str, Any]], None]:
    def noop_trial(config: dict[str, Any]) -> None:
        for epoch in range(1, n_results + 1):
            tune.report({"epoch": epoch, "val_acc": 0.5})

    return noop_trial


def time_noop(trials: int, n_results: int, reuse: bool, concurrency: int,
              storage: Path, name: str) -> float:
    tuner = tune.Tuner(
        make_noop(n_results),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", num_samples=trials,
                                    max_concurrent_trials=concurrency, reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    assert len(results) == trials and not results.errors, "a no-op trial failed"
    shutil.rmtree(storage / name, ignore_errors=True)
    return wall


def overhead(args: argparse.Namespace) -> None:
    total_start = time.perf_counter()
    storage = Path(tempfile.mkdtemp(prefix="kdsearch-tune-overhead-"))
    n, trials = args.overhead_results, args.overhead_trials
    few = max(args.concurrency, trials // 4)
    shapes = ((few, 1), (trials, 1), (trials, n))
    times: dict[tuple[bool, int, int], list[float]] = {}
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        time_noop(4, 1, True, args.concurrency, storage, "warmup")  # worker start, imports
        for rep in range(args.overhead_repeats):
            for reuse in (True, False):
                for k, results in shapes:
                    t = time_noop(k, results, reuse, args.concurrency, storage,
                                  f"noop-{rep}-{reuse}-{k}-{results}")
                    times.setdefault((reuse, k, results), []).append(t)
                    print(f"repeat {rep}: reuse_actors={reuse!s:<5} {k:>3} trials x "
                          f"{results} results: {t:.2f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    lines = [f"| reuse_actors | fit() s: {few} x 1 / {trials} x 1 / {trials} x {n} | "
             f"s per trial, {trials} x {n} | s per result, {trials} x {n} | "
             "fixed s per fit() | per trial alone | per result alone |",
             "|---|---|---|---|---|---|---|"]
    walls: dict[bool, float] = {}
    for reuse in (True, False):
        t_few, t_1, t_n = (statistics.median(times[(reuse, k, r)]) for k, r in shapes)
        # t(k trials, r results) = fixed + k * (per_trial + r * per_result)
        per_result = (t_n - t_1) / (trials * (n - 1))
        per_trial = (t_1 - t_few) / (trials - few) - per_result
        fixed = t_1 - trials * (per_trial + per_result)
        walls[reuse] = t_n
        lines.append(f"| {reuse} | {t_few:.2f} / {t_1:.2f} / {t_n:.2f} | {t_n / trials:.3f} | "
                     f"{t_n / (trials * n):.4f} | {fixed:.1f} | {per_trial * 1000:.0f} ms | "
                     f"{per_result * 1000:.1f} ms |")
    faster = min(walls, key=lambda k: walls[k])
    verdict = (f"faster: reuse_actors={faster} ({walls[not faster] / walls[faster]:.2f}x less "
               f"wall for {trials} x {n})")
    wall = time.perf_counter() - total_start
    print()
    print("\n".join(lines))
    print(verdict)
    print(f"total wall time {wall:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"search_quality_overhead{args.suffix}.md"
    command = "python benchmarks/search_quality.py " + " ".join(sys.argv[1:])
    path.write_text("\n".join([
        "# Ray Tune's own overhead per trial and per result",
        "",
        f"`{command.strip()}` ({wall:.0f} s wall on this machine, {os.cpu_count()} CPUs, "
        f"`ray.init(num_cpus={args.concurrency})`, {args.concurrency} trials at a time, "
        f"median of {args.overhead_repeats} repeats). Trials do no work: N `tune.report` "
        "calls each, Tune's default searcher, no scheduler, Tune's default loggers. The "
        "split assumes t(k trials, N results) = fixed + k x (per trial + N x per result), "
        f"fitted to the three shapes ({few} x 1, {trials} x 1, {trials} x {n}).",
        "",
        *lines,
        "",
        verdict,
        "",
    ]))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- main


#: --smoke: two seeds, three methods, a budget of 2 full trials, 2 at a time; a tiny
#: overhead fit.
SMOKE = {"seeds": 2, "budget_trials": 2, "concurrency": 2, "reference_extend": 2,
         "methods": ["random-full", "tpe-full", "default"], "overhead_trials": 3,
         "overhead_results": 2, "overhead_repeats": 1}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    asha = Asha()
    what = p.add_mutually_exclusive_group()
    what.add_argument("--objective", help="sim (default), sim-faithful, or FILE.py:NAME (an "
                      "object with the attributes listed in benchmarks/objectives.py)")
    what.add_argument("--table", type=Path, help="a learning-curve table written by "
                      "benchmarks/record_curves.py, replayed by nearest recorded configuration")
    p.add_argument("--metric", choices=("val_acc", "val_loss"), default="val_acc",
                   help="with --table: the column (val_acc: max, val_loss: min)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--budget-trials", type=int, default=20,
                   help="epoch budget per run, in full trials (x the objective's epochs)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--grace-period", type=int, default=asha.grace_period)
    p.add_argument("--reduction-factor", type=float, default=asha.reduction_factor)
    agreement = Agreement.model_fields
    p.add_argument("--min-agreement", type=float,
                   default=agreement["min_agreement"].default, help="agreement's")
    p.add_argument("--min-pairs", type=int, default=agreement["min_pairs"].default,
                   help="agreement's")
    p.add_argument("--noise-margin", type=int, choices=(0, 1),
                   default=int(agreement["noise_margin"].default), help="agreement's")
    p.add_argument("--reference-extend", type=int, default=4,
                   help=f"{REFERENCE} may use this many times the budget")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--reuse-actors", type=int, choices=(0, 1), default=1)
    p.add_argument("--epoch-seconds", type=float, default=0.0,
                   help="sleep per replayed epoch (0: epochs cost nothing)")
    p.add_argument("--out", type=Path, help="where the pages and plots go (default docs/; "
                   "with --smoke a temporary folder, removed afterwards)")
    p.add_argument("--json", type=Path, help="also write the runs' numbers here")
    p.add_argument("--suffix", default="", help="appended to the output files' names")
    p.add_argument("--overhead", action="store_true", help="measure Tune's overhead instead")
    p.add_argument("--overhead-trials", type=int, default=60)
    p.add_argument("--overhead-results", type=int, default=32)
    p.add_argument("--overhead-repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny settings (2 seeds, random-full, "
                   "tpe-full and default, budget 2 full trials, concurrency 2; with "
                   "--overhead 3 trials x 2 results, 1 repeat): checks that the benchmark "
                   "runs, measures nothing; other options still apply")
    if p.parse_args(argv).smoke:  # the smoke settings, unless given on the command line
        p.set_defaults(**SMOKE)
    args = p.parse_args(argv)
    args.reuse_actors = bool(args.reuse_actors)
    if args.metric != "val_acc" and args.table is None:
        p.error("--metric applies to --table only")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run = overhead if args.overhead else quality
    if args.out is not None or not args.smoke:
        args.out = args.out or HERE.parent / "docs"
        run(args)
        return
    with tempfile.TemporaryDirectory(prefix="kdsearch-search-quality-smoke-") as tmp:
        args.out = Path(tmp)
        run(args)


if __name__ == "__main__":
    main()
