"""The thin adapter between Ray Tune and :func:`kdsearch.train.trial.fit`.

This is the only module a trial process imports Ray through, so Ray's API churn stays here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from kdsearch.train.trial import TrialContext, fit


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    # Which Ray node ran this epoch: a trial may move after a node is lost.
    metrics = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
    tune.report(metrics, checkpoint=None if checkpoint_dir is None
                else tune.Checkpoint.from_directory(str(checkpoint_dir)))


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: ``config`` holds the sampled settings."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # trials never write to the parent run
    torch.set_num_threads(max(1, int(ctx.cfg.resources.cpus_per_trial)))
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        fit(ctx, config, _report)
        return
    with checkpoint.as_directory() as resume_dir:
        fit(ctx, config, _report, resume=Path(resume_dir))


def make_trainable(ctx: TrialContext) -> Any:
    resources = {"cpu": ctx.cfg.resources.cpus_per_trial, "gpu": ctx.cfg.resources.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)
