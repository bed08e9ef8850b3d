"""torch.compile(fullgraph=True) traces fair_loss without graph breaks and matches eager."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from fairloss import FairLoss, fair_loss

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0]),
            "ignore_index": 1,
            "label_smoothing": 0.1,
            "reduction": "sum",
        },
    ],
    ids=["defaults", "weight-ignore-smoothing"],
)
def test_compiled_matches_eager(options: dict) -> None:
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=generator) * 0.05
    target = torch.randint(0, 5, (16,), generator=generator)
    weight = options.pop("weight", None)

    def loss_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fair_loss(z, y, weight, **options)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="inductor")
    eager_logits = logits.clone().requires_grad_()
    compiled_logits = logits.clone().requires_grad_()
    eager = loss_fn(eager_logits, target)
    result = compiled(compiled_logits, target)
    assert_close(result, eager, rtol=1e-5, atol=1e-6)
    eager.backward()
    result.backward()
    assert_close(compiled_logits.grad, eager_logits.grad, rtol=1e-4, atol=1e-6)


def test_module_compiles_with_probability_targets() -> None:
    torch._dynamo.reset()
    criterion = FairLoss(reduction="none")
    logits = torch.randn(4, 3, 2)
    target = torch.softmax(torch.randn(4, 3, 2), 1)
    compiled = torch.compile(criterion, fullgraph=True, backend="aot_eager")
    assert_close(compiled(logits, target), criterion(logits, target), rtol=1e-5, atol=1e-6)
