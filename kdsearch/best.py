"""``python -m kdsearch.best --experiment NAME``: the best trial of a search, as a space file.

Reads the search's records in MLflow, ranks its completed trials, says whether the best one
is distinguishable from the runners-up, and writes a space file that trains it once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kdsearch.config import COST_METRICS, SEARCHABLE, Constraints, Student, final_space
from kdsearch.text import format_table, plural, python_command
from kdsearch.track.schema import (
    MAX_RESULTS,
    RESOLVED_SPACE,
    ROLE,
    SEARCH_QUERY,
    STATUS,
    TRIAL_ID,
    TRIAL_SPACE,
    Status,
    finite,
    ranked,
    standard_error,
    trial_runs,
)

EXIT_NOTHING = 1
EXIT_BAD_INPUT = 2


class BestError(Exception):
    """An expected failure: one line for stderr and the exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Candidate:
    run_id: str
    trial_id: str
    value: float
    params: dict[str, str]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


#: --max-<name> options: the limit of search.constraints each one sets.
LIMITS = {"latency_ms": "latency on the trials' own device, batch 1 (ms)",
          "cpu_latency_ms": "latency on one CPU thread, batch 1 (ms)",
          "params_m": "parameters (millions)", "gflops": "GFLOPs per clip"}


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kdsearch.best",
        description="Pick the best completed trial of a search and write it as a space file "
                    "that trains that student once.")
    parser.add_argument("--experiment", required=True, help="the experiment.name searched")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("best.yaml"),
                        help="the space file to write (default: best.yaml)")
    parser.add_argument("--search", default=None, metavar="RUN_ID",
                        help="the search's parent run id (default: the latest search with a "
                             "completed trial)")
    parser.add_argument("--top", type=int, default=5, metavar="N",
                        help="trials to list (default: 5)")
    parser.add_argument("--trial", default=None, metavar="TRIAL_ID",
                        help="pick this trial instead of the best (a completed one)")
    parser.add_argument("--export", type=Path, default=None, metavar="FILE.onnx",
                        help="also export the picked trial's student to ONNX (it needs its "
                             "checkpoint: the best tracking.top_k trials keep one), checked "
                             "against PyTorch and timed in ONNX Runtime")
    for name, what in LIMITS.items():
        parser.add_argument(f"--max-{name.replace('_', '-')}", type=_positive, default=None,
                            dest=f"max_{name}", metavar="X",
                            help=f"only trials whose student is within this {what}")
    return parser.parse_args(argv)


def limits_of(args: argparse.Namespace) -> Constraints:
    return Constraints(**{name: getattr(args, f"max_{name}", None) for name in LIMITS})


def within(order: Sequence[Candidate], limits: Constraints) -> list[Candidate]:
    """The candidates whose student meets ``limits`` (a trial without its cost recorded
    cannot be shown to meet them and is left out), best first; one line when none does."""
    if not limits.limits():
        return list(order)
    measured = [c for c in order if all(k in c.metrics for k in COST_METRICS)]
    kept = [c for c in measured if not limits.violations(c.metrics)]
    if not kept:
        asked = ", ".join(f"--max-{n.replace('_', '-')} {v:g}"
                          for n, (_, v, _) in limits.limits().items())
        closest = min(measured, key=lambda c: sum(max(0.0, x) / v for x, (_, v, _) in zip(
            limits.over(c.metrics).values(), limits.limits().values(), strict=True)),
            default=None)
        hint = (f"; the closest, trial {closest.trial_id}: "
                f"{', '.join(limits.violations(closest.metrics))}" if closest else
                "; no trial has its cost recorded (a search from before kdsearch measured it)")
        raise BestError(f"no completed trial meets {asked}{hint}", EXIT_NOTHING)
    return kept


def open_store(uri: str | None) -> Any:
    """An MlflowClient on ``uri``; a SQLite file must exist (MLflow would create it)."""
    uri = uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():
            raise BestError(f"no MLflow database at {path.absolute()}; pass the search's "
                            "store with --tracking-uri (sqlite:///path/mlflow.db, http://host)")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def find_experiment(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise BestError(f"no experiment {name!r} in this store (experiments: "
                        f"{', '.join(names) or 'none'})")
    return str(experiment.experiment_id)


def choose_search(client: Any, experiment_id: str, name: str, search_id: str | None) -> Any:
    """The given search, or the latest one with at least one completed trial."""
    from mlflow.exceptions import MlflowException

    if search_id is not None:
        try:
            run = client.get_run(search_id)
        except MlflowException:
            raise BestError(f"--search {search_id}: no such run") from None
        if run.info.experiment_id != experiment_id or run.data.tags.get(ROLE) != "search":
            raise BestError(f"--search {search_id}: not a search of experiment {name!r}")
        return run
    searches = client.search_runs([experiment_id], SEARCH_QUERY,
                                  order_by=["attributes.start_time DESC"],
                                  max_results=MAX_RESULTS)
    if not searches:
        raise BestError(f"experiment {name!r} has no search runs", EXIT_NOTHING)
    for run in searches:
        if trial_runs(client, experiment_id, run.info.run_id, status=Status.COMPLETED,
                      max_results=1):
            if run is not searches[0]:
                print(f"note: later searches have no completed trial yet (the latest: "
                      f"{searches[0].info.run_name}, run {searches[0].info.run_id})")
            return run
    return searches[0]  # none has a completed trial: its counts explain why


def candidates(runs: Sequence[Any], metric: str, mode: str) -> list[Candidate]:
    """Completed trials with a finite ``metric`` (its last epoch's value), best first, in the
    one ranking of trials (:func:`kdsearch.track.schema.ranked`)."""
    found = []
    for run in runs:
        value = finite(run.data.metrics.get(metric))
        if run.data.tags.get(STATUS) == Status.COMPLETED and value is not None:
            found.append(Candidate(run.info.run_id, run.data.tags.get(TRIAL_ID, "?"), value,
                                   dict(run.data.params), dict(run.data.metrics)))
    return ranked(found, mode=mode, status=lambda c: Status.COMPLETED, value=lambda c: c.value,
                  trial_id=lambda c: c.trial_id)


def status_counts(runs: Sequence[Any]) -> str:
    counts = Counter(run.data.tags.get(STATUS, "unknown") for run in runs)
    return ", ".join(f"{n} {status}" for status, n in counts.most_common()) or "no trials"


def searched_names(parent: Any, best: Candidate) -> list[str]:
    text = parent.data.params.get("searched")
    if text:
        return [n for n in text.split(",") if n]
    return [n for n in SEARCHABLE if n in best.params]  # a search from before "searched"


def _fmt(text: str) -> str:
    """A param as logged (a string), numbers shortened: 0.000412345 -> 0.0004123."""
    try:
        int(text)
        return text
    except ValueError:
        pass
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


#: The student's cost in the table: (heading, metric, scale, format).
COST_COLUMNS = (("params M", "student_params", 1e-6, "{:.2f}"),
                ("GFLOPs", "student_gflops", 1.0, "{:.3g}"),
                ("latency ms", "latency_ms", 1.0, "{:.3g}"),
                ("cpu ms", "cpu_latency_ms", 1.0, "{:.3g}"))


def print_table(top: Sequence[Candidate], metric: str, names: Sequence[str]) -> None:
    costs = [c for c in COST_COLUMNS if any(c[1] in t.metrics for t in top)]
    rows = [[str(i), c.run_id, c.trial_id, f"{c.value:.4f}",
             *(_fmt(c.params.get(n, "-")) for n in names),
             *(form.format(c.metrics[key] * scale) if key in c.metrics else "-"
               for _, key, scale, form in costs)] for i, c in enumerate(top, 1)]
    right = {0, 3, *range(4 + len(names), 4 + len(names) + len(costs))}
    print("\n".join(format_table(["rank", "run id", "trial id", metric, *names,
                                  *(c[0] for c in costs)], rows, right=right)))


def noise_note(ranked: Sequence[Candidate], metric: str, n_val: float | None) -> str:
    """Whether the runners-up are tied with the best, or within one binomial standard error
    of its accuracy on ``n_val`` validation videos."""
    best, others = ranked[0], ranked[1:]
    if not others:
        return "only one completed trial: nothing to compare the best with."
    se = standard_error(metric, best.value, n_val)
    tied = [c for c in others if c.value == best.value]
    near = [c for c in others if se and abs(c.value - best.value) <= se]
    if near:
        exact = f" ({len(tied)} tied exactly)" if tied else ""
        return (f"note: {_trials_are(len(near))} within one standard error ({se:.3f}, "
                f"{n_val:g} validation videos) of the best{exact}: "
                f"{', '.join(c.trial_id for c in near)}; their ranking is noise. More "
                "validation videos, or re-running them with another search.seed, would "
                "separate them.")
    if tied:
        return (f"note: {_trials_are(len(tied))} tied with the best ({metric} "
                f"{best.value:.4f}): {', '.join(c.trial_id for c in tied)}; which one ranks "
                "first is arbitrary. Re-running them with another search.seed would separate "
                "them.")
    gap = abs(best.value - others[0].value)
    if se is None:
        why = ("no noise estimate for val_loss" if metric == "val_loss"
               else "no data_val_videos on the search to estimate the noise")
        return f"the best is ahead of the next ({others[0].trial_id}) by {gap:.4f} ({why})."
    return (f"the best is ahead of the next ({others[0].trial_id}) by {gap:.4f}, more than "
            f"the noise (one standard error: {se:.3f}, {n_val:g} validation videos).")


def _trials_are(n: int) -> str:
    return f"{plural(n, 'trial')} {'is' if n == 1 else 'are'}"


def _artifact(client: Any, run_id: str, path: str) -> dict[str, Any] | None:
    """A YAML artifact as a dict; None when the run has none."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        try:
            data = yaml.safe_load(Path(local).read_text())
        except yaml.YAMLError as err:
            raise BestError(f"{path} of run {run_id} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise BestError(f"{path} of run {run_id} is not a space file (a mapping)")
    return data


def _typed(name: str, text: str) -> Any:
    kind = Student.model_fields[name].annotation
    try:
        return int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        raise BestError(f"param {name}={text!r} of the best run is not "
                        f"{'an integer' if kind is int else 'a number'}") from None


def best_space(client: Any, parent: Any, best: Candidate, names: Sequence[str]
               ) -> dict[str, Any]:
    """The best run's own space file, or the search's one with the run's params."""
    space = _artifact(client, best.run_id, TRIAL_SPACE)
    if space is not None:
        return space
    space = _artifact(client, parent.info.run_id, RESOLVED_SPACE)
    if space is None:
        raise BestError(f"neither run {best.run_id} ({TRIAL_SPACE}) nor its search "
                        "(resolved_space.yaml) has a space file to rebuild it from")
    wanted = {*names, *(space.get("search") or {}).get("space", {})}
    missing = [n for n in SEARCHABLE if n in wanted and n not in best.params]
    if missing:  # exporting would train the student's defaults, not the trial's settings
        raise BestError(f"run {best.run_id} (trial {best.trial_id}) has no recorded value of "
                        f"{', '.join(missing)} and no {TRIAL_SPACE}: its sampled settings were "
                        f"never written (the search's driver was killed); resume that search "
                        f"({python_command()} -m kdsearch.run SPACE.yaml --resume) to record them")
    sampled = {n: _typed(n, best.params[n]) for n in SEARCHABLE if n in wanted}
    print(f"note: run {best.run_id} has no {TRIAL_SPACE}; rebuilt from the search's "
          f"resolved_space.yaml and the run's params ({', '.join(sampled)})")
    return final_space(space, sampled)


def write_space(path: Path, space: Mapping[str, Any], header: str) -> None:
    """Write atomically: a temporary file beside ``path``, then a rename."""
    if not path.parent.is_dir():
        raise BestError(f"--out {path}: {path.parent} is not a directory")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(header + yaml.safe_dump(dict(space), sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    client = open_store(args.tracking_uri)
    experiment_id = find_experiment(client, args.experiment)
    parent = choose_search(client, experiment_id, args.experiment, args.search)
    params = parent.data.params
    metric = params.get("metric", "val_acc")
    mode = params.get("mode") or ("min" if metric == "val_loss" else "max")
    print(f"search: {parent.info.run_name} (run {parent.info.run_id}, "
          f"{parent.data.tags.get(STATUS, 'unknown')})")
    runs = trial_runs(client, experiment_id, parent.info.run_id)
    order = candidates(runs, metric, mode)
    if not order:
        raise BestError(f"search {parent.info.run_id} has no completed trial with {metric} "
                        f"({status_counts(runs)})", EXIT_NOTHING)
    limits = limits_of(args)
    order = within(order, limits)
    meeting = ("" if not limits.limits() else ", within " + ", ".join(
        f"{name} {limit:g}" for name, (_, limit, _) in limits.limits().items()))
    print(f"trials: {status_counts(runs)}; ranked by {metric} ({mode}), completed only"
          f"{meeting}\n")
    best = order[0]
    if args.trial is not None:
        chosen = next((c for c in order if c.trial_id == args.trial), None)
        if chosen is None:
            raise BestError(f"--trial {args.trial}: not a completed trial of this search"
                            + (" within the limits given" if limits.limits() else ""))
        best = chosen
    names = searched_names(parent, best)
    print_table(order[:max(args.top, 1)], metric, names)
    print(f"\n{'best' if best is order[0] else 'picked'}: run {best.run_id}, trial "
          f"{best.trial_id}, {metric} {best.value:.4f}")
    print(noise_note(order, metric, parent.data.metrics.get("data_val_videos")))
    if args.export is not None:
        export(client, best, args.export)
    space = final_space(best_space(client, parent, best, names), {},
                        experiment=f"{args.experiment}-final")
    which = "The best trial" if best is order[0] else "A trial picked with --trial"
    header = (f"# {which} of experiment {args.experiment}: run {best.run_id} (trial "
              f"{best.trial_id}) of search {parent.info.run_id}, {metric} {best.value:.4f}.\n"
              f"# Trains that student once:  {python_command()} -m kdsearch.run {args.out}\n")
    write_space(args.out, space, header)
    print(f"\nwrote {args.out}: train the final student with  {python_command()} -m "
          "kdsearch.run "
          f"{args.out}")
    return 0


def export(client: Any, picked: Candidate, out: Path) -> None:
    """The picked trial's student as ONNX at ``out``, checked against PyTorch on random clips
    of its shape and timed in ONNX Runtime on one CPU thread."""
    from mlflow.exceptions import MlflowException

    if not out.parent.is_dir():
        raise BestError(f"--export {out}: {out.parent} is not a directory")
    import torch

    from kdsearch.models.checkpoints import load_student, read_student
    from kdsearch.models.export import ExportError
    from kdsearch.track.model import export_checked

    with tempfile.TemporaryDirectory(prefix="kdsearch-export-") as tmp:
        try:
            local = Path(client.download_artifacts(picked.run_id, "checkpoint", tmp))
        except (MlflowException, OSError):
            raise BestError(f"trial {picked.trial_id} kept no checkpoint: only the best "
                            "tracking.top_k trials of a search do; pick one of them with "
                            "--trial, or train this one with the space file written here",
                            EXIT_NOTHING) from None
        saved = read_student(local)
        student = load_student(local, len(saved["classes"]))
        clip = {"num_frames": int(picked.params.get("clip_frames", 0) or 0),
                "crop_size": int(picked.params.get("crop_size", 0) or 0)}
        if not all(clip.values()):
            raise BestError(f"run {picked.run_id} records no clip shape (params clip_frames "
                            "and crop_size)")
        clips = torch.rand(16, 3, clip["num_frames"], clip["crop_size"], clip["crop_size"],
                           generator=torch.Generator().manual_seed(0))
        try:
            exported = export_checked(student, str(saved["settings"]["backbone"]), clip,
                                      out.absolute(), clips)
        except ExportError as err:
            raise BestError(str(err), EXIT_NOTHING) from None
    p = exported.parity
    verdict = "agrees with" if exported.problem is None else "DISAGREES with"
    print(f"\nexported {out} (ONNX opset {exported.tags()['onnx_opset']}, dynamic batch): "
          f"{verdict} PyTorch on {p.clips} random clips (largest logit difference "
          f"{p.max_abs_diff:.2g}, same predictions: {'yes' if p.same_predictions else 'no'}); "
          f"{exported.latency_ms:.3g} ms per clip in ONNX Runtime on one CPU thread")
    if exported.problem is not None:
        out.unlink(missing_ok=True)
        raise BestError(f"--export {out}: {exported.problem}; the file was removed",
                        EXIT_NOTHING)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:
        return run(args)
    except BestError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except (MlflowException, OSError) as err:
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: cannot read the MLflow records: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
