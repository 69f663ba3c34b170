"""Early stopping that keeps the winners: asynchronous successive halving that stops a trial at
a rung only when the search has seen that rung rank trials as the final epoch does, and only
when the trial is clearly, beyond the metric's noise, below the rung's cutoff.

Plain ASHA stops every trial below the top ``1 / reduction_factor`` of its rung, trusting
that an early epoch ranks trials as the last one would. On distillation curves it often does
not (a high learning rate starts fast and ends worse; a high KD weight starts slow). Here:

- **Rung agreement** (the rung-consistency idea of Hyper-Tune, applied to stopping). For each
  rung, the Spearman correlation between trials' values at the rung and at the final epoch is
  measured over the trials that reached both. A rung stops nothing until ``min_pairs`` trials
  have been measured at both and the correlation is at least ``min_agreement``; where it never
  is, every trial trains to the end, as without a scheduler.
- **Noise margin.** A trial within ``margin(value)`` of the cutoff is let through: on ``n``
  validation videos one standard error of an accuracy ``p`` is sqrt(p (1 - p) / n), and a
  difference of that size is not a ranking.

Each decision is counted per rung (``decisions``): how many trials were stopped, let through
because the rung's ranking was not yet known to agree with the final one, let through within
the noise margin, or kept as above the cutoff, with the latest correlation and cutoff.
Stopped trials end with fewer than ``max_t`` epochs and reach Optuna as PRUNED
(``kdsearch.search.sampler``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from kdsearch.track.schema import rank_correlation, standard_error


@dataclasses.dataclass
class RungRecord:
    """What one rung saw and decided."""

    epoch: int
    values: dict[str, float] = dataclasses.field(default_factory=dict)  # trial -> signed value
    stopped: int = 0
    unknown: int = 0  # let through: the rung's agreement with the final epoch not established
    within_noise: int = 0  # let through: below the cutoff by less than the noise margin
    kept: int = 0  # at or above the cutoff
    agreement: float | None = None  # the last measured rank correlation with the final epoch
    pairs: int = 0  # trials it was measured over
    cutoff: float | None = None  # the last cutoff, in the metric's own sign


@dataclasses.dataclass(frozen=True)
class NoiseMargin:
    """One binomial standard error of ``metric`` at a value, on ``n_val`` validation videos
    (0 where there is no estimate); picklable, as Tune saves its scheduler."""

    metric: str
    n_val: int | None

    def __call__(self, value: float) -> float:
        return standard_error(self.metric, value, self.n_val) or 0.0


def rungs_of(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which trials are judged: grace_period * reduction_factor**k < max_t."""
    rungs, epoch = [], float(grace_period)
    while epoch < max_t:
        rungs.append(int(round(epoch)))
        epoch *= reduction_factor
    return sorted(set(rungs))


class AgreementASHA(FIFOScheduler):
    """Asynchronous successive halving guarded by rung agreement and a noise margin.

    ``margin(value)`` is the noise of the metric at ``value`` (e.g. one binomial standard
    error); None or zero: no margin.
    """

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int = 1,
                 reduction_factor: float = 2, min_agreement: float = 0.5, min_pairs: int = 5,
                 margin: Callable[[float], float] | None = None,
                 time_attr: str = "epoch") -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self._metric, self._mode = metric, mode
        self.sign = 1.0 if mode == "max" else -1.0
        self.max_t, self.time_attr = max_t, time_attr
        self.reduction_factor = reduction_factor
        self.min_agreement, self.min_pairs = min_agreement, min_pairs
        self.margin = margin
        self.rungs = [RungRecord(e) for e in rungs_of(grace_period, reduction_factor, max_t)]
        self.finals: dict[str, float] = {}  # trial -> signed value at max_t

    # -- Tune's hooks ---------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None,
                              **spec: Any) -> bool:
        return True  # given at construction; Tune's values are the same

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        epoch, value = self._read(result)
        if epoch is not None and value is not None and epoch >= self.max_t:
            self.finals[trial.trial_id] = value

    def debug_string(self) -> str:
        return "AgreementASHA: " + "; ".join(
            f"epoch {r.epoch}: stopped {r.stopped}, agreement {r.agreement}" for r in self.rungs)

    # -- the rule -------------------------------------------------------------------------

    def _read(self, result: dict) -> tuple[int | None, float | None]:
        epoch, value = result.get(self.time_attr), result.get(self._metric)
        if epoch is None or value is None:
            return None, None
        value = float(value)
        return int(epoch), (self.sign * value if math.isfinite(value) else -math.inf)

    def decide(self, trial_id: str, result: dict) -> str:
        """CONTINUE or STOP for ``trial_id`` after the epoch in ``result``."""
        epoch, value = self._read(result)
        if epoch is None or value is None:
            return TrialScheduler.CONTINUE
        if epoch >= self.max_t:
            self.finals[trial_id] = value
            return TrialScheduler.STOP
        for rung in self.rungs:
            if rung.epoch == epoch and trial_id not in rung.values:
                return self._judge(rung, trial_id, value)
        return TrialScheduler.CONTINUE

    def _judge(self, rung: RungRecord, trial_id: str, value: float) -> str:
        earlier = list(rung.values.values())
        rung.values[trial_id] = value
        pairs = [t for t in rung.values if t in self.finals]
        rung.pairs = len(pairs)
        rung.agreement = rank_correlation([rung.values[t] for t in pairs],
                                  [self.finals[t] for t in pairs])
        if not earlier:
            rung.kept += 1
            return TrialScheduler.CONTINUE
        cutoff = float(np.nanpercentile(earlier, (1 - 1 / self.reduction_factor) * 100))
        rung.cutoff = self.sign * cutoff
        if value >= cutoff:
            rung.kept += 1
            return TrialScheduler.CONTINUE
        if (rung.pairs < self.min_pairs or rung.agreement is None
                or rung.agreement < self.min_agreement):
            rung.unknown += 1
            return TrialScheduler.CONTINUE
        noise = self.margin(self.sign * cutoff) if self.margin is not None else 0.0
        if noise and cutoff - value <= noise:
            rung.within_noise += 1
            return TrialScheduler.CONTINUE
        rung.stopped += 1
        return TrialScheduler.STOP

    def decisions(self) -> list[dict[str, Any]]:
        """Per rung: epoch, stopped, unknown, within_noise, kept, agreement, pairs, cutoff."""
        return [{k: v for k, v in dataclasses.asdict(r).items() if k != "values"}
                for r in self.rungs]
