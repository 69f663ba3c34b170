"""A simulated knowledge-distillation learning curve with a known optimum (no Ray, no torch).

The space is the demo space file's (``search_spaces/demo.yaml``): ``alpha`` uniform [0, 0.9]
(the weight on the teacher's soft targets, ``kdsearch.train.losses``), ``temperature`` log-uniform
[1, 16], ``lr`` log-uniform [3e-4, 1e-2], ``backbone`` one of ``tiny3d``, ``tiny3d_wide``,
``tiny_r2plus1d``. The validation accuracy after ``e`` epochs (4 classes, chance 0.25) is

    acc(e) = FLOOR + (ceiling - FLOOR) * (1 - exp(-e / tau)) + noise,   clipped to [0.25, 1]

* ``ceiling`` = the backbone's ceiling (tiny3d 0.80, tiny_r2plus1d 0.85, tiny3d_wide 0.88)
  minus three penalties: alpha, 0.10 * (alpha - 0.35)^2; temperature, quadratic in
  d = ln(T) - ln(T_opt(alpha)) with T_opt = 4 * exp(-0.8 * (alpha - 0.35)) (more
  distillation wants a lower temperature): (0.008 + 0.03 * alpha) * d^2 when too high (the
  alpha x temperature interaction: a hot teacher hurts most at high alpha), 0.008 * d^2 when
  too low; lr, 0.08 * v^2 above and 0.05 * v^2 below the backbone's optimum, with
  v = log10(lr / lr_opt) and lr_opt 4e-3 / 2.5e-3 / 1.5e-3 (tiny3d / r2plus1d / wide).
* ``tau`` (epochs to cover 63 % of the way): the backbone's (tiny3d 1.0, tiny_r2plus1d 1.4,
  tiny3d_wide 1.7: bigger students learn slower, so the best backbone is not the fastest
  starter), times (lr_opt / lr)^0.35 below the optimum lr (slow learning) and
  (lr_opt / lr)^0.15 above it (a fast start to a lower ceiling).
* ``noise``: Gaussian, sd 0.012, independent per (trial, epoch), drawn from the caller's
  seeded generator (one generator per trial, epochs in order).

Properties at 16 epochs (``python benchmarks/sim_objective.py``; fixed before any search ran
on it): the optimum is tiny3d_wide, alpha 0.35, T 4, lr 1.5e-3, true_final 0.880; about 3.5 %
of the space (uniform draws) is within 1 % of it, and only tiny3d_wide can get there (the other
backbones top out at 0.80 and 0.85). Early epochs mislead: over random configurations the
Spearman correlation of the noisy accuracy with true_final is 0.11 after 1 epoch, 0.25 after
2, 0.64 after 4, 0.93 after 8 and 0.96 after 16 (the noise's own limit), and the optimum itself
sits near the 55th, 63rd and 98th percentile after 1, 2 and 4 epochs (``early_ranking``,
printed by the command; a first measurement by hand gave 0.13, 0.27, 0.65, 0.94).

``true_final`` is the noise-free accuracy at ``MAX_T`` epochs, what a user would ship;
``optimum`` maximises it (a dense grid per backbone, then shrinking local grids) and caches it.

**The faithful variant** (``faithful=True`` everywhere; ``search_quality.py --objective
sim-faithful``): the same ceilings, noise and optimum, but one common ``tau``
(``FAITHFUL_TAU`` = 1.4 epochs, the middle backbone's) for every configuration. The mean
accuracy at any epoch is then an increasing function of the ceiling alone, so an early epoch
ranks configurations as the last one does, up to the noise: the case early stopping is built
for, the control to the misleading family above. Measured like it (``python
benchmarks/sim_objective.py --faithful``, 200000 draws): Spearman correlation with true_final
0.87 after 1 epoch, 0.93 after 2, 0.95 after 4, 0.96 after 8 and 16, and the optimum above
every draw from epoch 1 on; same optimum (0.880), 3.6 % of the space within 1 % of it. The
early ordering is not exactly the final one: at epoch 1 the spread of ceilings is shrunk by
1 - exp(-1 / 1.4) = 0.51 while the noise is not.

``observed(config, epoch, seed)`` is what a trial reports: the curve plus the noise of the
trial's generator (``trial_rng``), deterministic given its arguments.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Any

import numpy as np

MAX_T = 16
FLOOR = 0.25
NOISE_SD = 0.012
FAITHFUL_TAU = 1.4  # the faithful variant's tau, for every configuration

ALPHA = (0.0, 0.9)
TEMPERATURE = (1.0, 16.0)  # log-uniform
LR = (3e-4, 1e-2)  # log-uniform
BACKBONES = ("tiny3d", "tiny3d_wide", "tiny_r2plus1d")

# backbone: (ceiling, tau in epochs, optimum lr)
_BACKBONE = {
    "tiny3d": (0.80, 1.0, 4e-3),
    "tiny3d_wide": (0.88, 1.7, 1.5e-3),
    "tiny_r2plus1d": (0.85, 1.4, 2.5e-3),
}
_ALPHA_OPT = 0.35
_T_OPT = 4.0

#: The space file entry for ``kdsearch.config.Search.model_validate({"space": SPACE, ...})``.
SPACE: dict[str, dict[str, Any]] = {
    "alpha": {"type": "uniform", "low": ALPHA[0], "high": ALPHA[1]},
    "temperature": {"type": "loguniform", "low": TEMPERATURE[0], "high": TEMPERATURE[1]},
    "lr": {"type": "loguniform", "low": LR[0], "high": LR[1]},
    "backbone": {"type": "choice", "values": list(BACKBONES)},
}


def _ceiling_tau(alpha: Any, temperature: Any, lr: Any, backbone: str,
                 faithful: bool = False) -> tuple[Any, Any]:
    """Ceiling and tau; the numeric arguments may be floats or broadcastable arrays."""
    ceiling_b, tau_b, lr_opt = _BACKBONE[backbone]
    alpha = np.asarray(alpha, dtype=float)
    log_t = np.log(np.asarray(temperature, dtype=float))
    lr = np.asarray(lr, dtype=float)

    pen_alpha = 0.10 * (alpha - _ALPHA_OPT) ** 2
    d_t = log_t - (math.log(_T_OPT) - 0.8 * (alpha - _ALPHA_OPT))
    pen_temp = np.where(d_t > 0, (0.008 + 0.03 * alpha) * d_t**2, 0.008 * d_t**2)
    v = np.log10(lr / lr_opt)
    pen_lr = np.where(v > 0, 0.08 * v**2, 0.05 * v**2)
    ceiling = ceiling_b - pen_alpha - pen_temp - pen_lr

    if faithful:
        return ceiling, np.full_like(ceiling, FAITHFUL_TAU)
    ratio = lr_opt / lr
    tau = tau_b * np.where(ratio > 1, ratio**0.35, ratio**0.15)
    return ceiling, np.clip(tau, 0.3, 40.0)


def mean_curve(alpha: Any, temperature: Any, lr: Any, backbone: str, epoch: Any,
               faithful: bool = False) -> Any:
    """Noise-free accuracy after ``epoch`` epochs (vectorised over the numeric arguments)."""
    ceiling, tau = _ceiling_tau(alpha, temperature, lr, backbone, faithful)
    acc = FLOOR + (ceiling - FLOOR) * (1.0 - np.exp(-np.asarray(epoch, dtype=float) / tau))
    return np.clip(acc, 0.25, 1.0)


def curve(config: dict[str, Any], epoch: int,
          noise_rng: np.random.Generator | None = None, faithful: bool = False) -> float:
    """Validation accuracy of ``config`` after ``epoch`` epochs; noise-free without a rng."""
    acc = float(mean_curve(config["alpha"], config["temperature"], config["lr"],
                           config["backbone"], epoch, faithful))
    if noise_rng is not None:
        acc += float(noise_rng.normal(0.0, NOISE_SD))
    return min(1.0, max(0.25, acc))


def true_final(config: dict[str, Any], max_t: int = MAX_T, faithful: bool = False) -> float:
    """Noise-free accuracy after ``max_t`` epochs: what the configuration is worth."""
    return curve(config, max_t, faithful=faithful)


def observed(config: dict[str, Any], epoch: int, seed: int, faithful: bool = False) -> float:
    """What a trial of ``config`` under ``seed`` reports at ``epoch``: the curve plus the
    ``epoch``-th draw of ``trial_rng(seed, config)``, the same value as drawing the epochs in
    order with one generator per trial."""
    acc = float(mean_curve(config["alpha"], config["temperature"], config["lr"],
                           config["backbone"], epoch, faithful))
    acc += float(trial_rng(seed, config).normal(0.0, NOISE_SD, epoch)[-1])
    return min(1.0, max(0.25, acc))


def trial_rng(seed: int, config: dict[str, Any]) -> np.random.Generator:
    """The noise generator of one trial: depends on the run's seed and the config only."""
    key = ",".join(f"{k}={config[k]!r}" for k in sorted(config))
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def sample(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn uniformly from the space (as random search draws them)."""
    alpha = rng.uniform(*ALPHA, n)
    temp = np.exp(rng.uniform(math.log(TEMPERATURE[0]), math.log(TEMPERATURE[1]), n))
    lr = np.exp(rng.uniform(math.log(LR[0]), math.log(LR[1]), n))
    backbone = rng.integers(0, len(BACKBONES), n)
    return [{"alpha": float(a), "temperature": float(t), "lr": float(r),
             "backbone": BACKBONES[b]} for a, t, r, b in zip(alpha, temp, lr, backbone,
                                                            strict=True)]


def _best_on_grid(backbone: str, max_t: int, lo: np.ndarray, hi: np.ndarray,
                  n: int, faithful: bool = False) -> tuple[np.ndarray, float]:
    """The best point of an n^3 grid over (alpha, ln T, ln lr) within [lo, hi]."""
    axes = [np.linspace(lo[i], hi[i], n) for i in range(3)]
    a, lt, llr = np.meshgrid(*axes, indexing="ij")
    values = mean_curve(a, np.exp(lt), np.exp(llr), backbone, max_t, faithful)
    i = np.unravel_index(int(np.argmax(values)), values.shape)
    return np.array([a[i], lt[i], llr[i]]), float(values[i])


@functools.lru_cache(maxsize=8)
def _optimum(max_t: int, faithful: bool = False) -> tuple[tuple[tuple[str, Any], ...], float]:
    bounds_lo = np.array([ALPHA[0], math.log(TEMPERATURE[0]), math.log(LR[0])])
    bounds_hi = np.array([ALPHA[1], math.log(TEMPERATURE[1]), math.log(LR[1])])
    best: tuple[tuple[tuple[str, Any], ...], float] = ((), -1.0)
    for backbone in BACKBONES:
        point, value = _best_on_grid(backbone, max_t, bounds_lo, bounds_hi, 61, faithful)
        width = (bounds_hi - bounds_lo) / 60
        for _ in range(12):  # shrinking grids around the incumbent
            lo = np.maximum(bounds_lo, point - 2 * width)
            hi = np.minimum(bounds_hi, point + 2 * width)
            point, value = _best_on_grid(backbone, max_t, lo, hi, 21, faithful)
            width = width / 5
        if value > best[1]:
            best = ((("alpha", float(point[0])), ("temperature", float(math.exp(point[1]))),
                     ("lr", float(math.exp(point[2]))), ("backbone", backbone)), value)
    return best


def optimum(max_t: int = MAX_T, faithful: bool = False) -> tuple[dict[str, Any], float]:
    """The configuration with the best ``true_final`` and that value (computed once)."""
    items, value = _optimum(max_t, faithful)
    return dict(items), value


def _uniform_draws(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """alpha, temperature, lr and backbone index of ``n`` uniform draws from the space."""
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(*ALPHA, n)
    temp = np.exp(rng.uniform(math.log(TEMPERATURE[0]), math.log(TEMPERATURE[1]), n))
    lr = np.exp(rng.uniform(math.log(LR[0]), math.log(LR[1]), n))
    return alpha, temp, lr, rng.integers(0, len(BACKBONES), n)


def _mean_curves(draws: tuple[np.ndarray, ...], epoch: int, faithful: bool) -> np.ndarray:
    alpha, temp, lr, which = draws
    values = np.empty(len(alpha))
    for i, backbone in enumerate(BACKBONES):
        mask = which == i
        values[mask] = mean_curve(alpha[mask], temp[mask], lr[mask], backbone, epoch, faithful)
    return values


def describe(max_t: int = MAX_T, n: int = 200_000, seed: int = 0,
             faithful: bool = False) -> dict[str, float]:
    """Properties of the objective that do not depend on any search: the optimum, the share
    of the space within 1 % of it, and each backbone's best ``true_final``."""
    config, value = optimum(max_t, faithful)
    finals = _mean_curves(_uniform_draws(n, seed), max_t, faithful)
    out = {"optimum": value, "within_1pct": float(np.mean(finals >= 0.99 * value)),
           "median_random": float(np.median(finals))}
    for backbone in BACKBONES:
        lo = np.array([ALPHA[0], math.log(TEMPERATURE[0]), math.log(LR[0])])
        hi = np.array([ALPHA[1], math.log(TEMPERATURE[1]), math.log(LR[1])])
        out[f"best_{backbone}"] = _best_on_grid(backbone, max_t, lo, hi, 41, faithful)[1]
    out.update({f"opt_{k}": v for k, v in config.items() if isinstance(v, float)})
    return out


def early_ranking(max_t: int = MAX_T, epochs: tuple[int, ...] = (1, 2, 4, 8, MAX_T),
                  n: int = 200_000, seed: int = 0,
                  faithful: bool = False) -> dict[int, tuple[float, float]]:
    """How well epoch ``e`` ranks configurations, per ``e`` in ``epochs``: the Spearman
    correlation of the noisy accuracy at ``e`` with true_final over ``n`` uniform draws, and
    the percentile of the optimum's own noise-free accuracy at ``e`` among the draws'."""
    from scipy.stats import spearmanr

    draws = _uniform_draws(n, seed)
    finals = _mean_curves(draws, max_t, faithful)
    best, _ = optimum(max_t, faithful)
    noise = np.random.default_rng(seed + 1).normal(0.0, NOISE_SD, (len(epochs), n))
    out = {}
    for row, epoch in enumerate(epochs):
        early = np.clip(_mean_curves(draws, epoch, faithful) + noise[row], 0.25, 1.0)
        rho = float(spearmanr(early, finals).statistic)
        at_best = curve(best, epoch, faithful=faithful)
        out[epoch] = (rho, float(np.mean(_mean_curves(draws, epoch, faithful) <= at_best)))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The objective's optimum and properties "
                                     "(the module docstring's numbers).")
    parser.add_argument("--max-t", type=int, default=MAX_T, help=f"epochs (default {MAX_T})")
    parser.add_argument("--samples", type=int, help="uniform draws for the share of the space "
                        "near the optimum (default 200000; 20000 with --smoke)")
    parser.add_argument("--faithful", action="store_true", help="the faithful variant (one "
                        "tau for every configuration)")
    parser.add_argument("--smoke", action="store_true", help="20000 draws: checks that it "
                        "runs (the optimum is the same, the shares rounder)")
    args = parser.parse_args(argv)
    samples = args.samples or (20_000 if args.smoke else 200_000)
    print(optimum(args.max_t, args.faithful))
    for key, val in describe(args.max_t, samples, faithful=args.faithful).items():
        print(f"{key:>22} {val:.4f}")
    for epoch, (rho, pct) in early_ranking(args.max_t, n=samples,
                                           faithful=args.faithful).items():
        print(f"epoch {epoch:>2}: Spearman with true_final {rho:.2f}, optimum at percentile "
              f"{pct * 100:.0f}")


if __name__ == "__main__":
    main()
