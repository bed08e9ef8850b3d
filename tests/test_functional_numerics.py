"""fair_loss in every dtype and at extreme values: precision, masked classes, shift invariance."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fairloss import fair_loss
from tests.devices import IMPLEMENTATIONS
from tests.reference import fair_loss_reference

LOW_PRECISION = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_output_dtype_follows_cross_entropy(dtype: torch.dtype, reduction: str) -> None:
    logits = torch.randn(4, 6).to(dtype).requires_grad_()
    target = torch.tensor([0, 5, 2, 1])
    loss = fair_loss(logits, target, reduction=reduction)
    expected = F.cross_entropy(logits, target, reduction=reduction)
    assert loss.dtype == expected.dtype and loss.shape == expected.shape
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == dtype


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("logit_scale", [1.0, 16.0, 300.0, 1e4])
def test_half_precision_penalty_is_finite_and_has_the_right_sign(
    dtype: torch.dtype, logit_scale: float
) -> None:
    generator = torch.Generator().manual_seed(int(logit_scale))
    num_classes = 10
    logits = (torch.randn(512, num_classes, generator=generator) * logit_scale).to(dtype)
    target = torch.randint(0, num_classes, (512,), generator=generator)
    # A large lambda makes the penalty readable next to the low-precision cross-entropy.
    lam = 1000.0
    logits.requires_grad_()
    loss = fair_loss(logits, target, reduction="none", penalty_scale=lam)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and logits.grad is not None
    assert torch.isfinite(logits.grad).all()

    exact = logits.detach().double()
    ce = F.cross_entropy(exact, target, reduction="none")
    penalty = loss.double() - ce
    tolerance = 2 * torch.finfo(dtype).eps * (loss.double().abs() + ce.abs()) + 1e-3
    reference_logit = exact.gather(1, target[:, None]).squeeze(1)
    others = exact.scatter(1, target[:, None], float("-inf")).amax(1)
    clear_winner = reference_logit >= others + 0.05
    clear_loser = reference_logit <= others - 0.05
    assert clear_winner.any() and clear_loser.any()
    assert torch.all(penalty[clear_winner] < 1e-3 * lam + tolerance[clear_winner])
    assert torch.all(penalty[clear_loser] > 0.99 * lam - tolerance[clear_loser])


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_half_precision_matches_float32_computation(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 7, generator=generator) * 4).to(dtype)
    target = torch.randint(0, 7, (64,), generator=generator)
    options: dict[str, Any] = {"smooth_max_beta": 10.0, "scaling_factor": 10.0, "reduction": "none"}
    low = fair_loss(logits, target, **options)
    expected = fair_loss_reference(logits.double(), target, **options)
    assert_close(low.double(), expected, rtol=2 * torch.finfo(dtype).eps, atol=1e-2)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("weight", [None, torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0])])
def test_masked_classes_give_finite_loss_and_gradient(dtype, weight) -> None:
    logits = torch.tensor(
        [
            [1.0, -math.inf, 0.5, -math.inf, 0.0],
            [-math.inf, -math.inf, 3.0, -math.inf, -math.inf],  # target is the only option
            [0.2, 0.9, -math.inf, -math.inf, -math.inf],  # target loses
        ]
    ).to(dtype)
    logits.requires_grad_()
    target = torch.tensor([0, 2, 0])
    w = None if weight is None else weight.to(dtype)
    loss = fair_loss(logits, target, w, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all(), loss
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), logits.grad
    assert torch.all(logits.grad[torch.isinf(logits.detach())] == 0)
    finite = fair_loss_reference(
        logits.detach().double().clamp_min(-1e4), target, w, reduction="none"
    )
    assert_close(loss.double(), finite, rtol=1e-2, atol=1e-2)


def test_float64_is_computed_in_float64() -> None:
    logits = torch.tensor([[1.0, 1.0 + 1e-12, 0.0]], dtype=torch.float64)
    target = torch.tensor([0])
    # A gap of 1e-12 is invisible in float32 but changes the float64 penalty.
    options: dict[str, Any] = {"smooth_max_beta": 1e6, "scaling_factor": 1e9, "reduction": "none"}
    loss = fair_loss(logits, target, **options)
    assert loss.dtype == torch.float64
    assert_close(loss, fair_loss_reference(logits, target, **options), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift", [-30.0, 7.5, 1000.0])
def test_shift_invariance(shift: float) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 11, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 11, (32,), generator=generator)
    weight = torch.rand(11, generator=generator, dtype=torch.float64) + 0.1
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 5e-4)):
        z = logits.to(dtype)
        base = fair_loss(z, target, weight.to(dtype), reduction="none", label_smoothing=0.1)
        moved = fair_loss(
            z + shift, target, weight.to(dtype), reduction="none", label_smoothing=0.1
        )
        assert_close(moved, base, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("magnitude", [4e6, 1e7, 3e8])
@pytest.mark.parametrize("shape", [(2, 4), (2, 4, 16)])
def test_tied_maxima_of_large_float32_logits_keep_their_penalty(
    magnitude: float, shape: tuple[int, ...]
) -> None:
    # SmoothMax's margin (0.08 at beta = 1000) is below half an ulp of these logits: tied maxima
    # must still count as ties (loss log 4 + tanh(log 2) / 4 for four equal logits), not as a
    # clear winner with penalty 0.
    logits = torch.full(shape, magnitude, dtype=torch.float32, requires_grad=True)
    target = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
    loss = fair_loss(logits, target, reduction="none")
    expected = fair_loss_reference(logits.detach(), target, reduction="none").float()
    assert_close(loss, expected)
    assert_close(loss, torch.full_like(loss, math.log(4) + math.tanh(math.log(2)) / 4))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    reference_logits = logits.detach().double().requires_grad_()
    reference_loss = fair_loss_reference(reference_logits, target, reduction="none")
    (expected_grad,) = torch.autograd.grad(reference_loss.sum(), reference_logits)
    assert_close(grad, expected_grad.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("beta", "scale"), [(1e39, 1e39), (1e39, 10.0), (1000.0, 1e39)], ids=["both", "beta", "s"]
)
def test_options_beyond_the_float32_range_give_the_float64_result(
    impl: str, beta: float, scale: float
) -> None:
    # Beyond float32's largest number the loss no longer changes in float32; it must neither
    # overflow to NaN nor drift from the float64 computation of the same options.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=generator)
    logits[:4] = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0])  # clear winners
    target = torch.randint(0, 5, (16,), generator=generator)
    target[:4] = 0
    options: dict[str, Any] = {"smooth_max_beta": beta, "scaling_factor": scale, "impl": impl}
    results = []
    for dtype in (torch.float32, torch.float64):
        leaf = logits.to(dtype).requires_grad_()
        loss = fair_loss(leaf, target, reduction="sum", **options)
        (grad,) = torch.autograd.grad(loss, leaf)
        assert loss.isfinite() and grad.isfinite().all()
        results.append((loss, grad))
    (loss32, grad32), (loss64, grad64) = results
    assert_close(loss32.double(), loss64, rtol=1e-6, atol=1e-6)
    assert_close(grad32.double(), grad64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_autocast_returns_float32_like_cross_entropy(dtype: torch.dtype) -> None:
    logits = torch.randn(6, 5).to(dtype)
    target = torch.randint(0, 5, (6,))
    with torch.autocast("cpu", dtype=dtype):
        expected = F.cross_entropy(logits, target)
        loss = fair_loss(logits, target)
        unreduced = fair_loss(logits, target, reduction="none")
    assert loss.dtype == expected.dtype == unreduced.dtype == torch.float32
    assert_close(loss, fair_loss(logits.float(), target), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_double_backward_of_channels_last_input(impl: str) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64) * 0.3
    logits = logits.contiguous(memory_format=torch.channels_last).requires_grad_()
    target = torch.randint(0, 4, (2, 3, 5), generator=generator)
    assert not logits.is_contiguous()

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return fair_loss(z, target, smooth_max_beta=2.0, scaling_factor=3.0, impl=impl)

    assert torch.autograd.gradgradcheck(loss_fn, (logits,))
