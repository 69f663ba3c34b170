"""Published weights downloaded on first use into the torch hub cache, once per machine.

``torch.hub.download_url_to_file`` does the transfer: a temporary file in the destination
folder, a progress bar, a move into place, and the temporary file removed on any error. Added
here what it lacks:

- a ``filelock.FileLock`` next to the file, so that of concurrent processes on one machine one
  downloads and the others wait and then read the file;
- a staging name checked before the final rename, so a file under its final name is whole:
  Python's ``http.client`` returns a short body without an error when the server closes the
  connection early, and torch would move it into place. Files that carry their SHA-256
  prefix in their name (torchvision's ``r3d_18-b3b3357e.pth``, as ``torch.hub.HASH_REGEX``
  reads it) are hashed; pytorchvideo's (``X3D_M.pyth``) publish no hash, so their size is
  checked against the server's ``Content-Length`` instead;
- errors of one line naming the model, the URL and what was wrong.

Offline (``KDSEARCH_OFFLINE=1``, or ``offline=True`` from the space file) nothing downloads: a
missing file is an error naming the URL and where to place the file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import torch
from filelock import FileLock, Timeout

from kdsearch.models._spec import ModelSpec, WeightsError
from kdsearch.models._weights import read_state_dict, weights_path

OFFLINE_ENV = "KDSEARCH_OFFLINE"
_ON, _OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_STAGING = ".download"  # torch's own temporary file is "<staging>.<uuid>.partial"
_HEAD_TIMEOUT_S = 60


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def offline_from_env() -> bool:
    """Whether ``KDSEARCH_OFFLINE`` asks for local files only (1/true/yes/on; 0/false/no/off)."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value not in _ON + _OFF:
        raise WeightsError(
            f"{OFFLINE_ENV} is {value!r}, but must be one of {list(_ON + _OFF[1:])} or unset"
        )
    return value in _ON


def published_hash(spec: ModelSpec) -> str | None:
    """The SHA-256 prefix in the weights file's name (``r3d_18-b3b3357e.pth``), if any."""
    match = torch.hub.HASH_REGEX.search(spec.weights_file or "")
    return match.group(1) if match and match.group(1) else None


def fetch_weights(
    spec: ModelSpec,
    offline: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = _stderr,
) -> Path:
    """The path of ``spec``'s published weights in the torch hub cache, downloaded if missing.

    Concurrent callers on one machine download once: the others wait for the lock and read the
    file. ``offline`` (or ``KDSEARCH_OFFLINE=1``) never downloads: a missing file is an error.
    """
    path = weights_path(spec)
    if path.is_file():
        return path
    if offline or offline_from_env():
        raise WeightsError(
            f"{spec.pretrained} weights of model '{spec.name}' not found at '{path}': download "
            f"{spec.weights_url} and place it there (offline: kdsearch does not download)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, log):
        if not path.is_file():  # else another process downloaded it while this one waited
            _download(spec, path, progress, log)
    return path


def read_pretrained(spec: ModelSpec) -> tuple[Path, dict[str, torch.Tensor]]:
    """Read the published weights of ``spec``, downloading them first if missing."""
    path = fetch_weights(spec)
    return path, read_state_dict(path)


@contextlib.contextmanager
def _locked(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another process to download {path.name}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _download(spec: ModelSpec, path: Path, progress: bool, log: Callable[[str], None]) -> None:
    """Download to a staging name, check it, rename it into place; on any error keep nothing."""
    url = str(spec.weights_url)
    staging = path.with_name(path.name + _STAGING)
    _remove_stale(path)
    expected = published_hash(spec)
    try:
        size = None if expected else _content_length(url)
        log(f"downloading {url} to {path}")
        torch.hub.download_url_to_file(url, str(staging), hash_prefix=None, progress=progress)
        _check(spec, staging, expected, size)
        os.replace(staging, path)
    except (OSError, http.client.HTTPException) as err:
        raise WeightsError(
            f"{spec.pretrained} weights of model '{spec.name}' could not be downloaded from "
            f"{url}: {_reason(err)}; without network, download it elsewhere, place it at "
            f"'{path}' and set {OFFLINE_ENV}=1"
        ) from err
    finally:
        staging.unlink(missing_ok=True)


def _remove_stale(path: Path) -> None:
    """Staging files of a process killed mid-download (the caller holds the lock)."""
    for stale in path.parent.glob(f"{glob.escape(path.name)}{_STAGING}*"):
        stale.unlink(missing_ok=True)


def _content_length(url: str) -> int | None:
    """The size the server announces (a HEAD request); None when it gives none."""
    request = Request(url, method="HEAD", headers={"User-Agent": "torch.hub"})
    try:
        with urlopen(request, timeout=_HEAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
    except HTTPError:  # a server may refuse HEAD; the download itself reports a missing file
        return None
    return int(length) if length and length.isdigit() else None


def _check(spec: ModelSpec, staging: Path, expected: str | None, size: int | None) -> None:
    got = staging.stat().st_size
    if size is not None and got != size:
        raise WeightsError(
            f"download of model '{spec.name}' weights from {spec.weights_url} stopped after "
            f"{got} of {size} bytes; nothing was kept, try again"
        )
    if expected is None:
        return
    digest = hashlib.sha256()
    with staging.open("rb") as fh:  # hashlib.file_digest needs Python 3.11
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()[: len(expected)]
    if actual != expected:
        raise WeightsError(
            f"weights of model '{spec.name}' downloaded from {spec.weights_url} have SHA-256 "
            f"prefix {actual}, but the published one is {expected}; the file was deleted"
        )


def _reason(err: BaseException) -> str:
    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = getattr(err, "reason", None) or err
    return str(reason).strip().splitlines()[0] if str(reason).strip() else type(err).__name__
