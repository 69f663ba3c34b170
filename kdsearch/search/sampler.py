"""Optuna behind Ray Tune, told the truth about trials that ASHA stopped early.

Stock ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE whenever the last result holds
the metric, so a trial stopped by ASHA after one epoch counts as a finished trial with a
one-epoch value. TPE ranks COMPLETE trials by value alone, which makes it chase
configurations that merely start fast. Here a trial that trained fewer than ``max_t`` epochs
is PRUNED (its per-epoch values stay attached as intermediate values, and TPE ranks pruned
trials by how far they got, then by value), one that errored is FAIL, and only trials that
trained the full budget are COMPLETE.

With ``search.constraints``, each trial's constraint values (how far its student's cost is
over each limit; <= 0 when met) are set on its Optuna trial (``Trial.set_constraint``), where
TPE (the default) reads them: it ranks infeasible trials below every feasible one and samples
away from them. A student over a limit never trains: its trial is told PRUNED with no value,
so the samplers that ignore constraints (random, cmaes, qmc) never count it as a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from kdsearch.config import COST_METRICS, INFEASIBLE, Constraints, Search
from kdsearch.search.space import DefineByRun, make_sampler


class FidelityAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports early-stopped trials as PRUNED and errors as FAIL."""

    def __init__(self, *args: Any, max_t: int, time_attr: str = "epoch",
                 warm: Sequence[optuna.trial.FrozenTrial] = (),
                 constraints: Constraints | None = None, **kwargs: Any) -> None:
        self._warm = list(warm)  # read by _setup_study, which __init__ calls
        super().__init__(*args, **kwargs)
        self._constraints = constraints if constraints and constraints.limits() else None
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
        if isinstance(self.metric, list):
            return  # Optuna keeps no intermediate values of a multi-objective trial
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
        value = _value(result or {}, self.metric)
        trained = (result or {}).get(self._time_attr, 0)
        if self._constraints is not None and result and all(k in result for k in COST_METRICS):
            for name, over in self._constraints.over(result).items():
                ot_trial.set_constraint(name, over)
        if result and result.get(INFEASIBLE):
            self.study.tell(ot_trial, None, state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if not error and result:
            # Tune does not pass the result that made the scheduler stop a trial to
            # on_trial_result; record it here so a pruned trial keeps its last rung.
            self._report(trial_id, result)
        if error or value is None:
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


def _value(result: dict, metric: str | list[str]) -> float | list[float] | None:
    """The trial's value (one per objective), None when one is missing or not finite."""
    names = metric if isinstance(metric, list) else [metric]
    values = [result.get(name) for name in names]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    found = [float(v) for v in values if v is not None]
    return found if isinstance(metric, list) else found[0]


def make_searcher(search: Search, max_t: int, warm: Sequence[optuna.trial.FrozenTrial] = (),
                  kind: type[FidelityAwareOptunaSearch] = FidelityAwareOptunaSearch
                  ) -> FidelityAwareOptunaSearch:
    """The searcher of a search; ``kind`` lets a benchmark swap in another feedback rule."""
    objectives = search.objectives or []
    return kind(
        space=DefineByRun(search),
        metric=[o.metric for o in objectives] if objectives else search.metric,
        mode=[o.mode for o in objectives] if objectives else search.mode,
        sampler=make_sampler(search),  # seeded itself
        max_t=max_t,
        constraints=search.constraints,
        points_to_evaluate=[dict(p) for p in search.points_to_evaluate] or None,
        warm=warm,
    )
