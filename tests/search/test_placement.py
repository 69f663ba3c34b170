"""Every Ray request of a search fits a node, adapts, waits or is an error before anything runs
(kdsearch.search.placement; kdsearch.search.cluster.check_placement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdsearch.config import Resources
from kdsearch.config.load import load_space
from kdsearch.search.placement import Placement, plan
from kdsearch.testing import write_tiny_space

HEAD = {"CPU": 0.0}  # a head node that runs no work
GPU_1 = {"CPU": 1.0, "GPU": 1.0}  # a GPU worker with one CPU
GPU_4 = {"CPU": 4.0, "GPU": 1.0}


def _resources(**given: Any) -> Resources:
    return Resources.model_validate(given)  # what the space file set, the rest at defaults


def test_the_teachers_default_cpus_shrink_to_the_gpu_nodes() -> None:
    placement = plan(_resources(gpus_per_trial=1), [HEAD, GPU_1, GPU_1])
    assert placement.notes == ["teacher stage: 1 CPU (the GPU nodes have 1 CPU each; "
                               "resources.teacher_cpus 2 cannot be placed)"]
    assert placement.problems == []
    assert placement.resources.teacher_cpus == 1
    assert placement.resources.cpus_per_trial == 1 and placement.resources.gpus_per_trial == 1


def test_without_gpus_the_teacher_shrinks_to_the_largest_node() -> None:
    placement = plan(_resources(), [HEAD, {"CPU": 1.0}])
    assert placement.notes == ["teacher stage: 1 CPU (the largest node has 1 CPU; "
                               "resources.teacher_cpus 2 cannot be placed)"]
    assert placement.resources.teacher_cpus == 1


def test_requests_that_fit_change_nothing() -> None:
    resources = _resources(gpus_per_trial=0.25, cpus_per_trial=2)
    placement = plan(resources, [HEAD, GPU_4])
    assert placement == Placement(resources, [], [])


def test_an_explicit_teacher_cpus_that_cannot_fit_is_an_error() -> None:
    placement = plan(_resources(gpus_per_trial=1, teacher_cpus=2), [HEAD, GPU_1, GPU_1])
    assert placement.problems == ["resources.teacher_cpus: 2 CPUs with 1 GPU cannot be placed: "
                                  "the largest node with a GPU has 1 CPU and 1 GPU"]
    assert placement.resources.teacher_cpus == 2


def test_trials_larger_than_every_node_name_the_setting_and_the_largest_node() -> None:
    placement = plan(_resources(gpus_per_trial=1, cpus_per_trial=8),
                     [{"CPU": 16.0}, GPU_4, GPU_1])
    assert placement.problems == ["resources.cpus_per_trial: 8 CPUs with 1 GPU cannot be "
                                  "placed: the largest node with a GPU has 4 CPUs and 1 GPU"]
    placement = plan(_resources(cpus_per_trial=8, teacher_cpus=1), [HEAD, {"CPU": 4.0}])
    assert placement.problems == ["resources.cpus_per_trial: 8 CPUs cannot be placed: the "
                                  "largest node has 4 CPUs"]


def test_more_gpus_per_trial_than_any_node_has_names_gpus_per_trial() -> None:
    placement = plan(_resources(gpus_per_trial=2), [HEAD, GPU_4])
    assert placement.problems == ["resources.gpus_per_trial: 1 CPU with 2 GPUs for a trial "
                                  "cannot be placed: the node with the most GPUs has 4 CPUs "
                                  "and 1 GPU"]


def test_a_gpu_node_without_cpus_leaves_nothing_to_adapt_to() -> None:
    placement = plan(_resources(gpus_per_trial=1), [{"CPU": 8.0}, {"CPU": 0.0, "GPU": 1.0}])
    assert placement.problems[0] == ("resources.teacher_cpus: 2 CPUs with 1 GPU cannot be "
                                     "placed: the largest node with a GPU has 0 CPUs and 1 GPU")


def test_requests_that_only_an_added_node_fits_wait_for_the_autoscaler() -> None:
    placement = plan(_resources(gpus_per_trial=1), [{"CPU": 2.0}], [{"CPU": 8.0, "GPU": 1.0}])
    assert placement.problems == []
    assert placement.notes == ["waiting for the autoscaler to add a node: no node up now fits "
                               "the teacher stage (2 CPUs with 1 GPU) or a trial (1 CPU with "
                               "1 GPU)"]
    assert placement.resources.teacher_cpus == 2  # the added node has room for the default


def test_the_teacher_adapts_to_the_node_type_the_autoscaler_adds() -> None:
    placement = plan(_resources(gpus_per_trial=1), [{"CPU": 8.0}], [GPU_1])
    assert placement.resources.teacher_cpus == 1
    assert placement.notes[0] == ("teacher stage: 1 CPU (the largest node with a GPU has 1 CPU "
                                  "and 1 GPU; resources.teacher_cpus 2 cannot be placed)")
    assert placement.notes[1].startswith("waiting for the autoscaler")


def test_a_request_no_added_node_fits_either_is_an_error() -> None:
    placement = plan(_resources(gpus_per_trial=1, cpus_per_trial=8), [{"CPU": 2.0}], [GPU_4])
    assert placement.problems == ["resources.cpus_per_trial: 8 CPUs with 1 GPU cannot be "
                                  "placed: the largest node with a GPU (up or that the "
                                  "autoscaler can add) has 4 CPUs and 1 GPU"]


def test_a_loaded_space_file_knows_which_resources_it_set(tmp_path: Path) -> None:
    path = write_tiny_space(tmp_path, resources={"gpus_per_trial": 1})
    left = load_space(path, cwd=tmp_path).resources
    assert plan(left, [HEAD, GPU_1]).resources.teacher_cpus == 1
    given = load_space(path, ["resources.teacher_cpus=2"], cwd=tmp_path).resources
    assert plan(given, [HEAD, GPU_1]).problems[0].startswith("resources.teacher_cpus: 2 CPUs")


# A Ray cluster whose GPU workers have one CPU each (fake GPUs), in a process of its own: the
# session's local Ray (conftest.ray_local) may hold this one's connection.
_CLUSTER = """
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from kdsearch.config import ConfigError
from kdsearch.config.load import load_space
from kdsearch.run import main
from kdsearch.search import teacher_task
from kdsearch.search.cluster import init_ray

folder = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
for _ in range(2):
    cluster.add_node(num_cpus=1, num_gpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
out = {}
for name, overrides in {"default": [], "teacher_cpus": ["resources.teacher_cpus=2"],
                        "cpus_per_trial": ["resources.cpus_per_trial=4"]}.items():
    said = []
    try:
        cfg = init_ray(load_space(folder / "space.yaml", overrides, cwd=folder), None,
                       said.append)
        out[name] = {"said": said, "resources": cfg.resources.model_dump()}
    except ConfigError as err:
        out[name] = {"said": said, "problems": err.problems}

class Seen(Exception):
    pass

def say(line):
    out.setdefault("waiting", []).append(line)
    if "not started" in line:
        raise Seen

teacher_task.WAIT_NOTICE_S = 1.0  # a task that waits says so (unchecked: never placed)
try:
    teacher_task.teacher_and_cache(load_space(folder / "space.yaml",
                                              ["resources.teacher_cpus=2"], cwd=folder),
                                   None, say)
except Seen:
    pass
out["exit"] = main([str(folder / "space.yaml"), "--set", "resources.teacher_cpus=2"])
print("RESULT " + json.dumps(out), flush=True)
ray.shutdown()
cluster.shutdown()
"""


@pytest.fixture(scope="module")
def on_cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    folder = tmp_path_factory.mktemp("placement")
    write_tiny_space(folder, resources={"gpus_per_trial": 1})
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    proc = subprocess.run([sys.executable, "-c", _CLUSTER, str(folder)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1]), proc.stderr, folder


def test_on_one_cpu_gpu_workers_the_teacher_stage_takes_one_cpu(
        on_cluster: tuple[dict[str, Any], str, Path]) -> None:
    out = on_cluster[0]["default"]
    assert out["said"][0] == "Ray: the Ray this process started, 3 nodes, 2 CPUs, 2 GPUs"
    assert out["said"][1:] == ["teacher stage: 1 CPU (the GPU nodes have 1 CPU each; "
                               "resources.teacher_cpus 2 cannot be placed)"]
    assert out["resources"]["teacher_cpus"] == 1
    assert (out["resources"]["cpus_per_trial"], out["resources"]["gpus_per_trial"]) == (1, 1)


@pytest.mark.parametrize(("setting", "problem"), [
    ("teacher_cpus", "resources.teacher_cpus: 2 CPUs with 1 GPU cannot be placed: the largest "
                     "node with a GPU has 1 CPU and 1 GPU"),
    ("cpus_per_trial", "resources.cpus_per_trial: 4 CPUs with 1 GPU cannot be placed: the "
                       "largest node with a GPU has 1 CPU and 1 GPU"),
])
def test_on_one_cpu_gpu_workers_a_request_too_large_is_one_line(
        on_cluster: tuple[dict[str, Any], str, Path], setting: str, problem: str) -> None:
    assert on_cluster[0][setting]["problems"] == [problem]


def test_a_teacher_task_not_started_says_what_it_waits_for(
        on_cluster: tuple[dict[str, Any], str, Path]) -> None:
    waiting = on_cluster[0]["waiting"]
    assert waiting[0] == "teacher stage: a Ray task with 2 CPUs and 1 GPUs"
    assert waiting[-1] == ("teacher stage: not started after 1 s; it waits for a node with "
                           "2 CPUs and 1 GPU free (Ray now: 3 nodes, 2 CPUs, 2 GPUs)")


def test_the_command_exits_2_before_any_stage(
        on_cluster: tuple[dict[str, Any], str, Path]) -> None:
    out, stderr, folder = on_cluster
    assert out["exit"] == 2
    assert ("error: resources.teacher_cpus: 2 CPUs with 1 GPU cannot be placed: the largest "
            "node with a GPU has 1 CPU and 1 GPU") in stderr.splitlines()
    assert not (folder / "mlflow.db").exists()  # no MLflow run, no teacher, no trial
