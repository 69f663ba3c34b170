"""kdsearch.train.loop: evaluation by clip, video and frame vote, the optimiser's weight decay,
channels-last weights, and the distillation each training epoch gets."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.models import Normalized, build_model
from kdsearch.train.loop import (
    Batch,
    NonFiniteMetricError,
    channels_last_weights,
    evaluate,
    make_optimizer,
    train_epochs,
    train_one_epoch,
)
from kdsearch.train.losses import Distillation

CPU = torch.device("cpu")


# --- evaluate with fake models -----------------------------------------------------------------

def _clips(codes: Sequence[Sequence[int]], scale: float = 1.0, shift: float = 0.0
           ) -> torch.Tensor:
    """Clips [B, 3, T, 1, 1] whose frame t of clip b holds ``codes[b][t] * scale + shift``."""
    values = torch.tensor(codes, dtype=torch.float) * scale + shift
    return values[:, None, :, None, None].expand(-1, 3, -1, 1, 1).contiguous()


def _batch(codes: Sequence[Sequence[int]], labels: list[int], videos: list[int],
           scale: float = 1.0, shift: float = 0.0) -> Batch:
    return _clips(codes, scale, shift), torch.tensor(labels), torch.tensor(videos)


class ClipTable(nn.Module):
    """Clip logits looked up by the value of the clip's first frame."""

    table: torch.Tensor

    def __init__(self, table: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(table))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.table[clips[:, 0, 0, 0, 0].round().long()]


class FrameTable(nn.Module):
    """FrameResNet-like: frame logits looked up by each frame's value, clip logits their mean."""

    table: torch.Tensor

    def __init__(self, table: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(table))
        self.frame_calls = self.forward_calls = 0

    def frame_logits(self, clips: torch.Tensor) -> torch.Tensor:
        self.frame_calls += 1
        return self.table[clips[:, 0, :, 0, 0].round().long()]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return self.frame_logits(clips).mean(1)


# Codes of ClipTable: clips A..G of four videos; the comment gives each clip's prediction.
CLIP_LOGITS: list[list[float]] = [
    [2, 0, 0],  # A video 10 (class 0): 0, right
    [0, 1, 0],  # B video 10: 1, wrong -> video mean [1, .5, 0]: 0, right
    [0, 3, 0],  # C video 11 (class 1): 1, right
    [1, 0, 0],  # D video 11: 0, wrong
    [1, 0, 0],  # E video 11: 0, wrong -> clips vote 0 but mean [2/3, 1, 0]: 1, right
    [0, 2, 1],  # F video 12 (class 2): 1, wrong -> video wrong
    [0, 0, 5],  # G video 13 (class 2): 2, right
]
A, B, C, D, E, F_, G = range(7)
CLASSES = ["run", "free kick", "goal!"]


def _clip_batches() -> list[Batch]:
    # Videos span batches, and video ids need not be 0..n-1.
    return [_batch([[A, A], [C, C], [F_, F_]], [0, 1, 2], [10, 11, 12]),
            _batch([[B, B], [D, D], [G, G]], [0, 1, 2], [10, 11, 13]),
            _batch([[E, E]], [1], [11])]


def test_evaluate_clip_model_by_hand() -> None:
    out = evaluate(ClipTable(CLIP_LOGITS), _clip_batches(), CPU, CLASSES)
    assert out["val_acc"] == pytest.approx(3 / 7)  # A, C, G
    assert out["val_video_acc"] == pytest.approx(3 / 4)  # videos 10, 11, 13
    # videos true [0, 1, 2, 2], predicted [0, 1, 1, 2]
    assert out["val_confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert out["val_class_acc.run"] == 1.0
    assert out["val_class_acc.free kick"] == 1.0
    assert out["val_class_acc.goal_"] == 0.5
    assert out["val_macro_f1"] == pytest.approx(7 / 9)  # F1 1, 2/3, 2/3
    order = [A, C, F_, B, D, G, E]
    logits = torch.tensor(CLIP_LOGITS, dtype=torch.float)[order]
    ce = F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2, 1]))
    assert out["val_loss"] == pytest.approx(ce.item(), rel=1e-6)
    assert "val_vote_acc" not in out


# Codes of FrameTable (two classes): one frame with a huge logit flips video 0's mean.
FRAME_LOGITS: list[list[float]] = [[1, 0], [0, 1], [0, 10], [0, 2.5]]
FRAME_BATCHES = [
    # video 0 (class 0): frames vote 2:1 for class 0, but the mean [2/3, 10/3] says 1.
    # video 1 (class 1), clip 1: mean [1/3, 2/3] -> 1, right.
    ([[0, 0, 2], [1, 1, 0]], [0, 1], [0, 1]),
    # video 1, clip 2: mean [2/3, 2.5/3] -> 1, right. Video 1 votes tie 3:3; summed frame
    # logits 3 vs 4.5 break the tie for class 1 (the first maximum would be class 0).
    ([[0, 0, 3]], [1], [1]),
]


@pytest.mark.parametrize("wrapped", [False, True])
def test_evaluate_frame_model_vote_and_mean_disagree(wrapped: bool) -> None:
    frames = FrameTable(FRAME_LOGITS)
    model: nn.Module = frames
    scale, shift = 1.0, 0.0
    if wrapped:
        # Normalized maps raw 2c + 1 to code c: the vote path must normalise too.
        model = Normalized(frames, mean=[1.0] * 3, std=[2.0] * 3)
        scale, shift = 2.0, 1.0
    batches = [_batch(c, y, v, scale, shift) for c, y, v in FRAME_BATCHES]
    out = evaluate(model, batches, CPU, ["a", "b"])
    assert out["val_acc"] == pytest.approx(2 / 3)
    assert out["val_video_acc"] == pytest.approx(1 / 2)
    assert out["val_vote_acc"] == pytest.approx(1.0)
    assert out["val_confusion"] == [[0, 1], [0, 1]]
    assert (out["val_class_acc.a"], out["val_class_acc.b"]) == (0.0, 1.0)
    assert out["val_macro_f1"] == pytest.approx(1 / 3)  # F1 0 and 2/3
    assert (frames.frame_calls, frames.forward_calls) == (2, 0)  # one pass per batch


def test_evaluate_class_keys_made_safe_alike_stay_apart() -> None:
    batches = [_batch([[0], [1]], [0, 1], [0, 1])]
    out = evaluate(ClipTable([[1, 0], [0, 1]]), batches, CPU, ["a?", "a!"])
    assert (out["val_class_acc.a__0"], out["val_class_acc.a__1"]) == (1.0, 1.0)


@pytest.mark.parametrize(("batches", "match"), [
    ([_batch([[0]], [3], [0])], r"label 3 is outside \[0, 3\)"),
    ([_batch([[0], [1]], [0, 1], [5, 5])], r"video 5 has clips labelled 0 and 1"),
    ([], r"no clips"),
])
def test_evaluate_rejects_bad_input(batches: list[Batch], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate(ClipTable(CLIP_LOGITS), batches, CPU, CLASSES)


def test_evaluate_rejects_class_count_mismatch() -> None:
    with pytest.raises(ValueError, match=r"3 logits per clip but there are 2 classes"):
        evaluate(ClipTable(CLIP_LOGITS), [_batch([[0]], [0], [0])], CPU, ["a", "b"])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_evaluate_fails_on_diverged_weights(value: float) -> None:
    # The argmax of NaN logits is a class all the same: without the check val_acc would look
    # like a real (chance) accuracy while val_loss is NaN.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2, 3))
    with torch.no_grad():
        model[1].weight.fill_(value)
    batches = [_batch([[1, 1], [2, 0], [1, 2]], [0, 1, 2], [0, 1, 2])]
    with pytest.raises(NonFiniteMetricError,
                       match=r"^validation logits became (nan|-?inf) after epoch 3 \(3 of 3 "
                             r"clips\)$"):
        evaluate(model, batches, CPU, ["a", "b", "c"], epoch=3)


def test_evaluate_counts_the_clips_with_non_finite_logits() -> None:
    batches = [_batch([[0], [1]], [0, 1], [0, 1]), _batch([[1], [0]], [1, 0], [2, 3])]
    with pytest.raises(NonFiniteMetricError,
                       match=r"^validation logits became inf \(2 of 4 clips\)$"):
        evaluate(ClipTable([[1.0, 0.0], [0.0, math.inf]]), batches, CPU, ["a", "b"])


# --- evaluate on the real frame-level student ---------------------------------------------------

def test_evaluate_resnet18_tsn() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18_tsn", 4, "none", "student")
    classes = ["a", "b", "c", "d"]
    batches = [(torch.rand(2, 3, 4, 32, 32), torch.tensor([0, 0]), torch.tensor([0, 0])),
               (torch.rand(2, 3, 4, 32, 32), torch.tensor([3, 1]), torch.tensor([1, 2]))]
    out = evaluate(model, batches, CPU, classes)
    expected = {"val_acc", "val_loss", "val_video_acc", "val_vote_acc", "val_macro_f1",
                "val_confusion", "val_class_acc.a", "val_class_acc.b", "val_class_acc.d"}
    assert set(out) == expected  # class c has no video
    for key in expected - {"val_loss", "val_confusion"}:
        assert 0.0 <= out[key] <= 1.0, key
    confusion = out["val_confusion"]
    assert len(confusion) == 4 and all(len(row) == 4 for row in confusion)
    assert sum(map(sum, confusion)) == 3
    # The clip logits derived from one frame pass equal the model's (normalising) forward.
    with torch.no_grad():
        logits = torch.cat([model(clips) for clips, _, _ in batches])
    labels = torch.tensor([0, 0, 3, 1])
    assert out["val_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert out["val_acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())


# --- make_optimizer: weight decay on weights of two or more dimensions only ------------------

@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases_and_norm_parameters(name: str) -> None:
    model = build_model("tiny3d", 4, "none", "student")
    optimizer = make_optimizer(model.parameters(), name, 1e-3, 0.05, 0.9)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05
               for p in g["params"]}
    kept = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0
            for p in g["params"]}
    params = list(model.parameters())
    assert decayed | kept == {id(p) for p in params} and not decayed & kept
    assert decayed == {id(p) for p in params if p.dim() >= 2}
    assert kept and all(p.dim() == 1 for p in params if id(p) in kept)  # biases, BN


def test_a_step_shrinks_weights_but_leaves_biases_alone() -> None:
    # With a zero gradient only the decay moves a parameter.
    weight = torch.nn.Parameter(torch.ones(3, 3))
    bias = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer([weight, bias], "adamw", 0.1, 0.5, 0.9)
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    optimizer.step()
    assert torch.allclose(weight, torch.full((3, 3), 1 - 0.1 * 0.5))
    assert torch.equal(bias.detach(), torch.ones(3))


def test_without_weight_decay_every_parameter_is_free() -> None:
    model = build_model("tiny3d", 4, "none", "student")
    optimizer = make_optimizer(model.parameters(), "sgd", 1e-3, 0.0, 0.0)
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    assert optimizer.param_groups[0]["nesterov"] is False


# --- channels_last_weights -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18_tsn", "tiny3d", "x3d_xs"])
def test_channels_last_weights_keep_every_students_output(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, "none", "student").eval()
    clips = torch.rand(2, 3, 4, 32, 32)
    with torch.no_grad():
        before = model(clips)
        channels_last_weights(model)
        after = model(clips.contiguous(memory_format=torch.channels_last_3d))
    convs = [p for p in model.parameters() if p.dim() >= 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d if p.dim() == 5
                                         else torch.channels_last) for p in convs)
    assert torch.allclose(before, after, atol=1e-5)


# --- train_epochs with a distillation --------------------------------------------------------

class _NoSchedule:
    def step(self) -> None:
        pass


def test_each_epoch_gives_dkd_its_number_for_the_warm_up() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2, 3))
    clips, labels, videos = _batch([[0, 1], [2, 0], [1, 1]], [0, 1, 2], [0, 1, 2])
    cached = torch.tensor([[2.0, -1.0, 1.0], [1.0, 0.0, 3.0], [0.0, 2.0, 1.0]])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)  # nothing moves: epochs compare
    kd: list[float] = []
    train_epochs(student, optimizer, _NoSchedule(),
                 train_batches=lambda epoch: [(clips, labels, videos, cached)],
                 val_batches=[(clips, labels, videos)], device=CPU, classes=["a", "b", "c"],
                 epochs=3, distillation=Distillation("dkd", alpha=0.5, dkd_warmup=2),
                 on_epoch=lambda epoch, lr, metrics: kd.append(metrics["train_kd"]))
    with torch.no_grad():
        full = Distillation("dkd", dkd_warmup=0).teacher_term(student(clips), cached, labels)
    assert kd == pytest.approx([0.5 * full.item(), full.item(), full.item()], rel=1e-5)


def test_divergence_in_the_last_optimizer_step_fails_the_epoch() -> None:
    # One batch: its training loss is finite, only the step after it breaks the weights.
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2, 3))
    batch = _batch([[0, 1], [2, 0], [1, 1]], [0, 1, 2], [0, 1, 2])
    optimizer = torch.optim.SGD(student.parameters(), lr=math.inf)
    done: list[int] = []
    with pytest.raises(NonFiniteMetricError, match=r"validation logits became .* after epoch 1 "):
        train_epochs(student, optimizer, _NoSchedule(), train_batches=lambda epoch: [batch],
                     val_batches=[batch], device=CPU, classes=["a", "b", "c"], epochs=2,
                     on_epoch=lambda epoch, lr, metrics: done.append(epoch))
    assert done == []  # never reported as a normal epoch


def test_alpha_zero_trains_on_the_labels_without_a_teacher() -> None:
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2, 3))
    batch = _batch([[0, 1], [2, 0]], [0, 1], [0, 1])  # no cached logits, no teacher
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    for distillation in (None, Distillation("dist", alpha=0.0)):
        metrics = train_one_epoch(student, [batch], optimizer, CPU, None, distillation)
        assert metrics["train_kd"] == 0.0
        assert metrics["train_loss"] == pytest.approx(metrics["train_ce"])
