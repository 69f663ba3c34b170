"""A search starts its own Ray unless told to join one (kdsearch.search.cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kdsearch.testing import TINY_SPACE, write_tiny_space

# Another Ray cluster on this machine, as `ray start` leaves one: its address is written to
# /tmp/ray/ray_current_cluster, where a bare ray.init() finds and joins it.
FOREIGN = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True,
                  head_node_args={"num_cpus": 1, "resources": {"foreign": 1}})
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.shutdown()
"""


def test_a_search_ignores_another_ray_on_the_machine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
    foreign = subprocess.Popen([sys.executable, "-c", FOREIGN], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert foreign.stdout is not None and foreign.stdout.readline().strip()
        # The trap is real: a bare ray.init() joins the other cluster.
        probe = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(log_to_driver=False); "
             "print(ray.cluster_resources().get('foreign', 0))"],
            env=env, capture_output=True, text=True, timeout=120)
        assert probe.stdout.split()[-1] == "1.0", probe.stdout + probe.stderr
        write_tiny_space(tmp_path, search={**TINY_SPACE["search"], "num_samples": 2})
        proc = subprocess.run([sys.executable, "-m", "kdsearch.run", "space.yaml"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
    finally:
        assert foreign.stdin is not None
        foreign.stdin.close()
        foreign.wait(timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("Ray: ")]
    cpus = os.cpu_count()
    assert line == f"Ray: a private local Ray, 1 node, {cpus} CPU{'s' if cpus != 1 else ''}, 0 GPUs"
