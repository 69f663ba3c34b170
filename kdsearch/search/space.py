"""The space file's search space as Optuna sees it: distributions, the sampler, the
define-by-run function of conditional settings, and earlier trials told to a sampler.

The one place where ``search.space`` maps onto Optuna. No Ray here: the report
(:mod:`kdsearch.track.report`) rebuilds studies with it.
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
