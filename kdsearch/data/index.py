"""The dataset index: one row per video with what decoding needs and whether it is usable.

Built once per split source and cached beside the data as ``<root>/.kdsearch/<source>.parquet``
(or under a fallback folder when the root is read-only). A later run stats every file, hashes
a few blocks of it (:func:`content_hash`) and probes only the videos whose size, modification
time or content hash changed, so an unchanged dataset is never decoded twice and a video
rewritten with its modification time restored is probed again.

The index is committed by :func:`kdsearch.storage.write_file` with Parquet page checksums; an
index that does not read back whole (truncated, zeroed, another version) counts as absent and
is built again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdsearch import storage
from kdsearch.data.frames import FRAME_EXTENSIONS
from kdsearch.data.layouts import Entry, Listing
from kdsearch.data.media import printable_name
from kdsearch.data.probe import MediaInfo, probe_frames, probe_video

INDEX_VERSION = "2"  # 2: the content hash
INDEX_DIR = ".kdsearch"

SCHEMA = pa.schema([
    ("path", pa.string()), ("label", pa.int32()), ("kind", pa.string()),
    ("size", pa.int64()), ("mtime_ns", pa.int64()), ("num_frames", pa.int32()),
    ("fps", pa.float64()), ("duration", pa.float64()), ("width", pa.int32()),
    ("height", pa.int32()), ("rotation", pa.int16()), ("status", pa.string()),
    ("reason", pa.string()), ("content", pa.string()),
])
#: What :func:`content_hash` reads: the head and tail, and blocks spread between them.
HEAD_BYTES = 64 << 10
BLOCK_BYTES = 16 << 10
BLOCKS = 4


@dataclasses.dataclass(frozen=True)
class IndexRow:
    path: str  # relative to the dataset root
    label: int
    kind: str  # "video" or "frames"
    size: int  # bytes (all frames for a frame folder)
    mtime_ns: int  # latest modification (of any frame for a frame folder)
    num_frames: int
    fps: float | None
    duration: float | None
    width: int
    height: int
    rotation: int
    status: str  # "ok", or why the video cannot be used ("empty", "missing", ...)
    reason: str  # one line for people; remarks on usable videos too ("truncated: ...")
    content: str = ""  # content_hash of the file (of a few frames for a frame folder)


Log = Callable[[str], None]


def index_path(root: Path, source: str, fallback_dir: Path) -> Path:
    """Where the index of ``source`` lives: beside the data if writable, else the fallback."""
    name = "all" if source == "." else re.sub(r"[^A-Za-z0-9_.-]", "_", source)
    folder = root / INDEX_DIR
    writable = folder.is_dir() and os.access(folder, os.W_OK) or os.access(root, os.W_OK)
    if not writable:
        folder = fallback_dir / hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return folder / f"{name}.parquet"


Stat = tuple[int, int, str]  # size, mtime_ns, content hash


def index_split(root: Path, listing: Listing, cache: Path, *, frame_rate: float | None = None,
                log: Log = print, workers: int | None = None) -> list[IndexRow]:
    """Rows for every entry of ``listing``, reusing ``cache`` for unchanged files."""
    previous = read_index(cache)
    cached = {(r.path, r.kind, r.size, r.mtime_ns, r.content): r for r in previous}
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        stats = list(zip(listing.entries, pool.map(
            lambda e: _stat(root / e.path, e.kind), listing.entries), strict=True))
    rows: dict[int, IndexRow] = {}
    todo: list[tuple[int, Entry, Stat]] = []
    for i, (entry, stat) in enumerate(stats):
        if stat is None:
            rows[i] = _missing(entry)
            continue
        hit = cached.get((entry.path, entry.kind, *stat))
        if hit is not None:
            rows[i] = dataclasses.replace(hit, label=entry.label)
        else:
            todo.append((i, entry, stat))
    if todo:
        rows.update(_probe_all(root, listing.source, todo, log, workers))
    ordered = [_with_frame_rate(rows[i], frame_rate) for i in range(len(stats))]
    if ordered != previous:
        write_index(cache, ordered)
    return ordered


def _probe_all(root: Path, source: str, todo: list[tuple[int, Entry, Stat]],
               log: Log, workers: int | None) -> dict[int, IndexRow]:
    """Probe in threads: PyAV and Pillow release the GIL while they decode."""
    out: dict[int, IndexRow] = {}
    start = last = time.monotonic()
    log(f"indexing {source}: probing {len(todo)} videos")
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        futures = [(i, entry, stat, pool.submit(_probe, root / entry.path, entry.kind))
                   for i, entry, stat in todo]
        for done, (i, entry, stat, future) in enumerate(futures, 1):
            out[i] = _row(entry, stat, future.result())
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"indexing {source}: {done}/{len(todo)} videos probed")
    log(f"indexing {source}: {len(todo)} videos probed in {time.monotonic() - start:.1f}s")
    return out


def _probe(path: Path, kind: str) -> MediaInfo:
    return probe_frames(path) if kind == "frames" else probe_video(path)


def _row(entry: Entry, stat: Stat, info: MediaInfo) -> IndexRow:
    return IndexRow(entry.path, entry.label, entry.kind, stat[0], stat[1], info.num_frames,
                    info.fps, info.duration, info.width, info.height, info.rotation,
                    info.status, printable_name(info.reason), stat[2])


def _missing(entry: Entry) -> IndexRow:
    what = "folder" if entry.kind == "frames" else "file"
    return IndexRow(entry.path, entry.label, entry.kind, 0, 0, 0, None, None, 0, 0, 0,
                    "missing", f"no such {what}")


def _with_frame_rate(row: IndexRow, frame_rate: float | None) -> IndexRow:
    """Frame folders have no rate of their own; the space file may give one."""
    if row.kind != "frames":
        return row
    duration = row.num_frames / frame_rate if frame_rate and row.num_frames else None
    return dataclasses.replace(row, fps=frame_rate, duration=duration)


def _stat(path: Path, kind: str) -> Stat | None:
    """(size, mtime_ns, content hash); for a frame folder summed and latest over its frames,
    the hash over the frame names and sizes and a few frames."""
    try:
        if kind == "video":
            st = path.stat()
            if not path.is_file():
                return None
            return st.st_size, st.st_mtime_ns, content_hash([path])
        size, mtime = 0, path.stat().st_mtime_ns  # adding or removing a frame touches the folder
        frames = []
        with os.scandir(path) as it:
            for item in it:
                if Path(item.name).suffix.lower() in FRAME_EXTENSIONS:
                    st = item.stat()
                    size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
                    frames.append((item.name, st.st_size))
        frames.sort()
        # A frame name that is not UTF-8 hashes by its bytes (it is read like any other).
        names = "\n".join(f"{name} {n}" for name, n in frames).encode("utf-8",
                                                                      "surrogateescape")
        sampled = [path / frames[i][0] for i in sorted({0, len(frames) // 2, len(frames) - 1})
                   ] if frames else []
        return size, mtime, content_hash(sampled, names)
    except (FileNotFoundError, NotADirectoryError):
        return None


def content_hash(paths: list[Path], extra: bytes = b"") -> str:
    """A cheap BLAKE2b of file content: per file its size, the first and last
    :data:`HEAD_BYTES` and :data:`BLOCKS` blocks of :data:`BLOCK_BYTES` spread between them
    (under 200 KiB read per video), so a file rewritten with its size and modification time
    restored is still noticed, unless only bytes between the sampled blocks changed."""
    h = hashlib.blake2b(extra, digest_size=16)
    for path in paths:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(size.to_bytes(8, "little"))
            if size <= 2 * HEAD_BYTES + BLOCKS * BLOCK_BYTES:
                h.update(f.read())
                continue
            h.update(f.read(HEAD_BYTES))
            for i in range(1, BLOCKS + 1):
                f.seek(i * size // (BLOCKS + 1))
                h.update(f.read(BLOCK_BYTES))
            f.seek(size - HEAD_BYTES)
            h.update(f.read(HEAD_BYTES))
    return h.hexdigest()


def read_index(path: Path) -> list[IndexRow]:
    """The cached rows, or none when the file is absent, unreadable or from another version."""
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException):
        return []
    meta = table.schema.metadata or {}
    if meta.get(b"kdsearch.index_version") != INDEX_VERSION.encode():
        return []
    if not set(SCHEMA.names) <= set(table.column_names):
        return []
    return [IndexRow(**{k: row[k] for k in SCHEMA.names}) for row in table.to_pylist()]


def write_index(path: Path, rows: list[IndexRow]) -> None:
    """Commit the index (kdsearch.storage.write_file): a reader sees the old index or the new
    one, never half of one, even after a crash. Page checksums let a read notice damage."""
    table = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=SCHEMA)
    table = table.replace_schema_metadata({"kdsearch.index_version": INDEX_VERSION})
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_file(path, lambda f: pq.write_table(table, f, write_page_checksum=True),
                       digest=False)
