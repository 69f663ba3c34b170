"""kdsearch.models._download: published weights downloaded once into the torch hub cache, the
hash or size checked, nothing left behind by a failed download, nothing fetched offline.

Every file comes from a local server (kdsearch.testing.http); the network is never used."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdsearch.models import WeightsError, create_model, fetch_weights
from kdsearch.models._download import published_hash
from kdsearch.testing.http import FileServer, file_server, run_together

from .helpers import (
    NUM_CLASSES,
    assert_same_tensors,
    hashed_name,
    register_served,
    served_spec,
    tiny3d_weights,
)

DATA = bytes(range(256)) * 400  # 100 KiB
HASHED = hashed_name("served3d", DATA)  # torchvision's style: the hash in the name
PLAIN = "SERVED3D.pyth"  # pytorchvideo's style: no published hash


@pytest.fixture
def server() -> Iterator[FileServer]:
    with file_server({HASHED: DATA, PLAIN: DATA, "served3d-00000000.pth": DATA}) as served:
        yield served


def leftovers(folder: Path) -> list[str]:
    """What a download left in the cache besides its lock file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_published_hash_is_read_from_the_file_name() -> None:
    assert published_hash(served_spec("http://x/a", "r3d_18-b3b3357e.pth")) == "b3b3357e"
    assert published_hash(served_spec("http://x/a", "X3D_M.pyth")) is None


@pytest.mark.parametrize("file", [HASHED, PLAIN])
def test_download_lands_in_the_cache_once(
    file: str, server: FileServer, hub_checkpoints: Path
) -> None:
    spec = served_spec(server.url(file), file)
    path = fetch_weights(spec, progress=False)
    assert path == hub_checkpoints / file and path.read_bytes() == DATA
    assert fetch_weights(spec, progress=False) == path
    assert server.count(file) == 1
    # Only a file without a published hash needs the announced size, from a HEAD request.
    assert server.count(file, "HEAD") == (file == PLAIN)
    assert leftovers(hub_checkpoints) == [file]


def test_create_model_downloads_on_first_use(
    monkeypatch: pytest.MonkeyPatch, hub_checkpoints: Path
) -> None:
    state, data = tiny3d_weights()
    file = hashed_name("served3d", data)
    with file_server({file: data}) as served:
        register_served(monkeypatch, served_spec(served.url(file), file))
        model = create_model("served3d", NUM_CLASSES, weights="kinetics400")
        assert served.count(file) == 1
    assert_same_tensors(model.state_dict(), state, skip="fc.")


def test_wrong_hash_deletes_the_file(server: FileServer, hub_checkpoints: Path) -> None:
    file = "served3d-00000000.pth"
    spec = served_spec(server.url(file), file)
    actual = HASHED.removeprefix("served3d-").removesuffix(".pth")
    with pytest.raises(WeightsError) as info:
        fetch_weights(spec, progress=False)
    assert str(info.value) == (
        f"weights of model 'served3d' downloaded from {server.url(file)} have SHA-256 prefix "
        f"{actual}, but the published one is 00000000; the file was deleted"
    )
    assert leftovers(hub_checkpoints) == []


@pytest.mark.parametrize(
    ("file", "message"),
    [
        (PLAIN, f"stopped after 1000 of {len(DATA)} bytes; nothing was kept"),
        (HASHED, "have SHA-256 prefix"),
    ],
)
def test_interrupted_transfer_leaves_nothing(
    file: str, message: str, hub_checkpoints: Path
) -> None:
    with file_server({file: DATA}, cut={file: 1000}) as served:
        spec = served_spec(served.url(file), file)
        with pytest.raises(WeightsError, match=re.escape(message)):
            fetch_weights(spec, progress=False)
        assert served.count(file) == 1
    assert leftovers(hub_checkpoints) == []


def test_stale_staging_files_are_removed(server: FileServer, hub_checkpoints: Path) -> None:
    # What a process killed mid-download leaves: kdsearch's staging file and torch's partial.
    (hub_checkpoints / f"{PLAIN}.download").write_bytes(b"old")
    (hub_checkpoints / f"{PLAIN}.download.0123abcd.partial").write_bytes(b"old")
    fetch_weights(served_spec(server.url(PLAIN), PLAIN), progress=False)
    assert leftovers(hub_checkpoints) == [PLAIN]


def test_unreachable_server_is_one_line(hub_checkpoints: Path) -> None:
    with file_server({}) as served:
        url = served.url(HASHED)
    spec = served_spec(url, HASHED)  # the server is gone: connection refused
    with pytest.raises(WeightsError) as info:
        fetch_weights(spec, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"kinetics400 weights of model 'served3d' could not be downloaded from {url}: "
    )
    assert f"place it at '{hub_checkpoints / HASHED}' and set KDSEARCH_OFFLINE=1" in message
    assert leftovers(hub_checkpoints) == []


def test_missing_file_on_the_server(server: FileServer, hub_checkpoints: Path) -> None:
    spec = served_spec(server.url("gone.pth"), "gone.pth")
    with pytest.raises(WeightsError, match=r"could not be downloaded from .*: HTTP 404"):
        fetch_weights(spec, progress=False)
    assert leftovers(hub_checkpoints) == []


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_never_asks_the_server(
    how: str, server: FileServer, hub_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = served_spec(server.url(HASHED), HASHED)
    if how == "env":
        monkeypatch.setenv("KDSEARCH_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        fetch_weights(spec, offline=how == "argument", progress=False)
    assert str(info.value) == (
        f"kinetics400 weights of model 'served3d' not found at '{hub_checkpoints / HASHED}': "
        f"download {server.url(HASHED)} and place it there (offline: kdsearch does not "
        "download)"
    )
    assert not server.requests
    # A file placed by hand is read offline.
    (hub_checkpoints / HASHED).write_bytes(DATA)
    assert fetch_weights(spec, offline=how == "argument") == hub_checkpoints / HASHED


def test_offline_env_values(monkeypatch: pytest.MonkeyPatch, hub_checkpoints: Path) -> None:
    from kdsearch.models import offline_from_env

    for value, offline in [("1", True), ("TRUE", True), ("0", False), ("", False)]:
        monkeypatch.setenv("KDSEARCH_OFFLINE", value)
        assert offline_from_env() is offline
    monkeypatch.setenv("KDSEARCH_OFFLINE", "maybe")
    with pytest.raises(WeightsError, match="KDSEARCH_OFFLINE is 'maybe', but must be one of"):
        offline_from_env()


def test_two_processes_download_once(
    hub_checkpoints: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The body is held back long enough that the second process finds the lock taken.
    with file_server({PLAIN: DATA}, delay=2.0) as served:
        spec = served_spec(served.url(PLAIN), PLAIN)
        codes = run_together(fetch_weights, (spec,), {"progress": False})
        assert codes == [0, 0], capfd.readouterr().err
        assert served.count(PLAIN) == 1
    assert (hub_checkpoints / PLAIN).read_bytes() == DATA
    assert leftovers(hub_checkpoints) == [PLAIN]
    assert f"waiting for another process to download {PLAIN}" in capfd.readouterr().err
