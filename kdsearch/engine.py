"""Training and evaluation loops. Nothing here knows about Ray or MLflow."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.losses import kd_loss
from kdsearch.models import create_model, get_spec

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the trial cannot recover."""


class Normalized(nn.Module):
    """A model with its own input normalisation, so teacher and student share one raw clip."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Iterable[float], std: Iterable[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1, 1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model((clips - self.mean) / self.std)


def build_model(name: str, num_classes: int, weights: str, role: str) -> Normalized:
    spec = get_spec(name)
    model = create_model(name, num_classes, weights=weights, role=role)  # type: ignore[arg-type]
    return Normalized(model, spec.mean, spec.std)


def pick_device(gpus: float) -> torch.device:
    # Ray may assign (fake) GPUs that torch cannot see: trust torch, not Ray's GPU ids.
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_one_epoch(student: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    device: torch.device, teacher: nn.Module | None = None, alpha: float = 0.0,
                    temperature: float = 1.0) -> dict[str, float]:
    """One pass over ``loader``; with a teacher and alpha > 0 the loss is the KD loss."""
    student.train()
    use_teacher = teacher is not None and alpha > 0
    if teacher is not None:
        teacher.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, kd, correct; summed over clips
    seen = 0
    for clips, labels, _ in loader:
        clips, labels = clips.to(device, non_blocking=True), labels.to(device)
        logits = student(clips)
        if use_teacher:
            assert teacher is not None
            with torch.no_grad():
                teacher_logits = teacher(clips)
            loss, ce, kd = kd_loss(logits, teacher_logits, labels, alpha, temperature)
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


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], device: torch.device,
             num_classes: int) -> dict[str, float]:
    """Clip accuracy, video accuracy (mean of clip logits per video) and clip CE loss."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    video_logits: dict[int, torch.Tensor] = {}
    video_label: dict[int, int] = {}
    for clips, labels, video_ids in loader:
        clips, labels = clips.to(device, non_blocking=True), labels.to(device)
        logits = model(clips)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum().item())
        seen += labels.numel()
        for logit, label, vid in zip(logits.float().cpu(), labels.cpu(), video_ids.tolist(),
                                     strict=True):
            video_logits[vid] = video_logits.get(vid, torch.zeros(num_classes)) + logit
            video_label[vid] = int(label)
    video_correct = sum(int(video_logits[v].argmax()) == video_label[v] for v in video_logits)
    seen = max(seen, 1)
    return {"val_acc": correct / seen, "val_loss": loss_sum / seen,
            "val_video_acc": video_correct / max(len(video_logits), 1)}
