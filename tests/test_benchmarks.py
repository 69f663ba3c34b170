"""The benchmarks in benchmarks/ still run: each one's --smoke (the real code path on tiny
settings, outputs in tmp_path) as a subprocess, checked on what it prints or writes; and the
stock-feedback searcher the benchmarks compare against."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from stock_feedback import StockFeedbackOptunaSearch, stock_searcher  # noqa: E402


def smoke(script: str, *args: str, timeout: float = 240) -> str:
    """``python benchmarks/<script> --smoke ARGS`` from the repository root; its output."""
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} --smoke failed:\n{output[-4000:]}"
    return done.stdout


class Smokes:
    """Every benchmark's ``--smoke`` below, started together when the first of their tests
    runs, ``PARALLEL`` at a time: each is a process of its own that spends much of its time
    starting Ray and waiting on it, so together they take far less wall time than one after
    another. A test then checks its own smoke's output and files."""

    PARALLEL = 3

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=self.PARALLEL)
        self.runs: dict[str, Future[str]] = {}

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def start(self, name: str, script: str, *args: str, timeout: float = 240) -> None:
        self.runs[name] = self.pool.submit(smoke, script, *args, timeout=timeout)

    def output(self, name: str) -> str:
        return self.runs[name].result()


@pytest.fixture(scope="module")
def smokes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smokes]:
    runs = Smokes(tmp_path_factory.mktemp("smokes"))
    f = runs.folder
    # The longest first.
    runs.start("demo_methods", "demo_methods.py", "--workdir", str(f("demo_methods")),
               "--methods", *DEMO_METHODS, timeout=400)
    runs.start("overhead", "search_quality.py", "--overhead", "--out", str(f("overhead")))
    runs.start("cache", "cache.py", "--root", str(f("cache") / "root"), "--json",
               str(f("cache") / "cache.json"))
    runs.start("search_quality", "search_quality.py", "--out", str(f("search_quality")),
               "--json", str(f("search_quality") / "runs.json"), timeout=240)
    (f("objective") / "parabola_objective.py").write_text(OBJECTIVE_FILE)
    runs.start("objective", "search_quality.py", "--objective",
               f"{f('objective') / 'parabola_objective.py'}:Parabola", "--methods",
               *OBJECTIVE_METHODS, "--seeds", "1", "--out", str(f("objective")), "--json",
               str(f("objective") / "runs.json"), timeout=240)
    table = write_curves(f("table") / "curves.parquet", synthetic_curves(), epochs=4)
    runs.start("table", "search_quality.py", "--table", str(table), "--methods",
               *TABLE_METHODS, "--seeds", "1", "--out", str(f("table")), "--json",
               str(f("table") / "runs.json"), timeout=240)
    runs.start("record_curves", "record_curves.py", "--out",
               str(f("record_curves") / "curves.parquet"), timeout=240)
    runs.start("loader", "loader.py", "--root", str(f("loader")))
    runs.start("gpu", "gpu.py", "--json", str(f("gpu") / "gpu.json"))
    runs.start("cost", "cost.py", "--json", str(f("cost") / "cost.json"))
    runs.start("sim_objective", "sim_objective.py", timeout=120)
    yield runs
    runs.pool.shutdown(wait=True)


def test_cache_smoke(smokes: Smokes) -> None:
    out, tmp_path = smokes.output("cache"), smokes.folder("cache")
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


def test_loader_smoke(smokes: Smokes) -> None:
    out, tmp_path = smokes.output("loader"), smokes.folder("loader")
    for side in ("raw PyAV (seek)", "kdsearch loader, video", "raw Pillow",
                 "kdsearch loader, frames", "naive PyAV (from start)"):
        assert re.search(rf"^  {re.escape(side)} +[\d.]+ clips/s   \(all: ", out, re.M), side
    assert re.search(r"^loader / raw PyAV: +\d+\.\d\d$", out, re.M)
    assert re.search(r"^loader / raw Pillow: \d+\.\d\d$", out, re.M)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4


def test_cost_smoke(smokes: Smokes) -> None:
    """cost.py --smoke: every backbone measured in two rounds, their ratios printed."""
    out, tmp_path = smokes.output("cost"), smokes.folder("cost")
    assert re.search(r"^tiny3d +4x32 +0\.11 +0\.00826( +[\d.]+){6}$", out, re.M), out
    assert re.search(r"^largest difference between the rounds: [\d.]+% \(target: within 10 %\)$",
                     out, re.M), out
    saved = json.loads((tmp_path / "cost.json").read_text())
    assert set(saved["backbones"]) == {"tiny3d", "tiny_r2plus1d"}
    for measured in saved["backbones"].values():
        first, second = measured["first"], measured["second"]
        assert first["student_params"] == second["student_params"] > 0  # exact, every time
        assert measured["latency_ratio"] == pytest.approx(second["latency_ms"]
                                                          / first["latency_ms"])


def test_gpu_smoke(smokes: Smokes) -> None:
    """gpu.py --smoke, on the CPU: every combination's cached trial and limit, their ratio,
    and 1 and 2 packed trials, all positive."""
    out, tmp_path = smokes.output("gpu"), smokes.folder("gpu")
    assert re.search(r"^target cached/limit >= 0\.9: (met|NOT met) \(worst [\d.]+\)$", out,
                     re.M), out
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert (saved["teacher"], saved["student"]) == ("small3d", "tiny3d")
    combinations = {(c["bf16"], c["channels_last"]): c for c in saved["combinations"]}
    assert set(combinations) == {(False, False), (False, True), (True, False), (True, True)}
    for c in combinations.values():
        for side in ("cached", "limit"):
            assert c[side]["steps"] == 20 and c[side]["clips"] > 0  # --smoke's --steps 20
            assert c[side]["clips_per_s"] > 0
        assert c["ratio"] == pytest.approx(c["cached"]["clips_per_s"]
                                           / c["limit"]["clips_per_s"])
        assert c["ratio"] > 0
    packed = {p["trials"]: p for p in saved["packed"]}
    assert set(packed) == {1, 2}
    for trials, p in packed.items():
        assert len(p["per_trial"]) == trials
        assert all(s["clips_per_s"] > 0 for s in p["per_trial"])
        assert p["summed_clips_per_s"] > 0 and p["vs_one"] > 0
    assert packed[1]["vs_one"] == 1.0


SMOKE_METHODS = ("random-full", "tpe-full", "default")  # search_quality.py --smoke's


def run_lines(out: str, methods: tuple[str, ...], seeds: tuple[int, ...]) -> dict[str, str]:
    """search_quality.py's line per run, by "method seed"; each must be there."""
    lines = {}
    for method in methods:
        for seed in seeds:
            found = re.search(rf"^{re.escape(method)} +seed +{seed}: epochs to target .*$",
                              out, re.M)
            assert found, (method, seed, out)
            lines[f"{method} {seed}"] = found.group(0)
    return lines


def check_report(tmp_path: Path, name: str, methods: tuple[str, ...], optimum: float,
                 budget: int, with_se: bool, seeds: tuple[int, ...] = (0, 1)
                 ) -> dict[str, Any]:
    """The page, the plot and the JSON of a search_quality.py run over ``seeds``."""
    page = (tmp_path / f"search_quality_{name}.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows[1:1 + len(methods)]] == list(methods)
    assert all(f"| {seed} | " in page for seed in seeds)  # the per-seed table
    assert (tmp_path / f"search_quality_{name}.png").stat().st_size > 0
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert set(saved) == {"objective", "optimum", "budget_epochs", "methods"}
    assert saved["objective"] == name and saved["budget_epochs"] == budget
    assert saved["optimum"] == pytest.approx(optimum)
    assert list(saved["methods"]) == list(methods)
    keys = {"seed", "epochs_to_target", "regret"} | ({"epochs_to_target_se"} if with_se else set())
    for method, runs in saved["methods"].items():
        assert [run["seed"] for run in runs] == list(seeds)
        for run in runs:
            assert set(run) == keys and set(run["regret"]) == {"0.25", "0.5", "1.0"}
            reached = run["epochs_to_target"]
            cap = budget * (2 if method == "random-full" else 1)  # --reference-extend 2
            assert reached is None or (isinstance(reached, int) and 1 <= reached <= cap)
            regret = run["regret"]
            assert all(isinstance(v, float) and v >= -1e-12 for v in regret.values())
            if regret["1.0"] <= 0.01 * abs(optimum):  # within target at the budget's end
                assert reached is not None and reached <= budget
            if with_se and reached is not None:  # one SE is looser than 1 % in these tests
                assert run["epochs_to_target_se"] is not None
                assert run["epochs_to_target_se"] <= reached
    return saved


def test_search_quality_smoke(smokes: Smokes) -> None:
    """The simulated family through the real stack: --smoke's three methods, two seeds."""
    import sim_objective as sim

    out, tmp_path = smokes.output("search_quality"), smokes.folder("search_quality")
    lines = run_lines(out, SMOKE_METHODS, (0, 1))
    # kdsearch's searcher never tells Optuna COMPLETE for a trial a scheduler stopped early.
    assert all("(0 before max_t)" in lines[f"default {seed}"] for seed in (0, 1))
    # random-full runs every trial to the end: all its trials are full ones.
    for seed in (0, 1):
        trials = re.search(r"trials +(\d+) \((\d+) full\)", lines[f"random-full {seed}"])
        assert trials and int(trials.group(1)) >= int(trials.group(2)) >= 2
    for target in ("(a)", "(b)", "(c)"):
        assert re.search(rf"^target {re.escape(target)} .*: (PASS|MISS|UNDECIDED)", out, re.M)
    assert re.search(r"^objective sim: val_acc \(max\), 16 epochs per trial, optimum 0\.8799",
                     out, re.M)
    check_report(tmp_path, "sim", SMOKE_METHODS, sim.optimum()[1], 2 * sim.MAX_T,
                 with_se=True)


CURVE_COLUMNS = ("config", "alpha", "temperature", "lr", "backbone", "seed", "epoch",
                 "val_acc", "val_loss", "train_loss", "seconds")


def write_curves(path: Path, rows: list[dict[str, Any]], epochs: int,
                 val_videos: int = 40) -> Path:
    """A learning-curve table in record_curves.py's format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows).replace_schema_metadata(
        {"kdsearch.curves": json.dumps({"epochs": epochs, "val_videos": val_videos,
                                        "overrides": [], "space": "synthetic"})})
    pq.write_table(table, path)
    return path


def synthetic_curves(configs: int = 12, seeds: int = 2, epochs: int = 4
                     ) -> list[dict[str, Any]]:
    """Curves whose final val_acc peaks at alpha 0.3, with a little noise between seeds."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for config in range(configs):
        settings = {"alpha": float(rng.uniform(0, 0.9)),
                    "temperature": float(np.exp(rng.uniform(0, np.log(16)))),
                    "lr": float(np.exp(rng.uniform(np.log(3e-4), np.log(1e-2)))),
                    "backbone": ("tiny3d", "tiny3d_wide")[config % 2]}
        ceiling = 0.9 - 0.6 * abs(settings["alpha"] - 0.3)
        for seed in range(seeds):
            shift = float(rng.normal(0, 0.01))
            for epoch in range(1, epochs + 1):
                acc = 0.25 + (ceiling - 0.25) * (1 - np.exp(-epoch / 1.5)) + shift
                rows.append({"config": config, **settings, "seed": 100 + seed, "epoch": epoch,
                             "val_acc": float(acc), "val_loss": float(2 - acc),
                             "train_loss": float(1.5 - acc), "seconds": 2.0 * epoch})
    return rows


TABLE_METHODS = ("random-full", "asha", "agreement")


def test_search_quality_table_smoke(smokes: Smokes) -> None:
    """A recorded table (here synthetic) through the real stack, agreement's noise margin
    from the table's validation count."""
    rows = synthetic_curves()  # the smoke's table (the same seed)
    finals: dict[int, list[float]] = {}
    for row in rows:
        if row["epoch"] == 4:
            finals.setdefault(row["config"], []).append(row["val_acc"])
    optimum = max(sum(v) / len(v) for v in finals.values())
    methods = TABLE_METHODS
    out, tmp_path = smokes.output("table"), smokes.folder("table")
    run_lines(out, methods, (0,))
    assert re.search(r"^objective curves: val_acc \(max\), 4 epochs per trial, optimum "
                     rf"{optimum:.4f} at alpha ", out, re.M), out
    assert re.search(r"^40 validation videos", out, re.M)
    check_report(tmp_path, "curves", methods, optimum, 2 * 4, with_se=True, seeds=(0,))


OBJECTIVE_FILE = '''
class Parabola:
    """Minimised; the best configuration is x = 0.3 of kind "good"."""

    name = "parabola"
    space = {"x": {"type": "uniform", "low": 0.0, "high": 1.0},
             "kind": {"type": "choice", "values": ["good", "bad"]}}
    epochs = 3
    mode = "min"
    optimum = 0.1

    def __call__(self, config, epoch, seed):
        return self.true_final(config) + 1.0 / epoch - 1.0 / self.epochs + 0.001 * (seed % 3)

    def true_final(self, config):
        return 0.1 + (config["x"] - 0.3) ** 2 + (0.0 if config["kind"] == "good" else 0.5)
'''


OBJECTIVE_METHODS = ("optuna-asha", "hyperband", "random-asha")


def test_search_quality_objective_file_smoke(smokes: Smokes) -> None:
    """Any object with the objective's attributes, from a file, in the trial processes too."""
    methods = OBJECTIVE_METHODS
    out, tmp_path = smokes.output("objective"), smokes.folder("objective")
    run_lines(out, methods, (0,))
    assert re.search(r"^objective parabola: val_loss \(min\), 3 epochs per trial, optimum "
                     r"0\.1000;", out, re.M)
    saved = check_report(tmp_path, "parabola", methods, 0.1, 2 * 3, with_se=False,
                         seeds=(0,))
    for runs in saved["methods"].values():
        for run in runs:
            # Observed values rank as true ones here, so the incumbent only ever improves.
            regret = run["regret"]
            assert regret["0.25"] >= regret["0.5"] >= regret["1.0"] >= 0


def test_table_objective_nearest_configuration(tmp_path: Path) -> None:
    """Nearest recorded configuration with the same categorical values, in normalised and
    (for a log-uniform setting) logarithmic coordinates; seed s replays recorded seed s mod
    n; true_final is the mean over seeds; the optimum the best mean."""
    import objectives

    def curve(config: int, alpha: float, lr: float, backbone: str, seed: int,
              final: float) -> list[dict[str, Any]]:
        return [{"config": config, "alpha": alpha, "lr": lr, "backbone": backbone,
                 "seed": seed, "epoch": e, "val_acc": final - 0.1 * (2 - e),
                 "val_loss": 1 - final, "train_loss": 0.5, "seconds": 1.0}
                for e in (1, 2)]

    rows = (curve(0, 0.0, 1e-4, "a", 7, 0.50)
            + curve(1, 0.0, 1e-2, "a", 9, 0.60) + curve(1, 0.0, 1e-2, "a", 7, 0.80)
            + curve(2, 0.9, 1e-3, "b", 7, 0.50) + curve(2, 0.9, 1e-3, "b", 8, 0.52)
            + curve(3, 0.45, 1e-3, "b", 7, 0.75))
    path = write_curves(tmp_path / "four.parquet", rows, epochs=2, val_videos=12)
    table = objectives.TableObjective(path)
    assert table.space == {
        "alpha": {"type": "uniform", "low": 0.0, "high": 0.9},  # has a 0: not log-uniform
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "backbone": {"type": "choice", "values": ["a", "b"]}}
    assert (table.name, table.epochs, table.val_videos, table.mode) == ("four", 2, 12, "max")
    # lr 1.5e-3 is nearer 1e-4 in value but nearer 1e-2 in the logarithm.
    assert table.nearest({"alpha": 0.0, "lr": 1.5e-3, "backbone": "a"}) == 1
    assert table.nearest({"alpha": 0.0, "lr": 2e-4, "backbone": "a"}) == 0
    # The same backbone first, however near another backbone's configuration is.
    assert table.nearest({"alpha": 0.0, "lr": 1e-4, "backbone": "b"}) == 3
    assert table.nearest({"alpha": 0.8, "lr": 1e-3, "backbone": "b"}) == 2
    near1 = {"alpha": 0.05, "lr": 8e-3, "backbone": "a"}
    # Recorded seeds 7 and 9 of configuration 1, in order: run seed s replays s mod 2.
    assert [table(near1, 2, s) for s in range(4)] == pytest.approx([0.80, 0.60, 0.80, 0.60])
    assert table(near1, 1, 1) == pytest.approx(0.50)  # epoch 1 of recorded seed 9
    assert objectives.true_final(table, near1) == pytest.approx(0.70)  # mean of 0.8, 0.6
    # The optimum is the best mean (configuration 3's 0.75), not the best single seed (0.80).
    assert table.optimum == pytest.approx(0.75) and table.optimum_config["alpha"] == 0.45
    # One seed's spread: median over configurations 1 and 2 of their standard deviations.
    import statistics

    assert table.noise_se == pytest.approx(statistics.median(
        [statistics.stdev([0.6, 0.8]), statistics.stdev([0.5, 0.52])]))
    loss = objectives.TableObjective(path, metric="val_loss")
    assert (loss.mode, loss.name, objectives.metric(loss)) == ("min", "four-val_loss",
                                                                "val_loss")
    assert loss.optimum == pytest.approx(0.25)  # 1 - 0.75: the lowest mean loss


def test_sim_objectives_replay_the_simulation() -> None:
    """The harness's sim objectives: the misleading family's trials report what a generator
    per trial drew epoch by epoch; the faithful variant keeps the optimum and ranks
    configurations well from the first epoch, where the misleading one does not."""
    import numpy as np
    import objectives
    import sim_objective as sim

    misleading = objectives.load(objectives.parse("sim", None))
    faithful = objectives.load(objectives.parse("sim-faithful", None))
    config = {"alpha": 0.3, "temperature": 3.0, "lr": 2e-3, "backbone": "tiny3d"}
    rng = sim.trial_rng(5, config)
    assert [misleading(config, e, 5) for e in range(1, 9)] == [
        sim.curve(config, e, rng) for e in range(1, 9)]
    assert misleading(config, 4, 5) == misleading(config, 4, 5) != misleading(config, 4, 6)
    assert objectives.true_final(misleading, config) == sim.true_final(config)
    assert faithful.optimum == pytest.approx(misleading.optimum, abs=1e-3)
    assert (misleading.name, faithful.name) == ("sim", "sim-faithful")
    assert misleading.noise_se == faithful.noise_se == sim.NOISE_SD
    early = sim.early_ranking(n=20_000)
    early_faithful = sim.early_ranking(n=20_000, faithful=True)
    assert early[1][0] < 0.3 and early_faithful[1][0] > 0.8
    assert early[1][1] < 0.7 and early_faithful[1][1] > 0.99  # where the optimum starts
    assert early[sim.MAX_T][0] == pytest.approx(early_faithful[sim.MAX_T][0], abs=0.02)
    # one tau: at every epoch the faithful mean accuracy is increasing in the final one
    draws = sim.sample(np.random.default_rng(0), 200)
    finals = [sim.true_final(c, faithful=True) for c in draws]
    for epoch in (1, 2, 4):
        at = [sim.curve(c, epoch, faithful=True) for c in draws]
        assert np.argsort(at).tolist() == np.argsort(finals).tolist()


def test_search_quality_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The incumbent is the best observed final value (here of a minimised metric), its regret
    is counted in noise-free terms, and no target is reached before there is an incumbent."""
    import os

    monkeypatch.setattr(os, "environ", os.environ.copy())  # the import sets PYTHONPATH
    import search_quality as sq

    ledger = sq.Ledger(max_t=2, budget=6, limit=6, optimum=0.5, sign=-1.0,
                       true_final=lambda config: config["v"], metric="val_loss", floor=0.5,
                       noise_se=None)
    results = [("a", 0.9, 1, 1.0), ("a", 0.9, 2, 0.95),  # the first incumbent
               ("b", 0.5, 1, 1.0), ("b", 0.5, 2, 0.97),  # truly best, observed worse
               ("c", 0.503, 2, 0.6)]  # observed best, within 1 % of the optimum
    for trial, value, epoch, observed in results:
        ledger.record(trial, {"v": value}, {"epoch": epoch, "val_loss": observed}, 1)
        assert not ledger.done()
    # The floor's regret is 0 here, yet the target needs a trial that trained to the end.
    assert ledger.regrets == pytest.approx([0.0, 0.4, 0.4, 0.4, 0.003])
    assert ledger.reached_at == 5 and ledger.full == 3
    assert ledger.trials == {"a": 2, "b": 2, "c": 2}
    ledger.record("d", {"v": 0.7}, {"epoch": 1, "val_loss": 0.8}, 1)
    assert ledger.done() and len(ledger.regrets) == 6


def test_search_quality_overhead_smoke(smokes: Smokes) -> None:
    out, tmp_path = smokes.output("overhead"), smokes.folder("overhead")
    assert re.search(r"^faster: reuse_actors=(True|False) ", out, re.M)
    page = (tmp_path / "search_quality_overhead.md").read_text()
    assert re.search(r"^\| True \| [\d.]+ / [\d.]+ / [\d.]+ \|", page, re.M)
    assert re.search(r"^\| False \| [\d.]+ / [\d.]+ / [\d.]+ \|", page, re.M)


# Ray's stock feedback, the one method that swaps the searcher run_search builds (the others
# differ only in space-file settings, which search_quality's smokes and every real search of
# the suite cover).
DEMO_METHODS = ("optuna+asha",)


def test_demo_methods_smoke(smokes: Smokes) -> None:
    methods = DEMO_METHODS
    out, tmp_path = smokes.output("demo_methods"), smokes.folder("demo_methods")
    assert re.search(r"^optuna\+asha: \d+ s, StockFeedbackOptunaSearch told Optuna COMPLETE",
                     out, re.M)
    rows = {row.split(" | ")[0][2:]: row.strip("| ").split(" | ")
            for row in out.splitlines() if row.startswith("| ")}
    assert list(rows)[1:] == list(methods)  # the header, then one row per method
    for method in methods:
        best, epochs, completed, pruned = rows[method][1:5]
        assert 0.25 <= float(best) <= 1  # a completed trial's val_acc (4 classes)
        assert int(completed) >= 1 and int(completed) + int(pruned) == 3  # 3 trials
        assert int(completed) * 2 <= int(epochs) <= 6  # 2 epochs per completed trial
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "optuna-asha.log").is_file()


def test_sim_objective_smoke(smokes: Smokes) -> None:
    out = smokes.output("sim_objective")
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


def test_record_curves_smoke(smokes: Smokes) -> None:
    import pyarrow.parquet as pq

    printed, tmp_path = smokes.output("record_curves"), smokes.folder("record_curves")
    out = tmp_path / "curves.parquet"
    table = pq.read_table(out)
    rows = table.to_pylist()
    # 3 configurations of 2 epochs, the first again with one more training seed.
    assert sorted({(r["config"], r["seed"]) for r in rows}) == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert [r["epoch"] for r in rows if r["config"] == 1] == [1, 2]
    assert {"alpha", "temperature", "lr", "backbone", "val_acc", "val_loss", "train_loss",
            "seconds"} <= set(table.column_names)
    first = [r for r in rows if r["config"] == 0]
    assert {(r["alpha"], r["lr"], r["backbone"]) for r in first} == {
        (first[0]["alpha"], first[0]["lr"], first[0]["backbone"])}  # one configuration
    meta = json.loads(table.schema.metadata[b"kdsearch.curves"])
    assert meta["epochs"] == 2 and meta["val_videos"] == 4 and meta["train_videos"] == 8
    assert not (tmp_path / "curves.parquet.partial.jsonl").exists()
    assert re.search(r"^rank correlation of val_acc at each epoch with epoch 2 "
                     r"\(3 configurations\): 1: ", printed, re.M)
