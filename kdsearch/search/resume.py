"""Which searches exist in ``storage``, which are unfinished, and the one to resume.

Every search writes ``kdsearch_search.json`` into its own Tune experiment folder
(``<storage>/ray/<experiment>-<time>-<random>/``) before anything expensive (data
preparation, the teacher stage, the cache, the trials), adds its MLflow parent run's id once
the data passed its checks, and marks it finished when everything, publishing included, is
done. A search killed at any point (a crashed driver, a lost head node, Ctrl-C) stays
unfinished, and ``python -m kdsearch.run SPACE.yaml --resume`` continues it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any

import pyarrow.fs as pafs

from kdsearch import storage
from kdsearch.config import ConfigError, SpaceConfig

RECORD = "kdsearch_search.json"


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    name: str  # the Tune experiment folder's name
    experiment: str
    experiment_id: str | None  # None until the parent run exists (the data passed its checks)
    parent_run_id: str | None
    started: float
    finished: bool
    config: dict[str, Any]  # the resolved space file the search started with, redacted

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))


def searches_root(cfg: SpaceConfig) -> str:
    """Where Tune keeps this search's experiment folders: a path or a URI."""
    return storage.join(cfg.storage, "ray")


def new_search_name(cfg: SpaceConfig) -> str:
    """Unique: two searches started in the same second never share a folder."""
    return f"{cfg.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def write_record(cfg: SpaceConfig, record: SearchRecord) -> None:
    text = json.dumps(dataclasses.asdict(record), indent=1)
    storage.write_bytes(storage.join(searches_root(cfg), record.name, RECORD), text.encode())


def discard_record(cfg: SpaceConfig, record: SearchRecord) -> None:
    """Remove a search that stopped on bad input before it recorded anything else: its folder,
    and the searches folder too when that leaves it empty (nothing half-written)."""
    root = searches_root(cfg)
    fs, path = storage.filesystem(storage.join(root, record.name))
    fs.delete_dir(path)
    fs, path = storage.filesystem(root)
    if not storage.is_uri(root) and not fs.get_file_info(pafs.FileSelector(path)):
        fs.delete_dir(path)


def mark_finished(cfg: SpaceConfig, record: SearchRecord) -> None:
    write_record(cfg, dataclasses.replace(record, finished=True))


def unfinished_searches(cfg: SpaceConfig) -> list[SearchRecord]:
    """Unfinished searches of this experiment, newest first."""
    root = searches_root(cfg)
    fs, path = storage.filesystem(root)
    listing = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    found = []
    for folder in (info for info in listing if info.type == pafs.FileType.Directory):
        try:
            data = storage.read_bytes(storage.join(root, folder.base_name, RECORD))
            record = SearchRecord(**json.loads(data))
        except (OSError, ValueError, TypeError):
            continue  # not a search kdsearch can resume
        if record.experiment == cfg.experiment.name and not record.finished:
            found.append(record)
    return sorted(found, key=lambda r: r.started, reverse=True)


def search_to_resume(cfg: SpaceConfig, which: str) -> SearchRecord:
    """``which`` is "latest" or a search folder's name; a clear error when there is none."""
    candidates = unfinished_searches(cfg)
    root = searches_root(cfg)
    if which != "latest":
        candidates = [r for r in candidates if r.name == which]
    if not candidates:
        what = "search" if which == "latest" else f"search named {which!r}"
        raise ConfigError([f"--resume: no unfinished {what} of experiment "
                           f"{cfg.experiment.name!r} in {storage.redact(root)}"])
    record = candidates[0]
    given = cfg.redacted()  # as the record holds it: never a credential
    if record.config != given:
        changed = sorted(k for k in record.config if record.config[k] != given.get(k))
        raise ConfigError([f"--resume: the space file differs from the one search "
                           f"{record.name} started with (sections: {', '.join(changed)}); "
                           "resume with the same file and --set options"])
    return record
