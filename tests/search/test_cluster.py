"""A search starts its own Ray unless told to join one (kdsearch.search.cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kdsearch.testing import write_tiny_space

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
        # What a search does to get its Ray (kdsearch.search.cluster.init_ray), in a process
        # of its own as a search's driver is.
        path = write_tiny_space(tmp_path)
        proc = subprocess.run(
            [sys.executable, "-c", "import sys, ray; from pathlib import Path; "
             "from kdsearch.config.load import load_space; "
             "from kdsearch.search.cluster import init_ray; "
             f"init_ray(load_space(Path({str(path)!r})), None, print); "
             "print('foreign:', ray.cluster_resources().get('foreign', 0))"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        assert foreign.stdin is not None
        foreign.stdin.close()
        foreign.wait(timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("Ray: ")]
    cpus = os.cpu_count()
    assert line == f"Ray: a private local Ray, 1 node, {cpus} CPU{'s' if cpus != 1 else ''}, 0 GPUs"
    assert "foreign: 0" in proc.stdout.splitlines()
