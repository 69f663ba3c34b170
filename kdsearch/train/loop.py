"""Training and evaluation loops. Nothing here knows about Ray or MLflow."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.train.losses import Distillation
from kdsearch.train.metrics import classification_metrics, metric_key

# (clips, labels, video index[, cached teacher logits])
Batch = Sequence[torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial cannot recover."""


class NonFiniteMetricError(RuntimeError):
    """Validation logits, or a metric to rank by, became NaN or infinite: the weights diverged
    (possibly in the last optimizer step, which no training loss sees), and metrics such as an
    accuracy from the argmax of NaN logits would rank the trial by chance."""


def to_model_input(clips: torch.Tensor, device: torch.device, channels_last: bool = False
                   ) -> torch.Tensor:
    """Clips on ``device`` as float [0, 1]. Loaders send uint8: a quarter of the bytes through
    worker shared memory and host-to-device copies, and the conversion runs on the device.
    ``channels_last`` (CUDA only) lays clips out as cuDNN's fastest 3D convolutions want."""
    clips = clips.to(device, non_blocking=True)
    clips = clips.float().div_(255) if clips.dtype == torch.uint8 else clips
    if channels_last and device.type == "cuda" and clips.dim() == 5:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    return clips


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked; a no-op on the CPU (where it would be slower)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


ModelT = TypeVar("ModelT", bound=nn.Module)


def to_channels_last(model: ModelT, device: torch.device, enabled: bool) -> ModelT:
    """Channels-last weights on CUDA: 3D convolutions' as ``channels_last_3d``, 2D ones' (a
    frame-level student) as ``channels_last``; ``Module.to`` would reject the 2D ones."""
    if enabled and device.type == "cuda":
        channels_last_weights(model)
    return model


def channels_last_weights(model: nn.Module) -> None:
    formats = {5: torch.channels_last_3d, 4: torch.channels_last}
    for param in model.parameters():
        if param.dim() in formats:
            param.data = param.data.contiguous(memory_format=formats[param.dim()])


def pick_device(gpus: float) -> torch.device:
    # Ray may assign (fake) GPUs that torch cannot see: trust torch, not Ray's GPU ids.
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over ``params``.

    Weight decay applies to tensors of two or more dimensions only (convolution and linear
    weights); biases and normalisation scales and shifts are not decayed, as in nanoGPT and
    timm: shrinking them towards zero regularises nothing and only fights the normalisation.
    So a search over ``weight_decay`` changes what it says it changes.
    """
    params = list(params)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def train_one_epoch(student: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    device: torch.device, teacher: nn.Module | None = None,
                    distillation: Distillation | None = None, *, epoch: int = 1,
                    bf16: bool = False, channels_last: bool = False) -> dict[str, float]:
    """One pass over ``loader``, epoch ``epoch`` (from 1: DKD's warm-up counts it); with a
    ``distillation`` of alpha > 0 the loss is its distillation loss, else (None, or alpha 0)
    plain cross-entropy without running the teacher.

    The teacher's logits come from the batch's fourth element when the loader has them
    (the clip cache), else from running ``teacher`` on the clips.
    """
    alpha = distillation.alpha if distillation is not None else 0.0
    student.train()
    if teacher is not None:
        teacher.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, kd, correct; summed over clips
    seen = 0
    for batch in loader:
        clips = to_model_input(batch[0], device, channels_last)
        labels = batch[1].to(device)
        with autocast(device, bf16):
            logits = student(clips).float()
            teacher_logits = _teacher_logits(batch, clips, teacher, alpha, device)
        if teacher_logits is not None and distillation is not None:
            loss, ce, kd = distillation.loss(logits, teacher_logits, labels, epoch)
        else:
            loss = ce = F.cross_entropy(logits, labels)
            kd = torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        n = labels.numel()
        # One host sync per step: the values to log and the finiteness check travel together.
        step = torch.stack([loss.detach(), ce.detach(), kd.detach(),
                            (logits.argmax(1) == labels).sum() / n]).double().cpu()
        if not math.isfinite(step[0].item()):
            raise NonFiniteLossError(f"training loss became {step[0].item()} after {seen} "
                                     "clips")
        optimizer.step()
        sums += step * n
        seen += n
    sums /= max(seen, 1)
    return {"train_loss": sums[0].item(), "train_ce": sums[1].item(),
            "train_kd": sums[2].item(), "train_acc": sums[3].item()}


def _teacher_logits(batch: Sequence[torch.Tensor], clips: torch.Tensor,
                    teacher: nn.Module | None, alpha: float, device: torch.device
                    ) -> torch.Tensor | None:
    if alpha <= 0:
        return None  # plain supervised training: the teacher is not even run
    if len(batch) > 3 and batch[3].dim() == 2:  # the clip cache's teacher logits
        return batch[3].to(device, non_blocking=True).float()
    if teacher is None:
        raise ValueError("alpha > 0 needs a teacher or a loader with cached teacher logits")
    if len(batch) > 3:  # the teacher's own clip of the student's view (PairedClipDataset)
        layout = clips.is_contiguous(memory_format=torch.channels_last_3d)
        clips = to_model_input(batch[3], device, layout and device.type == "cuda")
    with torch.no_grad():
        return teacher(clips).float()


FrameLogits = Callable[[torch.Tensor], torch.Tensor]


def _frame_logits_fn(model: nn.Module) -> FrameLogits | None:
    """Per-frame logits ``[B, T, C]`` of raw clips, for frame-level students; else None.

    A wrapper like ``Normalized`` is looked through, normalising the clips as its forward does.
    """
    direct = getattr(model, "frame_logits", None)
    if callable(direct):
        return direct
    inner = getattr(getattr(model, "model", None), "frame_logits", None)
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if callable(inner) and isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        return lambda clips: inner((clips - mean) / std)
    return None


def _batch_rows(model: nn.Module, frame_fn: FrameLogits | None, clips: torch.Tensor,
                labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per clip: CE loss, logits, and for frame models frame votes and summed frame logits."""
    if frame_fn is None:
        logits = model(clips).float()
        parts = [logits]
    else:
        # One pass: FrameResNet's clip logits are exactly the mean of its frame logits.
        frames = frame_fn(clips).float()
        logits = frames.mean(1)
        winners = frames.argmax(2)
        ones = torch.ones(winners.shape, device=winners.device)
        votes = torch.zeros_like(logits).scatter_add_(1, winners, ones)
        parts = [logits, votes, frames.sum(1)]
    if logits.shape[1] != num_classes:
        raise ValueError(f"the model gives {logits.shape[1]} logits per clip but there are "
                         f"{num_classes} classes: they must match")
    loss = F.cross_entropy(logits, labels, reduction="none")
    # The batch's only host sync: everything the metrics need crosses in one copy.
    return torch.cat([loss[:, None], *parts], 1).cpu().numpy().astype(np.float64)


def _host_labels(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    # Checked on the host: an out-of-range label would be an opaque device assert in the CE.
    host = labels.cpu().numpy()
    bad = host[(host < 0) | (host >= num_classes)]
    if bad.size:
        raise ValueError(f"label {bad[0]} is outside [0, {num_classes}): labels must be class "
                         "indices")
    return host


def _add_to_videos(videos: dict[int, np.ndarray], video_label: dict[int, int],
                   video_ids: torch.Tensor, labels: np.ndarray, rows: np.ndarray) -> None:
    for vid, label, row in zip(video_ids.tolist(), labels.tolist(), rows, strict=True):
        if video_label.setdefault(vid, label) != label:
            raise ValueError(f"video {vid} has clips labelled {video_label[vid]} and {label}: "
                             "all clips of a video must share its label")
        videos[vid] = videos[vid] + row if vid in videos else row.copy()


def _majority_vote(votes: np.ndarray, frame_logits: np.ndarray) -> np.ndarray:
    # Among the classes with the most frame votes, the larger summed frame logit wins.
    tied = votes == votes.max(1, keepdims=True)
    return np.where(tied, frame_logits, -np.inf).argmax(1)


def _class_keys(classes: Sequence[str]) -> list[str]:
    keys = [metric_key(c) for c in classes]
    counts = Counter(keys)
    # Two names made safe alike would overwrite each other's metric: the class index tells them
    # apart.
    return [k if counts[k] == 1 else f"{k}_{i}" for i, k in enumerate(keys)]


def _video_metrics(videos: dict[int, np.ndarray], video_label: dict[int, int],
                   classes: Sequence[str], with_votes: bool) -> dict[str, Any]:
    n = len(classes)
    table = np.stack([videos[v] for v in sorted(videos)])
    y_true = np.array([video_label[v] for v in sorted(videos)], dtype=np.int64)
    metrics = classification_metrics(y_true, table[:, :n].argmax(1), n)
    out: dict[str, Any] = {"val_video_acc": metrics.accuracy}
    if with_votes:
        voted = _majority_vote(table[:, n:2 * n], table[:, 2 * n:])
        out["val_vote_acc"] = float((voted == y_true).mean())
    out["val_macro_f1"] = metrics.macro_f1
    for key, acc in zip(_class_keys(classes), metrics.per_class_accuracy, strict=True):
        if not math.isnan(acc):
            out[f"val_class_acc.{key}"] = acc
    out["val_confusion"] = metrics.confusion
    return out


class _NonFiniteLogits:
    """Counts the clips whose validation logits hold a NaN or an infinity; the first such
    value names the error."""

    def __init__(self) -> None:
        self.clips, self.value = 0, 0.0

    def add(self, logits: np.ndarray) -> None:
        bad = ~np.isfinite(logits)
        if not bad.any():
            return
        if not self.clips:
            self.value = float(logits[bad][0])
        self.clips += int(bad.any(1).sum())

    def check(self, seen: int, epoch: int | None) -> None:
        if self.clips:
            when = "" if epoch is None else f" after epoch {epoch}"
            raise NonFiniteMetricError(f"validation logits became {self.value}{when} "
                                       f"({self.clips} of {seen} clips)")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], device: torch.device,
             classes: Sequence[str], *, bf16: bool = False, channels_last: bool = False,
             epoch: int | None = None) -> dict[str, Any]:
    """Clip and video metrics over ``loader``, whose batches may hold several clips per video.

    A video is predicted by the argmax of its mean clip logits; frame-level students (a
    ``frame_logits`` method) also get ``val_vote_acc``, a majority vote over all their frames.
    Video-level macro F1, per-class accuracy and confusion use the mean-logit prediction.
    Logits with a NaN or an infinity raise :class:`NonFiniteMetricError` (``epoch``, the epoch
    just trained, names when): the weights diverged, and their metrics would be noise.
    """
    model.eval()
    num_classes = len(classes)
    frame_fn = _frame_logits_fn(model)
    videos: dict[int, np.ndarray] = {}  # per video: summed [logits, frame votes, frame logits]
    video_label: dict[int, int] = {}
    loss_sum, correct, seen = 0.0, 0, 0
    non_finite = _NonFiniteLogits()
    for clips, labels, video_ids, *_ in loader:
        host_labels = _host_labels(labels, num_classes)
        with autocast(device, bf16):
            rows = _batch_rows(model, frame_fn, to_model_input(clips, device, channels_last),
                               labels.to(device), num_classes)
        non_finite.add(rows[:, 1:num_classes + 1])
        loss_sum += float(rows[:, 0].sum())
        correct += int((rows[:, 1:num_classes + 1].argmax(1) == host_labels).sum())
        seen += len(rows)
        _add_to_videos(videos, video_label, video_ids, host_labels, rows[:, 1:])
    if seen == 0:
        raise ValueError("the validation loader yielded no clips: evaluate needs at least one")
    non_finite.check(seen, epoch)
    return {"val_acc": correct / seen, "val_loss": loss_sum / seen,
            **_video_metrics(videos, video_label, classes, frame_fn is not None)}


EpochDone = Callable[[int, float, dict[str, Any]], None]


def train_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, *,
                 train_batches: Callable[[int], Iterable[Batch]], val_batches: Iterable[Batch],
                 device: torch.device, classes: Sequence[str], epochs: int, start: int = 0,
                 teacher: nn.Module | None = None, distillation: Distillation | None = None,
                 bf16: bool = False, channels_last: bool = False,
                 on_epoch: EpochDone | None = None) -> dict[str, Any]:
    """The one training loop (trials, the teacher stage, the benchmarks): epochs ``start + 1``
    to ``epochs``, each one pass of :func:`train_one_epoch` over ``train_batches(epoch)``, an
    :func:`evaluate` on ``val_batches`` and a step of ``schedule``. Without ``distillation``
    (the teacher stage) the loss is the cross-entropy with the labels alone.

    ``on_epoch(epoch, lr, metrics)`` is called after each epoch with the learning rate the
    epoch trained at; the last epoch's metrics are returned ({} when no epoch ran).
    """
    speed = {"bf16": bf16, "channels_last": channels_last}
    metrics: dict[str, Any] = {}
    for epoch in range(start + 1, epochs + 1):
        lr = float(optimizer.param_groups[0]["lr"])
        metrics = train_one_epoch(model, train_batches(epoch), optimizer, device, teacher,
                                  distillation, epoch=epoch, **speed)
        metrics.update(evaluate(model, val_batches, device, classes, epoch=epoch,
                                **speed))
        schedule.step()
        if on_epoch is not None:
            on_epoch(epoch, lr, metrics)
    return metrics
