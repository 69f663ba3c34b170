"""The distillation losses: what a student learns from the labels and its teacher's logits.

Every loss has SoccerKDNet's form, ``alpha`` being the weight on the teacher::

    total = (1 - alpha) * CE(student, y) + alpha * teacher_term

alpha = 0 is plain supervised training (the training loop then never runs the teacher),
alpha = 1 learns from the teacher alone. torchdistill's ``KDLoss`` uses the opposite convention
(its ``alpha`` weighs the hard-label term); mdistiller and the DIST code add their term to a CE
of weight 1, which is alpha = 0.5 here with the whole loss halved (the same direction, half
the SGD step; Adam's steps barely see the scale). ``student.kd_loss`` picks the teacher term.
Each needs only logits, so cached teacher logits serve all three; the teacher's logits are
detached (no gradient reaches the teacher); each term is a mean over the batch. Below, ``s``
and ``t`` are the student's and the teacher's logits ``[B, C]``, ``y`` the labels.

``kd``: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015::

    teacher_term = T^2 * KL(softmax(t / T) || softmax(s / T))

    T = ``temperature`` (default 4, SoccerKDNet's). The T^2 factor keeps the soft-target
    gradients on the hard-label scale when T changes; the KL divergence is the batch mean
    (``reduction="batchmean"``), the true KL divergence.

``dkd``: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022, as
mdistiller's ``mdistiller/distillers/DKD.py`` computes it::

    p = softmax(z / T);  b = (p_y, 1 - p_y): the target class against all the others
    q = softmax(z / T) over the non-target classes only
    TCKD = T^2 * KL(b(t) || b(s));   NCKD = T^2 * KL(q(t) || q(s))
    teacher_term = min(epoch / dkd_warmup, 1) * (dkd_alpha * TCKD + dkd_beta * NCKD)

    Per sample, KD = TCKD + (1 - p_y(t)) * NCKD (the paper's reformulation): KD's weight on
    non-target knowledge shrinks as the teacher grows confident, DKD's is a setting. T =
    ``temperature``, shared with ``kd``. Epochs count from 1, as in mdistiller, so dkd_warmup
    0 or 1 means no warm-up. Defaults: dkd_alpha 1 and dkd_beta 8 (mdistiller's, with T 4,
    kdsearch's default temperature too; its ImageNet setting is beta 0.5 at T 1), dkd_warmup
    2 epochs (mdistiller's 20 of 240 do not fit kdsearch's budgets; kdsearch.config.schema).
    Two deviations, neither changing a value mdistiller gets finite: log b comes from a
    logsumexp of log-probabilities, not the log of summed probabilities (which is log 0 for
    a confident student), and NCKD drops the target class exactly instead of subtracting
    1000 from its scaled logit.

``dist``: Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022, as the authors' ``dist_kd.py`` and mmrazor's ``DISTLoss`` compute it::

    Y = softmax(z / tau)                                         [B, C]
    inter = 1 - mean over samples i of rho(Y_s[i, :], Y_t[i, :])
    intra = 1 - mean over classes c of rho(Y_s[:, c], Y_t[:, c])
    teacher_term = tau^2 * (dist_beta * inter + dist_gamma * intra)

    rho is Pearson's correlation as the reference computes it: the cosine of the centred
    vectors, 1e-8 added to the product of their norms. Matching correlations rather than the
    probabilities lets the student rank the classes of a clip (inter) and the clips of a class
    (intra) as the teacher does, without copying a much stronger teacher's confidence. Intra
    needs two samples or more: a batch of one has constant columns, correlation 0, intra 1
    and no gradient from it. Defaults tau 1, beta 1, gamma 1 (the authors' ImageNet setting,
    mmrazor's defaults); ``dist_tau`` is DIST's own as its default is not KD's temperature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from kdsearch.config import Student

Kind = Literal["kd", "dkd", "dist"]
KINDS: tuple[str, ...] = get_args(Kind)


class KDLoss(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor  # cross-entropy with the labels, unweighted
    kd: torch.Tensor  # the loss's teacher term (after DKD's warm-up), unweighted by alpha


#: (setting, the rule it keeps, what the message says it must be)
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("alpha", lambda v: 0 <= v <= 1, "`0 <= alpha <= 1`"),
    ("temperature", lambda v: v > 0, "`temperature > 0`"),
    ("dkd_alpha", lambda v: v >= 0, "`dkd_alpha >= 0`"),
    ("dkd_beta", lambda v: v >= 0, "`dkd_beta >= 0`"),
    ("dkd_warmup", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
     "a whole number of epochs, `dkd_warmup >= 0`"),
    ("dist_tau", lambda v: v > 0, "`dist_tau > 0`"),
    ("dist_beta", lambda v: v >= 0, "`dist_beta >= 0`"),
    ("dist_gamma", lambda v: v >= 0, "`dist_gamma >= 0`"),
)


@dataclasses.dataclass(frozen=True)
class Distillation:
    """How a student learns from its teacher: the loss ``kind`` and its settings (see the
    module docstring). The defaults are ``kdsearch.config.Student``'s."""

    kind: Kind = "kd"
    alpha: float = 0.5
    temperature: float = 4.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: int = 2
    dist_tau: float = 1.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"The value of `kind` is {self.kind!r}, but must be one of "
                             f"{', '.join(KINDS)}")
        for name, holds, rule in _RULES:
            value = getattr(self, name)
            # ``not holds`` also catches NaN, which compares false with everything.
            if not holds(value):
                raise ValueError(f"The value of `{name}` is {value}, but must be {rule}")

    @classmethod
    def from_student(cls, student: Student) -> Distillation:
        """The distillation one trial's student settings ask for."""
        return cls(kind=student.kd_loss, alpha=student.alpha, temperature=student.temperature,
                   dkd_alpha=student.dkd_alpha, dkd_beta=student.dkd_beta,
                   dkd_warmup=student.dkd_warmup, dist_tau=student.dist_tau,
                   dist_beta=student.dist_beta, dist_gamma=student.dist_gamma)

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor, epoch: int = 1) -> KDLoss:
        """The loss of one batch at ``epoch`` (counted from 1) and its parts."""
        if epoch < 1:
            raise ValueError(f"The value of `epoch` is {epoch}, but must be `epoch >= 1` "
                             "(epochs count from 1)")
        ce = F.cross_entropy(student_logits, labels)
        term = self.teacher_term(student_logits, teacher_logits.detach(), labels, epoch)
        return KDLoss(total=(1.0 - self.alpha) * ce + self.alpha * term, ce=ce, kd=term)

    def teacher_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor, epoch: int = 1) -> torch.Tensor:
        if self.kind == "kd":
            return kd_term(student_logits, teacher_logits, self.temperature)
        if self.kind == "dkd":
            return self.warmup(epoch) * dkd_term(student_logits, teacher_logits, labels,
                                                 self.temperature, self.dkd_alpha,
                                                 self.dkd_beta)
        return dist_term(student_logits, teacher_logits, self.dist_tau, self.dist_beta,
                         self.dist_gamma)

    def warmup(self, epoch: int) -> float:
        """DKD's factor at ``epoch``: rising linearly to 1 at epoch ``dkd_warmup``."""
        return 1.0 if self.dkd_warmup == 0 else min(epoch / self.dkd_warmup, 1.0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float) -> KDLoss:
    """The ``kd`` loss and its parts; see the module docstring for the formula."""
    return Distillation("kd", alpha, temperature).loss(student_logits, teacher_logits, labels)


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)), the batch mean."""
    return temperature**2 * _kl(F.log_softmax(student_logits / temperature, dim=1),
                                F.log_softmax(teacher_logits / temperature, dim=1))


def dkd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float, dkd_alpha: float, dkd_beta: float) -> torch.Tensor:
    """dkd_alpha * TCKD + dkd_beta * NCKD, before the warm-up."""
    others = _non_target_classes(labels, student_logits.shape[1])
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    tckd = _kl(_binary(log_s, labels, others), _binary(log_t, labels, others))
    # Log-softmax among the non-target classes: the full one renormalised over them.
    nckd = _kl(F.log_softmax(log_s.gather(1, others), dim=1),
               F.log_softmax(log_t.gather(1, others), dim=1))
    return temperature**2 * (dkd_alpha * tckd + dkd_beta * nckd)


def _non_target_classes(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``[B, C - 1]``: each row's class indices but its label. Built by arithmetic, not a
    boolean mask, whose indexing would wait for the GPU once more every step."""
    index = torch.arange(classes - 1, device=labels.device).expand(len(labels), -1)
    return index + (index >= labels[:, None]).long()


def _binary(log_p: torch.Tensor, labels: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """log (p_y, 1 - p_y), ``[B, 2]``; 1 - p_y as a logsumexp over the other classes, which
    stays finite where the log of their summed probabilities would be log 0."""
    return torch.stack([log_p.gather(1, labels[:, None])[:, 0],
                        log_p.gather(1, others).logsumexp(dim=1)], dim=1)


def _kl(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) from log-probabilities, the batch mean."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def dist_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
              dist_beta: float, dist_gamma: float) -> torch.Tensor:
    """tau^2 * (dist_beta * inter + dist_gamma * intra) of the module docstring."""
    y_s = F.softmax(student_logits / tau, dim=1)
    y_t = F.softmax(teacher_logits / tau, dim=1)
    inter = 1 - _pearson(y_s, y_t).mean()
    intra = 1 - _pearson(y_s.T, y_t.T).mean()
    return tau**2 * (dist_beta * inter + dist_gamma * intra)


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson's correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
