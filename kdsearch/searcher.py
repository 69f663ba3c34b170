"""Optuna behind Ray Tune, told the truth about trials that ASHA stopped early.

Stock ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE whenever the last result holds
the metric, so a trial stopped by ASHA after one epoch counts as a finished trial with a
one-epoch value. TPE ranks COMPLETE trials by value alone, which makes it chase
configurations that merely start fast. Here a trial that trained fewer than ``max_t`` epochs
is PRUNED (its per-epoch values stay attached as intermediate values, and TPE ranks pruned
trials by how far they got, then by value), one that errored is FAIL, and only trials that
trained the full budget are COMPLETE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from kdsearch.config import Choice, IntRange, LogUniform, Search

optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_space(search: Search) -> dict[str, BaseDistribution]:
    """The space file's distributions as Optuna distributions (the one place they map)."""
    space: dict[str, BaseDistribution] = {}
    for name, dist in search.space.items():
        if isinstance(dist, Choice):
            space[name] = CategoricalDistribution(list(dist.values))
        elif isinstance(dist, IntRange):
            space[name] = IntDistribution(dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            space[name] = FloatDistribution(dist.low, dist.high,
                                            log=isinstance(dist, LogUniform))
    return space


def make_sampler(search: Search) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":  # validation refused choices and conditions
        return optuna.samplers.CmaEsSampler(seed=search.seed)
    if search.sampler == "qmc":  # choices are drawn at random beside the Sobol sequence
        return optuna.samplers.QMCSampler(seed=search.seed, warn_independent_sampling=False)
    # group=True: with conditional settings, TPE models each group of settings that occur
    # together instead of falling back to independent sampling.
    conditional = any(d.when for d in search.space.values())
    return optuna.samplers.TPESampler(seed=search.seed, multivariate=True, group=conditional,
                                      constant_liar=True)


class DefineByRun:
    """The space as Optuna's define-by-run function (conditional settings sampled only when
    their condition holds). A class, not a closure, so Tune can pickle the searcher."""

    def __init__(self, search: Search) -> None:
        self.distributions = optuna_space(search)
        self.conditions = {name: dict(d.when) for name, d in search.space.items() if d.when}

    def __call__(self, trial: optuna.Trial) -> None:
        sampled: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            condition = self.conditions.get(name, {})
            if all(sampled.get(parent) in values for parent, values in condition.items()):
                sampled[name] = _suggest(trial, name, dist)


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    # The public suggest_* calls: Tune's captor records only those.
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def warm_trials(search: Search, points: Sequence[tuple[dict[str, Any], float]]
                ) -> list[optuna.trial.FrozenTrial]:
    """Completed (params, value) pairs of an earlier search as COMPLETE Optuna trials; values
    outside this space are dropped from a trial, and trials left with none are skipped."""
    space = optuna_space(search)
    trials = []
    for params, value in points:
        parsed = {n: _parse(space[n], v) for n, v in params.items() if n in space}
        kept = {n: f for n, v in parsed.items() if (f := fitted(space[n], v)) is not None}
        if kept and math.isfinite(value):
            trials.append(optuna.trial.create_trial(
                params=kept, distributions={n: space[n] for n in kept}, value=value,
                user_attrs={"warm_start": True}))
    return trials


def _parse(dist: BaseDistribution, value: Any) -> Any:
    """A value as ``dist`` holds it; MLflow gives params back as strings."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(dist, CategoricalDistribution):
            return next((c for c in dist.choices if str(c) == value), None)
        if isinstance(dist, IntDistribution):
            return int(float(value))
        return float(value)
    except ValueError:
        return None


def fitted(dist: BaseDistribution, value: Any) -> Any:
    """``value`` as ``dist`` stores it, or None when it is missing or outside ``dist``."""
    if value is None:
        return None
    try:
        internal = dist.to_internal_repr(value)
        return dist.to_external_repr(internal) if dist._contains(internal) else None
    except (ValueError, TypeError, OverflowError):
        return None


class FidelityAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports early-stopped trials as PRUNED and errors as FAIL."""

    def __init__(self, *args: Any, max_t: int, time_attr: str = "epoch",
                 warm: Sequence[optuna.trial.FrozenTrial] = (), **kwargs: Any) -> None:
        self._warm = list(warm)  # read by _setup_study, which __init__ calls
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._time_attr = time_attr
        self._reported: dict[str, set[int]] = {}

    def _setup_study(self, mode: str | list) -> None:  # type: ignore[override]
        super()._setup_study(mode)
        for trial in self._warm:  # told once: a restored searcher brings its own study
            self.study.add_trial(trial)
        self._warm = []

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        # Step = epoch (not Tune's training_iteration), so a resumed trial keeps its steps.
        value, step = result.get(self.metric), result.get(self._time_attr)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or value is None or step is None or not math.isfinite(value):
            return
        reported = self._reported.setdefault(trial_id, set())
        if int(step) not in reported:
            reported.add(int(step))
            ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        trained = (result or {}).get(self._time_attr, 0)
        if not error and result:
            # Tune does not pass the result that made the scheduler stop a trial to
            # on_trial_result; record it here so a pruned trial keeps its last rung.
            self._report(trial_id, result)
        if error or value is None or not math.isfinite(value):
            self.study.tell(ot_trial, None, state=TrialState.FAIL)
        elif trained < self._max_t:
            self.study.tell(ot_trial, None, state=TrialState.PRUNED)
        else:
            self.study.tell(ot_trial, value, state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        assert self._ot_study is not None, "the study exists once Tune set the searcher up"
        return self._ot_study


class StockFeedbackOptunaSearch(FidelityAwareOptunaSearch):
    """Ray's own feedback: a trial a scheduler stopped reaches Optuna as COMPLETE with its
    last value. Only for comparison (``search.fidelity_aware: false``)."""

    on_trial_result = OptunaSearch.on_trial_result  # type: ignore[assignment]
    on_trial_complete = OptunaSearch.on_trial_complete  # type: ignore[assignment]


def make_searcher(search: Search, max_t: int,
                  warm: Sequence[optuna.trial.FrozenTrial] = ()) -> FidelityAwareOptunaSearch:
    kind = FidelityAwareOptunaSearch if search.fidelity_aware else StockFeedbackOptunaSearch
    return kind(
        space=DefineByRun(search),
        metric=search.metric,
        mode=search.mode,
        sampler=make_sampler(search),  # seeded itself
        max_t=max_t,
        points_to_evaluate=[dict(p) for p in search.points_to_evaluate] or None,
        warm=warm,
    )
