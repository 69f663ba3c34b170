"""Locations that are local paths or pyarrow filesystem URIs (``s3://``, ``gs://``, ...).

``storage`` and ``data.root`` may name an object store. Credentials come from the
environment the way pyarrow reads them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, an instance role...); a URI may carry
pyarrow's query options, e.g. ``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``.
Whatever is printed or logged goes through :func:`redact` first.

Code that reads files (decoders, ``torch.load``, memory maps) needs them on local disk:
:func:`copy_to_local` makes one copy per node and URI, under a file lock, and reuses it while
the remote listing is unchanged.

The files kdsearch writes itself (teachers, caches, indexes, search records) are committed
through :func:`write_file`: a unique temporary name (pid and a random suffix), fsync, a
record of size and checksums, rename, fsync of the folder. :func:`check_file` compares a file
with its record. See docs/artifacts.md.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
    return _credentials_out(str(location), mask=True)


def _credentials_out(location: str, mask: bool) -> str:
    """``location`` without its user info and with its secret query values masked (``mask``)
    or left out."""
    if not is_uri(location):
        return location
    split = urllib.parse.urlsplit(location)
    netloc = split.netloc.rpartition("@")[2]
    pairs = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
    secret = [any(w in k.lower() for w in _SECRET_WORDS) for k, _ in pairs]
    query = ([(k, _REDACTED if hide else v) for (k, v), hide in zip(pairs, secret, strict=True)]
             if mask else [pair for pair, hide in zip(pairs, secret, strict=True) if not hide])
    if netloc == split.netloc and query == pairs:
        return location  # nothing to hide (and urlunsplit would turn sqlite://// into //)
    return urllib.parse.urlunsplit(split._replace(
        netloc=netloc, query=urllib.parse.urlencode(query, safe=":/")))


#: A URI inside free text (a space file, a message): scheme://, then up to a space or quote.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_text(text: str) -> str:
    """``text`` with every URI in it passed through :func:`redact` (a space file as written,
    comments and layout kept; a message)."""
    return _URI_IN_TEXT.sub(lambda found: redact(found.group(0)), text)


def redact_all(value: Any) -> Any:
    """``value`` (a configuration as plain data: dicts, lists, strings, numbers) with every
    string passed through :func:`redact_text`: whatever field holds a URI, now or in a later
    version of the schema, never carries its credentials on."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v) for v in value]
    return value


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
    # Tune pickles this filesystem into the experiment's files in storage (tuner.pkl, its
    # searcher state): built from the URI without credentials, it holds none.
    fs, path = filesystem(without_credentials(storage))
    return path, fs


def without_credentials(location: str) -> str:
    """``location`` with its user info and secret query values left out (not masked: a
    working URI whose credentials come from the environment)."""
    return _credentials_out(location, mask=False)


def credentials_to_environment(location: str) -> bool:
    """An ``s3://KEY:SECRET@bucket/...`` location's credentials, put where S3 clients look
    for them: ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` of this process (and so
    of the local Ray it starts next), so that what is pickled and stored (Tune's state)
    needs none. True when it set them."""
    split = urllib.parse.urlsplit(str(location))
    if split.scheme != "s3" or split.username is None or split.password is None:
        return False
    os.environ["AWS_ACCESS_KEY_ID"] = urllib.parse.unquote(split.username)
    os.environ["AWS_SECRET_ACCESS_KEY"] = urllib.parse.unquote(split.password)
    return True


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
    is committed by :func:`write_file`, so a reader never sees half of it, even after a
    crash."""
    location = str(location)
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, lambda f: f.write(data), digest=False)
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
        remove_stale(local_root, folder.name, time.time())
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
        tmp, old = temp_path(folder), temp_path(folder)
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
            fsync_dir(local_root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        write_meta(marker, {"location": redact(location), "files": len(listing),
                            "fingerprint": fingerprint})
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
        write_meta(marker, {"location": redact(location), "files": len(listing),
                            "fingerprint": fingerprint})
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


# --- Committing files: unique temporary names, fsync, size and checksums, rename. ---

#: Files up to this size are hashed whole by :func:`sample_digest`; larger ones in blocks.
SAMPLE_WHOLE = 4 << 20
SAMPLE_BLOCK = 64 << 10
SAMPLE_BLOCKS = 64  # evenly spaced, the first at the head and the last at the tail
_CHUNK = 1 << 20

#: A file's record, as stored in a meta file: {"size": bytes, "sample": blake2b of sampled
#: blocks, "sha256": of the whole file (absent when not computed)}.
FileRecord = dict[str, Any]


class ArtifactError(RuntimeError):
    """A file kdsearch wrote does not match its record (truncated, zeroed, missing) and cannot
    be rebuilt here: the one-line message names the file and what to delete."""


class DiskFullError(OSError):
    """The disk filled up (or would) while writing an artifact: one line with the folder and,
    when known, the bytes needed and free. ``errno`` is ENOSPC."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process and call:
    ``.<name>.<pid>.<random>.tmp``; :func:`remove_stale` knows its pid from it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename still happened
    finally:
        os.close(fd)


class _Writer:
    """A binary file that hashes what goes through it and remembers a full disk (torch and
    pyarrow may wrap the OSError of ``write`` in errors of their own)."""

    def __init__(self, f: BinaryIO, digest: bool) -> None:
        self.f, self.size, self.full_disk = f, 0, False
        self.hash = hashlib.sha256() if digest else None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            self.f.write(view)
        except OSError as err:
            self.full_disk = err.errno in (errno.ENOSPC, errno.EDQUOT)
            raise
        if self.hash is not None:
            self.hash.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self.f.flush()

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.f.closed


def write_file(path: Path, write: Callable[[Any], Any], *, digest: bool = True) -> FileRecord:
    """Commit a file written by ``write(f)`` at ``path`` and return its record.

    ``f`` is a binary file without seek (``np.save``, ``torch.save``, ``pq.write_table`` and
    plain ``f.write`` take it). It goes to :func:`temp_path`, is fsynced, hashed (the SHA-256
    of what was written, when ``digest``, and the sampled digest), renamed into place and the
    folder fsynced: after a crash ``path`` is the old file or the whole new one. A full disk
    raises :class:`DiskFullError`; the temporary file never stays behind.
    """
    path = Path(path)
    tmp = temp_path(path)
    writer: _Writer | None = None
    try:
        with open(tmp, "xb") as f:
            writer = _Writer(f, digest)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        record: FileRecord = {"size": writer.size, "sample": sample_digest(tmp)}
        if writer.hash is not None:
            record["sha256"] = writer.hash.hexdigest()
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or (
                writer is not None and writer.full_disk):
            raise DiskFullError(f"{path.parent}: the disk is full "
                                f"(writing {path.name})") from err
        raise
    fsync_dir(path.parent)
    return record


@contextlib.contextmanager
def full_disk_as_error(what: str, hint: str = "") -> Iterator[None]:
    """Turn an ENOSPC (or EDQUOT) raised inside, a :class:`DiskFullError` among them, into a
    one-line :class:`DiskFullError`: ``<what>: the disk is full<hint>``."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(f"{what}: the disk is full{hint}") from err


def sample_digest(path: Path) -> str:
    """A BLAKE2b of a file's size and content, cheap enough for every open: the whole file up
    to :data:`SAMPLE_WHOLE`, else :data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BLOCK` spread
    evenly from head to tail (4 MiB read, a few ms, whatever the size)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        if size <= SAMPLE_WHOLE:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        else:
            last = size - SAMPLE_BLOCK
            for i in range(SAMPLE_BLOCKS):
                f.seek(i * last // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BLOCK))
    return h.hexdigest()


def full_digest(path: Path) -> str:
    """The SHA-256 of a whole file (about 0.6 s per GiB from the page cache here)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path, *, digest: bool = True) -> FileRecord:
    """The record of an existing file, as :func:`write_file` returns it."""
    record: FileRecord = {"size": Path(path).stat().st_size, "sample": sample_digest(path)}
    if digest:
        record["sha256"] = full_digest(path)
    return record


def check_file(path: Path, record: Any, *, full: bool = False) -> str | None:
    """What is wrong with ``path`` against its ``record`` (None when it matches): the size
    always, the sampled digest always, the SHA-256 too when ``full``."""
    path = Path(path)
    if not isinstance(record, dict) or not isinstance(record.get("size"), int):
        return f"{path.name} has no valid record in the meta file"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path.name} is missing"
    if size != record["size"]:
        return f"{path.name} is {size} bytes, the meta file says {record['size']}"
    if record.get("sample") != sample_digest(path):
        return f"{path.name} does not match its checksum (sampled blocks)"
    if full and "sha256" in record and record["sha256"] != full_digest(path):
        return f"{path.name} does not match its checksum (SHA-256)"
    return None


def check_files(folder: Path, records: Any, names: tuple[str, ...], *, full: bool = False
                ) -> str | None:
    """The first problem of ``folder/<name>`` for each name against ``records[name]``."""
    if not isinstance(records, dict):
        return "the meta file lists no file records"
    for file in names:
        problem = check_file(Path(folder) / file, records.get(file), full=full)
        if problem:
            return problem
    return None


def read_meta(path: Path) -> dict[str, Any] | None:
    """A JSON meta file as a dict; None when missing, unreadable or not a JSON object."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Commit a JSON meta file (written last: its presence marks the artifact complete)."""
    text = json.dumps(meta, indent=2).encode()
    write_file(Path(path), lambda f: f.write(text), digest=False)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def remove_stale(parent: Path, name: str, since: float) -> list[Path]:
    """Remove the temporary files and folders ``.<name>.<pid>[.<random>].tmp`` in ``parent``
    left by dead writers: call it holding the lock of ``name``, with ``since`` the
    ``time.time()`` the lock was taken. A writer writes only under that lock, so one whose
    pid is not alive on this host, or whose temporary is older than ``since`` (another host,
    or a reused pid), is gone. Returns what was removed."""
    removed = []
    prefix = f".{name}."
    try:
        entries = list(Path(parent).iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        fields = entry.name[len(prefix):-len(".tmp")].split(".")
        pid = int(fields[0]) if fields and fields[0].isdigit() else None
        if pid == os.getpid():
            continue
        try:
            old = entry.lstat().st_mtime < since
        except FileNotFoundError:
            continue
        if pid is None or old or not pid_alive(pid):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_free(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskFullError` (one line: ``what``, bytes needed and free) when the disk
    of ``folder`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(f"{what}: needs {needed} bytes ({_human(needed)}) but "
                            f"{free} ({_human(free)}) are free on the disk of {folder}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def lock_path(location: str | os.PathLike[str], *parts: str) -> Path:
    """The lock file of ``<location>/<parts>``: beside it for a local path; for a URI, on
    this node's disk, keyed by the URI and parts (it serialises this node's writers only)."""
    location = str(location)
    if not is_uri(location):
        target = Path(location, *parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(target.name + ".lock")
    digest = hashlib.sha256("/".join([redact(location), *parts]).encode()).hexdigest()[:16]
    folder = node_local_root() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{parts[-1] if parts else 'root'}-{digest}.lock"
