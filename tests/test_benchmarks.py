"""The benchmarks in benchmarks/ still run: each one's --smoke (the real code path on tiny
settings, outputs in tmp_path) as a subprocess, checked on what it prints or writes; and the
stock-feedback searcher the benchmarks compare against."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from stock_feedback import StockFeedbackOptunaSearch, stock_searcher  # noqa: E402

METHODS = ("random", "random+asha", "tpe", "optuna+asha", "kdsearch+asha")


def smoke(script: str, *args: str, timeout: float = 240) -> str:
    """``python benchmarks/<script> --smoke ARGS`` from the repository root; its output."""
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} --smoke failed:\n{output[-4000:]}"
    return done.stdout


def test_cache_smoke(tmp_path: Path) -> None:
    out = smoke("cache.py", "--root", str(tmp_path / "root"), "--json",
                str(tmp_path / "cache.json"))
    assert re.search(r"^small3d -> tiny3d( +[\d.]+){6}\*? +[\d.]+$", out, re.M), out
    assert "(b) and (c) training losses agree" in out
    saved = json.loads((tmp_path / "cache.json").read_text())
    (pair,) = saved["pairs"]
    assert (pair["teacher"], pair["student"]) == ("small3d", "tiny3d")
    for side in ("online", "cached", "limit"):
        assert len(pair[side]["seconds"]) == len(pair[side]["losses"]) == 2  # --epochs 2
    # (c) runs train_epochs on (b)'s batches from (b)'s start: the same training.
    assert pair["cached"]["losses"] == pytest.approx(pair["limit"]["losses"], abs=1e-5)
    assert pair["cache_bytes"] > 0
    memory = {(m["mode"], m["trials"]): m for m in saved["memory"]}
    assert set(memory) == {("cached", 1), ("cached", 2), ("online", 1), ("online", 2)}
    assert all(len(m["peak_rss"]) == m["trials"] and m["peak_pss_sum"] > 0
               for m in memory.values())
    assert (tmp_path / "root" / "storage" / "cache").is_dir()


def test_loader_smoke(tmp_path: Path) -> None:
    out = smoke("loader.py", "--root", str(tmp_path))
    for side in ("raw PyAV (seek)", "kdsearch loader, video", "raw Pillow",
                 "kdsearch loader, frames", "naive PyAV (from start)"):
        assert re.search(rf"^  {re.escape(side)} +[\d.]+ clips/s   \(all: ", out, re.M), side
    assert re.search(r"^loader / raw PyAV: +\d+\.\d\d$", out, re.M)
    assert re.search(r"^loader / raw Pillow: \d+\.\d\d$", out, re.M)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4


def test_search_quality_smoke(tmp_path: Path) -> None:
    out = smoke("search_quality.py", "--out", str(tmp_path))
    for method in METHODS:
        assert re.search(rf"^{re.escape(method)} +seed  0: epochs to target", out, re.M), method
    # kdsearch's searcher never tells Optuna COMPLETE for a trial ASHA stopped early.
    assert re.search(r"^kdsearch\+asha .* \(0 before max_t\)", out, re.M)
    page = (tmp_path / "search_quality.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows[1:6]] == list(METHODS)
    assert "| 0 | " in page  # the per-seed table
    assert (tmp_path / "search_quality.png").stat().st_size > 0


def test_search_quality_overhead_smoke(tmp_path: Path) -> None:
    out = smoke("search_quality.py", "--overhead", "--out", str(tmp_path))
    assert re.search(r"^faster: reuse_actors=(True|False) ", out, re.M)
    page = (tmp_path / "search_quality_overhead.md").read_text()
    assert re.search(r"^\| True \| [\d.]+ / [\d.]+ / [\d.]+ \|", page, re.M)
    assert re.search(r"^\| False \| [\d.]+ / [\d.]+ / [\d.]+ \|", page, re.M)


def test_demo_methods_smoke(tmp_path: Path) -> None:
    # Three of the five: no scheduler, Ray's stock feedback and kdsearch's (the others differ
    # from these only in the sampler or scheduler settings).
    methods = ("random", "optuna+asha", "kdsearch+asha")
    out = smoke("demo_methods.py", "--workdir", str(tmp_path), "--methods", *methods,
                timeout=400)
    assert re.search(r"^optuna\+asha: \d+ s, StockFeedbackOptunaSearch told Optuna COMPLETE",
                     out, re.M)
    assert re.search(r"^kdsearch\+asha: \d+ s, FidelityAwareOptunaSearch told", out, re.M)
    rows = {row.split(" | ")[0][2:]: row.strip("| ").split(" | ")
            for row in out.splitlines() if row.startswith("| ")}
    assert list(rows)[1:] == list(methods)  # the header, then one row per method
    for method in methods:
        best, epochs, completed, pruned = rows[method][1:5]
        assert 0.25 <= float(best) <= 1  # a completed trial's val_acc (4 classes)
        assert int(completed) >= 1 and int(completed) + int(pruned) == 3  # 3 trials
        assert int(completed) * 2 <= int(epochs) <= 6  # 2 epochs per completed trial
    assert int(rows["random"][3]) == 3  # no scheduler: all complete
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "optuna-asha.log").is_file()


def test_sim_objective_smoke() -> None:
    out = smoke("sim_objective.py", timeout=60)
    assert re.search(r"^ +optimum 0\.8799$", out, re.M)
    assert re.search(r"^ +best_tiny3d_wide 0\.8799$", out, re.M)


def test_stock_feedback_proposes_what_rays_optunasearch_proposed() -> None:
    """The documented optuna+asha numbers came from ray.tune.search.optuna.OptunaSearch over
    the space's distributions; the benchmarks' StockFeedbackOptunaSearch (make_searcher's
    define-by-run space) proposes the same configurations given the same results."""
    import sim_objective as sim
    from ray.tune.search.optuna import OptunaSearch

    from kdsearch.config import Search
    from kdsearch.search.space import make_sampler, optuna_space

    for sampler in ("tpe", "random"):
        search = Search.model_validate({"space": sim.SPACE, "seed": 3, "sampler": sampler,
                                        "metric": "val_acc", "mode": "max"})
        ray_own = OptunaSearch(space=optuna_space(search), metric="val_acc", mode="max",
                               sampler=make_sampler(search))
        stock = stock_searcher(search, sim.MAX_T)
        assert isinstance(stock, StockFeedbackOptunaSearch)
        for i in range(16):
            config = ray_own.suggest(f"t{i}")
            assert config is not None and stock.suggest(f"t{i}") == config, (sampler, i)
            last = 1 + i % 4  # some trials "stopped early"
            for searcher in (ray_own, stock):
                for epoch in range(1, last + 1):
                    result = {"epoch": epoch, "training_iteration": epoch,
                              "val_acc": sim.curve(config, epoch)}
                    searcher.on_trial_result(f"t{i}", result)
                searcher.on_trial_complete(f"t{i}", result)
        assert ray_own._ot_study is not None
        assert ([t.state for t in stock.study.trials]
                == [t.state for t in ray_own._ot_study.trials])


MAX_T = 4


def objective(config: dict[str, Any]) -> None:
    """Best at alpha 0.3; one result per epoch."""
    from ray import tune

    quality = 1 - abs(config["alpha"] - 0.3)
    for epoch in range(1, MAX_T + 1):
        tune.report({"epoch": epoch, "val_acc": quality * epoch / MAX_T})


def test_stock_feedback_counts_stopped_trials_complete(ray_local: None, tmp_path: Path) -> None:
    """Ray's own OptunaSearch feedback, the benchmarks' optuna+asha: trials ASHA stopped early
    reach Optuna as COMPLETE."""
    from optuna.trial import TrialState
    from ray import tune

    from kdsearch.config import Search

    search = Search.model_validate({"space": {
        "alpha": {"type": "uniform", "low": 0.0, "high": 0.9},
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "sampler": "random",
        "seed": 1})
    searcher = stock_searcher(search, MAX_T)
    asha = tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=MAX_T, grace_period=1,
                                         reduction_factor=2)
    results = tune.Tuner(objective, tune_config=tune.TuneConfig(
        metric="val_acc", mode="max", search_alg=searcher, scheduler=asha, num_samples=8,
        max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    trials = [results[i] for i in range(len(results))]
    epochs = [int((r.metrics or {})["epoch"]) for r in trials]
    assert len(epochs) == 8 and all(r.error is None for r in trials)
    assert min(epochs) < MAX_T  # some were stopped early ...
    assert [t.state for t in searcher.study.trials] == [TrialState.COMPLETE] * 8  # ... yet
