"""Dataset layouts: which files make up a split, and their labels. Nothing is decoded here.

* ``video_folder``: ``<root>/<split>/<class>/<video>.<ext>``
* ``frame_folder``: ``<root>/<split>/<class>/<video_id>/<frame>.jpg|png``
* ``annotation_list``: ``<root>/<list file>`` with ``path label`` per line (or a CSV with the
  header ``path,label``), paths relative to ``root``; a label is a class name or an index
  into the declared classes.

Without split folders (``split=None``), class folders sit directly under ``root``.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kdsearch.data.media import VIDEO_EXTENSIONS

Kind = Literal["video", "frames"]
Format = Literal["synthetic", "video_folder", "frame_folder", "annotation_list"]


class LayoutError(ValueError):
    """The data does not have the layout the space file declares; one line, naming the path."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the dataset root, "/"-separated
    label: int
    kind: Kind


@dataclass(frozen=True)
class Listing:
    """The entries of one split source (a split folder, the root, or a list file)."""

    source: str  # the split folder or list file, relative to the root; "." for the root
    classes: tuple[str, ...]
    entries: tuple[Entry, ...]


def list_split(root: Path, fmt: Format, split: str | None,
               classes: Sequence[str] | None = None) -> Listing:
    """List one split; ``classes`` fixes the class names and their order (labels)."""
    if fmt == "annotation_list":
        assert split is not None, "config validation requires a list file"
        return _read_list(root, split, classes)
    folder = root / split if split else root
    if not folder.is_dir():
        raise LayoutError(f"split folder {folder} does not exist "
                          f"(expected {_pattern(fmt, split)})")
    names = list(classes) if classes else _class_folders(folder, fmt)
    entries = []
    for label, name in enumerate(names):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise LayoutError(f"class folder {class_dir} does not exist, but class {name!r} is "
                              "expected in every split")
        entries += [Entry(f"{split}/{name}/{p.name}" if split else f"{name}/{p.name}", label, kind)
                    for p, kind in _members(class_dir, fmt)]
    if not entries:
        what = "video folders" if fmt == "frame_folder" else "videos"
        raise LayoutError(f"split folder {folder} holds no {what} "
                          f"(expected {_pattern(fmt, split)})")
    return Listing(split or ".", tuple(names), tuple(sorted(entries, key=lambda e: e.path)))


def _pattern(fmt: Format, split: str | None) -> str:
    base = f"<root>/{split}/<class>/" if split else "<root>/<class>/"
    if fmt == "frame_folder":
        return base + "<video_id>/<frame>.jpg"
    return base + "<video>" + "|".join(VIDEO_EXTENSIONS)


def _class_folders(folder: Path, fmt: Format) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))
    if not names:
        raise LayoutError(f"split folder {folder} has no class folders "
                          f"(expected {_pattern(fmt, None)})")
    return names


def _members(class_dir: Path, fmt: Format) -> list[tuple[Path, Kind]]:
    out: list[tuple[Path, Kind]] = []
    with os.scandir(class_dir) as it:
        for item in it:
            if _hidden(item.name):  # includes macOS "._clip.mp4" resource forks
                continue
            if fmt == "frame_folder" and item.is_dir():
                out.append((Path(item.path), "frames"))
            elif fmt != "frame_folder" and item.is_file() and _is_video_name(item.name):
                out.append((Path(item.path), "video"))
    return out


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _read_list(root: Path, list_file: str, classes: Sequence[str] | None) -> Listing:
    path = root / list_file
    if not path.is_file():
        raise LayoutError(f"annotation list {path} does not exist (one list file per split, "
                          "relative to data.root)")
    rows = _parse_list(path)
    if not rows:
        raise LayoutError(f"annotation list {path} has no entries")
    names = list(classes) if classes else _names_from_labels(path, rows)
    lookup = {name: i for i, name in enumerate(names)}
    entries = []
    for line_no, rel, label in rows:
        index = _label_index(label, lookup, len(names))
        if index is None:
            raise LayoutError(f"{path}:{line_no}: label {label!r} is neither a class in "
                              f"data.classes nor an index below {len(names)}")
        target = root / rel
        kind: Kind = "frames" if target.is_dir() else "video"
        entries.append(Entry(Path(rel).as_posix(), index, kind))
    return Listing(list_file, tuple(names), tuple(entries))


def _parse_list(path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) per entry; blank lines and ``#`` comments are skipped."""
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if path.suffix.lower() == ".csv" or first.replace(" ", "").lower() == "path,label":
        return _parse_csv(path, lines)
    rows = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # paths may contain spaces; labels may not
        if len(parts) != 2:
            raise LayoutError(f"{path}:{line_no}: expected 'path label', got {line.strip()!r}")
        rows.append((line_no, parts[0].strip(), parts[1]))
    return rows


def _parse_csv(path: Path, lines: list[str]) -> list[tuple[int, str, str]]:
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "label" not in header:
        raise LayoutError(f"{path}:1: a CSV annotation list needs the header 'path,label', "
                          f"got {','.join(header)!r}")
    p, lab = header.index("path"), header.index("label")
    rows = []
    for line_no, row in enumerate(reader, 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(p, lab):
            raise LayoutError(f"{path}:{line_no}: expected {len(header)} columns, got {len(row)}")
        rows.append((line_no, row[p].strip(), row[lab].strip()))
    return rows


def _names_from_labels(path: Path, rows: list[tuple[int, str, str]]) -> list[str]:
    labels = {label for _, _, label in rows}
    if all(label.isdigit() for label in labels):
        raise LayoutError(f"{path}: labels are class indices; name the classes in order in "
                          "data.classes")
    return sorted(labels)


def _label_index(label: str, lookup: dict[str, int], num_classes: int) -> int | None:
    if label in lookup:
        return lookup[label]
    if label.isdigit() and int(label) < num_classes:
        return int(label)
    return None


def stratified_split(listing: Listing, fraction: float, seed: int
                     ) -> tuple[tuple[Entry, ...], tuple[Entry, ...]]:
    """(train, val): in every class, ``round(fraction * n)`` videos (at least one when the
    class has two or more) go to validation.

    Videos are ranked within their class by a hash of the seed and their path, so a video's
    side depends only on the seed, its path and its class size, not on the listing order.
    """
    train: list[Entry] = []
    val: list[Entry] = []
    for label in range(len(listing.classes)):
        members = sorted((e for e in listing.entries if e.label == label),
                         key=lambda e: hashlib.sha256(f"{seed}:{e.path}".encode()).digest())
        n_val = min(max(round(fraction * len(members)), 1), len(members) - 1)
        n_val = max(n_val, 0)
        val += members[:n_val]
        train += members[n_val:]
    return (tuple(sorted(train, key=lambda e: e.path)), tuple(sorted(val, key=lambda e: e.path)))
