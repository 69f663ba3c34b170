"""The cluster templates in cluster/.

Ray's launcher configs are validated offline with Ray's own code:
``validate_config(prepare_config(config))``. ``prepare_config`` only merges the provider's
defaults file bundled with Ray (no cloud SDK, credentials or network: the provider's
bootstrap, which needs them, runs in ``ray up``), and ``validate_config`` checks the
result against ``ray/autoscaler/ray-schema.json``. Both are private Ray APIs (pinned by
pyproject's ray bound). The KubeRay manifest has no schema here, so it is checked for the
properties kdsearch relies on.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
README = CLUSTER / "README.md"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml", "onprem.yaml"]
RAYJOB = "kuberay-rayjob.yaml"
IMAGE = "ghcr.io/your-org/kdsearch:0.1.0@sha256:YOUR-IMAGE-DIGEST"  # as cluster/README.md says
CONSTRAINTS = "~/kdsearch/cluster/constraints.txt"
TOKEN = "~/.ray/auth_token"  # Ray's token on your machine, copied to every node
PROVIDER = {"aws.yaml": "aws", "gcp.yaml": "gcp", "onprem.yaml": "local"}
STORAGE = {"aws.yaml": "s3://", "gcp.yaml": "gs://", "onprem.yaml": "/mnt/shared/kdsearch"}
TRACKING = "http://127.0.0.1:5000"

CREDENTIALS = [
    re.compile(r"AWS_SECRET", re.IGNORECASE),  # AWS_SECRET_ACCESS_KEY, aws_secret_access_key
    re.compile(r"AWS_SESSION_TOKEN", re.IGNORECASE),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"private_key(_id)?\"\s*:"),  # a GCP service-account key file
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),  # GitHub tokens
    re.compile(r"\b(password|passwd|secret|token|api_key)\s*[:=]\s*\S", re.IGNORECASE),
]


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _load_all(name: str) -> dict[str, Any]:
    """The documents of a multi-document manifest, by kind."""
    docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
    kinds = {doc["kind"]: doc for doc in docs}
    assert len(kinds) == len(docs)
    return kinds


def _soccerdb1_trial() -> dict[str, float]:
    resources = yaml.safe_load((ROOT / "search_spaces" / "soccerdb1.yaml").read_text())
    return {"CPU": resources["resources"]["cpus_per_trial"],
            "GPU": resources["resources"]["gpus_per_trial"]}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _check_shell(commands: list[str]) -> None:
    """Each command is one line of valid bash (a folded YAML scalar whose lines are indented
    unevenly keeps its line breaks, and bash would split the command there)."""
    bash = shutil.which("bash")
    for command in commands:
        assert "\n" not in command, command
        if bash:
            result = subprocess.run([bash, "-n", "-c", command], capture_output=True,
                                    text=True, check=False)
            assert result.returncode == 0, (command, result.stderr)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config(name: str) -> None:
    raw = _load(name)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # raises on anything Ray's schema or launcher rejects
    assert raw["provider"]["type"] == PROVIDER[name]
    for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        _check_shell(raw.get(key, []))

    # The head: Ray's dashboard and MLflow on loopback, MLflow in the background.
    head = raw["head_start_ray_commands"]
    starts = [c for c in head if "ray start --head" in c]
    assert len(starts) == 1 and re.search(r"--dashboard-host[= ]127\.0\.0\.1(\s|$)", starts[0])
    servers = [c for c in head if "mlflow server" in c]
    assert len(servers) == 1
    server = servers[0]
    assert re.search(r"--host[= ]127\.0\.0\.1\s", server)
    assert re.search(r"--port[= ]5000\s", server)
    assert "nohup" in server and re.search(r"&\s*}?\s*$", server)
    assert "--artifacts-destination $KDSEARCH_STORAGE/" in server
    assert "0.0.0.0" not in "\n".join(head)

    # Every node installs Ray (the version tested here) and kdsearch, and gets the shared
    # storage location that MLflow's artifacts go under.
    setup = raw["setup_commands"]
    pins = [m.group(1) for c in setup for m in [re.search(r"ray\[default\]==([\d.]+)", c)] if m]
    assert len(pins) == 1 and _minor(pins[0]) == _minor(ray.__version__)
    installs = [c for c in setup if re.search(r"\bpip install\b", c) and "kdsearch" in c]
    assert installs
    editable = re.search(r"pip install -e (\S+)", " ".join(installs))
    if editable:  # from the copy in file_mounts: a package root reaches every node
        assert f"{editable.group(1)}/pyproject.toml" in raw["file_mounts"]
    for remote, local in raw["file_mounts"].items():
        if local == TOKEN:  # outside the repository: never committed
            assert remote == TOKEN
            continue
        assert (ROOT / local).exists(), local
    assert any(f"export KDSEARCH_STORAGE={STORAGE[name]}" in c for c in setup)

    if PROVIDER[name] == "local":
        # Ray detects each machine's resources: the local provider takes no node types.
        assert "available_node_types" not in raw
        assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
        assert "local.cluster.node" in prepared["available_node_types"]
    else:
        types = raw["available_node_types"]
        head_type = raw["head_node_type"]
        assert types[head_type]["resources"].get("GPU", 0) == 0  # a CPU head
        workers = {k: v for k, v in types.items() if k != head_type}
        assert workers
        trial = _soccerdb1_trial()
        assert raw["idle_timeout_minutes"] > 0  # idle GPU workers go away
        for worker in workers.values():
            resources, node = worker["resources"], worker["node_config"]
            assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
            assert _is_int(resources["GPU"]) and resources["GPU"] >= 1
            assert _is_int(resources["CPU"])
            # A soccerdb1 trial fits on one node of each type.
            assert resources["CPU"] >= trial["CPU"] and resources["GPU"] >= trial["GPU"]
            if PROVIDER[name] == "aws":  # trials write to the bucket
                assert node["IamInstanceProfile"]
            else:
                assert node["serviceAccounts"]
                (accelerator,) = node["guestAccelerators"]
                assert accelerator["acceleratorCount"] == resources["GPU"]
                assert node["scheduling"] == {"onHostMaintenance": "TERMINATE"}

    readme = README.read_text()
    assert f"ray up cluster/{name}" in readme and f"ray down cluster/{name}" in readme
    assert f"ray dashboard cluster/{name}" in readme


def _pip_installs(raw: dict[str, Any]) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands")
    return [c for key in keys for c in raw.get(key, []) if re.search(r"\bpip install\b", c)]


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_control_plane(name: str) -> None:
    """What a cluster exposes (cluster/README.md#what-is-exposed): Ray wants its token on
    every node, SSH comes from the user's CIDR only, workers have no public address, and
    every node installs the same versions."""
    raw = _load(name)
    # Token authentication: the token file copied to every node, and every `ray start`
    # (and every login shell, through ~/.kdsearch_env) in token mode.
    assert raw["file_mounts"][TOKEN] == TOKEN
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in raw[key] if "ray start" in c]
    assert len(starts) == 2
    for start in starts:
        assert re.search(r"(export )?RAY_AUTH_MODE=token;?\s+ray start", start), start
    assert any("export RAY_AUTH_MODE=token" in c and "~/.kdsearch_env" in c
               for c in raw["setup_commands"])
    # No rule or address open to the whole internet in any value (comments may say why).
    assert "0.0.0.0" not in yaml.safe_dump(raw)

    # Exact versions: every pip install goes through the constraints file, none upgrades.
    assert raw["file_mounts"][CONSTRAINTS] == "./cluster/constraints.txt"
    installs = _pip_installs(raw)
    assert installs
    for install in installs:
        assert f"pip install -c {CONSTRAINTS} " in install, install
        assert not re.search(r"\s(-U|--upgrade)\b", install), install

    readme = README.read_text()
    if PROVIDER[name] == "aws":
        # Ray adds SSH from 0.0.0.0/0 to any security group it creates: every node type
        # names the group the README creates, so Ray creates none.
        assert "security_group" not in raw["provider"]
        groups = {tuple(t["node_config"]["SecurityGroupIds"])
                  for t in raw["available_node_types"].values()}
        assert groups == {("sg-YOUR-KDSEARCH-SG-ID",)}
        assert "--port 22 --cidr YOUR-CIDR" in readme
    if PROVIDER[name] == "gcp":
        types = raw["available_node_types"]
        subnets = set()
        for key, node_type in types.items():
            (interface,) = node_type["node_config"]["networkInterfaces"]
            subnets.add(interface["subnetwork"])
            # an external address for the head only (`ray up` reaches it over SSH)
            assert len(interface["accessConfigs"]) == (key == raw["head_node_type"]), key
            image = node_type["node_config"]["disks"][0]["initializeParams"]["sourceImage"]
            assert "/family/" not in image  # one image, not a family that moves
        (subnet,) = subnets
        assert subnet.endswith("/subnetworks/kdsearch")
        head = types[raw["head_node_type"]]["node_config"]
        assert head["tags"] == {"items": ["kdsearch-head"]}
        assert "--source-ranges=YOUR-CIDR --target-tags=kdsearch-head" in readme


def test_constraints_file() -> None:
    """cluster/constraints.txt pins exact versions, Ray's the one the configs install."""
    lines = [line for line in (CLUSTER / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
        assert match, line
        pins[match.group(1).lower()] = match.group(2)
    assert pins["ray"] == ray.__version__
    for package in ("torch", "mlflow", "optuna", "pyarrow", "boto3"):
        assert package in pins, package


def test_ray_schema_rejects_what_it_should() -> None:
    """The validation above has teeth: node resources must be integers, keys known."""
    raw = _load("aws.yaml")
    fractional = copy.deepcopy(raw)
    fractional["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(fractional))
    unknown = copy.deepcopy(raw)
    unknown["storage"] = "s3://YOUR-BUCKET/kdsearch"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(unknown))


def test_kuberay_rayjob() -> None:
    doc = _load_all(RAYJOB)["RayJob"]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]

    argv = shlex.split(spec["entrypoint"])
    assert "python -m kdsearch.run" in spec["entrypoint"] and argv[:3] == [
        "python", "-m", "kdsearch.run"]
    space = argv[3]
    assert space.startswith("/app/") and (ROOT / space.removeprefix("/app/")).is_file()
    sets = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--set")
    assert sets["storage"].startswith(("s3://", "gs://"))  # shared by every retry
    assert sets["tracking.uri"] == TRACKING
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)

    assert spec["shutdownAfterJobFinishes"] is True
    assert _is_int(spec["ttlSecondsAfterFinished"]) and spec["ttlSecondsAfterFinished"] >= 0
    assert _is_int(spec["backoffLimit"]) and spec["backoffLimit"] >= 0

    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert _minor(cluster["rayVersion"]) == _minor(ray.__version__)
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head[0]["name"] == "ray-head"  # KubeRay takes the first container as Ray's
    (mlflow,) = [c for c in head if c.get("command", [])[:2] == ["mlflow", "server"]]
    command = mlflow["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5000"

    groups = cluster["workerGroupSpecs"]
    assert groups
    images = [c["image"] for c in head]
    for group in groups:
        assert group["minReplicas"] == 0
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            images.append(container["image"])
            gpus = container["resources"]["limits"]["nvidia.com/gpu"]
            assert int(gpus) == gpus and int(gpus) >= 1
    assert set(images) == {IMAGE}
    assert IMAGE in (CLUSTER / RAYJOB).read_text().split("apiVersion:")[0]  # its comments
    assert IMAGE in README.read_text()

    containers = [*head, *(c for g in groups for c in g["template"]["spec"]["containers"])]
    assert "@sha256:" in IMAGE and ":latest" not in IMAGE
    assert {c["imagePullPolicy"] for c in containers} == {"IfNotPresent"}
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay makes and hands the token

    readme = README.read_text()
    assert f"kubectl apply -f cluster/{RAYJOB}" in readme
    assert "kubectl get rayjobs" in readme and "kubectl port-forward" in readme


def test_kuberay_network_policy() -> None:
    """The Ray pods admit only the RayJob's own pods and, on the dashboard port, the
    KubeRay operator: no other pod, no address range; nothing made public."""
    docs = _load_all(RAYJOB)
    assert set(docs) == {"RayJob", "NetworkPolicy"}  # no Service, Ingress or LoadBalancer
    job, policy = docs["RayJob"], docs["NetworkPolicy"]
    cluster = job["spec"]["rayClusterSpec"]
    own = policy["spec"]["podSelector"]["matchLabels"]
    templates = [cluster["headGroupSpec"]["template"],
                 *(g["template"] for g in cluster["workerGroupSpecs"])]
    for template in templates:  # the policy selects every Ray pod
        assert own.items() <= template["metadata"]["labels"].items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    peers, operator = policy["spec"]["ingress"]
    assert "ports" not in peers  # its own pods, on every port Ray uses
    assert peers["from"] == [{"podSelector": {"matchLabels": own}},
                             {"podSelector": {"matchLabels": {
                                 "batch.kubernetes.io/job-name": job["metadata"]["name"]}}}]
    (source,) = operator["from"]
    assert source["podSelector"] == {"matchLabels": {
        "app.kubernetes.io/name": "kuberay-operator"}}
    assert set(source) == {"namespaceSelector", "podSelector"}  # both: the operator only
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert "ipBlock" not in yaml.safe_dump(policy)


@pytest.mark.parametrize("path", sorted(p.name for p in CLUSTER.iterdir() if p.is_file()))
def test_no_credentials(path: str) -> None:
    text = (CLUSTER / path).read_text()
    for pattern in CREDENTIALS:
        assert not pattern.search(text), (path, pattern.pattern)


def test_every_config_is_covered() -> None:
    files = {p.name for p in CLUSTER.iterdir() if p.suffix == ".yaml"}
    assert files == {*LAUNCHER_CONFIGS, RAYJOB}
