"""Classification metrics and a confusion-matrix figure, with numpy only (no scikit-learn).

matplotlib is imported inside ``confusion_figure`` so that training never pays for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Past this many classes the cell counts would overlap: the colours alone stay readable.
_MAX_ANNOTATED_CLASSES = 30
_UNSAFE_KEY_CHAR = re.compile(r"[^A-Za-z0-9_\-. ]")


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    per_class_accuracy: list[float]  # recall per class; nan for a class with no example
    macro_f1: float  # over classes present in y_true or y_pred (scikit-learn's convention)
    confusion: list[list[int]]  # rows = true class, columns = predicted class


def _as_labels(values: Sequence[int] | np.ndarray, name: str, num_classes: int) -> np.ndarray:
    labels = np.asarray(values)
    if labels.size == 0:
        return labels.astype(np.int64).reshape(0)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{name} has shape {labels.shape} and dtype {labels.dtype}: it must be "
                         "a 1-D sequence of integer class indices")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"label {bad[0]} in {name} is outside [0, {num_classes}): labels must "
                         "be class indices")
    return labels.astype(np.int64)


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]``: rows are true classes, columns predicted ones."""
    if num_classes < 1:
        raise ValueError(f"num_classes is {num_classes}: it must be at least 1")
    true = _as_labels(y_true, "y_true", num_classes)
    pred = _as_labels(y_pred, "y_pred", num_classes)
    if len(true) != len(pred):
        raise ValueError(f"y_true has {len(true)} labels but y_pred has {len(pred)}: they must "
                         "pair up one to one")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _macro_f1(confusion: np.ndarray) -> float:
    tp = np.diag(confusion).astype(np.float64)
    true_count, pred_count = confusion.sum(1), confusion.sum(0)
    present = (true_count + pred_count) > 0
    if not present.any():
        return float("nan")
    # 2TP / (|true| + |pred|) is F1 without dividing by precision + recall: a present class
    # that is never hit gets 0, as scikit-learn gives it.
    f1 = 2 * tp[present] / (true_count[present] + pred_count[present])
    return float(f1.mean())


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           num_classes: int) -> ClassificationMetrics:
    """Accuracy, per-class recall, macro F1 and the confusion matrix of paired labels."""
    confusion = confusion_matrix(y_true, y_pred, num_classes)
    total = int(confusion.sum())
    hits = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
    return ClassificationMetrics(
        accuracy=float(hits.sum() / total) if total else float("nan"),
        per_class_accuracy=[float(r) for r in recall],
        macro_f1=_macro_f1(confusion),
        confusion=confusion.tolist(),
    )


def metric_key(name: str) -> str:
    """``name`` made safe as a part of an MLflow metric key; unsafe characters become ``_``.

    MLflow also rejects keys that change under path normalisation, so empty, ``.`` and ``..``
    segments between slashes become ``_`` too.
    """
    segments = [_UNSAFE_KEY_CHAR.sub("_", s) for s in name.split("/")]
    return "/".join("_" if s in ("", ".", "..") else s for s in segments)


def _row_fractions(counts: np.ndarray) -> np.ndarray:
    rows = counts.sum(1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)


def _annotate(ax: Any, counts: np.ndarray, fractions: np.ndarray, fontsize: float) -> None:
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if fractions[i, j] > 0.5 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=fontsize)


def confusion_figure(confusion: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str],
                     title: str = "") -> Figure:
    """A confusion-matrix heatmap coloured by the fraction of each true class (row)."""
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(f"confusion has shape {counts.shape} but there are {n} classes: it "
                         f"must be ({n}, {n})")
    # The Agg canvas is attached directly: the process-wide backend (pyplot's) stays untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure, not pyplot's, so figures made every epoch are not kept alive by pyplot.
    side = min(4.0 + 0.25 * n, 30.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fractions = _row_fractions(counts)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.8)
    fontsize = 10.0 if n <= 10 else max(4.0, 10.0 - (n - 10) / 10)
    if n <= _MAX_ANNOTATED_CLASSES:
        _annotate(ax, counts, fractions, fontsize)
    ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(classes), fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return fig
