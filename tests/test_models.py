"""Tests of kdsearch.models: every registered model on random clips, lookups, weight loading."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import video as tv_video

from kdsearch.models import (
    FrameResNet,
    ModelSpec,
    UnknownModelError,
    WeightsError,
    _registry,
    create_model,
    get_head,
    get_spec,
    list_models,
    mark_head,
    register_model,
    weights_path,
)

TINY = ["tiny3d", "tiny3d_wide", "tiny_r2plus1d", "small3d"]
NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hub_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache under tmp_path; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier set_dir would win over it
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return folder


def _clip(name: str, frames: int = 8, size: int = 64, batch: int = 1) -> torch.Tensor:
    if name == "mvit_v2_s":
        frames, size = get_spec(name).clip
    return torch.randn(batch, 3, frames, size, size)


def _assert_same_tensors(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], skip: str
) -> None:
    keys = [k for k in want if not k.startswith(skip)]
    assert keys
    for key in keys:
        assert torch.equal(got[key], want[key]), key


# ---- every registered model ---------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_forward_every_model(name: str) -> None:
    model = create_model(name, NUM_CLASSES).eval()
    head = get_head(model)
    assert isinstance(head, nn.Linear)
    assert head.out_features == NUM_CLASSES
    with torch.no_grad():
        logits = model(_clip(name))
        assert logits.shape == (1, NUM_CLASSES)
        assert torch.isfinite(logits).all()
        if name != "mvit_v2_s":  # one forward of it is slow enough
            # The layer get_head returns is the one that produces the logits.
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, 2.0)
            assert torch.allclose(model(_clip(name)), torch.full((1, NUM_CLASSES), 2.0))


@pytest.mark.parametrize("name", [n for n in list_models() if n != "mvit_v2_s"])
def test_smallest_clip_every_model(name: str) -> None:
    model = create_model(name, NUM_CLASSES).eval()
    with torch.no_grad():
        assert model(_clip(name, frames=4, size=32)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", TINY)
def test_backward_tiny_models(name: str) -> None:
    model = create_model(name, NUM_CLASSES).train()
    loss = nn.functional.cross_entropy(model(_clip(name, batch=2)), torch.tensor([0, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_mvit_rejects_other_clip_shapes() -> None:
    model = create_model("mvit_v2_s", NUM_CLASSES)
    with pytest.raises(ValueError, match=re.escape("[B, 3, 16, 224, 224]")):
        model(torch.randn(1, 3, 8, 64, 64))


def test_resnet18_tsn_frame_logits_average_to_logits() -> None:
    model = create_model("resnet18_tsn", NUM_CLASSES).eval()
    assert isinstance(model, FrameResNet)
    clip = _clip("resnet18_tsn", frames=5, size=32, batch=2)
    with torch.no_grad():
        frames = model.frame_logits(clip)
        assert frames.shape == (2, 5, NUM_CLASSES)
        assert torch.allclose(frames.mean(dim=1), model(clip), atol=1e-6)
        # Frame t of the clip alone gives frame t's logits: frames are classified independently.
        single = model.frame_logits(clip[:, :, 2:3])
        assert torch.allclose(single[:, 0], frames[:, 2], atol=1e-5)


def test_same_seed_same_model() -> None:
    torch.manual_seed(1)
    first = create_model("tiny3d", NUM_CLASSES).state_dict()
    torch.manual_seed(1)
    second = create_model("tiny3d", NUM_CLASSES).state_dict()
    _assert_same_tensors(second, first, skip="\0")


# ---- registry ------------------------------------------------------------------------------


def test_list_models_by_role() -> None:
    assert list_models("student") == sorted(
        ["x3d_xs", "r3d_18", "r2plus1d_18", "mc3_18", "resnet18_tsn"]
        + ["tiny3d", "tiny3d_wide", "tiny_r2plus1d"]
    )
    assert list_models("teacher") == sorted(
        ["r3d_18", "r2plus1d_18", "mc3_18", "x3d_m", "x3d_s", "slow_r50", "mvit_v2_s", "small3d"]
    )
    assert list_models() == sorted(set(list_models("student")) | set(list_models("teacher")))


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'foo'; valid students: mc3_18, "):
        create_model("foo", NUM_CLASSES, role="student")
    with pytest.raises(UnknownModelError, match="valid models: .*mvit_v2_s.*tiny3d"):
        get_spec("foo")


def test_wrong_role() -> None:
    with pytest.raises(UnknownModelError, match="model 'tiny3d' is not a teacher; .*small3d"):
        create_model("tiny3d", NUM_CLASSES, role="teacher")
    with pytest.raises(UnknownModelError, match="model 'slow_r50' is not a student"):
        get_spec("slow_r50", role="student")
    assert get_spec("r3d_18", role="student") is get_spec("r3d_18", role="teacher")


def test_invalid_role() -> None:
    with pytest.raises(ValueError, match="role is 'techer'"):
        list_models("techer")  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_invalid_num_classes(num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes is"):
        create_model("tiny3d", num_classes)


def test_register_model_with_unmarked_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    spec = ModelSpec(
        name="flat", roles=frozenset({"student"}), source="kdsearch", clip=(4, 32),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pretrained=None, weights_file=None,
        weights_url=None, description="test model",
    )  # fmt: skip

    def build(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 32 * 32, 7), nn.Linear(7, num_classes))

    register_model(spec, build)
    model = create_model("flat", NUM_CLASSES)
    assert get_head(model) is model.get_submodule("2")
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="model 'flat' is already registered"):
        register_model(spec, build)


def test_model_spec_rejects_bad_fields() -> None:
    spec = get_spec("tiny3d")
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    with pytest.raises(ValueError, match="roles is \\['coach'\\]"):
        ModelSpec(**{**fields, "roles": frozenset({"coach"})})
    with pytest.raises(ValueError, match="source is 'timm'"):
        ModelSpec(**{**fields, "source": "timm"})
    with pytest.raises(ValueError, match="pretrained is 'kinetics400', so weights_file"):
        ModelSpec(**{**fields, "pretrained": "kinetics400"})


def test_get_head_of_foreign_models() -> None:
    plain = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert get_head(plain) is plain[2]
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        get_head(nn.Conv1d(1, 1, 1))
    with pytest.raises(TypeError, match="head '0' of Sequential is not an nn.Linear"):
        mark_head(nn.Sequential(nn.ReLU()), "0")


def test_get_head_through_wrapper() -> None:
    model = create_model("tiny3d", NUM_CLASSES)
    wrapper = nn.Module()
    wrapper.module = model  # as DistributedDataParallel holds it
    assert get_head(wrapper) is get_head(model)


@pytest.mark.parametrize(
    ("name", "enum"),
    [
        ("r3d_18", tv_video.R3D_18_Weights.KINETICS400_V1),
        ("mc3_18", tv_video.MC3_18_Weights.KINETICS400_V1),
        ("r2plus1d_18", tv_video.R2Plus1D_18_Weights.KINETICS400_V1),
        ("mvit_v2_s", tv_video.MViT_V2_S_Weights.KINETICS400_V1),
        ("resnet18_tsn", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    ],
)
def test_torchvision_specs_match_weight_enums(name: str, enum: torchvision.models.Weights) -> None:
    spec = get_spec(name)
    assert spec.weights_url == enum.url
    assert spec.weights_file == enum.url.rsplit("/", 1)[1]
    transform = enum.transforms()
    assert spec.mean == pytest.approx(tuple(transform.mean))
    assert spec.std == pytest.approx(tuple(transform.std))
    assert spec.clip[1] == transform.crop_size[0]


def test_pytorchvideo_specs_match_hub_urls() -> None:
    from pytorchvideo.models.hub import resnet, x3d

    for name in ["x3d_xs", "x3d_s", "x3d_m"]:
        assert get_spec(name).weights_url == x3d.checkpoint_paths[name]
    assert get_spec("slow_r50").weights_url == resnet.checkpoint_paths["slow_r50"]


# ---- weights -------------------------------------------------------------------------------


def test_weights_path_in_hub_cache(hub_checkpoints: Path) -> None:
    assert weights_path(get_spec("r3d_18")) == hub_checkpoints / "r3d_18-b3b3357e.pth"
    with pytest.raises(WeightsError, match="model 'tiny3d' has no published weights"):
        weights_path(get_spec("tiny3d"))


def test_kinetics_weights_from_hub_cache(hub_checkpoints: Path) -> None:
    saved = tv_video.r3d_18(weights=None).state_dict()  # 400-class head, as published
    torch.save(saved, hub_checkpoints / "r3d_18-b3b3357e.pth")
    model = create_model("r3d_18", NUM_CLASSES, weights="kinetics400", role="teacher")
    _assert_same_tensors(model.state_dict(), saved, skip="fc.")
    head = get_head(model)
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (512, NUM_CLASSES)


def test_imagenet_weights_for_frame_resnet(hub_checkpoints: Path) -> None:
    saved = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(saved, hub_checkpoints / "resnet18-f37072fd.pth")
    model = create_model("resnet18_tsn", NUM_CLASSES, weights="imagenet")
    _assert_same_tensors(model.state_dict(), saved, skip="fc.")
    assert get_head(model).out_features == NUM_CLASSES


def test_pytorchvideo_model_state_checkpoint(hub_checkpoints: Path) -> None:
    from pytorchvideo.models.hub import x3d_xs

    published = x3d_xs(pretrained=False, head_activation=None).eval()
    saved = published.state_dict()
    torch.save({"model_state": saved, "epoch": 300}, hub_checkpoints / "X3D_XS.pyth")
    model = create_model("x3d_xs", 400, weights="kinetics400").eval()
    _assert_same_tensors(model.state_dict(), saved, skip="blocks.5.proj.")
    # At the recommended clip the adaptive head pool is the published fixed one.
    get_head(model).load_state_dict(published.blocks[5].proj.state_dict())
    clip = _clip("x3d_xs", *get_spec("x3d_xs").clip, batch=2)
    with torch.no_grad():
        assert torch.allclose(model(clip), published(clip), atol=1e-5)


def test_missing_hub_file_names_path_and_url(hub_checkpoints: Path) -> None:
    path = hub_checkpoints / "mc3_18-a90a0ba3.pth"
    url = "https://download.pytorch.org/models/mc3_18-a90a0ba3.pth"
    with pytest.raises(WeightsError, match=re.escape(f"'{path}': download {url} and place it")):
        create_model("mc3_18", NUM_CLASSES, weights="kinetics400")


@pytest.mark.parametrize("name", [n for n in list_models() if get_spec(n).pretrained])
def test_missing_weights_never_download(
    name: str, hub_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("kdsearch must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    spec = get_spec(name)
    with pytest.raises(WeightsError) as info:
        create_model(name, NUM_CLASSES, weights=str(spec.pretrained))
    message = str(info.value)
    assert "\n" not in message
    assert str(weights_path(spec)) in message
    assert str(spec.weights_url) in message


def test_hub_file_of_another_model(hub_checkpoints: Path) -> None:
    torch.save(create_model("tiny3d", 400).state_dict(), hub_checkpoints / "r3d_18-b3b3357e.pth")
    with pytest.raises(WeightsError, match="does not fit model 'r3d_18': missing keys: stem"):
        create_model("r3d_18", NUM_CLASSES, weights="kinetics400")


@pytest.mark.parametrize(
    ("name", "weights", "available"),
    [("tiny3d", "kinetics400", "none"), ("r3d_18", "imagenet", "kinetics400")],
)
def test_pretrained_kind_must_match_spec(name: str, weights: str, available: str) -> None:
    message = f"model '{name}' has no {weights} weights (available: {available})"
    with pytest.raises(WeightsError, match=re.escape(message)):
        create_model(name, NUM_CLASSES, weights=weights)


def test_unknown_weights_value() -> None:
    with pytest.raises(WeightsError, match="weights is 'kinetic400', but must be 'none'"):
        create_model("tiny3d", NUM_CLASSES, weights="kinetic400")


@pytest.mark.parametrize("wrap", ["plain", "model_state", "state_dict", "model", "ddp"])
def test_fine_tuned_checkpoint_round_trips(tmp_path: Path, wrap: str) -> None:
    model = create_model("tiny_r2plus1d", NUM_CLASSES).eval()
    state = model.state_dict()
    if wrap == "ddp":
        obj: object = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state if wrap == "plain" else {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "student.pt")
    loaded = create_model("tiny_r2plus1d", NUM_CLASSES, weights=str(tmp_path / "student.pt"))
    clip = _clip("tiny_r2plus1d", batch=2)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(clip), model(clip))


def test_backbone_checkpoint_with_other_head(tmp_path: Path) -> None:
    saved = create_model("tiny3d", 10).state_dict()
    torch.save(saved, tmp_path / "backbone.pth")
    model = create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "backbone.pth")
    _assert_same_tensors(model.state_dict(), saved, skip="fc.")
    assert get_head(model).out_features == NUM_CLASSES
    # A backbone saved without its head loads too.
    torch.save({k: v for k, v in saved.items() if not k.startswith("fc.")}, tmp_path / "b.pth")
    model = create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "b.pth")
    _assert_same_tensors(model.state_dict(), saved, skip="fc.")


def test_checkpoint_with_wrong_backbone(tmp_path: Path) -> None:
    torch.save(create_model("tiny3d_wide", NUM_CLASSES).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(WeightsError, match=r"shape mismatch: features\.0\.0\.weight"):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "wide.pt")
    state = create_model("tiny3d", NUM_CLASSES).state_dict()
    state["renamed.weight"] = state.pop("features.1.0.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(
        WeightsError, match="missing keys: features.1.0.weight; unexpected keys: renamed.weight"
    ):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "renamed.pt")


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=re.escape(f"'{tmp_path / 'gone.pt'}' does not exist")):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "gone.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not be read"):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        create_model("tiny3d", NUM_CLASSES, weights=tmp_path / "list.pt")
