"""kdsearch.train.teacher: the teacher stage, reused for the same settings and data when whole,
trained by one process per key, resumed after the last epoch saved."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdsearch.config import ConfigError, SpaceConfig
from kdsearch.config.load import load_space
from kdsearch.models.checkpoints import TEACHER_FILE, load_teacher
from kdsearch.storage import ArtifactError
from kdsearch.train.teacher import META_FILE, PARTIAL_DIR, prepare_teacher
from kdsearch.train.trial import TrialContext

from .helpers import dataset


def test_teacher_is_reused_for_the_same_settings_and_data(context: TrialContext) -> None:
    data = dataset(context.cfg)
    again = prepare_teacher(context.cfg, data, log=lambda _: None)
    assert again.reused and str(again.path) == context.teacher_path
    other = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"epochs": 2})})
    assert prepare_teacher(other, data, log=lambda _: None).path != again.path
    cache_only = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"cache_views": 7, "cache": False})})
    assert prepare_teacher(cache_only, data, log=lambda _: None).path == again.path


def test_teacher_weights_that_do_not_fit_are_a_config_error(context: TrialContext,
                                                            tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    cfg = context.cfg.model_copy(update={"teacher": context.cfg.teacher.model_copy(
        update={"weights": str(bad), "epochs": 3})})
    with pytest.raises(ConfigError, match=r"^teacher.weights: .*does not fit model 'small3d'"):
        prepare_teacher(cfg, dataset(cfg), log=lambda _: None)


def test_a_teacher_pretrained_on_a_source_set_starts_from_that_backbone(
        context: TrialContext, tmp_path: Path) -> None:
    from kdsearch.config import Data, Pretrain
    from kdsearch.models import build_model
    from kdsearch.models.checkpoints import load_teacher
    from kdsearch.train.teacher import PRETRAINED_FILE

    source = Data(format="synthetic", root=str(tmp_path / "source"),
                  synthetic={"train_per_class": 3, "val_per_class": 1, "num_frames": 12,
                             "size": 32, "seed": 5})
    teacher = context.cfg.teacher.model_copy(update={
        "pretrain": Pretrain(data=source, epochs=1, lr=0.002), "epochs": 0})
    cfg = context.cfg.model_copy(update={"teacher": teacher,
                                         "storage": str(tmp_path / "results")})
    data = dataset(context.cfg)
    said: list[str] = []
    result = prepare_teacher(cfg, data, log=said.append)
    assert any("pretraining on 12 videos of 4 classes" in line for line in said), said
    (backbone_file,) = (tmp_path / "results" / "teachers").glob(f"pretrained-*/{PRETRAINED_FILE}")
    backbone = torch.load(backbone_file, weights_only=True)
    # With 0 fine-tuning epochs the teacher is the pretrained backbone with a new head.
    fine = load_teacher(str(result.path), torch.device("cpu")).model.state_dict()
    head = [k for k in backbone if k.startswith("head") or k.startswith("fc")]
    for name, value in backbone.items():
        if name not in head:
            assert torch.equal(fine[name], value), name
    fresh = build_model("small3d", 4, "none", "teacher").model.state_dict()
    assert not all(torch.equal(fresh[k], backbone[k]) for k in backbone if k not in head)
    # The same settings and source reuse the backbone; other pretraining settings do not.
    said.clear()
    again = prepare_teacher(cfg, data, log=said.append)
    assert again.reused and again.path == result.path
    other = cfg.model_copy(update={"teacher": teacher.model_copy(update={
        "pretrain": Pretrain(data=source, epochs=2, lr=0.002)})})
    assert prepare_teacher(other, data, log=said.append).path != result.path
    assert len(list((tmp_path / "results" / "teachers").glob("pretrained-*"))) == 2


# --- Damaged teachers, one trainer per key, resuming a killed fine-tuning. ---

def _copy_of(context: TrialContext, store: Path) -> tuple[SpaceConfig, Path]:
    """The fixture's teacher copied into the storage ``store``, and settings using it."""
    folder = Path(context.teacher_path).parent
    shutil.copytree(folder, store / "teachers" / folder.name)
    return (context.cfg.model_copy(update={"storage": str(store)}),
            store / "teachers" / folder.name)


@pytest.mark.parametrize("how", ["truncated", "zeroed", "middle", "missing"])
@pytest.mark.parametrize("file", [TEACHER_FILE, META_FILE])
def test_a_damaged_teacher_is_trained_again(context: TrialContext, tmp_path: Path, file: str,
                                            how: str) -> None:
    cfg, folder = _copy_of(context, tmp_path / "store")
    path = folder / file
    size = path.stat().st_size
    if how == "truncated":
        os.truncate(path, size - 100)
    elif how == "zeroed":
        path.write_bytes(bytes(size))
    elif how == "middle":
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(bytes(min(4096, size // 4)))
    else:
        path.unlink()
    if file == TEACHER_FILE and how != "missing":  # a trial loading it stops with one line
        with pytest.raises(ArtifactError, match=rf"^teacher {path}: teacher.pt .*; delete "
                           rf"{folder} and start the search again"):
            load_teacher(path, torch.device("cpu"))
    said: list[str] = []
    result = prepare_teacher(cfg, dataset(cfg), log=said.append)
    assert not result.reused and result.path == folder / TEACHER_FILE
    assert said[0].startswith(f"teacher small3d: {folder} is damaged ("), said
    load_teacher(result.path, torch.device("cpu"))
    assert prepare_teacher(cfg, dataset(cfg), log=lambda _: None).reused
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, TEACHER_FILE]


_PREPARE = """
import os, signal, sys, time
from pathlib import Path
from kdsearch.config.load import load_space
from kdsearch.data.dataset import load_dataset, prepare_data
from kdsearch.train import teacher
folder, store, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = load_space(folder / "space.yaml", [f"storage={store}", "teacher.epochs=3"], cwd=folder)
prepare_data(cfg.data)
data = load_dataset(cfg.data, cfg.student.clip, Path(cfg.storage), log=lambda _: None)
if mode.startswith("kill-after-"):  # SIGKILL right after epoch k is saved
    save, k = teacher.save_partial, int(mode.removeprefix("kill-after-"))
    def save_then_die(folder, state):
        save(folder, state)
        if state["epoch"] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    teacher.save_partial = save_then_die
else:  # two at once: wait for each other, then the trainer takes 2 s longer
    ready = Path(mode)
    finetune = teacher._finetune
    def slow(*args, **kwargs):
        print("TRAINING", flush=True)
        time.sleep(1)
        return finetune(*args, **kwargs)
    teacher._finetune = slow
    from kdsearch.testing import wait_for_each_other
    wait_for_each_other(ready)
teacher.prepare_teacher(cfg, data, log=lambda line: print(line, flush=True))
"""


def _three_epochs(context: TrialContext, store: Path) -> SpaceConfig:
    folder = Path(context.cfg.storage).parent
    return load_space(folder / "space.yaml", [f"storage={store}", "teacher.epochs=3"],
                      cwd=folder)


def test_a_teacher_killed_after_epoch_2_resumes_at_epoch_3(context: TrialContext,
                                                           tmp_path: Path) -> None:
    folder = Path(context.cfg.storage).parent
    killed = subprocess.run([sys.executable, "-c", _PREPARE, str(folder),
                             str(tmp_path / "store"), "kill-after-2"],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "epoch 2/3" in killed.stdout and "epoch 3/3" not in killed.stdout
    cfg = _three_epochs(context, tmp_path / "store")
    said: list[str] = []
    result = prepare_teacher(cfg, dataset(cfg), log=said.append)
    partial = Path(result.path).parent / PARTIAL_DIR
    assert f"teacher small3d: resuming after epoch 2/3 ({partial})" in said, said
    assert [line.split(":")[0] for line in said if "train_loss" in line] == [
        "teacher small3d epoch 3/3"]
    assert not result.reused and not partial.exists()
    # The same teacher as one never killed: same file structure, same weights.
    whole = prepare_teacher(_three_epochs(context, tmp_path / "whole"), dataset(cfg),
                            log=lambda _: None)
    resumed, straight = (torch.load(p, weights_only=True) for p in (result.path, whole.path))
    assert resumed.keys() == straight.keys() and resumed["model"] == straight["model"]
    for name, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name], value, atol=1e-6), name
    assert result.metrics["val_acc"] == pytest.approx(whole.metrics["val_acc"])
    load_teacher(result.path, torch.device("cpu"))


def test_two_searches_preparing_the_same_teacher_train_it_once(context: TrialContext,
                                                               tmp_path: Path) -> None:
    folder = Path(context.cfg.storage).parent
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(folder),
                               str(tmp_path / "store"), str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = "".join(out for out, _ in outputs)
    assert logs.count("TRAINING") == 1 and logs.count(": reusing ") == 1, logs
