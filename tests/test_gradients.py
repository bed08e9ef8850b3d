"""gradcheck / gradgradcheck in float64, and the probability target's own gradient."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from fairloss import fair_loss

# Small beta and s keep the penalty smooth on the scale of gradcheck's finite differences.
SMOOTH: dict[str, Any] = {"smooth_max_beta": 2.0, "scaling_factor": 3.0}


def _logits(*shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.2},
        {"weight": torch.tensor([0.5, 2.0, 1.0, 3.0, 0.1], dtype=torch.float64)},
        {"ignore_index": 1, "reduction": "sum"},
        {"reduction": "none", "penalty_scale": 1.6},
    ],
    ids=["plain", "smoothing", "weight", "ignore-sum", "none"],
)
def test_gradcheck_index_targets(options: dict) -> None:
    logits = _logits(4, 5)
    target = torch.tensor([0, 1, 4, 2])
    weight = options.pop("weight", None)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return fair_loss(z, target, weight, **SMOOTH, **options)

    assert gradcheck(loss, (logits,))
    assert gradgradcheck(loss, (logits,))


def test_gradcheck_kdim_and_probability_targets() -> None:
    logits = _logits(2, 3, 2, 2)
    target = torch.softmax(torch.randn(2, 3, 2, 2, dtype=torch.float64), 1).requires_grad_()
    weight = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fair_loss(z, y, weight, label_smoothing=0.1, reduction="none", **SMOOTH)

    assert gradcheck(loss, (logits, target))
    assert gradgradcheck(loss, (logits, target))


def test_gradient_at_near_ties_with_default_steepness() -> None:
    # Near a tie the default beta = s = 1000 make the penalty steep; the gradient must still
    # match finite differences taken at that scale.
    logits = torch.tensor([[0.500, 0.5004, -1.0], [2.0, 1.9995, 0.0]], dtype=torch.float64)
    logits.requires_grad_()
    target = torch.tensor([0, 0])
    assert gradcheck(lambda z: fair_loss(z, target), (logits,), eps=1e-8, atol=1e-5)


def test_upstream_gradient_scales_per_element() -> None:
    logits = _logits(3, 4)
    target = torch.tensor([3, 0, 1])
    upstream = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    per_element = fair_loss(logits, target, reduction="none", **SMOOTH)
    (grad,) = torch.autograd.grad(per_element, logits, upstream, retain_graph=True)
    for row in range(3):
        (row_grad,) = torch.autograd.grad(per_element[row], logits, retain_graph=True)
        torch.testing.assert_close(grad[row], upstream[row] * row_grad[row])
