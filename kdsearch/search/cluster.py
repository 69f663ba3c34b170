"""Which Ray a search runs on, and what it has.

A search starts its own private local Ray unless ``--address`` or ``RAY_ADDRESS`` names a
cluster: ``ray.init()`` without an address would join whatever cluster was last started on
the machine (``/tmp/ray/ray_current_cluster``), a stranger's included. Once connected, every
request the search will make of Ray is checked against the nodes (kdsearch.search.placement).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, NamedTuple

import ray

from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.models import OFFLINE_ENV
from kdsearch.search.placement import plan
from kdsearch.storage import redact
from kdsearch.text import plural


def init_ray(cfg: SpaceConfig, address: str | None, say: Any = print) -> SpaceConfig:
    """Join the cluster at ``address``/RAY_ADDRESS, else start a private local Ray, and say
    which in one line.

    Returns the configuration trials run with: GPUs asked of a cluster without any are an
    error, or with ``resources.allow_cpu`` a warning and CPU trials; then
    :func:`check_placement`.
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # The legacy reporter honours verbose=0; kdsearch draws its own progress line.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshots after every checkpoint are what a resume relies on (search.tuner).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                              "configure_logging": True}
    if cfg.offline:  # trials on other nodes load weights too: never from the network there
        kwargs["runtime_env"] = {"env_vars": {OFFLINE_ENV: "1"}}
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():  # a caller (a notebook, a test) already connected
        where = "the Ray this process started"
    elif address:
        ray.init(address=address, **kwargs)
        where = f"the Ray cluster at {redact(address)}"
    else:
        _start_local_ray(kwargs)
        where = "a private local Ray"
    say(f"Ray: {where}, {describe_cluster()}")
    return check_placement(_fit_gpus(cfg, say), say)


LOOPBACK = ("127.0.0.1", "::1")


def _start_local_ray(kwargs: dict[str, Any]) -> None:
    """Start a private local Ray whose servers (GCS, raylet and object manager, the driver's
    and every worker's) listen on loopback only (docs/security.md#what-listens-where).

    Ray 2.60 binds them to all interfaces unless the node's address is loopback, and turns
    an explicit ``_node_ip_address="127.0.0.1"`` into the machine's address; only its
    macOS/Windows default (``ray_constants.ENABLE_RAY_CLUSTER`` off) keeps the node on
    127.0.0.1. That flag is read when a node's address is picked, so it is off for this
    start only. Token authentication is Ray's own default for a local start (2.59 on).
    """
    from ray._private import ray_constants  # private: pinned by pyproject's ray bound

    cluster_default = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", include_dashboard=False, **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_default
    node = ray.util.get_node_ip_address()
    if node not in LOOPBACK:  # a Ray release that picks the address differently
        ray.shutdown()
        raise RuntimeError(f"the private local Ray took the address {node}, not loopback: "
                           "refusing to run with Ray listening on the network")


def describe_cluster() -> str:
    """``1 node, 2 CPUs, 0 GPUs``: what the connected Ray has now."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    resources = ray.cluster_resources()
    return (f"{plural(nodes, 'node')}, {plural(resources.get('CPU', 0), 'CPU')}, "
            f"{plural(resources.get('GPU', 0), 'GPU')}")


def check_placement(cfg: SpaceConfig, say: Any) -> SpaceConfig:
    """Check the teacher task, the trials and the KD-baseline tasks against the alive nodes and
    the node types the autoscaler can add, before any stage: ConfigError for a request that
    can never be placed, a line for what adapts or waits (kdsearch.search.placement)."""
    up = [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]
    placement = plan(cfg.resources, up, [t.resources for t in autoscaler_node_types()])
    if placement.problems:
        raise ConfigError(placement.problems)
    for note in placement.notes:
        say(note)
    return cfg.model_copy(update={"resources": placement.resources})


def _fit_gpus(cfg: SpaceConfig, say: Any) -> SpaceConfig:
    gpus = ray.cluster_resources().get("GPU", 0)
    wanted = cfg.resources.gpus_per_trial
    if wanted > 0 and gpus == 0 and (most := _autoscaler_max_gpus()):
        up_to = "GPU nodes" if math.isinf(most) else f"up to {plural(most, 'GPU')}"
        say(f"no GPU node is up yet; the autoscaler can add {up_to} and trials wait for them")
        return cfg
    if wanted > 0 and gpus == 0:
        if not cfg.resources.allow_cpu:
            raise ConfigError([f"resources.gpus_per_trial: {wanted} asks for GPUs but the Ray "
                               "cluster has none; set it to 0, or resources.allow_cpu: true "
                               "to train on CPUs"])
        say(f"warning: resources.gpus_per_trial is {wanted} but the Ray cluster has no GPU; "
            "trials run on CPUs (resources.allow_cpu)")
        return cfg.model_copy(update={"resources": cfg.resources.model_copy(
            update={"gpus_per_trial": 0})})
    return cfg


class NodeType(NamedTuple):
    resources: dict[str, float]  # one node's, as Ray names them ("CPU", "GPU")
    max_count: int  # -1: no limit


def autoscaler_node_types() -> list[NodeType]:
    """The node types the cluster's autoscaler may start (GPU worker groups scaled to zero
    included), [] when none or unknown. Ray has no public API for this; its private one may
    move between releases."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        groups = list(config.node_group_configs) if config is not None else []
        return [NodeType({key: float(value) for key, value in group.resources.items()},
                         int(group.max_count)) for group in groups if group.max_count != 0]
    except Exception:  # noqa: BLE001 - any failure means "unknown", never a crash
        return []


def _autoscaler_max_gpus() -> float:
    """GPUs the cluster's autoscaler may add, ``inf`` without a limit, 0 when unknown."""
    most = 0.0
    for node_type in autoscaler_node_types():
        if gpus := node_type.resources.get("GPU", 0.0):
            most += gpus * (math.inf if node_type.max_count < 0 else node_type.max_count)
    return most
