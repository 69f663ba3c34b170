"""The published weights a search needs, fetched once on the driver before any Ray work, so
that no trial downloads: the teacher's, and those of every student backbone the search can
build (the fixed ``student.backbone`` or each value of a searched ``backbone``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kdsearch.config import Choice, ConfigError, SpaceConfig
from kdsearch.models import ModelSpec, WeightsError, fetch_weights, get_spec


def published_weights(cfg: SpaceConfig) -> list[tuple[str, ModelSpec]]:
    """``(section, spec)`` of each model the search loads published weights for, once each."""
    space = cfg.search.space.get("backbone")
    backbones = space.values if isinstance(space, Choice) else [cfg.student.backbone]
    wanted = [("teacher", cfg.teacher.model, cfg.teacher.weights)]
    wanted += [("student", str(name), cfg.student.weights) for name in backbones]
    found: list[tuple[str, ModelSpec]] = []
    for section, model, weights in wanted:
        spec = get_spec(model)
        # "pretrained" means the model's own kind; a local checkpoint path is not published.
        if spec.pretrained is None or weights not in ("pretrained", spec.pretrained):
            continue
        if all(spec.name != seen.name for _, seen in found):
            found.append((section, spec))
    return found


def fetch_search_weights(cfg: SpaceConfig, log: Callable[[str], None]) -> list[Path]:
    """Download the missing published weights of ``cfg`` into the torch hub cache (nothing
    with ``cfg.offline`` or ``KDSEARCH_OFFLINE=1``, where a missing file is an error)."""
    paths = []
    for section, spec in published_weights(cfg):
        try:
            paths.append(fetch_weights(spec, offline=cfg.offline, log=log))
        except WeightsError as err:
            raise ConfigError([f"{section}.weights: {err}"]) from None
    return paths
