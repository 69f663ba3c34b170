import math
import posixpath
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.models import Normalized, build_model
from kdsearch.train.loop import Batch, evaluate
from kdsearch.train.metrics import classification_metrics, confusion_figure, metric_key

CPU = torch.device("cpu")


# --- classification_metrics ------------------------------------------------------------------

def test_three_classes_seven_samples_by_hand() -> None:
    # confusion  pred: 0 1 2      recall      precision   F1
    #   true 0       [2 1 0]      2/3         2/3         2/3
    #   true 1       [0 1 1]      1/2         1/2         1/2
    #   true 2       [1 0 1]      1/2         1/2         1/2
    # accuracy 4/7, macro F1 (2/3 + 1/2 + 1/2) / 3 = 5/9
    m = classification_metrics([0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2, 0], 3)
    assert m.confusion == [[2, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m.accuracy == pytest.approx(4 / 7)
    assert m.per_class_accuracy == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert m.macro_f1 == pytest.approx(5 / 9)


def _f1_from_precision_recall(tp: int, fp: int, fn: int) -> float:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_class_never_predicted_has_f1_zero() -> None:
    # class 2 is true twice and never predicted: precision undefined, F1 counted as 0.
    # F1: class 0 = 1, class 1 = 2 (1/3)(1) / (4/3) = 1/2, class 2 = 0; macro 1/2
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 1], 3)
    assert m.macro_f1 == pytest.approx(0.5)
    by_formula = [_f1_from_precision_recall(1, 0, 0), _f1_from_precision_recall(1, 2, 0),
                  _f1_from_precision_recall(0, 0, 2)]
    assert m.macro_f1 == pytest.approx(sum(by_formula) / 3)
    assert m.per_class_accuracy == pytest.approx([1.0, 1.0, 0.0])


def test_class_absent_from_true_and_pred_is_left_out() -> None:
    # class 3 never appears: recall nan, and macro F1 averages classes 0-2 only:
    # F1 = 1, 2/3, 2/3 -> 7/9 (averaging over 4 classes would give 7/12).
    m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], 4)
    assert m.per_class_accuracy[:3] == pytest.approx([1.0, 0.5, 1.0])
    assert math.isnan(m.per_class_accuracy[3])
    assert m.macro_f1 == pytest.approx(7 / 9)
    assert m.confusion[3] == [0, 0, 0, 0] and [row[3] for row in m.confusion] == [0, 0, 0, 0]


def test_class_only_predicted_counts_in_macro_f1() -> None:
    # class 1 is predicted once but never true: present, F1 0; macro (2/3 + 0) / 2.
    m = classification_metrics([0, 0], [0, 1], 3)
    assert m.macro_f1 == pytest.approx(1 / 3)
    assert math.isnan(m.per_class_accuracy[1])


def test_results_are_plain_python_values() -> None:
    m = classification_metrics([0, 1], [1, 1], 2)
    assert type(m.accuracy) is float and type(m.macro_f1) is float
    assert all(type(c) is int for row in m.confusion for c in row)


@pytest.mark.parametrize(("y_true", "y_pred", "match"), [
    ([0, 3], [0, 1], r"label 3 in y_true is outside \[0, 3\)"),
    ([0, 1], [0, -1], r"label -1 in y_pred is outside \[0, 3\)"),
    ([0, 1, 2], [0, 1], r"y_true has 3 labels but y_pred has 2"),
    ([0.5, 1.0], [0, 1], r"integer class indices"),
])
def test_invalid_labels_raise(y_true: list[float], y_pred: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, 3)  # type: ignore[arg-type]


# --- metric_key --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "key"), [
    ("free kick", "free kick"),
    ("Shot_on-target.v2", "Shot_on-target.v2"),
    ("goal!", "goal_"),
    ("café (home)", "caf_ _home_"),
    ("shot/goal", "shot/goal"),
    ("a//b", "a/_/b"),
    ("/x/../y/", "_/x/_/y/_"),
    ("", "_"),
])
def test_metric_key(name: str, key: str) -> None:
    assert metric_key(name) == key
    full = f"val_class_acc.{key}"
    # MLflow's own rules: allowed characters, and unchanged by path normalisation.
    assert re.fullmatch(r"[/A-Za-z0-9_.\- ]*", full) and posixpath.normpath(full) == full


# --- confusion_figure --------------------------------------------------------------------------

def test_confusion_figure_labels_counts_and_png(tmp_path: Path) -> None:
    classes = ["run", "free kick", "goal!"]
    fig = confusion_figure([[2, 1, 0], [0, 1, 1], [1, 0, 1]], classes, title="epoch 3")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert [t.get_text() for t in ax.get_yticklabels()] == classes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "epoch 3")
    assert sorted(t.get_text() for t in ax.texts) == sorted("210011101")
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_figure_hides_counts_for_many_classes() -> None:
    classes = [f"class {i}" for i in range(100)]
    fig = confusion_figure([[i + j for j in range(100)] for i in range(100)], classes)
    ax = fig.axes[0]
    assert not ax.texts
    assert len(ax.get_xticklabels()) == 100


def test_confusion_figure_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but there are 3 classes"):
        confusion_figure([[1, 0], [0, 1]], ["a", "b", "c"])


def test_metrics_import_keeps_matplotlib_off() -> None:
    code = "import sys, kdsearch.train.metrics; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


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
