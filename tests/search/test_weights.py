"""kdsearch.search.weights: which published weights a search needs, fetched once before it
starts; offline (``offline: true``) a missing file stops it without a request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from config.spaces import write_space
from models.helpers import hashed_name, register_served, served_spec

from kdsearch.config import ConfigError
from kdsearch.config.load import load_space
from kdsearch.search.weights import fetch_search_weights, published_weights
from kdsearch.testing.http import file_server


@pytest.fixture(autouse=True)
def _empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv("KDSEARCH_OFFLINE", raising=False)


def _names(tmp_path: Path, **changes: object) -> list[tuple[str, str]]:
    cfg = load_space(write_space(tmp_path, **changes), cwd=tmp_path)
    return [(section, spec.name) for section, spec in published_weights(cfg)]


def test_the_teacher_and_every_backbone_the_search_can_build(tmp_path: Path) -> None:
    teacher = {"teacher.model": "r3d_18", "teacher.weights": "kinetics400"}
    searched = {
        "student.weights": "pretrained",
        "search.space.backbone": {"type": "choice", "values": ["x3d_xs", "r3d_18", "resnet18_tsn"]},
    }
    assert _names(tmp_path, **teacher, **searched) == [
        ("teacher", "r3d_18"),
        ("student", "x3d_xs"),
        ("student", "resnet18_tsn"),
    ]
    fixed = {
        "search.space.backbone": None,
        "student.backbone": "resnet18_tsn",
        "student.weights": "imagenet",
    }
    assert _names(tmp_path, **fixed) == [("student", "resnet18_tsn")]
    assert _names(tmp_path, **teacher, **{"student.weights": "none"}) == [("teacher", "r3d_18")]
    assert _names(tmp_path) == []  # the demo: no published weights


def test_fetched_once_and_offline_asks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"weights" * 1000
    file = hashed_name("served3d", data)
    with file_server({file: data}) as served:
        register_served(monkeypatch, served_spec(served.url(file), file))
        cfg = load_space(
            write_space(
                tmp_path, **{"teacher.model": "served3d", "teacher.weights": "kinetics400"}
            ),
            cwd=tmp_path,
        )
        with pytest.raises(ConfigError) as info:
            fetch_search_weights(cfg.model_copy(update={"offline": True}), log=print)
        (line,) = info.value.problems
        assert line.startswith(
            "teacher.weights: kinetics400 weights of model 'served3d' not found at "
        )
        assert f"download {served.url(file)} and place it there" in line
        assert not served.requests
        lines: list[str] = []
        (path,) = fetch_search_weights(cfg, log=lines.append)
        assert fetch_search_weights(cfg, log=lines.append) == [path]
        assert served.count(file) == 1
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / file
    assert path.read_bytes() == data
    assert lines == [f"downloading {served.url(file)} to {path}"]
