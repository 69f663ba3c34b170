"""``python -m kdsearch.run SPACE.yaml [--set dotted.key=value ...] [--dry-run] [--resume]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from kdsearch.config import (
    SEARCHABLE,
    Choice,
    ConfigError,
    IntRange,
    LogUniform,
    SpaceConfig,
    load_space,
)
from kdsearch.config.disk import cache_estimate
from kdsearch.storage import ArtifactError, DiskFullError, redact
from kdsearch.text import format_table, plural, python_command

EXIT_BAD_INPUT = 2
SHOWN = 10  # trials the summary table lists


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kdsearch.run",
        description="Search knowledge-distillation settings for a video student.")
    parser.add_argument("space", type=Path, help="the space file (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a setting, e.g. search.num_samples=4")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, print the resolved configuration, start nothing")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="SEARCH",
                        help="continue the latest unfinished search of this experiment in "
                             "storage (or the named one) instead of starting a new one")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--offline", action="store_true",
                        help="never download published weights: read them from the torch hub "
                             "cache only (as offline: true or KDSEARCH_OFFLINE=1)")
    return parser.parse_args(argv)


def describe_space(cfg: SpaceConfig) -> str:
    lines = []
    for name, d in cfg.search.space.items():
        if isinstance(d, Choice):
            lines.append(f"  {name:<14} choice {d.values}")
        elif isinstance(d, IntRange):
            lines.append(f"  {name:<14} int [{d.low}, {d.high}] step {d.step}"
                         + (" log" if d.log else ""))
        else:
            kind = "loguniform" if isinstance(d, LogUniform) else "uniform"
            lines.append(f"  {name:<14} {kind} [{d.low:g}, {d.high:g}]")
        for parent, values in (d.when or {}).items():
            lines[-1] += f"  when {parent} in {values}"
    fixed = [n for n in SEARCHABLE if n not in cfg.search.space]
    for name in fixed:
        lines.append(f"  {name:<14} fixed {getattr(cfg.student, name)}")
    return "\n".join(lines)


def print_outcome(outcome: object, cfg: SpaceConfig) -> None:
    from kdsearch.search.driver import SearchOutcome

    assert isinstance(outcome, SearchOutcome)
    metric = cfg.search.metric
    print(f"\nsearch finished in {outcome.seconds / 60:.1f} min; teacher val_acc "
          f"{outcome.teacher_metrics.get('val_acc', float('nan')):.3f}")
    names = list(cfg.search.space)
    shown = outcome.rows[:SHOWN]
    costs = [(head, key, scale) for head, key, scale in (
        ("params M", "student_params", 1e-6), ("latency ms", "latency_ms", 1.0))
        if any(key in row.cost for row in shown)]
    rows = [[row.trial_id, row.status, str(row.epochs),
             "-" if row.value is None else f"{row.value:.3f}",
             *(_fmt(row.config.get(n)) for n in names),
             *(f"{row.cost[key] * scale:.3g}" if key in row.cost else "-"
               for _, key, scale in costs)] for row in shown]
    print(f"{plural(len(outcome.rows), 'trial')}, best first"
          + (f" (the best {len(shown)} shown; all in MLflow)" if len(shown) < len(outcome.rows)
             else "") + f", ranked by {metric} at the last epoch:")
    print("\n".join(format_table(
        ["trial", "status", "epochs", metric, *names, *(head for head, _, _ in costs)], rows,
        right={2, 3, *range(4 + len(names), 4 + len(names) + len(costs))})))
    if outcome.best is None and not outcome.interrupted:
        print("no trial completed; see the failures above")
    elif outcome.best is None:
        print("no trial completed before the search was interrupted")
    else:
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in outcome.best.config.items())
        print(f"\nbest: {metric} {outcome.best.value:.3f}"
              + (f" with {settings}" if settings else "")
              + f" (MLflow run {outcome.best.run_id})")
    if outcome.kd_gain is not None:
        from kdsearch.track.report import kd_gain_line

        print(kd_gain_line(outcome.kd_gain))
    for warning in outcome.warnings:
        print(f"warning: {warning}")
    python = python_command()
    if not cfg.tracking_uri.startswith(("http://", "https://")):
        print(f"\nopen the results:  {python} -m mlflow ui --backend-store-uri "
              f"{redact(cfg.tracking_uri)}")
    print(f"the trials, best first, in the MLflow UI:\n  {outcome.trials_link}")
    if outcome.report:
        print(f"the report:        {outcome.report}")
    if outcome.best is not None and cfg.search.space:
        # Credentials in the URI are never printed: give them as MLflow's environment
        # variables (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) instead.
        uri = ("" if cfg.tracking.uri == _default_uri()
               else f" --tracking-uri {redact(cfg.tracking_uri)}")
        print(f"export the best:   {python} -m kdsearch.best --experiment "
              f"{cfg.experiment.name}{uri}")


def _dry_run_constraints(cfg: SpaceConfig) -> int:
    """With ``search.constraints``: each backbone's cost on this machine, and exit 2 when none
    meets the limits (what the search itself would refuse)."""
    if not cfg.search.constraints.limits():
        return 0
    from kdsearch.data.dataset import known_class_count
    from kdsearch.models.cost import check_constraints

    try:
        costs = check_constraints(cfg, known_class_count(cfg.data))
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\nstudent cost on this machine's CPU (batch 1):")
    for name, cost in costs.items():
        exceeded = cfg.search.constraints.violations(cost)
        print(f"  {name}: {cost['student_params'] / 1e6:.2f} M params, "
              f"{cost['student_gflops']:.3g} GFLOPs, {cost['latency_ms']:.3g} ms, "
              f"{cost['cpu_latency_ms']:.3g} ms on one thread: "
              + (f"exceeds {', '.join(exceeded)}" if exceeded else "meets the constraints"))
    return 0


def _default_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # --offline is the space file's offline: true, so validation knows it too.
        cfg = load_space(args.space, [*args.overrides, *["offline=true"] * args.offline])
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Before anything is created: a clip cache the disk cannot hold is bad input (exit 2).
    estimate = cache_estimate(cfg)
    too_big = estimate.problem() if estimate is not None else None
    if args.dry_run:
        print(yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
        print(f"\nsearch space ({cfg.search.num_samples} trials):\n{describe_space(cfg)}")
        if estimate is not None:
            print(f"\n{estimate.describe()}")
    if too_big is not None:
        print(f"error: {too_big}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        return _dry_run_constraints(cfg)
    from kdsearch.search.driver import run_search

    try:
        outcome = run_search(cfg, args.space.resolve(), address=args.address,
                             resume=args.resume)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ArtifactError, DiskFullError) as err:  # what to delete, or how much space
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished trials are in MLflow and the Ray results folder",
              file=sys.stderr)
        return 130
    print_outcome(outcome, cfg)
    if outcome.interrupted:
        print("\nthe search was interrupted; finished trials are recorded in MLflow",
              file=sys.stderr)
        return 130
    if outcome.publish_failed:
        failed = "; ".join(outcome.publish_failed)
        print(f"\nthe trials are recorded, but publishing failed ({failed}); to publish "
              f"again: {python_command()} -m kdsearch.run {args.space} --resume {outcome.name}",
              file=sys.stderr)
        return 1
    return 0 if outcome.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
