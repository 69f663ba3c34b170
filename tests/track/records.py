"""Trial records of a made-up search, as the report tests use them."""

from __future__ import annotations

from pathlib import Path

from kdsearch.config import Search
from kdsearch.track.report import TrialRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FULL_SPACE = {
    "alpha": {"type": "uniform", "low": 0.0, "high": 1.0},
    "temperature": {"type": "loguniform", "low": 1.0, "high": 20.0},
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    "backbone": {"type": "choice", "values": ["tiny3d", "x3d_xs"]},
}
ALL_PLOTS = {"optimization_history", "learning_curves", "epoch_agreement",
             "parallel_coordinate", "param_importances", "alpha_temperature"}


def make_search(space: dict | None = None, **kwargs: str) -> Search:
    return Search.model_validate({"space": FULL_SPACE if space is None else space, **kwargs})


def params(i: int) -> dict:
    return {"alpha": 0.1 + 0.07 * i, "temperature": 1.5 + 1.3 * i, "lr": 1e-3 * (1 + i),
            "backbone": ("tiny3d", "x3d_xs")[i % 2]}


def completed(trial_id: str, final: float, i: int, epochs: int = 10) -> TrialRecord:
    history = {e: final * e / epochs for e in range(1, epochs + 1)}
    metrics = {"val_acc": final, "best_val_acc": final, "val_class_acc.kick": final / 2}
    return TrialRecord(trial_id, f"run-{trial_id}", "completed", epochs, params(i), metrics,
                       history)


def pruned(trial_id: str, last: float, epochs: int, i: int) -> TrialRecord:
    history = {e: last * e / epochs for e in range(1, epochs + 1)}
    return TrialRecord(trial_id, f"run-{trial_id}", "pruned", epochs, params(i),
                       {"val_acc": last, "val_macro_f1": last - 0.1}, history)


FINALS = {"c0": 0.61, "c1": 0.74, "c2": 0.52, "c3": 0.80, "c4": 0.67, "c5": 0.45}
RECORDS = [
    *(completed(tid, final, i) for i, (tid, final) in enumerate(FINALS.items())),
    pruned("p0", 0.30, 2, 6), pruned("p1", 0.40, 4, 7), pruned("p2", 0.45, 4, 8),
    pruned("p3", 0.35, 2, 9),
    # Failed before sampling finished: one param only, out of its range, no run, no metrics.
    TrialRecord("f0", None, "failed", 0, {"alpha": 1.5, "lr": 0.01}, {}, {}),
    TrialRecord("f1", "run-f1", "failed", 1, {}, {}, {1: 0.2}),
]
BEST_FIRST = ["c3", "c1", "c4", "c0", "c2", "c5", "p2", "p1", "p3", "p0", "f1", "f0"]


def written_plots(paths: list[Path]) -> set[str]:
    return {p.stem for p in paths if p.suffix == ".png"}
