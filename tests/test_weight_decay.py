"""Weight decay applies to weights of two or more dimensions only (kdsearch.train.loop)."""

from __future__ import annotations

import pytest
import torch

from kdsearch.models import build_model
from kdsearch.train.loop import make_optimizer


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
