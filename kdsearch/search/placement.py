"""Whether every Ray request of a search can ever be placed, decided before any stage runs.

A search asks Ray for two shapes of work: the teacher stage, one task with
``resources.teacher_cpus`` CPUs and a whole GPU when trials use GPUs
(:mod:`kdsearch.search.teacher_task`), and the trials and KD-baseline tasks, each with
``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (:mod:`kdsearch.search.tuner`,
:mod:`kdsearch.search.baseline`). Ray never says that a request fits no node: the work stays
pending for ever. :func:`plan` compares each request with the nodes that are up and the node
types the autoscaler may add (plain resource maps, ``{"CPU": 4.0, "GPU": 1.0}``), so that a
request that can never be placed is an error before anything runs. No Ray here: the caller
(:mod:`kdsearch.search.cluster`) reads the nodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from kdsearch.config import Resources
from kdsearch.text import plural

Node = Mapping[str, float]  # a node's total resources, as Ray names them ("CPU", "GPU")


@dataclasses.dataclass(frozen=True)
class Request:
    """One shape of Ray work: its CPUs and GPUs, and the setting that sets its CPUs."""

    what: str
    cpus: float
    gpus: float
    cpu_setting: str


@dataclasses.dataclass(frozen=True)
class Placement:
    resources: Resources  # as given, or with the teacher's default CPUs adapted
    notes: list[str]  # one line each: what was adapted, what waits for the autoscaler
    problems: list[str]  # one line per request that can never be placed


def requests(resources: Resources) -> list[Request]:
    """What a search asks of Ray; the KD-baseline tasks ask what a trial asks."""
    teacher_gpus = 1.0 if resources.gpus_per_trial > 0 else 0.0
    return [Request("the teacher stage", resources.teacher_cpus, teacher_gpus,
                    "resources.teacher_cpus"),
            Request("a trial", resources.cpus_per_trial, resources.gpus_per_trial,
                    "resources.cpus_per_trial")]


def fits(request: Request, node: Node) -> bool:
    return node.get("CPU", 0.0) >= request.cpus and node.get("GPU", 0.0) >= request.gpus


def largest(nodes: Sequence[Node], gpus: float) -> Node | None:
    """The node with the most CPUs among those with ``gpus`` GPUs (then the most GPUs)."""
    return max((node for node in nodes if node.get("GPU", 0.0) >= gpus),
               key=lambda node: (node.get("CPU", 0.0), node.get("GPU", 0.0)), default=None)


def plan(resources: Resources, up: Sequence[Node], addable: Sequence[Node] = ()) -> Placement:
    """Check every request against the nodes ``up`` and the node types the autoscaler can
    add (``addable``); the teacher's CPUs, left at their default, shrink to what exists."""
    resources, notes = _adapt_teacher(resources, up, addable)
    problems, waiting = [], []
    for request in requests(resources):
        if any(fits(request, node) for node in up):
            continue
        if any(fits(request, node) for node in addable):
            waiting.append(f"{request.what} ({_shape(request)})")
        else:
            problems.append(_unplaceable(request, [*up, *addable], growing=bool(addable)))
    if waiting:
        notes.append(f"waiting for the autoscaler to add a node: no node up now fits "
                     f"{' or '.join(waiting)}")
    return Placement(resources, notes, problems)


def _adapt_teacher(resources: Resources, up: Sequence[Node], addable: Sequence[Node]
                   ) -> tuple[Resources, list[str]]:
    """At most the CPUs of the largest node with the teacher's GPU, the nodes up first, when
    ``teacher_cpus`` was left at its default; an explicit value is the user's to change."""
    teacher = requests(resources)[0]
    if "teacher_cpus" in resources.model_fields_set or any(fits(teacher, n) for n in up):
        return resources, []
    nodes = up if largest(up, teacher.gpus) is not None else addable
    node = largest(nodes, teacher.gpus)
    if node is None or not 1 <= node.get("CPU", 0.0) < teacher.cpus:
        return resources, []  # it fits a node the autoscaler adds, or nothing: plan says so
    cpus = int(node["CPU"])
    note = (f"teacher stage: {plural(cpus, 'CPU')} ({_nodes_text(nodes, teacher.gpus)}; "
            f"resources.teacher_cpus {teacher.cpus:g} cannot be placed)")
    return resources.model_copy(update={"teacher_cpus": cpus}), [note]


def _unplaceable(request: Request, nodes: Sequence[Node], growing: bool) -> str:
    """``resources.cpus_per_trial: 8 CPUs with 1 GPU cannot be placed: the largest node with
    a GPU has 4 CPUs and 1 GPU``, naming the GPU setting when no node has the GPUs."""
    where = " (up or that the autoscaler can add)" if growing else ""
    if largest(nodes, request.gpus) is None and nodes:
        most = max(nodes, key=lambda node: (node.get("GPU", 0.0), node.get("CPU", 0.0)))
        return (f"resources.gpus_per_trial: {_shape(request)} for {request.what} cannot be "
                f"placed: the node with the most GPUs{where} has {_size(most)}")
    return (f"{request.cpu_setting}: {_shape(request)} cannot be placed: "
            f"{_largest_text(nodes, request.gpus, where)}")


def _shape(request: Request) -> str:
    """``2 CPUs with 1 GPU``, or ``2 CPUs`` without GPUs."""
    gpus = f" with {plural(request.gpus, 'GPU')}" if request.gpus else ""
    return f"{plural(request.cpus, 'CPU')}{gpus}"


def _size(node: Node) -> str:
    cpus = plural(node.get("CPU", 0.0), "CPU")
    return f"{cpus} and {plural(node.get('GPU', 0.0), 'GPU')}" if node.get("GPU") else cpus


def _with_gpus(gpus: float) -> str:
    if not gpus:
        return "node"
    return "node with a GPU" if gpus <= 1 else f"node with {plural(gpus, 'GPU')}"


def _largest_text(nodes: Sequence[Node], gpus: float, where: str = "") -> str:
    node = largest(nodes, gpus)
    if node is None:
        return f"no {_with_gpus(gpus)} exists"
    return f"the largest {_with_gpus(gpus)}{where} has {_size(node)}"


def _nodes_text(nodes: Sequence[Node], gpus: float) -> str:
    """``the GPU nodes have 1 CPU each`` when they are alike, else the largest one."""
    alike = [node for node in nodes if node.get("GPU", 0.0) >= gpus]
    cpus = {node.get("CPU", 0.0) for node in alike}
    if len(alike) > 1 and len(cpus) == 1:
        return f"the {'GPU ' if gpus else ''}nodes have {plural(cpus.pop(), 'CPU')} each"
    return _largest_text(nodes, gpus)
