"""The teacher stage and the cache build as Ray work, on the resources the space file gives
the teacher: a GPU worker when trials use GPUs, never a driver that may sit on a CPU-only
head node. Their progress lines travel back to the driver through a Ray queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.queue import Empty, Queue

from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.data.dataset import DatasetSplits
from kdsearch.search.cluster import describe_cluster
from kdsearch.storage import ArtifactError, DiskFullError
from kdsearch.text import plural
from kdsearch.train.cache import prepare_cache
from kdsearch.train.teacher import TeacherResult, prepare_teacher

# While the teacher task waits for a node (the autoscaler adding one, other work freeing
# one), a line says so this often: a pending Ray task says nothing by itself.
WAIT_NOTICE_S = 60.0


def _teacher_work(cfg: SpaceConfig, data: DatasetSplits, lines: Queue
                  ) -> tuple[TeacherResult, str | None]:
    lines.put(None)  # started: the driver stops saying that it waits for a node
    teacher = prepare_teacher(cfg, data, log=lines.put)
    cache = (prepare_cache(cfg, data, teacher.path, log=lines.put) if cfg.teacher.cache
             else None)
    return teacher, cache


def teacher_and_cache(cfg: SpaceConfig, data: DatasetSplits, say: Callable[[str], None]
                      ) -> tuple[TeacherResult, str | None]:
    """Fine-tune (or reuse) the teacher and build (or reuse) the cache, as one Ray task."""
    lines: Queue = Queue()
    gpus = 1 if cfg.resources.gpus_per_trial > 0 else 0
    task = ray.remote(num_cpus=cfg.resources.teacher_cpus, num_gpus=gpus, max_retries=0)
    ref = task(_teacher_work).remote(cfg, data, lines)
    say(f"teacher stage: a Ray task with {cfg.resources.teacher_cpus} CPUs and {gpus} GPUs")
    try:
        _wait(ref, lines, say, f"{plural(cfg.resources.teacher_cpus, 'CPU')} and "
                               f"{plural(gpus, 'GPU')}")
        result: tuple[TeacherResult, str | None] = ray.get(ref)
        return result
    except ray.exceptions.RayTaskError as err:
        # Teacher weights that do not fit, a damaged artifact, a full disk: their one line.
        if isinstance(err.cause, ConfigError | ArtifactError | DiskFullError):
            raise err.cause from None
        raise
    finally:
        ray.kill(lines.actor)  # type: ignore[arg-type]


def _wait(ref: ray.ObjectRef, lines: Any, say: Callable[[str], None], shape: str) -> None:
    """Pass the task's lines on until it ends; each ``WAIT_NOTICE_S`` it has not started,
    say what it waits for."""
    started, submitted = False, time.monotonic()
    notice = submitted + WAIT_NOTICE_S
    while not ray.wait([ref], timeout=0.5)[0]:
        started = _drain(lines, say) or started
        if not started and time.monotonic() >= notice:
            say(f"teacher stage: not started after {notice - submitted:.0f} s; it "
                f"waits for a node with {shape} free (Ray now: {describe_cluster()})")
            notice += WAIT_NOTICE_S
    _drain(lines, say)


def _drain(lines: Any, say: Callable[[str], None]) -> bool:
    """Say the lines queued so far; True when the task's start marker was among them."""
    started = False
    while True:
        try:
            line = lines.get_nowait()
        except Empty:
            return started
        if line is None:
            started = True
        else:
            say(line)
