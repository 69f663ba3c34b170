"""kdsearch.train.metrics: accuracy, macro F1, the confusion matrix and its figure, metric keys."""

from __future__ import annotations

import math
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdsearch.train.metrics import classification_metrics, confusion_figure, metric_key

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
