"""Dataset layouts: which files make up a split, and their labels. Nothing is decoded here.

* ``video_folder``: ``<root>/<split>/<class>/<video>.<ext>``
* ``frame_folder``: ``<root>/<split>/<class>/<video_id>/<frame>.jpg|png``
* ``annotation_list``: ``<root>/<list file>`` with ``path label`` per line (or a CSV with the
  header ``path,label``), paths relative to ``root``; a label is a class name or an index
  into the declared classes.

Without split folders (``split=None``), class folders sit directly under ``root``.

Every listed path must lie inside ``root`` once resolved (``..``, absolute paths and symlinks
included); a path outside it, a name that is not valid UTF-8, and the same file listed twice
(see :func:`_deduplicate`) are left out of the listing's entries and kept in its ``skipped``
with the reason, never opened. A split whose every entry is left out is a LayoutError.
"""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kdsearch.data.media import VIDEO_EXTENSIONS, printable_name

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
class Skipped:
    """A listed path left out before anything opens it."""

    path: str  # as listed (non-UTF-8 bytes escaped), never where it resolves to
    status: str  # "outside_root", "bad_name", "duplicate" or "conflicting_labels"
    reason: str


@dataclass(frozen=True)
class Listing:
    """The entries of one split source (a split folder, the root, or a list file)."""

    source: str  # the split folder or list file, relative to the root; "." for the root
    classes: tuple[str, ...]
    entries: tuple[Entry, ...]
    skipped: tuple[Skipped, ...] = field(default=())


@dataclass(frozen=True)
class _Candidate:
    """A listed path before the checks: ``real`` is where it resolves to."""

    listed: str
    label: int
    kind: Kind | None  # None: found out once the path is known to be inside the root
    real: str  # "" when it cannot be resolved
    where: str  # "line 3" for a list, "" for a folder


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
    root_real = os.path.realpath(root)
    candidates = []
    for label, name in enumerate(names):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise LayoutError(f"class folder {class_dir} does not exist, but class {name!r} is "
                              "expected in every split")
        prefix = f"{split}/{name}" if split else name
        candidates += [_Candidate(f"{prefix}/{item}", label, kind, real, "")
                       for item, real, kind in _members(class_dir, fmt, root_real)]
    entries, skipped = _checked(root, candidates, names)
    if not entries:
        what = "video folders" if fmt == "frame_folder" else "videos"
        raise LayoutError(f"split folder {folder} holds no {what} "
                          f"(expected {_pattern(fmt, split)}){_left_out(skipped)}")
    return Listing(split or ".", tuple(names), tuple(sorted(entries, key=lambda e: e.path)),
                   tuple(skipped))


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
    for name in names:
        if not _is_utf8(name):  # a class name goes into every record, table and model
            raise LayoutError(f"class folder {printable_name(str(folder / name))} has a name "
                              "that is not valid UTF-8; rename it, or name the classes in "
                              "data.classes")
    return names


def _members(class_dir: Path, fmt: Format, root_real: str) -> list[tuple[str, str, Kind]]:
    """(name, real path, kind) of the videos in ``class_dir``. The folder is resolved once, a
    symlink in it one by one; one that leads out of the root is not even stat-ed (its kind is
    taken from the layout; _checked reports it)."""
    folder_real = os.path.realpath(class_dir)
    out: list[tuple[str, str, Kind]] = []
    with os.scandir(class_dir) as it:
        for item in it:
            if _hidden(item.name):  # includes macOS "._clip.mp4" resource forks
                continue
            if item.is_symlink():
                real = os.path.realpath(item.path)
                inside = _inside(root_real, real)
            else:
                real, inside = os.path.join(folder_real, item.name), True
            if fmt == "frame_folder" and (not inside or item.is_dir()):
                out.append((item.name, real, "frames"))
            elif (fmt != "frame_folder" and _is_video_name(item.name)
                  and (not inside or item.is_file())):
                out.append((item.name, real, "video"))
    return out


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _is_utf8(name: str) -> bool:
    """Whether ``name`` (as the OS gave it: undecodable bytes as surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(root_real: str, real: str) -> bool:
    return os.path.commonpath([root_real, real]) == root_real


def _checked(root: Path, candidates: Sequence[_Candidate], names: Sequence[str]
             ) -> tuple[list[Entry], list[Skipped]]:
    """The candidates that resolve inside ``root`` under valid names, each file once; the
    others with their reasons. Nothing outside ``root`` is opened or even stat-ed."""
    root_real = os.path.realpath(root)
    kept: list[tuple[_Candidate, str]] = []
    skipped: list[Skipped] = []
    for c in candidates:
        shown = printable_name(c.listed)
        at = f" ({c.where})" if c.where else ""
        if not _is_utf8(c.listed):
            skipped.append(Skipped(shown, "bad_name", f"the name is not valid UTF-8{at}; "
                                                      "rename the file"))
        elif not c.real or not _inside(root_real, c.real):
            skipped.append(Skipped(shown, "outside_root", _outside_reason(c.listed) + at))
        elif (frame := _frame_out_of(root_real, c)) is not None:
            skipped.append(Skipped(shown, "outside_root", f"frame {frame} is a symlink that "
                                                          f"leads outside data.root{at}"))
        else:
            kept.append((c, _entry_path(c, root_real)))
    entries, duplicates = _deduplicate(kept, names)
    return entries, skipped + duplicates


def _frame_out_of(root_real: str, c: _Candidate) -> str | None:
    """The first frame of a frame folder that is a symlink leading out of the root; scandir
    tells symlinks apart without a stat, so only symlinked frames cost a lookup."""
    if (c.kind or _kind_of(c.real)) != "frames":
        return None
    try:
        with os.scandir(c.real) as it:
            for item in it:
                if item.is_symlink() and not _inside(root_real, os.path.realpath(item.path)):
                    return printable_name(item.name)
    except OSError:
        return None  # missing or unreadable: the index reports it
    return None


def _outside_reason(listed: str) -> str:
    norm = posixpath.normpath(listed)
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        return "outside data.root; paths must lead to files inside it"
    return "a symlink (or a folder on its way) leads outside data.root; not opened"


def _entry_path(c: _Candidate, root_real: str) -> str:
    """The path an entry is opened by, relative to the root: as listed when it climbs no
    ``..`` (lexically the same file that was checked), else the checked real path."""
    parts = Path(c.listed).parts
    if Path(c.listed).is_absolute() or ".." in parts:
        return Path(os.path.relpath(c.real, root_real)).as_posix()
    return posixpath.normpath(Path(c.listed).as_posix())


def _deduplicate(kept: Sequence[tuple[_Candidate, str]], names: Sequence[str]
                 ) -> tuple[list[Entry], list[Skipped]]:
    """One entry per real file. Listed twice with the same label: the first listing is used
    and the others are reported; with different labels: all are reported and dropped, since
    either label may be the wrong one."""
    groups: dict[str, list[tuple[_Candidate, str]]] = {}
    for c, path in kept:
        groups.setdefault(c.real, []).append((c, path))
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    for group in groups.values():
        (first, first_path), rest = group[0], group[1:]
        labels = sorted({c.label for c, _ in group})
        if len(labels) == 1:
            kind = first.kind or _kind_of(first.real)
            entries.append(Entry(first_path, first.label, kind))
            skipped += [Skipped(path, "duplicate", f"the same file as {_named(first, first_path)}"
                                                   f"{_at(c)}, with the same label; used once")
                        for c, path in rest]
            continue
        listed = ", ".join(f"{_named(c, path)} as {names[c.label]!r}" for c, path in group)
        skipped += [Skipped(path, "conflicting_labels",
                            f"one file listed with different labels ({listed}); all dropped")
                    for c, path in group]
    return entries, skipped


def _named(c: _Candidate, path: str) -> str:
    return f"{path} ({c.where})" if c.where else path


def _at(c: _Candidate) -> str:
    return f" ({c.where})" if c.where else ""


def _kind_of(real: str) -> Kind:
    return "frames" if os.path.isdir(real) else "video"


def _left_out(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return ""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.status] = counts.get(s.status, 0) + 1
    what = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"; left out: {what} (first: {skipped[0].path}: {skipped[0].reason})"


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
    candidates = []
    for line_no, rel, label in rows:
        if not _is_utf8(label):
            raise LayoutError(f"{path}:{line_no}: label {_excerpt(label)} is not valid "
                              "UTF-8")
        index = _label_index(label, lookup, len(names))
        if index is None:
            raise LayoutError(f"{path}:{line_no}: label {_excerpt(label)} is neither a class in "
                              f"data.classes nor an index below {len(names)}")
        try:
            real = os.path.realpath(os.path.join(root, rel))
        except ValueError:  # a NUL character in the name
            real = ""
        candidates.append(_Candidate(rel, index, None, real, f"line {line_no}"))
    entries, skipped = _checked(root, candidates, names)
    if not entries:
        raise LayoutError(f"annotation list {path}: none of its {len(rows)} entries can be "
                          f"used{_left_out(skipped)}")
    return Listing(list_file, tuple(names), tuple(entries), tuple(skipped))


def _parse_list(path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) per entry; blank lines and ``#`` comments are skipped."""
    # Bytes that are not UTF-8 become surrogates here, so such a name is skipped, not fatal.
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
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
            raise LayoutError(f"{path}:{line_no}: expected 'path label', "
                              f"got {_excerpt(line.strip())}")
        rows.append((line_no, parts[0].strip(), parts[1]))
    return rows


def _parse_csv(path: Path, lines: list[str]) -> list[tuple[int, str, str]]:
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "label" not in header:
        raise LayoutError(f"{path}:1: a CSV annotation list needs the header 'path,label', "
                          f"got {_excerpt(','.join(header))}")
    p, lab = header.index("path"), header.index("label")
    rows = []
    for line_no, row in enumerate(reader, 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(p, lab):
            raise LayoutError(f"{path}:{line_no}: expected {len(header)} columns, got {len(row)}")
        rows.append((line_no, row[p].strip(), row[lab].strip()))
    return rows


def _excerpt(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters: a list file's line
    may be megabytes long."""
    text = printable_name(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


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
