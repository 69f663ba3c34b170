import math

import pytest
import torch

from kdsearch.train.losses import kd_loss


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


def test_alpha_is_the_weight_on_the_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    hard = kd_loss(student, teacher, labels, alpha=0.0, temperature=3.0)
    soft = kd_loss(student, teacher, labels, alpha=1.0, temperature=3.0)
    assert hard.total.item() == pytest.approx(torch.nn.functional.cross_entropy(
        student, labels).item(), rel=1e-6)
    assert soft.total.item() == pytest.approx(soft.kd.item(), rel=1e-6)


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


def test_teacher_receives_no_gradient() -> None:
    s = torch.randn(2, 3, requires_grad=True)
    t = torch.randn(2, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1]), alpha=0.5, temperature=2.0).total.backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize(("alpha", "temperature"), [(-0.1, 1.0), (1.5, 1.0), (0.5, 0.0)])
def test_bad_arguments(alpha: float, temperature: float) -> None:
    with pytest.raises(ValueError):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), alpha, temperature)
