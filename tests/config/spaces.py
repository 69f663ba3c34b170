"""Space files for the config tests: the demo's with changes, the tiny one, and their problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.config.load import load_space
from kdsearch.testing import TINY_SPACE, write_tiny_space

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "search_spaces" / "demo.yaml"


def write_space(tmp_path: Path, **changes: object) -> Path:
    """The demo space file with dotted-key changes (None deletes the key)."""
    raw = yaml.safe_load(DEMO.read_text())
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def problems(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_space(path, overrides, cwd=path.parent)
    return info.value.problems


def tiny_space_with(tmp_path: Path, **search: Any) -> SpaceConfig:
    """The tiny space file with these ``search`` settings."""
    write_tiny_space(tmp_path, search={**TINY_SPACE["search"], **search})
    return load_space(tmp_path / "space.yaml", cwd=tmp_path)


def search_problems(tmp_path: Path, **search: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        tiny_space_with(tmp_path, **search)
    return err.value.problems
