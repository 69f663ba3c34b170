"""Search quality of the real Ray Tune + Optuna + ASHA stack on a simulated KD objective.

Run ``python benchmarks/search_quality.py --help``; its defaults reproduce
``docs/search_quality.md`` (not to the epoch: with several trials running, which one reports
first depends on timing, and so do ASHA's decisions and what the searcher has seen).

Nothing is trained: ``benchmarks/sim_objective.py`` is a learning-curve model over the demo
space file's space (alpha, temperature, lr, backbone) with a known optimum, and a trial's
"epoch" is one ``tune.report`` of its curve (by default no sleep, no compute). Everything
else is the real stack: one ``ray.init(num_cpus=--concurrency)``, then per method and seed
a ``tune.Tuner`` over a function trainable that reports ``{"epoch": e, "val_acc":
curve(config, e, noise)}`` for e = 1..``--max-t`` (the noise is seeded by the run's seed and
the trial's configuration, so the same configuration draws the same noise under every method
of one seed), metric ``val_acc``/max, ``max_concurrent_trials=--concurrency``,
``reuse_actors=--reuse-actors`` (default on, the faster setting of ``--overhead``).

Methods, all over the same space and seed (the seed is the sampler's and the noise's):

* ``random``: Optuna's RandomSampler through ``kdsearch.search.sampler.make_searcher``, no
  scheduler: every trial trains ``--max-t`` epochs;
* ``random+asha``: the same with ASHA;
* ``tpe``: ``make_searcher`` with TPE (Optuna's TPESampler defaults, seeded), no scheduler;
* ``optuna+asha``: Ray's stock ``OptunaSearch`` feedback with the same seeded TPESampler, and
  ASHA. It tells Optuna COMPLETE for trials ASHA stopped early. The searcher is
  ``stock_feedback.StockFeedbackOptunaSearch`` (``make_searcher`` with Ray's own
  ``on_trial_result`` and ``on_trial_complete``); given the same results it proposes the
  same configurations as ``ray.tune.search.optuna.OptunaSearch`` over the same distributions
  and sampler, which the documented runs used (``tests/test_benchmarks.py`` checks that);
* ``kdsearch+asha``: ``make_searcher`` (``FidelityAwareOptunaSearch``: PRUNED for trials ASHA
  stopped early) with TPE, and ASHA: kdsearch's default.

ASHA is ``ASHAScheduler(time_attr="epoch", max_t=--max-t, grace_period=--grace-period,
reduction_factor=--reduction-factor)``; the defaults (1, 2) are ``kdsearch.config.Asha``'s,
the demo space file sets grace_period 2.

What is counted, in the driver: a ``tune.Callback``'s ``on_trial_result`` counts every
reported result as one epoch consumed (so trials still running when the budget runs out
count too). After each result it records the incumbent: of the trials that reported epoch
``--max-t``, the one with the best *observed* (noisy) final val_acc, which is what a user of
the search would ship; its regret is ``optimum - true_final(config)`` (noise-free). Before
the first trial reaches ``--max-t`` the regret is ``optimum - 0.25`` (chance). A
``tune.Stopper`` whose ``stop_all`` reads the same counter ends the run when the epoch budget
(``--budget-trials * --max-t``) is used: every method gets the same budget. The measure is
the epochs consumed until the incumbent is within 1 % of the optimum (true_final >= 0.99 *
optimum); a run that never gets there is censored (counted as +inf in the median and shown
as "> budget"). Only for ``random`` (the reference of the first target) a run that has not
got there when the budget is used goes on, up to ``--reference-extend`` times the budget, so
that its epochs-to-target are measured rather than censored; its regret curve stops at the
common budget like the others.

Epochs cost nothing by default. Then a trial can race through all its epochs before the next
one has started, so fewer than ``--concurrency`` trials run at once (each run prints the mean
number of trials RUNNING when a result arrived) and the searcher knows more results than it
would with real training, where the running trials advance in lockstep. ``--epoch-seconds``
sleeps that long per epoch in the trial to restore the lockstep. Before the first run a
warm-up fit of no-op trials starts the worker processes.

Printed: one line per run; a table per method (seeds that got there, median epochs,
quartiles, min-max, median / random's median); the two targets (kdsearch+asha's median <=
1/5 of random's, and <= optuna+asha's), and per-seed wins of kdsearch+asha over optuna+asha.
Written: ``--out``/search_quality.png (median regret vs epochs, inter-quartile band, log
y) and ``--out``/search_quality.md.

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
"""

from __future__ import annotations

import argparse
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
# Trial processes unpickle the trainable, which imports sim_objective by name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
import ray  # noqa: E402
import sim_objective as sim  # noqa: E402
from ray import tune  # noqa: E402
from stock_feedback import stock_searcher  # noqa: E402

from kdsearch.config import Search  # noqa: E402
from kdsearch.search.sampler import make_searcher  # noqa: E402

METHODS = ("random", "random+asha", "tpe", "optuna+asha", "kdsearch+asha")
REFERENCE = "random"
TARGET = 0.99  # true_final >= TARGET * optimum


# ---------------------------------------------------------------------------- quality runs


@dataclass
class Ledger:
    """Every epoch of one run, counted in the driver."""

    max_t: int
    budget: int  # epochs every method gets
    limit: int  # epochs this run may use (> budget only for the extended reference)
    optimum: float
    epochs: int = 0
    trials: dict[str, int] = field(default_factory=dict)  # trial id: epochs it trained
    full: int = 0  # trials that reported epoch max_t
    best_observed: float = -math.inf
    regret: float = math.nan
    regrets: list[float] = field(default_factory=list)  # after epoch 1..budget
    reached_at: int | None = None
    running: int = 0  # sum over results of the trials RUNNING when it arrived

    def __post_init__(self) -> None:
        self.regret = self.optimum - sim.FLOOR

    def record(self, trial_id: str, config: dict[str, Any], result: dict[str, Any],
               running: int) -> None:
        self.epochs += 1
        self.running += running
        self.trials[trial_id] = max(self.trials.get(trial_id, 0), int(result.get("epoch", 0)))
        if int(result.get("epoch", 0)) >= self.max_t:
            self.full += 1
            if result["val_acc"] > self.best_observed:
                self.best_observed = float(result["val_acc"])
                self.regret = self.optimum - sim.true_final(config, self.max_t)
        if self.epochs <= self.budget:
            self.regrets.append(self.regret)
        if (self.reached_at is None and self.epochs <= self.limit
                and self.regret <= (1 - TARGET) * self.optimum):
            self.reached_at = self.epochs

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


def make_trainable(seed: int, max_t: int,
                   epoch_seconds: float = 0.0) -> Callable[[dict[str, Any]], None]:
    def simulated_trial(config: dict[str, Any]) -> None:
        import sim_objective

        rng = sim_objective.trial_rng(seed, config)
        for epoch in range(1, max_t + 1):
            if epoch_seconds:
                time.sleep(epoch_seconds)
            tune.report({"epoch": epoch,
                         "val_acc": sim_objective.curve(config, epoch, rng)})

    return simulated_trial


@dataclass
class RunResult:
    method: str
    seed: int
    reached_at: int | None
    regrets: list[float]
    trials: int
    full: int
    epochs: int
    told_complete: int  # trials the searcher told Optuna COMPLETE
    told_complete_early: int  # of those, stopped before max_t
    wall_s: float
    mean_running: float  # trials RUNNING when a result arrived, averaged over results


def _searcher(method: str, seed: int, max_t: int) -> Any:
    sampler = "random" if method.startswith("random") else "tpe"
    search = Search.model_validate({"space": sim.SPACE, "seed": seed, "sampler": sampler,
                                    "metric": "val_acc", "mode": "max"})
    if method == "optuna+asha":
        return stock_searcher(search, max_t)
    return make_searcher(search, max_t)


def run_one(method: str, seed: int, args: argparse.Namespace, storage: Path,
            optimum: float) -> RunResult:
    budget = args.budget_trials * args.max_t
    limit = budget * (args.reference_extend if method == REFERENCE else 1)
    ledger = Ledger(max_t=args.max_t, budget=budget, limit=limit, optimum=optimum)
    searcher = _searcher(method, seed, args.max_t)
    scheduler = None
    if method.endswith("+asha"):
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=args.max_t, grace_period=args.grace_period,
            reduction_factor=args.reduction_factor)
    tuner = tune.Tuner(
        make_trainable(seed, args.max_t, args.epoch_seconds),
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
            num_samples=limit + 4 * args.concurrency,  # never the limit: the stopper is
            max_concurrent_trials=args.concurrency, reuse_actors=args.reuse_actors),
        run_config=tune.RunConfig(
            name=f"{method.replace('+', '-')}-{seed}", storage_path=str(storage), verbose=0,
            stop=BudgetStopper(ledger), callbacks=[Counter(ledger)]),
    )
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    shutil.rmtree(storage / f"{method.replace('+', '-')}-{seed}", ignore_errors=True)
    complete = early = 0
    from optuna.trial import TrialState

    # Tune does not pass the result on which ASHA stops a trial to on_trial_result, so the
    # epochs a trial trained come from the ledger, not from Optuna's intermediate values.
    for trial_id, ot_trial in searcher._ot_trials.items():
        if searcher._ot_study.trials[ot_trial.number].state == TrialState.COMPLETE:
            complete += 1
            early += ledger.trials.get(trial_id, 0) < args.max_t
    regrets = ledger.regrets + [ledger.regret] * (budget - len(ledger.regrets))
    return RunResult(method, seed, ledger.reached_at, regrets[:budget], len(ledger.trials),
                     ledger.full, ledger.epochs, complete, early, wall,
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


def epochs_of(runs: list[RunResult]) -> list[float]:
    return [math.inf if r.reached_at is None else float(r.reached_at) for r in runs]


def fmt(value: float, cap: int) -> str:
    return f"> {cap}" if math.isinf(value) else f"{value:.0f}"


@dataclass
class Row:
    method: str
    reached: int
    seeds: int
    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    cap: int  # the epochs a run of this method could use
    trials: float  # median trials per run
    full: float  # median trials that reached max_t
    running: float  # mean trials RUNNING when a result arrived


def summarise(results: list[RunResult], methods: Sequence[str], budget: int,
              extend: int) -> list[Row]:
    rows = []
    for method in methods:
        runs = [r for r in results if r.method == method]
        eps = epochs_of(runs)
        rows.append(Row(method, sum(math.isfinite(e) for e in eps), len(runs),
                        quantile(eps, 0.5), quantile(eps, 0.25), quantile(eps, 0.75),
                        min(eps), max(eps), budget * (extend if method == REFERENCE else 1),
                        statistics.median(r.trials for r in runs),
                        statistics.median(r.full for r in runs),
                        statistics.mean(r.mean_running for r in runs)))
    return rows


def table_lines(rows: list[Row]) -> list[str]:
    ref = next((r for r in rows if r.method == REFERENCE), None)
    lines = ["| method | reached | median epochs | IQR | min – max | vs random | trials/run "
             "| full-budget trials/run | running/result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "n/a" if ref is None else ratio_text(r, ref)
        lines.append(f"| {r.method} | {r.reached}/{r.seeds} | {fmt(r.median, r.cap)} | "
                     f"{fmt(r.q1, r.cap)} – {fmt(r.q3, r.cap)} | {fmt(r.lo, r.cap)} – "
                     f"{fmt(r.hi, r.cap)} | {ratio} | {r.trials:.0f} | {r.full:.0f} | "
                     f"{r.running:.1f} |")
    return lines


def ratio_text(row: Row, ref: Row) -> str:
    if math.isinf(ref.median):
        return "n/a"
    if math.isinf(row.median):
        return f"> {row.cap / ref.median:.2f}"
    return f"{row.median / ref.median:.2f}"


def target_lines(rows: list[Row], results: list[RunResult]) -> list[str]:
    by = {r.method: r for r in rows}
    lines: list[str] = []
    kd = by.get("kdsearch+asha")
    if kd is None:
        return lines
    ref, stock = by.get(REFERENCE), by.get("optuna+asha")
    if ref is not None:
        goal = ref.median / 5
        if math.isinf(ref.median):
            ok = kd.median <= ref.cap / 5
            verdict = "PASS" if ok else "UNDECIDED (reference censored)"
        else:
            verdict = "PASS" if kd.median <= goal else "MISS"
        lines.append(f"target 1, kdsearch+asha median <= 1/5 of random's: {verdict} "
                     f"(kdsearch+asha {fmt(kd.median, kd.cap)} epochs, random "
                     f"{fmt(ref.median, ref.cap)}, 1/5 = {fmt(goal, ref.cap // 5)}, ratio "
                     f"{ratio_text(kd, ref)})")
    if stock is not None:
        if math.isinf(kd.median) and math.isinf(stock.median):
            verdict = "UNDECIDED (both medians censored)"
        else:
            verdict = "PASS" if kd.median <= stock.median else "MISS"
        kd_runs = {r.seed: r for r in results if r.method == "kdsearch+asha"}
        st_runs = {r.seed: r for r in results if r.method == "optuna+asha"}
        wins = ties = losses = 0
        for seed, k in kd_runs.items():
            if seed not in st_runs:
                continue
            a, b = epochs_of([k, st_runs[seed]])
            wins, ties, losses = wins + (a < b), ties + (a == b), losses + (a > b)
        lines.append(f"target 2, kdsearch+asha no later than optuna+asha: {verdict} "
                     f"(medians {fmt(kd.median, kd.cap)} vs {fmt(stock.median, stock.cap)} "
                     f"epochs; per seed kdsearch earlier/same/later: {wins}/{ties}/{losses})")
    return lines


def plot(results: list[RunResult], methods: Sequence[str], budget: int, optimum: float,
         path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(1, budget + 1)
    for method in methods:
        runs = np.array([r.regrets for r in results if r.method == method])
        if runs.size == 0:
            continue
        runs = np.maximum(runs, 1e-4)
        med = np.median(runs, axis=0)
        q1, q3 = np.percentile(runs, 25, axis=0), np.percentile(runs, 75, axis=0)
        (line,) = ax.plot(x, med, label=method, lw=1.8)
        ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.15)
    ax.axhline((1 - TARGET) * optimum, color="k", ls="--", lw=1,
               label="target: within 1 % of the optimum")
    ax.set_yscale("log")
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel("regret of the incumbent (optimum - true final acc.)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def quality(args: argparse.Namespace) -> None:
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Without the file loggers the ResultGrid finds no per-trial metrics files and warns
    # about every trial; the results are read from the callback instead.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    total_start = time.perf_counter()
    opt_config, optimum = sim.optimum(args.max_t)
    props = sim.describe(args.max_t)
    budget = args.budget_trials * args.max_t
    print(f"optimum {optimum:.4f} at {opt_config}; {props['within_1pct'] * 100:.1f} % of the "
          f"space within 1 %; budget {budget} epochs ({args.budget_trials} x {args.max_t}); "
          f"random may go on to {budget * args.reference_extend}", flush=True)
    methods = args.methods
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    storage = Path(tempfile.mkdtemp(prefix="kdsearch-search-quality-"))
    results: list[RunResult] = []
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        # Start the worker processes once, outside any measured run.
        time_noop(2 * args.concurrency, 1, args.reuse_actors, args.concurrency, storage,
                  "warmup")
        for seed in seeds:
            for method in methods:
                r = run_one(method, seed, args, storage, optimum)
                results.append(r)
                print(f"{method:<14} seed {seed:>2}: epochs to target "
                      f"{r.reached_at if r.reached_at is not None else '-':>5}, trials "
                      f"{r.trials:>3} ({r.full} full), epochs used {r.epochs:>4}, told "
                      f"COMPLETE {r.told_complete} ({r.told_complete_early} before max_t), "
                      f"{r.mean_running:.1f} running, {r.wall_s:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    rows = summarise(results, methods, budget, args.reference_extend)
    table, targets = table_lines(rows), target_lines(rows, results)
    wall = time.perf_counter() - total_start
    print()
    print("\n".join(table))
    print("\n".join(targets))
    print(f"total wall time {wall:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"{len(seeds)} seed{'s' * (len(seeds) > 1)}, budget {budget} epochs, "
             f"concurrency {args.concurrency}, ASHA grace {args.grace_period} rf "
             f"{args.reduction_factor:g}"
             + (f", {args.epoch_seconds:g} s per epoch" if args.epoch_seconds else ""))
    png = args.out / f"search_quality{args.suffix}.png"
    plot(results, methods, budget, optimum, png, title)
    write_markdown(args, rows, table, targets, results, props, opt_config, optimum, wall,
                   args.out / f"search_quality{args.suffix}.md", png.name)
    print(f"wrote {png} and {args.out / f'search_quality{args.suffix}.md'}")


def write_markdown(args: argparse.Namespace, rows: list[Row], table: list[str],
                   targets: list[str], results: list[RunResult], props: dict[str, float],
                   opt_config: dict[str, Any], optimum: float, wall: float, path: Path,
                   png: str) -> None:
    budget = args.budget_trials * args.max_t
    command = "python benchmarks/search_quality.py " + " ".join(sys.argv[1:])
    early = {m: (sum(r.told_complete_early for r in results if r.method == m),
                 sum(r.told_complete for r in results if r.method == m)) for m in args.methods}
    lines = [
        "# Search quality on a simulated KD objective",
        "",
        f"`{command.strip()}` ({wall / 60:.1f} min wall on this machine). What is measured: "
        "the docstring of `benchmarks/search_quality.py`; the objective: "
        "`benchmarks/sim_objective.py`.",
        "",
        f"- Optimum {optimum:.4f} (true final val_acc at {args.max_t} epochs) at "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in opt_config.items())
        + f"; {props['within_1pct'] * 100:.1f} % of the space is within 1 % of it.",
        f"- {args.seeds} seed{'s' * (args.seeds > 1)}, budget {budget} epochs "
        f"({args.budget_trials} full trials) per run, {args.concurrency} trials at a time, "
        f"ASHA grace_period {args.grace_period}, "
        f"reduction_factor {args.reduction_factor:g} (the demo space file uses 2, 2). "
        f"`random` runs without reaching the target go on up to "
        f"{budget * args.reference_extend} epochs, so that the reference is measured, "
        "not censored.",
        "- Epochs to target: epochs consumed by all trials until the incumbent (best observed "
        "final val_acc among trials that trained the full budget) is within 1 % of the "
        "optimum in noise-free terms; '> N': not within N epochs (censored, counted as +inf).",
        f"- An epoch costs {args.epoch_seconds:g} s (`--epoch-seconds`, a sleep in the trial; "
        "0: free). running/result: "
        "trials RUNNING when a result arrived, averaged; below the concurrency when trials "
        "race through free epochs while others are still starting.",
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
        "Trials the searcher told Optuna COMPLETE though ASHA stopped them before max_t "
        "(all seeds): " + ", ".join(f"{m} {e} of {c}" for m, (e, c) in early.items()) + ".",
        "",
        f"![median regret vs epochs]({png})",
        "",
        "Regret: optimum minus the incumbent's noise-free final accuracy (optimum - 0.25 "
        "before the first full-budget trial); lines are medians over seeds, bands the "
        "inter-quartile range.",
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


#: --smoke: one seed, a budget of 2 trials of 4 epochs, 2 at a time; a tiny overhead fit.
SMOKE = {"seeds": 1, "budget_trials": 2, "max_t": 4, "concurrency": 2, "reference_extend": 2,
         "overhead_trials": 3, "overhead_results": 2, "overhead_repeats": 1}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--budget-trials", type=int, default=20,
                   help="epoch budget per run, in full trials (x --max-t epochs)")
    p.add_argument("--max-t", type=int, default=sim.MAX_T)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=2)
    p.add_argument("--reference-extend", type=int, default=4,
                   help="random (full budget) may use this many times the budget")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--reuse-actors", type=int, choices=(0, 1), default=1)
    p.add_argument("--epoch-seconds", type=float, default=0.0,
                   help="sleep per simulated epoch (0: epochs cost nothing)")
    p.add_argument("--out", type=Path, help="where the pages and plots go (default docs/; "
                   "with --smoke a temporary folder, removed afterwards)")
    p.add_argument("--suffix", default="", help="appended to the output files' names")
    p.add_argument("--overhead", action="store_true", help="measure Tune's overhead instead")
    p.add_argument("--overhead-trials", type=int, default=60)
    p.add_argument("--overhead-results", type=int, default=32)
    p.add_argument("--overhead-repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny settings (1 seed, budget 2 x 4 "
                   "epochs, concurrency 2; with --overhead 3 trials x 2 results, 1 repeat): "
                   "checks that the benchmark runs, measures nothing; other options still "
                   "apply")
    if p.parse_args(argv).smoke:  # the smoke settings, unless given on the command line
        p.set_defaults(**SMOKE)
    args = p.parse_args(argv)
    args.reuse_actors = bool(args.reuse_actors)
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
