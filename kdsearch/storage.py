"""Locations that are local paths or pyarrow filesystem URIs (``s3://``, ``gs://``, ...).

``storage`` and ``data.root`` may name an object store. Credentials come from the
environment the way pyarrow reads them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, an instance role...); a URI may carry
pyarrow's query options, e.g. ``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``.
Whatever is printed or logged goes through :func:`redact` first.

Code that reads files (decoders, ``torch.load``, memory maps) needs them on local disk:
:func:`copy_to_local` makes one copy per node and URI, under a file lock, and reuses it while
the remote listing is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs
from filelock import FileLock

#: Beside a node-local copy ``<name>``: written last, it marks the copy complete.
MARKER_SUFFIX = ".complete"
#: Query options whose values are secrets (matched as substrings, case-insensitively).
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "signature",
                 "sig", "sas")
_REDACTED = "REDACTED"


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` with ``parts`` appended: a path for a path, a URI (query kept) for a URI."""
    base = str(base)
    if not is_uri(base):
        return str(Path(base, *parts))
    split = urllib.parse.urlsplit(base)
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])
    return urllib.parse.urlunsplit(split._replace(path=path))


def name(location: str | os.PathLike[str]) -> str:
    """The last component of a path or of a URI's path (its query left out)."""
    location = str(location)
    if not is_uri(location):
        return Path(location).name
    split = urllib.parse.urlsplit(location)
    return (split.path.rstrip("/").rsplit("/", 1)[-1]) or split.netloc


def redact(location: str | os.PathLike[str]) -> str:
    """``location`` safe to print and log: user info and secret query values removed."""
    location = str(location)
    if not is_uri(location):
        return location
    split = urllib.parse.urlsplit(location)
    netloc = split.netloc.rpartition("@")[2]
    pairs = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
    query = [(k, _REDACTED if any(w in k.lower() for w in _SECRET_WORDS) else v)
             for k, v in pairs]
    if netloc == split.netloc and query == pairs:
        return location  # nothing to hide (and urlunsplit would turn sqlite://// into //)
    return urllib.parse.urlunsplit(split._replace(
        netloc=netloc, query=urllib.parse.urlencode(query, safe=":/")))


def filesystem(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path on it) for a URI; the local filesystem for a path."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).absolute())
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as err:
        raise OSError(f"{redact(location)}: {_redact_text(str(err), location)}") from None


def tune_storage(storage: str | os.PathLike[str]) -> tuple[str, pafs.FileSystem | None]:
    """What to pass as ``tune.RunConfig(storage_path=..., storage_filesystem=...)`` (and to
    ``Tuner.restore``/``Tuner.can_restore`` with an experiment name joined on the path)
    for results under ``storage``: a local path with no filesystem, or the path on an
    explicit pyarrow filesystem (query options such as ``endpoint_override`` live in the
    filesystem object; it pickles without credentials, so each Ray worker reads its own
    from its environment)."""
    storage = str(storage)
    if not is_uri(storage):
        return storage, None
    fs, path = filesystem(storage)
    return path, fs


def exists(location: str | os.PathLike[str]) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str | os.PathLike[str]) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def stat(location: str | os.PathLike[str]) -> tuple[int, int | None]:
    """(size in bytes, modification time in ns or None) of a file."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{redact(location)}: no such file")
    return int(info.size), info.mtime_ns


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return bytes(f.readall())


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write a small file whole: an object store shows it only once written; a local file
    is written beside and renamed, so a reader never sees half of it."""
    location = str(location)
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, fs_path = filesystem(location)
    fs.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(fs_path) as f:
        f.write(data)


def upload(local: str | os.PathLike[str], location: str | os.PathLike[str]) -> None:
    """Copy a local file or folder to ``location`` (a URI or a path)."""
    fs, target = filesystem(location)
    if Path(local).is_file():
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(Path(local).absolute()), target,
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs,
                    use_threads=True)


def node_local_root() -> Path:
    """Where this node keeps local copies of remote files: ``$KDSEARCH_NODE_CACHE``, else
    ``<temp dir>/kdsearch-cache``. The same path on every node of a cluster."""
    default = Path(tempfile.gettempdir()) / "kdsearch-cache"
    return Path(os.environ.get("KDSEARCH_NODE_CACHE") or default)


def local_dir(location: str | os.PathLike[str], *parts: str) -> Path:
    """A local folder for ``<location>/<parts>``: that folder for a local ``location``; for a
    URI, a folder on this node's disk standing in for it (indexes and other files that are
    cheap to rebuild and need not be shared)."""
    location = str(location)
    if not is_uri(location):
        return Path(location, *parts)
    return node_local_root() / "local" / _local_name(location) / Path(*parts)


def copy_to_local(location: str | os.PathLike[str], local_root: Path | None = None, *,
                  local_name: str | None = None) -> Path:
    """A local copy of the file or folder at ``location``; a local path is returned as is.

    The copy is ``<local_root>/<local_name>`` (default ``<node_local_root()>/<name>-<hash of
    the URI>``), or the file of that name inside it for a file URI. One process per node
    copies (into a temporary folder, renamed into place, then the marker file is written
    last) while any other waits on the lock; later calls reuse the copy while the remote
    listing (paths, sizes, modification times) is unchanged. Modification times are kept,
    so a fingerprint of the local files matches on every node and every copy.
    """
    location = str(location)
    if not is_uri(location):
        return Path(location)
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{redact(location)}: no such file or directory")
    single = info.type == pafs.FileType.File
    local_root = local_root or node_local_root()
    local_root.mkdir(parents=True, exist_ok=True)
    folder = local_root / (local_name or _local_name(location))
    marker = folder.with_name(folder.name + MARKER_SUFFIX)
    with FileLock(str(folder) + ".lock"):
        listing = _listing(fs, path, info)
        fingerprint = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        if folder.is_dir() and marker.is_file():
            try:
                done = json.loads(marker.read_text()).get("fingerprint") == fingerprint
            except ValueError:
                done = False
            if done:
                return folder / name(location) if single else folder
        marker.unlink(missing_ok=True)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        try:
            target = tmp / name(location) if single else tmp
            pafs.copy_files(path, str(target), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
            for relative, _size, mtime_ns in listing:
                local = tmp / relative if not single else target
                if mtime_ns is not None and local.is_file():
                    os.utime(local, ns=(mtime_ns, mtime_ns))
            if folder.exists():  # an outdated copy: moved aside, then removed
                os.replace(folder, old)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        marker.write_text(json.dumps({"location": redact(location), "files": len(listing),
                                      "fingerprint": fingerprint}))
    return folder / name(location) if single else folder


def register_copy(location: str | os.PathLike[str], folder: Path) -> bool:
    """Take ``folder`` (the local files just uploaded to ``location``) as this node's copy of
    ``location`` when it holds the same files and sizes, so :func:`copy_to_local` with
    ``local_name=folder.name`` and ``local_root=folder.parent`` reuses it; False if not."""
    fs, path = filesystem(location)
    marker = folder.with_name(folder.name + MARKER_SUFFIX)
    with FileLock(str(folder) + ".lock"):
        listing = _listing(fs, path, fs.get_file_info(path))
        for relative, size, _ in listing:
            local = folder / relative
            if not local.is_file() or local.stat().st_size != size:
                return False
        for relative, _, mtime_ns in listing:
            if mtime_ns is not None:
                os.utime(folder / relative, ns=(mtime_ns, mtime_ns))
        fingerprint = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        marker.write_text(json.dumps({"location": redact(location), "files": len(listing),
                                      "fingerprint": fingerprint}))
    return True


def _listing(fs: pafs.FileSystem, path: str, info: pafs.FileInfo
             ) -> list[tuple[str, int, int | None]]:
    """Sorted (relative path, size, mtime_ns) of every file at ``path``."""
    if info.type == pafs.FileType.File:
        return [(name(path), int(info.size), info.mtime_ns)]
    prefix = path.rstrip("/") + "/"
    files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted((f.path.removeprefix(prefix), int(f.size), f.mtime_ns)
                  for f in files if f.type == pafs.FileType.File)


def _local_name(location: str) -> str:
    """``<last component>-<hash of the URI>``: readable, and distinct per URI (credentials
    left out, so rotating them keeps the copy)."""
    digest = hashlib.sha256(redact(location).encode()).hexdigest()[:12]
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in name(location))
    return f"{label or 'root'}-{digest}"


def _redact_text(text: str, location: str) -> str:
    """``text`` (an error message) with the secrets of ``location`` replaced."""
    split = urllib.parse.urlsplit(location)
    secrets = [v for k, v in urllib.parse.parse_qsl(split.query)
               if any(w in k.lower() for w in _SECRET_WORDS)]
    userinfo = split.netloc.rpartition("@")[0]
    secrets += [s for s in (userinfo, *userinfo.split(":")) if s]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text.replace(location, redact(location))
