"""kdsearch.train.losses: KD, DKD and DIST pinned against their papers' formulas worked out by
hand (numpy, not the module's code), their properties, and Optuna-style argument errors."""

from __future__ import annotations

import math
import re
from typing import Any, get_args

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdsearch.config import Student
from kdsearch.train.losses import KINDS, Distillation, Kind, kd_loss

# Two clips, three classes: the tiny logits the DKD values below are worked out on.
STUDENT = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
TEACHER = [[2.0, -1.0, 1.0], [1.0, 0.0, 3.0]]
LABELS = [0, 2]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _loss(d: Distillation, s: Any, t: Any, y: Any, epoch: int = 1) -> Any:
    return d.loss(torch.tensor(s, dtype=torch.float), torch.tensor(t, dtype=torch.float),
                  torch.tensor(y), epoch)


# --- kd ---------------------------------------------------------------------------------------

def test_kd_loss_matches_hand_computation() -> None:
    # student logits (1, 0), teacher (0, 1), label 0, alpha 0.25, T 2.
    # CE = log(1 + e^-1); softmax(t/T) = (q, 1-q) with q = 1/(1+e^0.5), softmax(s/T) = (1-q, q)
    # KL = (1-2q) * 0.5, so KD = T^2 * KL = 2 (1-2q); total = 0.75 CE + 0.25 KD
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    labels = torch.tensor([0])
    parts = kd_loss(student, teacher, labels, alpha=0.25, temperature=2.0)
    ce = math.log(1 + math.exp(-1))
    q = 1 / (1 + math.exp(0.5))
    kd = 4 * (1 - 2 * q) * 0.5
    assert parts.ce.item() == pytest.approx(ce, rel=1e-6)
    assert parts.kd.item() == pytest.approx(kd, rel=1e-6)
    assert parts.total.item() == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-6)
    assert parts.total.item() == pytest.approx(0.3574056, abs=1e-6)


def test_kd_term_is_zero_when_student_matches_teacher() -> None:
    logits = torch.randn(3, 4)
    parts = kd_loss(logits, logits.clone(), torch.tensor([0, 1, 2]), alpha=0.5, temperature=4.0)
    assert parts.kd.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_batch_mean_and_temperature_squared() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.zeros(6, dtype=torch.long)
    temperature = 5.0
    p_t = torch.softmax(t / temperature, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / temperature, 1))).sum(1).mean()
    parts = kd_loss(s, t, y, alpha=0.3, temperature=temperature)
    assert parts.kd.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)


# --- dkd --------------------------------------------------------------------------------------

def _tckd_nckd_by_hand(temperature: float) -> tuple[float, float]:
    """TCKD and NCKD as the paper defines them, on STUDENT/TEACHER per sample, then the batch
    mean times T^2."""
    tckd, nckd = [], []
    for s, t, y in zip(np.array(STUDENT), np.array(TEACHER), LABELS, strict=True):
        p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
        b_s, b_t = np.array([p_s[y], 1 - p_s[y]]), np.array([p_t[y], 1 - p_t[y]])
        tckd.append((b_t * np.log(b_t / b_s)).sum())
        # p-hat: the softmax among the non-target classes alone
        q_s = _softmax(np.delete(s, y) / temperature)
        q_t = _softmax(np.delete(t, y) / temperature)
        nckd.append((q_t * np.log(q_t / q_s)).sum())
    return temperature**2 * float(np.mean(tckd)), temperature**2 * float(np.mean(nckd))


def test_dkd_matches_hand_computation() -> None:
    tckd, nckd = _tckd_nckd_by_hand(2.0)
    assert (tckd, nckd) == pytest.approx((0.8764109, 0.8965427), abs=1e-6)
    ce = float(np.mean([-np.log(_softmax(np.array(s))[y])
                        for s, y in zip(STUDENT, LABELS, strict=True)]))
    d = Distillation("dkd", alpha=0.25, temperature=2.0, dkd_alpha=1.0, dkd_beta=8.0,
                     dkd_warmup=0)
    parts = _loss(d, STUDENT, TEACHER, LABELS)
    assert parts.kd.item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)
    assert parts.ce.item() == pytest.approx(ce, rel=1e-5)
    assert parts.total.item() == pytest.approx(0.75 * ce + 0.25 * (tckd + 8 * nckd), rel=1e-5)
    only_tckd = Distillation("dkd", temperature=2.0, dkd_alpha=1.0, dkd_beta=0.0, dkd_warmup=0)
    assert _loss(only_tckd, STUDENT, TEACHER, LABELS).kd.item() == pytest.approx(tckd, rel=1e-5)


def test_kd_is_dkd_with_the_teachers_non_target_mass_as_beta() -> None:
    # The paper's reformulation of KD, per sample: KD = TCKD + (1 - p_t^target) * NCKD.
    torch.manual_seed(0)
    for _ in range(5):
        s, t, y = torch.randn(1, 5) * 3, torch.randn(1, 5) * 3, torch.randint(0, 5, (1,))
        temperature = 3.0
        p_target = torch.softmax(t / temperature, 1)[0, y].item()
        kd = Distillation("kd", temperature=temperature).teacher_term(s, t, y)
        dkd = Distillation("dkd", temperature=temperature, dkd_alpha=1.0,
                           dkd_beta=1 - p_target, dkd_warmup=0).teacher_term(s, t, y)
        assert dkd.item() == pytest.approx(kd.item(), rel=1e-4, abs=1e-6)
        # dkd_beta = 1 weighs NCKD fully, more than KD's 1 - p_t^target does.
        equal = Distillation("dkd", temperature=temperature, dkd_alpha=1.0, dkd_beta=1.0,
                             dkd_warmup=0).teacher_term(s, t, y)
        assert equal.item() >= kd.item() - 1e-6


def test_dkd_warm_up_scales_the_term_linearly_from_epoch_one() -> None:
    full = _loss(Distillation("dkd", dkd_warmup=0), STUDENT, TEACHER, LABELS, epoch=1).kd.item()
    warm = Distillation("dkd", alpha=1.0, dkd_warmup=4)
    for epoch, factor in [(1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)]:
        parts = _loss(warm, STUDENT, TEACHER, LABELS, epoch=epoch)
        assert parts.kd.item() == pytest.approx(factor * full, rel=1e-6)
        assert parts.total.item() == pytest.approx(parts.kd.item(), rel=1e-6)  # alpha 1
    once = _loss(Distillation("dkd", dkd_warmup=1), STUDENT, TEACHER, LABELS, epoch=1)
    assert once.kd.item() == pytest.approx(full, rel=1e-6)  # 1: no warm-up either


def test_dkd_stays_finite_for_a_confident_student() -> None:
    # The student's other classes get exp(-200) each, 0 in float32: the log of their summed
    # probabilities (mdistiller's way) is -inf and TCKD infinite; the true value is finite.
    s = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    parts = Distillation("dkd", temperature=1.0).loss(s, torch.tensor([[1.0, 0.0, 0.0]]),
                                                      torch.tensor([0]))
    parts.total.backward()
    assert math.isfinite(parts.kd.item()) and parts.kd.item() > 10
    assert s.grad is not None and torch.isfinite(s.grad).all()


# --- dist -------------------------------------------------------------------------------------

# Three clips (the intra-class correlation of two clips is always +-1), three classes.
STUDENT3 = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 1.0]]
TEACHER3 = [[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, -1.0, 0.5]]


def test_dist_matches_hand_computation() -> None:
    tau = 2.0
    y_s = np.stack([_softmax(np.array(r) / tau) for r in STUDENT3])
    y_t = np.stack([_softmax(np.array(r) / tau) for r in TEACHER3])
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(3)])
    intra = 1 - np.mean([np.corrcoef(y_s[:, c], y_t[:, c])[0, 1] for c in range(3)])
    assert (inter, intra) == pytest.approx((0.7702354, 0.7971491), abs=1e-6)
    d = Distillation("dist", alpha=0.5, dist_tau=tau, dist_beta=1.0, dist_gamma=2.0)
    parts = _loss(d, STUDENT3, TEACHER3, [0, 2, 1])
    assert parts.kd.item() == pytest.approx(tau**2 * (inter + 2 * intra), rel=1e-5)
    assert parts.total.item() == pytest.approx(0.5 * parts.ce.item() + 0.5 * parts.kd.item())


def test_dist_is_zero_when_the_student_matches_the_teacher() -> None:
    torch.manual_seed(0)
    t = torch.randn(6, 4) * 2
    term = Distillation("dist").teacher_term(t.clone(), t, torch.zeros(6, dtype=torch.long))
    assert term.item() == pytest.approx(0.0, abs=1e-5)


def test_dist_ignores_a_positive_affine_change_of_the_probabilities() -> None:
    # Student probabilities a * Y_t + (1 - a) / C: every row and every column a positive
    # affine map of the teacher's, so every Pearson correlation is 1 and DIST is 0; KD is not.
    torch.manual_seed(0)
    t = torch.randn(5, 4) * 2
    y_s = 0.5 * torch.softmax(t, 1) + 0.5 / 4
    s = y_s.log()  # tau 1: softmax(s) = y_s
    labels = torch.zeros(5, dtype=torch.long)
    assert Distillation("dist").teacher_term(s, t, labels).item() == pytest.approx(0, abs=1e-5)
    assert Distillation("kd", temperature=1.0).teacher_term(s, t, labels).item() > 0.05


def test_dist_is_bounded_and_a_batch_of_one_has_a_finite_gradient() -> None:
    torch.manual_seed(0)
    d = Distillation("dist", dist_tau=2.0, dist_beta=1.0, dist_gamma=3.0)
    term = d.teacher_term(torch.randn(8, 5), -torch.randn(8, 5), torch.zeros(8, dtype=torch.long))
    assert 0 <= term.item() <= 4 * 2 * (1 + 3)  # each 1 - rho lies in [0, 2]
    s = torch.randn(1, 5, requires_grad=True)
    one = d.teacher_term(s, torch.randn(1, 5), torch.zeros(1, dtype=torch.long))
    one.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # One clip: its columns are constant, so intra is 1 (times gamma and tau^2).
    assert one.item() >= 4 * 3 * 1 - 1e-4


# --- every loss -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_alpha_is_the_weight_on_the_teacher(kind: Kind) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    hard = Distillation(kind, alpha=0.0).loss(s, t, labels)
    soft = Distillation(kind, alpha=1.0).loss(s, t, labels)
    assert hard.total.item() == pytest.approx(F.cross_entropy(s, labels).item(), rel=1e-6)
    assert soft.total.item() == pytest.approx(soft.kd.item(), rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_student_receives_a_gradient(kind: Kind) -> None:
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    parts = Distillation(kind, alpha=0.5).loss(s, t, torch.tensor([0, 1, 2]))
    parts.total.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_the_defaults_and_kinds_are_the_student_settings() -> None:
    assert Distillation.from_student(Student()) == Distillation()
    assert get_args(Student.model_fields["kd_loss"].annotation) == KINDS
    student = Student(kd_loss="dist", alpha=0.3, dist_tau=2.0, dkd_warmup=0)
    made = Distillation.from_student(student)
    assert (made.kind, made.alpha, made.dist_tau, made.dkd_warmup) == ("dist", 0.3, 2.0, 0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"kind": "crd"}, "The value of `kind` is 'crd', but must be one of kd, dkd, dist"),
    ({"alpha": -0.1}, "The value of `alpha` is -0.1, but must be `0 <= alpha <= 1`"),
    ({"alpha": 1.5}, "The value of `alpha` is 1.5, but must be `0 <= alpha <= 1`"),
    ({"temperature": 0.0}, "The value of `temperature` is 0.0, but must be `temperature > 0`"),
    ({"dkd_alpha": -1}, "The value of `dkd_alpha` is -1, but must be `dkd_alpha >= 0`"),
    ({"dkd_beta": -1}, "The value of `dkd_beta` is -1, but must be `dkd_beta >= 0`"),
    ({"dkd_warmup": -1}, "The value of `dkd_warmup` is -1, but must be a whole number of "
                         "epochs, `dkd_warmup >= 0`"),
    ({"dkd_warmup": 2.5}, "The value of `dkd_warmup` is 2.5, but must be a whole number"),
    ({"dist_tau": 0}, "The value of `dist_tau` is 0, but must be `dist_tau > 0`"),
    ({"dist_beta": -1}, "The value of `dist_beta` is -1, but must be `dist_beta >= 0`"),
    ({"dist_gamma": float("nan")}, "The value of `dist_gamma` is nan, but must be "
                                   "`dist_gamma >= 0`"),
])
def test_bad_arguments(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        Distillation(**changes)


def test_bad_epoch() -> None:
    with pytest.raises(ValueError, match="The value of `epoch` is 0, but must be `epoch >= 1`"):
        _loss(Distillation("dkd"), STUDENT, TEACHER, LABELS, epoch=0)
