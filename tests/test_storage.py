"""``storage`` and ``data.root`` in an object store: a real S3 server (moto) on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import torch

from kdsearch import storage
from kdsearch.config import ConfigError
from kdsearch.config.load import load_space
from kdsearch.data.dataset import load_dataset, local_records, prepare_data
from kdsearch.models.checkpoints import load_teacher
from kdsearch.testing import TINY_SPACE, write_tiny_space
from kdsearch.train.cache import ClipCache, prepare_cache
from kdsearch.train.loop import to_model_input
from kdsearch.train.teacher import prepare_teacher
from kdsearch.train.trial import TrialContext, fit

BUCKET = "kdsearch-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fake-id", "AWS_SECRET_ACCESS_KEY": "fake-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A bucket on a moto S3 server; yields the ``?endpoint_override=...`` query to append."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                     "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                          region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)
        yield f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        server.stop()


def uri(query: str, *parts: str) -> str:
    return f"s3://{BUCKET}/{'/'.join(parts)}?{query}"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's "node-local disk"."""
    monkeypatch.setenv("KDSEARCH_NODE_CACHE", str(tmp_path / "node1"))
    return tmp_path / "node1"


class CountCopies:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.real = pafs.copy_files
        monkeypatch.setattr(storage.pafs, "copy_files", self)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        self.real(*args, **kwargs)


# --- URIs -----------------------------------------------------------------------------------

def test_uri_helpers() -> None:
    base = "s3://bucket/pre/?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.is_uri(base) and storage.is_uri("gs://b") and storage.is_uri("file:///x")
    assert not storage.is_uri("/data/videos") and not storage.is_uri("rel/path")
    assert storage.join(base, "ray", "exp/") == \
        "s3://bucket/pre/ray/exp?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("s3://bucket", "cache") == "s3://bucket/cache"
    assert storage.join("/tmp/store", "teachers", "k") == "/tmp/store/teachers/k"
    assert storage.name(storage.join(base, "cache", "abc")) == "abc"
    assert storage.name("/tmp/store/x") == "x"
    secret = ("s3://AKIAID:s3cr3t@bucket/pre?endpoint_override=h:9000&session_token=tok123"
              "&secret_key=s3cr3t&region=eu-west-1")
    shown = storage.redact(secret)
    assert shown == ("s3://bucket/pre?endpoint_override=h:9000&session_token=REDACTED"
                     "&secret_key=REDACTED&region=eu-west-1")
    assert storage.redact("/local/path") == "/local/path"
    assert storage.redact("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert storage.tune_storage("/tmp/store/ray") == ("/tmp/store/ray", None)


def test_filesystem_errors_name_no_secret() -> None:
    with pytest.raises(OSError) as err:
        storage.filesystem("nosuchscheme://user:hunter2@bucket/x?access_key=hunter2")
    assert "hunter2" not in str(err.value)


# --- node-local copies ----------------------------------------------------------------------

def _remote_folder(s3: str, tmp_path: Path, name: str) -> str:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 1000)
    (src / "sub" / "b.txt").write_text("bee")
    location = uri(s3, name)
    storage.upload(src, location)
    return location


def test_copy_to_local_once_then_again_when_the_remote_changes(
        s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    location = _remote_folder(s3, tmp_path, "copy-once")
    copies = CountCopies(monkeypatch)
    local = storage.copy_to_local(location, tmp_path / "node")
    assert copies.calls == 1
    assert (local / "a.bin").read_bytes() == b"a" * 1000
    assert (local / "sub" / "b.txt").read_text() == "bee"
    # Times are the remote's: a fingerprint of the copy is the same on every node.
    _, mtime = storage.stat(storage.join(location, "a.bin"))
    assert (local / "a.bin").stat().st_mtime_ns == mtime
    assert storage.copy_to_local(location, tmp_path / "node") == local
    assert copies.calls == 1
    marker = json.loads(local.with_name(local.name + storage.MARKER_SUFFIX).read_text())
    assert marker["files"] == 2 and "127.0.0.1" in marker["location"]
    storage.write_bytes(storage.join(location, "c.txt"), b"new")
    again = storage.copy_to_local(location, tmp_path / "node")
    assert again == local and copies.calls == 2 and (local / "c.txt").read_bytes() == b"new"
    # A single file comes back as the file, inside its own folder.
    one = storage.copy_to_local(storage.join(location, "sub", "b.txt"), tmp_path / "node")
    assert one.name == "b.txt" and one.read_text() == "bee"
    with pytest.raises(FileNotFoundError, match="no such"):
        storage.copy_to_local(storage.join(location, "missing"), tmp_path / "node")


_COPY = """
import sys, time
import pyarrow.fs as pafs
from kdsearch import storage
real = pafs.copy_files
def slow(*args, **kwargs):
    print("COPYING", flush=True)
    time.sleep(1.5)
    real(*args, **kwargs)
storage.pafs.copy_files = slow
local = storage.copy_to_local(sys.argv[1], storage.Path(sys.argv[2]))
print("FILES", sorted(p.name for p in local.rglob("*")))
"""


def test_a_concurrent_second_process_waits_for_the_copy(s3: str, tmp_path: Path) -> None:
    location = _remote_folder(s3, tmp_path, "concurrent")
    procs = [subprocess.Popen([sys.executable, "-c", _COPY, location, str(tmp_path / "node")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = "".join(out for out, _ in outputs)
    assert logs.count("COPYING") == 1
    assert logs.count("FILES ['a.bin', 'b.txt', 'sub']") == 2


# --- data, teacher and cache in S3 ----------------------------------------------------------

@pytest.fixture(scope="module")
def remote_data(s3: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny synthetic set, generated locally and uploaded to ``s3://.../data``."""
    folder = tmp_path_factory.mktemp("gen")
    cfg = load_space(write_tiny_space(folder), cwd=folder)
    root = prepare_data(cfg.data)
    location = uri(s3, "data")
    storage.upload(root, location)
    return location


def _space(folder: Path, data_root: str, store: str, **sections: Any) -> Path:
    data = {**TINY_SPACE["data"], "format": "video_folder", "root": data_root}
    del data["synthetic"]
    return write_tiny_space(folder, data=data, storage=store, **sections)


def test_a_data_root_uri_is_copied_once_per_node_and_indexed_there(
        s3: str, remote_data: str, tmp_path: Path, node: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_space(_space(tmp_path, remote_data, str(tmp_path / "store")), cwd=tmp_path)
    assert cfg.data.root == remote_data  # kept as written, not made a local path
    copies = CountCopies(monkeypatch)
    said: list[str] = []
    data = load_dataset(cfg.data, cfg.student.clip, tmp_path / "fb", log=said.append)
    assert copies.calls == 1
    assert "data: 4 classes, 16 training and 8 validation videos usable" in said
    assert all(r.path.is_relative_to(node) and r.path.is_file() for r in data.train + data.val)
    again = load_dataset(cfg.data, cfg.student.clip, tmp_path / "fb", log=lambda _: None)
    assert copies.calls == 1 and again.fingerprint == data.fingerprint
    # Another node: its own copy, the same fingerprint (times kept), records moved onto it.
    monkeypatch.setenv("KDSEARCH_NODE_CACHE", str(tmp_path / "node2"))
    other = load_dataset(cfg.data, cfg.student.clip, tmp_path / "fb2", log=lambda _: None)
    assert copies.calls == 2 and other.fingerprint == data.fingerprint
    moved = local_records(cfg.data, data.train)
    assert [r.path for r in moved] == [r.path for r in other.train]
    assert all(r.path.is_relative_to(tmp_path / "node2") for r in moved)


def test_a_missing_or_synthetic_data_root_uri_is_a_config_error(
        s3: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root: .*is not a directory"):
        load_space(_space(tmp_path, uri(s3, "nothing-here"), "store"), cwd=tmp_path)
    synthetic = {**TINY_SPACE["data"], "root": uri(s3, "gen")}
    with pytest.raises(ConfigError, match="format synthetic generates"):
        load_space(write_tiny_space(tmp_path, data=synthetic), cwd=tmp_path)


def test_teacher_and_cache_in_s3_storage_are_saved_once_and_reused(
        s3: str, remote_data: str, tmp_path: Path, node: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = uri(s3, "runs", "teacher-test")
    cfg = load_space(_space(tmp_path, remote_data, store), cwd=tmp_path)
    assert cfg.storage == store
    data = load_dataset(cfg.data, cfg.student.clip, storage.local_dir(cfg.storage, "indexes"),
                        log=lambda _: None)
    said: list[str] = []
    first = prepare_teacher(cfg, data, log=said.append)
    assert not first.reused and isinstance(first.path, str)
    assert first.path == storage.join(store, "teachers", first.key, "teacher.pt")
    assert storage.exists(first.path)
    meta = json.loads(storage.read_bytes(storage.join(store, "teachers", first.key,
                                                      "meta.json")))
    assert meta["metrics"]["val_acc"] == first.metrics["val_acc"]
    assert "fake-secret" not in "".join(said)
    second = prepare_teacher(cfg, data, log=said.append)
    assert second.reused and second.path == first.path and second.metrics == first.metrics
    folder = storage.redact(storage.join(store, "teachers", first.key))
    assert said[-1].startswith(f"teacher small3d: reusing {folder} ")
    # The cache defaults to <storage>/cache: built once, uploaded, reused.
    location = prepare_cache(cfg, data, first.path, log=said.append)
    assert location == storage.join(store, "cache", storage.name(location))
    assert prepare_cache(cfg, data, second.path, log=said.append) == location
    assert said[-1] == f"cache: reusing {storage.redact(location)}"
    copies = CountCopies(monkeypatch)
    assert ClipCache.open(location).folder == node / storage.name(location)
    assert copies.calls == 0  # the node that built it keeps its build as its copy
    # A trial on another node: the data, the teacher and the cache come to its disk.
    monkeypatch.setenv("KDSEARCH_NODE_CACHE", str(tmp_path / "node2"))
    teacher = load_teacher(first.path, torch.device("cpu"))
    copied = next((tmp_path / "node2").glob("teacher.pt-*/teacher.pt"))
    assert copied.is_file()
    clips = torch.zeros(2, 3, 4, 32, 32, dtype=torch.uint8)
    assert teacher(to_model_input(clips, torch.device("cpu"))).shape == (2, len(data.classes))
    assert ClipCache.open(location).folder.is_relative_to(tmp_path / "node2")
    cfg1 = cfg.model_copy(update={"student": cfg.student.model_copy(update={"epochs": 1})})
    ctx = TrialContext(cfg1, data.classes, str(first.path), data.train, data.val)
    reports: list[dict[str, Any]] = []
    fit(ctx, {"alpha": 0.5}, lambda metrics, _: reports.append(metrics))
    assert [r["epoch"] for r in reports] == [1]
    assert list((tmp_path / "node2").glob("data-*/train"))  # online decoding: a local copy


# --- Ray Tune results in S3 -----------------------------------------------------------------

def two_epochs(config: dict[str, Any]) -> None:
    """Reports epochs 1 and 2 with checkpoints; fails after epoch 1 unless resumed."""
    import tempfile

    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    for epoch in range(start + 1, 3):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "score": config["x"] * epoch, "resumed_from": start},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        if start == 0 and config["fail_once"]:
            raise RuntimeError("simulated crash after epoch 1")


@pytest.fixture(scope="module")
def ray_with_s3_env(s3: str) -> Iterator[None]:
    """A local Ray whose workers see the S3 credentials (Ray's workers inherit the
    environment of the processes ``ray.init`` starts, so it must start after ``s3``)."""
    import ray

    restart = ray.is_initialized()
    if restart:
        ray.shutdown()
    tests_dir = os.path.dirname(__file__)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
        # address="local": a Ray of its own even when another one runs on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        yield
        ray.shutdown()
    if restart:  # the session's Ray (tests/conftest.py) for the tests after these
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


def test_tune_writes_its_experiment_to_s3_and_restores_from_it(
        s3: str, ray_with_s3_env: None) -> None:
    from ray import tune

    store = uri(s3, "runs", "tune-test")
    storage_path, fs = storage.tune_storage(storage.join(store, "ray"))
    assert storage_path == f"{BUCKET}/runs/tune-test/ray" and isinstance(fs, pafs.S3FileSystem)
    tuner = tune.Tuner(
        two_epochs,
        param_space={"x": tune.grid_search([1, 2]), "fail_once": True},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=tune.RunConfig(name="exp", storage_path=storage_path,
                                  storage_filesystem=fs, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    first = tuner.fit()
    assert sorted(r.metrics["epoch"] for r in first) == [1, 1] and first.errors
    experiment = f"{storage_path}/exp"
    names = {info.base_name for info in fs.get_file_info(
        pafs.FileSelector(experiment, recursive=True))}
    assert "tuner.pkl" in names and any(n.startswith("experiment_state") for n in names)
    assert "checkpoint_000000" in names and "state.json" in names
    assert tune.Tuner.can_restore(experiment, storage_filesystem=fs)
    assert not tune.Tuner.can_restore(f"{storage_path}/nothing", storage_filesystem=fs)
    restored = tune.Tuner.restore(experiment, two_epochs, resume_errored=True,
                                  storage_filesystem=fs)
    results = restored.fit()
    assert not results.errors
    assert sorted((r.metrics["epoch"], r.metrics["resumed_from"]) for r in results) == \
        [(2, 1), (2, 1)]
    assert results.get_best_result().metrics["score"] == 4
    assert "checkpoint_000001" in {info.base_name for info in fs.get_file_info(
        pafs.FileSelector(experiment, recursive=True))}


PLANTED = "planted-s3cr3t"  # a credential in every URI field of a search's space file


def _written(s3: str, tmp_path: Path, server_files: Path) -> dict[str, bytes]:
    """Everything a search wrote: the bucket's objects (storage: Tune's folder and pickles,
    the teacher, the cache, the record; the data), the MLflow server's database and
    artifacts, and every file under the test's folder."""
    found: dict[str, bytes] = {}
    fs = pafs.S3FileSystem(**{k: v for k, v in (pair.split("=") for pair in s3.split("&"))
                              if k in ("endpoint_override", "scheme", "region")},
                           access_key="fake-id", secret_key="fake-secret")
    for info in fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                found[f"s3://{info.path}"] = stream.read()
    for root in (tmp_path, server_files):
        for path in root.rglob("*"):
            if path.is_file():
                found[str(path)] = path.read_bytes()
    return found


def test_a_search_in_s3_storage_survives_a_killed_driver_and_writes_no_secret(
        s3: str, remote_data: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> None:
    """The whole search lives in S3 (Tune state, checkpoints, teacher, cache, its record);
    the driver is killed mid-search and ``--resume`` finds and finishes it from there. Every
    URI of its space file carries a credential, and nothing it wrote or printed holds one."""
    import signal
    import subprocess
    import sys
    from collections import Counter

    from mlflow.tracking import MlflowClient

    from kdsearch.search.resume import unfinished_searches
    from kdsearch.testing import mlflow_server, run_until

    def secret(location: str, where: str) -> str:
        """``location`` with credentials in it, as Arrow reads them (``s3://KEY:SECRET@...``)."""
        return location.replace("s3://", f"s3://fake-id:{PLANTED}-{where}@")

    epochs = 4
    server_files = tmp_path_factory.mktemp("server")
    with mlflow_server(f"sqlite:///{server_files / 'server.db'}", server_files / "artifacts",
                       log=server_files / "server.log") as server:
        MlflowClient(server).create_experiment("earlier")  # warm-started from, empty
        tracking = server.replace("http://", f"http://kd:{PLANTED}-tracking@")
        store = secret(uri(s3, "searches"), "storage")
        search = {**TINY_SPACE["search"], "num_samples": 2, "scheduler": {"name": "none"},
                  "warm_start": {"experiment": "earlier",
                                 "tracking_uri": server.replace("http://",
                                                                f"http://kd:{PLANTED}-warm@")}}
        path = _space(tmp_path, secret(remote_data, "data"), store, search=search,
                      student={**TINY_SPACE["student"], "epochs": epochs},
                      teacher={**TINY_SPACE["teacher"],
                               "cache_dir": secret(uri(s3, "caches"), "cache")},
                      tracking={"uri": tracking})
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_RUN_ID")}
        env["KDSEARCH_NODE_CACHE"] = str(tmp_path / "node")
        # Killed once a trial has ended, the other one on its way.
        code, first = run_until(tmp_path, r"trials 1/2 done", env=env)
        assert code == -signal.SIGKILL, first[-3000:]
        (tmp_path / "first-run.txt").write_text(first)  # searched for secrets below
        cfg = load_space(path, cwd=tmp_path)
        (unfinished,) = unfinished_searches(cfg)  # its record is read back from S3
        resumed = subprocess.run([sys.executable, "-m", "kdsearch.run", "space.yaml",
                                  "--resume"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"resuming search {unfinished.name}" in resumed.stdout
        client = MlflowClient(server)
        runs = client.search_runs([unfinished.experiment_id])
        histories = {r.info.run_id: [m.step for m in client.get_metric_history(
            r.info.run_id, "val_acc")] for r in runs}
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert sorted(Counter(r.data.tags["kdsearch.trial_id"] for r in trials).values()) == [1, 1]
    for run in trials:
        steps = histories[run.info.run_id]
        assert sorted(steps) == list(range(1, epochs + 1)), run.data.tags.get("kdsearch.error")
    assert unfinished_searches(cfg) == []
    fs, root = storage.filesystem(store)
    assert fs.get_file_info(f"{root}/ray/{unfinished.name}/kdsearch_search.json").is_file

    # Nothing written holds a planted credential (the space file the user wrote aside).
    written = _written(s3, tmp_path, server_files)
    assert any(name.endswith("tuner.pkl") for name in written)  # the pickles are searched too
    assert any(name.endswith("server.db") for name in written)
    leaks = {name: data[max(0, data.index(PLANTED.encode()) - 80):][:160]
             for name, data in written.items() if PLANTED.encode() in data and name != str(path)}
    assert leaks == {}
    assert PLANTED not in resumed.stdout + resumed.stderr


# --- Committing files (no S3 server needed). ---


def test_write_file_commits_a_record_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(storage.SAMPLE_WHOLE + 3 * storage.SAMPLE_BLOCK + 5)
    record = storage.write_file(path, lambda f: f.write(data))
    assert path.read_bytes() == data and os.listdir(tmp_path) == ["data.bin"]
    assert record == storage.file_record(path) and record["size"] == len(data)
    assert storage.check_file(path, record, full=True) is None


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "middle", "missing"])
def test_check_file_finds_a_damaged_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "clips.npy"
    size = storage.SAMPLE_WHOLE + 40 * storage.SAMPLE_BLOCK
    record = storage.write_file(path, lambda f: f.write(os.urandom(size)))
    if damage == "truncated":
        os.truncate(path, size - 1)
    elif damage == "zeroed":
        path.write_bytes(bytes(size))
    elif damage == "middle":  # a block between the sampled ones: only the full hash sees it
        with open(path, "r+b") as f:
            f.seek(size // 2 + storage.SAMPLE_BLOCK // 2 + 100)
            f.write(bytes(4096))
    else:
        path.unlink()
    problem = storage.check_file(path, record, full=True)
    assert problem is not None and problem.startswith("clips.npy "), problem
    if damage in ("truncated", "zeroed", "missing"):  # the cheap check of every open sees these
        assert storage.check_file(path, record, full=False) is not None


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    storage.write_bytes(path, b"old")

    def fail(f: Any) -> None:
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        storage.write_file(path, fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["report.json"]


def test_temporary_names_are_unique_per_call(tmp_path: Path) -> None:
    names = {storage.temp_path(tmp_path / "meta.json").name for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith(f".meta.json.{os.getpid()}.") and n.endswith(".tmp") for n in names)


def test_remove_stale_removes_dead_or_older_writers_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = [tmp_path / f".KEY.{pid}.tmp", tmp_path / f".KEY.{pid}.ab12cd34.tmp"]
    stale[0].mkdir()
    (stale[0] / "train_clips.npy").write_bytes(b"x")
    stale[1].write_bytes(b"x")
    alive = tmp_path / f".KEY.{os.getppid()}.00000000.tmp"  # a live writer, newer than the lock
    alive.mkdir()
    older = tmp_path / f".KEY.{os.getppid()}.11111111.tmp"  # a live pid, but from before it
    older.mkdir()
    os.utime(older, (1, 1))
    other = tmp_path / f".OTHER.{pid}.tmp"
    other.mkdir()
    removed = storage.remove_stale(tmp_path, "KEY", since=alive.stat().st_mtime - 1)
    assert sorted(removed) == sorted([*stale, older])
    assert alive.exists() and other.exists() and not any(p.exists() for p in stale)


def test_check_free_is_one_line_with_needed_and_free(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    storage.check_free(tmp_path, 1, "cache X")
    monkeypatch.setattr(storage.shutil, "disk_usage",
                        lambda _: storage.shutil._ntuple_diskusage(10, 9, 1000))  # type: ignore[attr-defined]
    with pytest.raises(storage.DiskFullError, match=r"^cache X: needs 5000 bytes \(4\.9 KiB\) "
                       r"but 1000 \(1000 B\) are free on the disk of ") as err:
        storage.check_free(tmp_path, 5000, "cache X")
    assert "\n" not in str(err.value)
