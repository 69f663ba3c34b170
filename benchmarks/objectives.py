"""Objectives that ``benchmarks/search_quality.py`` replays through Ray Tune (no Ray here).

An objective is any object with

* ``name`` (str), ``space`` (a ``search.space`` dict of the space file's format), ``epochs``
  (int, the full budget of a trial), ``optimum`` (float, the best noise-free final value),
  ``mode`` ("max" or "min");
* ``__call__(config, epoch, seed) -> float``: the value a trial of ``config`` reports after
  ``epoch`` epochs in a run seeded ``seed``, noise included, deterministic given its arguments;
* optionally ``true_final(config) -> float`` (the noise-free final value; default
  ``objective(config, epochs, seed=0)``), ``noise_se`` (one standard error of a final value
  between training seeds; default None), ``val_videos`` (the validation count behind the
  metric, for the noise margin of the ``agreement`` scheduler; default None), ``metric``
  (the name reported to Tune, one of ``kdsearch.config.Search``'s metrics; default
  ``val_acc`` for max, ``val_loss`` for min) and ``floor`` (the regret's reference before any
  trial finished, e.g. chance accuracy; default the worst true_final of 64 random draws).

Three kinds are built in, each named by a :class:`Source` that trial processes can rebuild
(:func:`load`, cached per process, so a reused actor reads a table once):

* ``sim`` and ``sim-faithful``: ``benchmarks/sim_objective.py``, the misleading family and its
  faithful variant (one tau: early epochs rank as the last);
* a recorded learning-curve table (``benchmarks/record_curves.py``): :class:`TableObjective`;
* ``FILE.py:NAME``: the attribute ``NAME`` of the Python file (a class is instantiated without
  arguments). The driver imports the file by its path as a module named after the file's stem
  and puts its folder on ``PYTHONPATH``; trial processes import it by that name, so the stem
  must not shadow another module (``objectives``, ``sim_objective``, the standard library).

**The table objective.** A trial's configuration comes from the samplers' continuous space, as
in a real search, so it is almost never a recorded one: its curve is the recorded curve of the
*nearest* recorded configuration, among those with the same categorical values, by Euclidean
distance over the numeric settings each normalised to [0, 1] within its range (of the
logarithm for a log-uniform one). A fixed candidate list instead would change what is being
measured: TPE and random search would choose among the recorded points (a different sampler
problem: no density model over a continuous space, exact repeats), and nothing would be left
of the space the real search sees. Nearest neighbour keeps the samplers as they are and turns
the table into a piecewise-constant objective over the whole space; with a few hundred
recorded configurations in 3-4 dimensions the cells are coarse, so the table's optimum is a
recorded configuration's, and reaching it means proposing a point in its cell.

The space is inferred from the table (rather than read from the space file named in its
metadata, which may have moved, been edited, or been changed by the overrides): a string or
boolean column is a ``choice`` of its values; a numeric column spans its recorded minimum to
maximum (constant columns are not searched), as an ``int`` range for integer columns; it is
log-uniform when all its values are positive, span more than a factor of 10, *and* their
median sits nearer the middle of the range in the logarithm than in the value. The last test
is what tells a log-uniform ``lr`` from a uniform ``alpha`` drawn from [0, 0.9], whose smallest
draw is positive and a hundred times below its largest; ``record_curves.py`` draws
log-uniform settings uniformly in the logarithm, so their median sits at the geometric middle.

With several training seeds recorded for a configuration, run seed ``s`` replays recorded seed
number ``s mod n`` (sorted), so the noise between seeds is the real one; ``true_final`` is the
mean final value over the configuration's recorded seeds; ``optimum`` the best of those;
``noise_se`` the median, over configurations with several seeds, of the standard deviation of
their final values (one seed's spread: what a user who trains the winner once would see).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import math
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Columns of a learning-curve table that are not searched settings.
NOT_SETTINGS = frozenset({"config", "seed", "epoch", "val_acc", "val_loss", "train_loss",
                          "seconds"})
#: The metadata key ``record_curves.py`` writes the recording's settings under.
META_KEY = b"kdsearch.curves"


class Objective(Protocol):
    name: str
    space: dict[str, dict[str, Any]]
    epochs: int
    optimum: float
    mode: str

    def __call__(self, config: Mapping[str, Any], epoch: int, seed: int) -> float: ...


# ---------------------------------------------------------------------------- the optional parts


def true_final(objective: Objective, config: Mapping[str, Any]) -> float:
    """The noise-free final value of ``config``."""
    method = getattr(objective, "true_final", None)
    if method is not None:
        return float(method(config))
    return float(objective(config, objective.epochs, 0))


def noise_se(objective: Objective) -> float | None:
    value = getattr(objective, "noise_se", None)
    return None if value is None else float(value)


def val_videos(objective: Objective) -> int | None:
    value = getattr(objective, "val_videos", None)
    return None if value is None else int(value)


def metric(objective: Objective) -> str:
    return getattr(objective, "metric", None) or ("val_acc" if objective.mode == "max"
                                                  else "val_loss")


def sign(objective: Objective) -> float:
    """+1 for max, -1 for min: ``sign * value`` is larger for better."""
    if objective.mode not in ("max", "min"):
        raise ValueError(f"{objective.name}: mode is {objective.mode!r}, but must be 'max' or "
                         "'min'")
    return 1.0 if objective.mode == "max" else -1.0


def floor(objective: Objective, draws: int = 64) -> float:
    """The reference value before any trial finished: ``objective.floor``, or else the worst
    true_final of ``draws`` configurations drawn uniformly (Optuna's RandomSampler, seed 0)."""
    value = getattr(objective, "floor", None)
    if value is not None:
        return float(value)
    finals = [sign(objective) * true_final(objective, c)
              for c in draw(objective.space, draws, seed=0)]
    return sign(objective) * min(finals)


def draw(space: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn uniformly from ``space`` (Optuna's RandomSampler)."""
    import optuna

    from kdsearch.config import Search
    from kdsearch.search.space import optuna_space

    distributions = optuna_space(Search.model_validate({"space": space}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(n):
        trial = study.ask(distributions)
        drawn.append(dict(trial.params))
        study.tell(trial, 0.0)
    return drawn


# ---------------------------------------------------------------------------- simulated


class SimObjective:
    """``sim_objective``'s learning curves; ``faithful``: its variant with one tau."""

    mode = "max"
    metric = "val_acc"
    val_videos = None

    def __init__(self, faithful: bool = False) -> None:
        import sim_objective as sim

        self._sim = sim
        self.faithful = faithful
        self.name = "sim-faithful" if faithful else "sim"
        self.space = sim.SPACE
        self.epochs = sim.MAX_T
        self.optimum_config, self.optimum = sim.optimum(sim.MAX_T, faithful)
        self.noise_se = sim.NOISE_SD  # independent noise per trial: a new seed redraws it
        self.floor = sim.FLOOR

    def __call__(self, config: Mapping[str, Any], epoch: int, seed: int) -> float:
        return self._sim.observed(dict(config), epoch, seed, self.faithful)

    def true_final(self, config: Mapping[str, Any]) -> float:
        return self._sim.true_final(dict(config), self.epochs, self.faithful)


# ---------------------------------------------------------------------------- recorded


def infer_space(columns: Mapping[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """The searched space of a table's settings (see the module docstring)."""
    space: dict[str, dict[str, Any]] = {}
    for name, values in columns.items():
        if any(v is None for v in values):
            raise ValueError(f"column {name!r} has empty values: conditional settings are not "
                             "supported by the table objective")
        if any(isinstance(v, (str, bool, np.bool_)) for v in values):
            space[name] = {"type": "choice", "values": sorted(set(values), key=str)}
            continue
        x = np.asarray(values, dtype=float)
        lo, hi = float(x.min()), float(x.max())
        if lo == hi:
            continue
        log = lo > 0 and hi / lo > 10 and _log_centred(x, lo, hi)
        if all(isinstance(v, (int, np.integer)) for v in values):
            space[name] = {"type": "int", "low": int(lo), "high": int(hi), "log": bool(log)}
        else:
            space[name] = {"type": "loguniform" if log else "uniform", "low": lo, "high": hi}
    return space


def _log_centred(x: np.ndarray, lo: float, hi: float) -> bool:
    """Whether the median of ``x`` is nearer the middle of [lo, hi] in log than in value."""
    med = float(np.median(x))
    in_value = (med - lo) / (hi - lo)
    in_log = (math.log(med) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return abs(in_log - 0.5) < abs(in_value - 0.5)


class TableObjective:
    """A recorded learning-curve table replayed by nearest recorded configuration."""

    def __init__(self, path: Path | str, metric: str = "val_acc",
                 space: dict[str, dict[str, Any]] | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        table = pq.read_table(self.path)
        meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        rows = table.to_pylist()
        if metric not in table.column_names:
            raise ValueError(f"{self.path}: no column {metric!r} (columns: "
                             f"{', '.join(table.column_names)})")
        self.metric = metric
        self.mode = "min" if metric.endswith("loss") else "max"
        self.name = self.path.stem + ("" if metric == "val_acc" else f"-{metric}")
        self.epochs = int(meta.get("epochs") or max(r["epoch"] for r in rows))
        self.val_videos = meta.get("val_videos")
        self.meta = meta
        settings = [c for c in table.column_names if c not in NOT_SETTINGS]
        # config id -> settings; (config id, seed) -> values at epochs 1..epochs
        self.settings: dict[int, dict[str, Any]] = {}
        curves: dict[tuple[int, int], dict[int, float]] = {}
        for r in rows:
            self.settings.setdefault(int(r["config"]), {k: r[k] for k in settings})
            curves.setdefault((int(r["config"]), int(r["seed"])), {})[int(r["epoch"])] = float(
                r[metric])
        self.curves: dict[int, list[np.ndarray]] = {}  # config -> one curve per seed, in order
        for (config, seed), by_epoch in sorted(curves.items()):
            missing = [e for e in range(1, self.epochs + 1) if e not in by_epoch]
            if missing:
                raise ValueError(f"{self.path}: configuration {config} seed {seed} has no "
                                 f"epoch {missing[0]} (curves must cover 1..{self.epochs})")
            self.curves.setdefault(config, []).append(
                np.array([by_epoch[e] for e in range(1, self.epochs + 1)]))
        self.ids = sorted(self.settings)
        self.space = space if space is not None else infer_space(
            {k: [self.settings[c][k] for c in self.ids] for k in settings})
        self._index()
        s = 1.0 if self.mode == "max" else -1.0
        self.finals = {c: float(np.mean([curve[-1] for curve in self.curves[c]]))
                       for c in self.ids}
        self.optimum_id = max(self.ids, key=lambda c: (s * self.finals[c], -c))
        self.optimum = self.finals[self.optimum_id]
        self.optimum_config = dict(self.settings[self.optimum_id])
        self.floor = s * min(s * v for v in self.finals.values())
        spreads = [statistics.stdev(float(curve[-1]) for curve in self.curves[c])
                   for c in self.ids if len(self.curves[c]) > 1]
        self.noise_se = statistics.median(spreads) if spreads else None

    def _index(self) -> None:
        """The recorded configurations as categorical keys and normalised numeric points."""
        self.numeric = [k for k, d in self.space.items() if d["type"] != "choice"]
        self.categorical = [k for k, d in self.space.items() if d["type"] == "choice"]
        self.points = np.array([self._point(self.settings[c]) for c in self.ids],
                               dtype=float).reshape(len(self.ids), len(self.numeric))
        self.keys = [tuple(self.settings[c][k] for k in self.categorical) for c in self.ids]

    def _point(self, config: Mapping[str, Any]) -> list[float]:
        point = []
        for k in self.numeric:
            d = self.space[k]
            lo, hi, x = float(d["low"]), float(d["high"]), float(config[k])
            if d["type"] == "loguniform" or d.get("log"):
                lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-300))
            point.append((x - lo) / (hi - lo) if hi > lo else 0.0)
        return point

    def nearest(self, config: Mapping[str, Any]) -> int:
        """The id of the recorded configuration nearest ``config``: the same categorical
        values (the fewest mismatches if no recorded one has them all), then the smallest
        normalised distance; ties go to the lowest id."""
        key = tuple(config[k] for k in self.categorical)
        mismatches = np.array([sum(a != b for a, b in zip(k, key, strict=True))
                               for k in self.keys])
        distance = np.sqrt(((self.points - np.array(self._point(config))) ** 2).sum(axis=1))
        order = np.lexsort((np.arange(len(self.ids)), distance, mismatches))
        return self.ids[int(order[0])]

    def __call__(self, config: Mapping[str, Any], epoch: int, seed: int) -> float:
        runs = self.curves[self.nearest(config)]
        return float(runs[seed % len(runs)][epoch - 1])

    def true_final(self, config: Mapping[str, Any]) -> float:
        return self.finals[self.nearest(config)]


# ---------------------------------------------------------------------------- by name


@dataclasses.dataclass(frozen=True)
class Source:
    """What to load: ``kind`` "sim" / "sim-faithful" (no target), "table" (target: the
    table's path, ``metric``) or "file" (target: the file's path, ``attribute``)."""

    kind: str
    target: str = ""
    metric: str = "val_acc"
    attribute: str = ""

    @property
    def module(self) -> str:
        return Path(self.target).stem


def parse(objective: str | None, table: Path | None, metric: str = "val_acc") -> Source:
    """The source that ``search_quality.py``'s ``--objective`` / ``--table`` / ``--metric``
    name (paths made absolute: trials run in other folders)."""
    if table is not None:
        if objective not in (None, "sim"):
            raise SystemExit("--table and --objective name two objectives: give one")
        return Source("table", str(Path(table).resolve()), metric=metric)
    objective = objective or "sim"
    if objective in ("sim", "sim-faithful"):
        return Source(objective)
    path, _, attribute = objective.rpartition(":")
    if not path.endswith(".py") or not attribute:
        raise SystemExit(f"--objective is {objective!r}, but must be sim, sim-faithful or "
                         "FILE.py:NAME")
    return Source("file", str(Path(path).resolve()), attribute=attribute)


def prepare(source: Source) -> None:
    """In the driver, before ``ray.init``: make a file objective importable by its stem, here
    and (through ``PYTHONPATH``) in trial processes."""
    if source.kind != "file":
        return
    import os

    path = Path(source.target)
    if not path.is_file():
        raise SystemExit(f"--objective: no file {path}")
    loaded = sys.modules.get(source.module)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
        raise SystemExit(f"--objective: the module name {source.module!r} (the file's stem) "
                         f"is taken by {getattr(loaded, '__file__', 'a built-in module')}; "
                         "rename the file")
    sys.path.insert(0, str(path.parent))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(path.parent), os.environ.get("PYTHONPATH")) if p)
    spec = importlib.util.spec_from_file_location(source.module, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.module] = module
    spec.loader.exec_module(module)


@functools.lru_cache(maxsize=4)
def load(source: Source) -> Objective:
    """The objective ``source`` names (once per process)."""
    if source.kind in ("sim", "sim-faithful"):
        return SimObjective(faithful=source.kind == "sim-faithful")
    if source.kind == "table":
        return TableObjective(source.target, metric=source.metric)
    if source.kind == "file":
        module = importlib.import_module(source.module)
        found = getattr(module, source.attribute, None)
        if found is None:
            raise SystemExit(f"--objective: {source.target} has no {source.attribute!r}")
        objective = found() if isinstance(found, type) else found
        missing = [a for a in ("name", "space", "epochs", "optimum", "mode", "__call__")
                   if not hasattr(objective, a)]
        if missing:
            raise SystemExit(f"--objective: {source.target}:{source.attribute} lacks "
                             f"{', '.join(missing)}")
        return objective
    raise ValueError(f"unknown objective kind {source.kind!r}")
