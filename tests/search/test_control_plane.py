"""The private local Ray a search starts listens on loopback only and wants Ray's token
(kdsearch.search.cluster.init_ray; docs/security.md#what-listens-where).

The Ray is started the way a search's driver starts it, in a process of its own; the
listening sockets are then read from the kernel (psutil, which Ray bundles) for that
process and every process below it: GCS, raylet (node manager and object manager), the
runtime-env agent, the driver's and each worker's gRPC server.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdsearch.testing import write_tiny_space

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # the last: IPv4 loopback on a v6 socket

# Run as the driver: init_ray as kdsearch.run calls it, a few tasks so that worker
# processes exist and listen, then every listening socket of the process tree, and two
# clients of the GCS, one with a wrong token and one with the token Ray wrote.
DRIVER = """
import json, os, subprocess, sys
from pathlib import Path
import ray
from kdsearch.config.load import load_space
from kdsearch.search.cluster import init_ray

init_ray(load_space(Path(sys.argv[1])), None, print)

@ray.remote
def pid():
    return os.getpid()

workers = set(ray.get([pid.remote() for _ in range(4)]))
import psutil  # bundled with Ray, importable once ray is

sockets = []
for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        name = proc.name()
        conns = proc.net_connections(kind="inet")
    except psutil.NoSuchProcess:
        continue
    sockets += [[proc.pid, name, c.laddr.ip, c.laddr.port] for c in conns
                if c.status == psutil.CONN_LISTEN]

CLIENT = '''
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None, timeout=10)
    print("accepted")
except Exception as error:
    print("refused:", type(error).__name__, str(error)[:200])
'''
gcs = ray.get_runtime_context().gcs_address
answers = {}
for label, token in (("wrong", "not-the-token"), ("right", None)):
    env = dict(os.environ)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    answers[label] = subprocess.run([sys.executable, "-c", CLIENT, gcs], env=env,
                                    capture_output=True, text=True, timeout=60).stdout.strip()

from ray._private import ray_constants
print("REPORT", json.dumps({
    "gcs": gcs, "workers": sorted(workers), "sockets": sockets, "answers": answers,
    "auth_mode": os.environ.get("RAY_AUTH_MODE"),
    "cluster_default_restored": ray_constants.ENABLE_RAY_CLUSTER}))
ray.shutdown()
"""


def _run_driver(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    home = tmp_path / "home"
    home.mkdir()
    # A home of its own: the token Ray writes is this test's, and no variable of the
    # caller's shell (an address to join, an auth mode, a token) changes what is checked.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                        "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["HOME"] = str(home)
    path = write_tiny_space(tmp_path)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report,) = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    return proc.stdout, json.loads(report.removeprefix("REPORT "))


def test_local_ray_listens_on_loopback_only_and_wants_the_token(tmp_path: Path) -> None:
    stdout, report = _run_driver(tmp_path)
    assert any(line.startswith("Ray: a private local Ray, 1 node, ")
               for line in stdout.splitlines()), stdout

    sockets = report["sockets"]
    names = {name for _, name, _, _ in sockets}
    # The check sees the servers that matter: without them it would pass on nothing.
    assert {"gcs_server", "raylet"} <= names, sockets
    assert {pid for pid, *_ in sockets} & set(report["workers"]), sockets
    exposed = [s for s in sockets if s[2] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert report["gcs"].startswith("127.0.0.1:")
    # Only for the start: a later ray.init in this process picks addresses as Ray does.
    assert report["cluster_default_restored"] is True

    # Token authentication is on (Ray's default for a local start since 2.59), with the
    # token Ray wrote into this home; a client without it is refused.
    assert report["auth_mode"] == "token"
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert token.is_file() and token.read_text().strip()
    assert report["answers"]["right"] == "accepted", report["answers"]
    assert report["answers"]["wrong"].startswith("refused: AuthenticationError"), report
    # What docs/security.md says of the file: written with the process's umask.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(token.stat().st_mode) == 0o666 & ~umask
