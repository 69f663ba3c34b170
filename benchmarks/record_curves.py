"""Record real learning curves: a tabular benchmark of the demo's search space.

    python benchmarks/record_curves.py --out benchmarks/curves/demo.parquet
    python benchmarks/record_curves.py --out benchmarks/curves/fewshot.parquet \\
        --set data.root=data/synthetic-fewshot --set data.synthetic.train_per_class=30 \\
        --set "student.clip={num_frames: 4, stride: 4, crop_size: 32}"
    python benchmarks/record_curves.py --smoke            # a check that it runs, ~1 min

In the style of the learning-curve benchmarks of the HPO literature (LCBench, NAS-Bench-201):
``--configs`` configurations are drawn uniformly from the space file's ``search.space``
(Optuna's RandomSampler, seed ``--sample-seed``: uniform, or uniform in the logarithm for a
``loguniform`` setting), and each is trained to the full budget (``student.epochs``) by
kdsearch's own trial code (``kdsearch.train.trial.fit``, no Ray), with the space file's
teacher, clip cache, data and fixed settings. Every epoch's ``val_acc``, ``val_loss`` and
``train_loss`` are kept. The first ``--seeded`` configurations are trained again with each
extra training seed (``search.seed``, which seeds the student's initialisation and the batch
order), so that the noise between seeds is known.

Output: one Parquet table, one row per (configuration, training seed, epoch): ``config``
(its number in the drawing order), the searched settings, ``seed``, ``epoch``, ``val_acc``,
``val_loss``, ``train_loss``, ``seconds`` (the trial's wall time to that epoch), and the
space file and overrides in the file's metadata. Finished trials are appended to
``OUT.partial.jsonl`` as they end, so an interrupted run loses at most the trials in flight
and a rerun of the same command continues; the Parquet file is written (atomically) once
every trial is done, and the partial file removed. Prints the Spearman rank correlation of
every epoch with the last.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

DEMO = REPO / "search_spaces" / "demo.yaml"
METRICS = ("val_acc", "val_loss", "train_loss")
#: --smoke: a tiny set and budget; every step of a real recording.
SMOKE = ["data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1",
         "data.synthetic.num_frames=16", "data.synthetic.size=32", "teacher.epochs=1",
         "teacher.cache_views=1", "student.epochs=2",
         "student.clip={num_frames: 4, stride: 2, crop_size: 16}", "teacher.pretrain=null"]


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="kdsearch-curves-smoke-") as tmp:
            out = args.out if args.out != _parser().get_default("out") else Path(tmp) / "t.parquet"
            record(args.space, [*SMOKE, f"data.root={tmp}/data", f"storage={tmp}/storage",
                                *args.set], out, configs=3, seeded=1, extra_seeds=1,
                   workers=args.workers, sample_seed=args.sample_seed, workdir=Path(tmp))
        return
    record(args.space, args.set, args.out, configs=args.configs, seeded=args.seeded,
           extra_seeds=args.extra_seeds, workers=args.workers, sample_seed=args.sample_seed,
           workdir=Path.cwd())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--space", type=Path, default=DEMO, help="the space file (default: the demo)")
    add("--set", action="append", default=[], metavar="KEY=VALUE",
        help="a space-file override, as kdsearch.run's --set; repeatable")
    add("--out", type=Path, default=HERE / "curves" / "demo.parquet")
    add("--configs", type=int, default=200, help="configurations drawn (default 200)")
    add("--seeded", type=int, default=20, help="of them, how many are trained again with "
        "every extra seed (default 20)")
    add("--extra-seeds", type=int, default=2, help="extra training seeds (default 2: three "
        "seeds in all)")
    add("--sample-seed", type=int, default=0, help="the seed of the drawing (default 0)")
    add("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 1),
        help="trials at once, one CPU thread each (default: the CPU count)")
    add("--smoke", action="store_true", help="3 tiny trials and one extra seed in a temporary "
        "folder: checks that the recording runs, measures nothing")
    return parser


@dataclasses.dataclass(frozen=True)
class Job:
    config: int
    sampled: dict[str, Any]
    seed: int


def record(space_path: Path, overrides: Sequence[str], out: Path, *, configs: int, seeded: int,
           extra_seeds: int, workers: int, sample_seed: int, workdir: Path) -> Path:
    from objectives import draw

    from kdsearch.config.load import load_space
    from kdsearch.data.dataset import load_dataset, prepare_data
    from kdsearch.storage import local_dir
    from kdsearch.train.cache import prepare_cache
    from kdsearch.train.teacher import prepare_teacher
    from kdsearch.train.trial import TrialContext

    started = time.monotonic()
    cfg = load_space(space_path, list(overrides), cwd=workdir)
    base_seed = cfg.search.seed
    prepare_data(cfg.data, log=print)
    data = load_dataset(cfg.data, cfg.student.clip, local_dir(cfg.storage, "indexes"), log=print)
    teacher = prepare_teacher(cfg, data, print)
    cache = prepare_cache(cfg, data, teacher.path, print) if cfg.teacher.cache else None
    ctx = TrialContext(cfg, data.classes, str(teacher.path), data.train, data.val, cache)
    drawn = draw(cfg.search.model_dump(mode="json")["space"], configs, sample_seed)
    jobs = [Job(i, sampled, base_seed) for i, sampled in enumerate(drawn)]
    jobs += [Job(i, drawn[i], base_seed + k) for k in range(1, extra_seeds + 1)
             for i in range(min(seeded, configs))]
    partial = out.with_name(out.name + ".partial.jsonl")
    done = _finished(partial)
    todo = [job for job in jobs if (job.config, job.seed) not in done]
    print(f"teacher {cfg.teacher.model} val_acc {teacher.metrics.get('val_acc', float('nan')):.3f}"
          f"; {len(jobs)} trials of {cfg.student.epochs} epochs ({configs} configurations, "
          f"{min(seeded, configs)} of them with {extra_seeds} more seeds); {len(jobs) - len(todo)}"
          f" already recorded in {partial}; {workers} at a time", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    with (futures.ProcessPoolExecutor(workers, mp_context=context) as pool,
          partial.open("a") as sink):
        pending = {pool.submit(train, ctx, job): job for job in todo}
        for n, finished in enumerate(futures.as_completed(pending), start=1):
            job = pending[finished]
            rows = finished.result()
            for row in rows:
                sink.write(json.dumps({"config": job.config, **job.sampled, "seed": job.seed,
                                       **row}) + "\n")
            sink.flush()
            print(f"[{(time.monotonic() - started) / 60:5.1f} min] {n}/{len(todo)}: config "
                  f"{job.config} seed {job.seed}: val_acc {rows[-1]['val_acc']:.3f} after "
                  f"{rows[-1]['epoch']} epochs, {rows[-1]['seconds']:.0f} s", flush=True)
    table = _table(partial, jobs, {"space": str(space_path), "overrides": list(overrides),
                                   "sample_seed": sample_seed,
                                   "teacher_val_acc": teacher.metrics.get("val_acc"),
                                   "train_videos": len(data.train),
                                   "val_videos": len(data.val), "epochs": cfg.student.epochs})
    _write(table, out)
    partial.unlink()  # everything is in the table now
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {table.num_rows} rows) in "
          f"{(time.monotonic() - started) / 60:.1f} min")
    print_correlations(table, cfg.student.epochs, base_seed)
    return out


def train(ctx: Any, job: Job) -> list[dict[str, float]]:
    """One trial, in a worker process: each epoch's metrics and the wall time to it."""
    import torch

    from kdsearch.train.trial import fit

    torch.set_num_threads(1)
    cfg = ctx.cfg.model_copy(update={"search": ctx.cfg.search.model_copy(
        update={"seed": job.seed})})
    rows: list[dict[str, float]] = []
    start = time.monotonic()

    def report(metrics: dict[str, Any], checkpoint: Path) -> None:
        rows.append({"epoch": int(metrics["epoch"]),
                     **{name: float(metrics[name]) for name in METRICS},
                     "seconds": time.monotonic() - start})

    fit(dataclasses.replace(ctx, cfg=cfg), job.sampled, report)
    return rows


def _finished(partial: Path) -> set[tuple[int, int]]:
    if not partial.is_file():
        return set()
    lines = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
    epochs: dict[tuple[int, int], int] = {}
    for line in lines:
        key = (int(line["config"]), int(line["seed"]))
        epochs[key] = epochs.get(key, 0) + 1
    return set(epochs)


def _table(partial: Path, jobs: Sequence[Job], meta: dict[str, Any]) -> Any:
    import pyarrow as pa

    wanted = {(job.config, job.seed) for job in jobs}
    rows = [line for line in map(json.loads, partial.read_text().splitlines())
            if (line["config"], line["seed"]) in wanted]
    rows.sort(key=lambda r: (r["config"], r["seed"], r["epoch"]))
    table = pa.Table.from_pylist(rows)
    return table.replace_schema_metadata({"kdsearch.curves": json.dumps(meta)})


def _write(table: Any, out: Path) -> None:
    import pyarrow.parquet as pq

    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out)


def print_correlations(table: Any, epochs: int, seed: int) -> None:
    """Spearman's rank correlation of each epoch's val_acc with the last epoch's (seed
    ``seed``), and the spread between training seeds."""
    from kdsearch.track.schema import rank_correlation

    rows = [r for r in table.to_pylist() if r["seed"] == seed]
    by_config: dict[int, dict[int, float]] = {}
    for r in rows:
        by_config.setdefault(r["config"], {})[r["epoch"]] = r["val_acc"]
    full = [c for c, curve in by_config.items() if epochs in curve]
    final = [by_config[c][epochs] for c in full]
    parts = []
    for epoch in range(1, epochs + 1):
        rho = rank_correlation([by_config[c][epoch] for c in full], final)
        parts.append(f"{epoch}: {'-' if rho is None else f'{rho:.2f}'}")
    print(f"rank correlation of val_acc at each epoch with epoch {epochs} "
          f"({len(full)} configurations): " + ", ".join(parts))
    finals: dict[int, list[float]] = {}
    for r in table.to_pylist():
        if r["epoch"] == epochs:
            finals.setdefault(r["config"], []).append(r["val_acc"])
    spread = [max(v) - min(v) for v in finals.values() if len(v) > 1]
    if spread:
        import statistics

        sds = [statistics.stdev(v) for v in finals.values() if len(v) > 1]
        print(f"between training seeds ({len(spread)} configurations): final val_acc standard "
              f"deviation median {statistics.median(sds):.3f}, max {max(sds):.3f}")


if __name__ == "__main__":
    main()
