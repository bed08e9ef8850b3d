"""fair_loss of a DTensor sharded by class, in this process: a one-rank gloo group (no spawn).

Two and three ranks are in ``test_vocab_parallel.py``; here, on one rank, what needs no second
one: the value and gradient of the single-device loss, and every argument refused for DTensor
logits (with the argument named).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from fairloss import FairLoss, fair_loss

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available",
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[Any]:
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 4, -100, 2, 1, 3])
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    return logits, target, weight


def test_dtensor_logits_give_the_single_device_loss(mesh: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    logits, target, weight = _data()
    options: dict[str, Any] = {"label_smoothing": 0.1, "z_loss_scale": 0.01, "reduction": "none"}
    full = logits.clone().requires_grad_()
    expected = fair_loss(full, target, weight, impl="composite", **options)
    expected.sum().backward()
    for impl in ("auto", "dense"):
        sharded = distribute_tensor(logits, mesh, [Shard(1)]).requires_grad_()
        loss = fair_loss(sharded, target, weight, impl=impl, **options)
        loss.sum().backward()
        assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
        grad: Any = sharded.grad  # a DTensor
        assert grad is not None and full.grad is not None
        assert_close(grad.full_tensor(), full.grad, rtol=1e-12, atol=1e-14)
    module = FairLoss(weight, label_smoothing=0.1)
    sharded = distribute_tensor(logits, mesh, [Shard(1)])
    assert_close(module(sharded, target), module(logits, target), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"impl": "sparse"}, ValueError, r"`impl` to be 'auto' or 'dense' .* but got 'sparse'"),
        ({"impl": "composite"}, ValueError, r"`impl` .* but got 'composite'"),
        ({"probabilities": True}, ValueError, r"`target` to be class indices with DTensor"),
        ({"placement": "replicate"}, ValueError, r"`input` to be a DTensor placed Shard\(1\)"),
        ({"shape": (6, 5, 2)}, ValueError, r"`input` to be a DTensor of shape \(N, C\)"),
        ({"weight": torch.ones(4, dtype=torch.float64)}, ValueError, r"`weight` .*\(5,\)"),
        ({"reduction": "avg"}, ValueError, r"`reduction`"),
        ({"smooth_max_beta": 0.0}, ValueError, r"`smooth_max_beta`"),
    ],
)
def test_dtensor_arguments_are_refused_by_name(
    mesh: Any, change: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    logits, target, weight = _data()
    keywords = {k: v for k, v in change.items() if k in ("impl", "reduction", "smooth_max_beta")}
    if "shape" in change:
        logits = torch.randn(change["shape"], dtype=torch.float64)
        target = torch.zeros(6, 2, dtype=torch.long)
    if change.get("probabilities"):
        target = torch.softmax(torch.randn(6, 5, dtype=torch.float64), dim=1)
    placement = Replicate() if change.get("placement") == "replicate" else Shard(1)
    sharded = distribute_tensor(logits, mesh, [placement])
    with pytest.raises(error, match=pattern):
        fair_loss(sharded, target, change.get("weight", weight), **keywords)
