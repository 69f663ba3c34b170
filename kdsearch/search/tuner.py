"""The Tune side of a search: the scheduler the space file names and the Tuner (new, or
restored from storage after a crash) that runs the trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial
from ray import tune

from kdsearch.config import Agreement, Asha, HyperBand, Median, Search, SpaceConfig
from kdsearch.search.resume import searches_root
from kdsearch.search.sampler import make_searcher
from kdsearch.search.stopping import AgreementASHA, NoiseMargin
from kdsearch.search.trainable import make_trainable
from kdsearch.storage import tune_storage
from kdsearch.train.trial import TrialContext


def make_scheduler(search: Search, max_t: int, n_val: int | None = None) -> Any:
    """The Tune scheduler ``search.scheduler`` names, for trials of ``max_t`` epochs judged
    on ``n_val`` validation videos (the noise margin of ``agreement``); None for ``none``."""
    sched = search.scheduler
    if isinstance(sched, Asha):
        return tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor)
    if isinstance(sched, HyperBand):
        # Tune's synchronous HyperBandScheduler pauses trials until their bracket catches up
        # (and ran every trial to max_t under a concurrency limit here): the asynchronous form.
        return tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor, brackets=sched.brackets)
    if isinstance(sched, Median):
        return tune.schedulers.MedianStoppingRule(
            time_attr="epoch", grace_period=sched.grace_period,
            min_samples_required=sched.min_samples_required)
    if isinstance(sched, Agreement):
        return AgreementASHA(
            metric=search.metric, mode=search.mode, max_t=max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor, min_agreement=sched.min_agreement,
            min_pairs=sched.min_pairs,
            margin=NoiseMargin(search.metric, n_val) if sched.noise_margin else None)
    return None


def make_tuner(cfg: SpaceConfig, ctx: TrialContext, name: str, callbacks: list[Any],
           resume: bool, warm: Sequence[FrozenTrial] = (), scheduler: Any = None
           ) -> tune.Tuner:
    """A new Tuner for search ``name``, or the one saved there, restored (searcher state,
    scheduler, finished trials and the trials' last checkpoints included). ``scheduler``: the
    one a new Tuner uses (default: ``make_scheduler``'s)."""
    trainable = make_trainable(ctx)
    # A URI storage (s3://...) becomes a path plus the pyarrow filesystem that holds it.
    storage_path, filesystem = tune_storage(searches_root(cfg))
    if resume:
        return tune.Tuner.restore(f"{storage_path.rstrip('/')}/{name}", trainable,
                                  resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=filesystem)
    searcher = (make_searcher(cfg.search, cfg.student.epochs, warm) if cfg.search.space
                else None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric, mode=cfg.search.mode, search_alg=searcher,
            scheduler=scheduler if scheduler is not None else make_scheduler(
                cfg.search, cfg.student.epochs, len(ctx.val)),
            num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent,
            # A finished trial's process runs the next one: no new Python, torch import or
            # CUDA context per trial (benchmarks/search_quality.py --overhead). Safe: a trial
            # keeps no state outside kdsearch.train.trial.fit, and a failed one's process is not
            # reused.
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            callbacks=callbacks, verbose=0, **_checkpointing(filesystem is not None),
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures)),
    )


def _checkpointing(remote: bool) -> dict[str, Any]:
    """Checkpoints a resume after a driver crash can rely on.

    Tune deletes a trial's older checkpoints as new ones arrive, and a resume starts each
    trial from the checkpoint named in the last saved experiment state. Locally that state is
    written whenever a trial checkpoints, so keeping two suffices. In an object store the
    state is uploaded every ``sync_period`` seconds while trials upload checkpoints at once:
    the state can name a checkpoint already deleted (seen on S3), so every checkpoint stays
    (expire them with a bucket lifecycle rule) and the state is uploaded every 10 s.
    """
    if not remote:
        return {"checkpoint_config": tune.CheckpointConfig(num_to_keep=2)}
    return {"checkpoint_config": tune.CheckpointConfig(num_to_keep=None),
            "sync_config": tune.SyncConfig(sync_period=10)}
