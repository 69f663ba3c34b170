"""Helpers of the search tests: a checkpointing objective and a Tune run of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ray import tune

from kdsearch.config import Search, SpaceConfig
from kdsearch.config.load import load_space
from kdsearch.search.sampler import make_searcher
from kdsearch.testing import TINY_SPACE, write_tiny_space

MAX_T = 4


def objective(config: dict[str, Any]) -> None:
    """Best at alpha 0.3, lr 1e-3; checkpoints each epoch so HyperBand can pause it."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    quality = 1 - abs(config["alpha"] - 0.3) - 0.1 * abs(config.get("lr", 1e-3) - 1e-3) * 1e3
    for epoch in range(start + 1, MAX_T + 1):
        folder = Path(tune.get_context().get_trial_dir()) / f"ckpt-{epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "epoch").write_text(str(epoch))
        tune.report({"epoch": epoch, "val_acc": quality * epoch / MAX_T},
                    checkpoint=tune.Checkpoint.from_directory(str(folder)))


def tune_run(search: Search, tmp_path: Path, scheduler: Any = None, num_samples: int = 6,
             warm: list[optuna.trial.FrozenTrial] | None = None) -> tuple[Any, Any]:
    searcher = make_searcher(search, MAX_T, warm or [])
    tuner = tune.Tuner(objective, tune_config=tune.TuneConfig(
        metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
        num_samples=num_samples, max_concurrent_trials=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    return tuner.fit(), searcher


def search_of(sampler: str, **space: Any) -> Search:
    space = space or {"alpha": {"type": "uniform", "low": 0.0, "high": 0.9},
                      "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    return Search.model_validate({"space": space, "sampler": sampler, "seed": 1})


def space_with(tmp_path: Path, **search: Any) -> SpaceConfig:
    write_tiny_space(tmp_path, search={**TINY_SPACE["search"], **search})
    return load_space(tmp_path / "space.yaml", cwd=tmp_path)

