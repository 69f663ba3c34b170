"""A live line of progress for the terminal, in place of Ray's own status tables."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from kdsearch.track.schema import Status, ended_status, error_message, ranked


class Progress(Callback):
    """Counts trials by state and keeps the best completed trial, ranked as everywhere else
    (its value at the last epoch); redraws one line on a terminal. The clock counts from
    ``start`` (``time.monotonic()``; default: now), the start of the whole search."""

    def __init__(self, metric: str, mode: str, max_t: int, total: int,
                 stream: TextIO | None = None, every: float = 1.0,
                 start: float | None = None) -> None:
        self.metric, self.mode, self.max_t, self.total = metric, mode, max_t, total
        # sys.stderr as it is now, not as it was when this module was imported (a caller or
        # a test harness may have replaced it since).
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if self.tty else 30.0
        self.start = time.monotonic() if start is None else start
        self.last_draw = 0.0
        self.counts = {s.value: 0 for s in (Status.COMPLETED, Status.PRUNED, Status.FAILED,
                                            Status.INFEASIBLE)}
        self.last: dict[str, float] = {}  # trial id -> value at its latest epoch
        self.ended: dict[str, str] = {}  # trial id -> status, once it ended
        self.running = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a stream may not pickle.
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.start)
        c = self.counts
        best = self.best()
        what = f"best completed {self.metric} at the last epoch"
        best_text = f"{what} {best[1]:.3f} ({best[0]})" if best else f"{what} -"
        return (f"[{elapsed // 60:02d}:{elapsed % 60:02d}] trials {sum(c.values())}/{self.total}"
                f" done: {self.running} running, {c['completed']} completed, {c['pruned']} "
                f"pruned, {c['failed']} failed"
                + (f", {c['infeasible']} infeasible" if c.get("infeasible") else "")
                + f" | {best_text}")

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < self.every:
            return
        self.last_draw = now
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def say(self, message: str) -> None:
        """A message on its own line, above the live line."""
        self.stream.write(("\r\033[K" if self.tty else "") + message + "\n")
        self.draw(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.running = sum(t.status == "RUNNING" for t in trials)
        self.draw()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get(self.metric)
        if value is not None:
            self.last[trial.trial_id] = float(value)

    def best(self) -> tuple[str, float] | None:
        """(trial id, value) of the best completed trial, by the one ranking of trials
        (kdsearch.track.schema.ranked): the value at its last epoch."""
        done = [t for t, status in self.ended.items()
                if status == Status.COMPLETED and t in self.last]
        top = ranked(done, mode=self.mode, status=lambda t: Status.COMPLETED,
                     value=lambda t: self.last[t], trial_id=lambda t: t)
        if not top or not math.isfinite(self.last[top[0]]):
            return None
        return top[0], self.last[top[0]]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running = sum(t.status == "RUNNING" and t is not trial for t in trials)
        last = trial.last_result or {}
        if last.get(self.metric) is not None:
            self.last[trial.trial_id] = float(last[self.metric])
        status = ended_status(last, self.max_t)
        self.ended[trial.trial_id] = status.value
        self.counts[status.value] = self.counts.get(status.value, 0) + 1
        self.draw(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.counts[Status.FAILED.value] += 1
        self.ended[trial.trial_id] = Status.FAILED.value
        self.running = sum(t.status == "RUNNING" and t is not trial for t in trials)
        self.say(f"trial {trial.trial_id} failed: {error_message(trial)}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.running = 0
        self.draw(force=True)
        if self.tty:
            self.stream.write("\n")
