"""The knowledge-distillation loss (Hinton et al., 2015), in SoccerKDNet's convention.

    loss = (1 - alpha) * CE(student, y)
           + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

``alpha`` is the weight on the teacher's soft targets: alpha = 0 is plain supervised training,
alpha = 1 learns from the teacher alone. torchdistill's ``KDLoss`` uses the opposite
convention (its ``alpha`` weighs the hard-label term). The T^2 factor keeps the soft-target
gradients on the same scale as the hard-label ones when the temperature changes. The KL term
is averaged over the batch (``reduction="batchmean"``), which is the true KL divergence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class KDLoss(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor  # cross-entropy with the labels, unweighted
    kd: torch.Tensor  # T^2 * KL(teacher || student), unweighted by alpha


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float) -> KDLoss:
    """KD loss and its parts; see the module docstring for the formula."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is {alpha}, but must be in [0, 1]")
    if temperature <= 0:
        raise ValueError(f"temperature is {temperature}, but must be > 0")
    ce = F.cross_entropy(student_logits, labels)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    kd = kl * temperature**2
    return KDLoss(total=(1.0 - alpha) * ce + alpha * kd, ce=ce, kd=kd)
