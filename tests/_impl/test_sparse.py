"""The sparse implementation works on blocks of candidate rows; the blocks change no number."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.testing import assert_close

from fairloss import _penalty, fair_loss, linear_fair_loss
from fairloss._impl import sparse
from tests.reference import fair_loss_reference, linear_fair_loss_reference


@pytest.fixture(params=["whole", "tiny blocks"])
def blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "tiny blocks":  # a block of one or two rows, a check of a few logits
        monkeypatch.setattr(sparse, "ROW_BLOCK", 2 * 13)
        monkeypatch.setattr(_penalty, "CHECK_BLOCK", 5)
    return str(request.param)


@pytest.mark.parametrize("layout", [(40, 13), (6, 13, 5)], ids=["rows", "k-dim"])
def test_blocks_give_the_reference_value_and_gradient(blocks: str, layout: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(3)
    # Near ties and clear winners: most elements need SmoothMax, some are clear winners.
    logits = torch.randn(layout, generator=generator, dtype=torch.float64) * 0.003
    logits[:3, 0] += 1.0
    target = torch.randint(0, 13, (layout[0], *layout[2:]), generator=generator)
    target[:3] = 0
    target[5] = -100
    options: dict[str, Any] = {
        "smooth_max_beta": 200.0,
        "scaling_factor": 300.0,
        "reduction": "sum",
    }
    leaf = logits.clone().requires_grad_()
    reference_leaf = logits.clone().requires_grad_()
    loss = fair_loss(leaf, target, impl="sparse", **options)
    expected = fair_loss_reference(reference_leaf, target, **options)
    (grad,) = torch.autograd.grad(loss, leaf)
    (expected_grad,) = torch.autograd.grad(expected, reference_leaf)
    assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_blocks_in_the_chunked_head(blocks: str) -> None:
    generator = torch.Generator().manual_seed(4)
    hidden = (torch.randn(24, 5, generator=generator, dtype=torch.float64) * 0.01).requires_grad_()
    head = torch.randn(13, 5, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.randint(0, 13, (24,), generator=generator)
    options: dict[str, Any] = {"smooth_max_beta": 200.0, "scaling_factor": 300.0}
    loss = linear_fair_loss(hidden, head, target, chunk_size=7, **options)
    expected = linear_fair_loss_reference(hidden, head, target, **options)
    assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(loss, (hidden, head))
    expected_grads = torch.autograd.grad(expected, (hidden, head))
    for ours, theirs in zip(grads, expected_grads):
        assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
