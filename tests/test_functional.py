"""fair_loss: against the float64 oracle and F.cross_entropy, on awkward shapes, its options
(z-loss included), ignored elements, and its gradients (gradcheck and gradgradcheck in float64).

Precision and extreme values are in ``test_functional_numerics.py``; errors in
``test_validation.py``; the formula's published numbers in ``test_penalty.py``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck
from torch.testing import assert_close

from fairloss import fair_loss
from tests.devices import DEVICES, IMPLEMENTATIONS
from tests.reference import fair_loss_reference
from tests.strategies import LossCase, loss_cases

REDUCTIONS = ("mean", "sum", "none")
# Small beta and s keep the penalty smooth on the scale of gradcheck's finite differences.
SMOOTH: dict[str, Any] = {"smooth_max_beta": 2.0, "scaling_factor": 3.0}


def _value_and_grad(
    loss_fn, case: LossCase, dtype: torch.dtype, upstream_seed: int = 0, device: str = "cpu"
):
    logits = case.input.detach().to(device, dtype).requires_grad_()
    target = case.target.to(device, dtype) if case.target.is_floating_point() else case.target
    target = target.to(device)
    weight = None if case.weight is None else case.weight.to(device, dtype)
    loss = loss_fn(logits, target, weight, **case.options)
    generator = torch.Generator().manual_seed(upstream_seed)
    upstream = torch.randn(loss.shape, generator=generator, dtype=torch.float64)
    upstream = upstream.to(device, loss.dtype)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), logits, allow_unused=True)
    loss, grad = loss.detach().cpu(), None if grad is None else grad.cpu()
    return loss, torch.zeros_like(case.input, dtype=dtype) if grad is None else grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=loss_cases(dtype=torch.float64), upstream_seed=st.integers(0, 1000))
def test_matches_reference_in_float64(
    impl: str, device: str, case: LossCase, upstream_seed: int
) -> None:
    """Every implementation, chosen explicitly, on every device, equals the oracle."""
    if impl == "sparse" and device != "cpu":
        pytest.skip("the sparse implementation synchronises: chosen on the CPU only")
    loss_fn = functools.partial(fair_loss, impl=impl)
    value, grad = _value_and_grad(loss_fn, case, torch.float64, upstream_seed, device)
    expected_value, expected_grad = _value_and_grad(
        fair_loss_reference, case, torch.float64, upstream_seed
    )
    assert_close(value, expected_value, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert_close(grad, expected_grad, rtol=1e-7, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=loss_cases(dtype=torch.float32, max_scaling_factor=20.0))
def test_matches_reference_in_float32(impl: str, case: LossCase) -> None:
    value, grad = _value_and_grad(functools.partial(fair_loss, impl=impl), case, torch.float32)
    expected_value, expected_grad = _value_and_grad(fair_loss_reference, case, torch.float64)
    assert value.dtype == torch.float32
    assert_close(value, expected_value.float(), rtol=2e-5, atol=2e-5, equal_nan=True)
    assert_close(grad, expected_grad.float(), rtol=1e-4, atol=2e-5, equal_nan=True)


@given(loss_cases(dtype=torch.float32))
def test_value_matches_reference_in_float32_at_any_steepness(case: LossCase) -> None:
    # With s = 1000 the penalty amplifies float32 rounding of the gap by about s/2 * |z|,
    # so the tolerance grows with it (gradients are checked exactly in float64 above).
    value = fair_loss(case.input, case.target, case.weight, **case.options)
    expected = fair_loss_reference(case.input, case.target, case.weight, **case.options)
    lam = case.options["penalty_scale"]
    lam = 1.0 / case.num_classes if lam is None else lam
    weight_max = 1.0 if case.weight is None else float(case.weight.max())
    logit_max = float(case.input.abs().max()) if case.input.numel() else 0.0
    slack = weight_max * lam * case.options["scaling_factor"] * 4e-7 * (1 + logit_max)
    if case.options["reduction"] == "sum":
        slack *= max(1, case.input.numel() // case.num_classes)
    assert_close(value.double(), expected, rtol=2e-5, atol=2e-5 + slack, equal_nan=True)


@given(loss_cases(dtype=torch.float64), st.sampled_from(["scaling_factor", "penalty_scale"]))
def test_penalty_off_equals_cross_entropy(case: LossCase, switch: str) -> None:
    """``scaling_factor=0`` or ``penalty_scale=0`` is F.cross_entropy, value and gradient."""
    case.options[switch] = 0.0
    case.options["z_loss_scale"] = 0.0

    def cross_entropy(
        input, target, weight, *, reduction, ignore_index=-100, label_smoothing=0.0, **_
    ):
        return F.cross_entropy(
            input,
            target,
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 2e-6)):
        value, grad = _value_and_grad(fair_loss, case, dtype)
        expected_value, expected_grad = _value_and_grad(cross_entropy, case, dtype)
        assert value.dtype == expected_value.dtype and value.shape == expected_value.shape
        assert_close(value, expected_value, rtol=tolerance, atol=tolerance, equal_nan=True)
        assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance, equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kdim_equals_flattened_rows(reduction: str) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=generator)
    target = torch.randint(0, 5, (2, 3, 4), generator=generator)
    target[0, 1, 2] = -100
    loss = fair_loss(logits, target, reduction=reduction, smooth_max_beta=5.0, scaling_factor=10.0)
    rows = fair_loss(
        logits.movedim(1, -1).reshape(-1, 5),
        target.reshape(-1),
        reduction=reduction,
        smooth_max_beta=5.0,
        scaling_factor=10.0,
    )
    assert_close(loss, rows.reshape(loss.shape))


def test_unbatched_input_equals_batch_of_one() -> None:
    logits = torch.tensor([0.2, 1.5, 1.49, -3.0])
    for target in (torch.tensor(2), torch.softmax(torch.tensor([0.0, 1.0, 2.0, 0.5]), 0)):
        single = fair_loss(logits, target, reduction="none")
        batch = fair_loss(logits[None], target[None], reduction="none")
        assert single.shape == ()
        assert_close(single, batch[0])


def test_probability_target_reference_class_is_first_argmax() -> None:
    logits = torch.tensor([[2.0, 0.0, 2.0]])
    tied = torch.tensor([[0.4, 0.2, 0.4]])  # argmax ties between 0 and 2 -> class 0, a winner
    loss = fair_loss(logits, tied, scaling_factor=1000.0, smooth_max_beta=1000.0, reduction="none")
    ce = F.cross_entropy(logits, tied, reduction="none")
    # SmoothMax(z) = 2 + log(2)/1000 is above z[0] = 2, so the penalty is that of a tie:
    expected = math.tanh(1000 * math.log(2) / 1000 / 2) / 3
    assert_close((loss - ce).item(), expected, rtol=1e-4, atol=1e-6)


def test_empty_batch_follows_cross_entropy() -> None:
    logits = torch.zeros(0, 4, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    assert fair_loss(logits, target, reduction="none").shape == (0,)
    assert fair_loss(logits, target, reduction="sum").item() == 0.0
    assert math.isnan(fair_loss(logits, target).item())
    assert math.isnan(F.cross_entropy(logits, target).item())
    fair_loss(logits, target, reduction="sum").backward()
    assert logits.grad is not None and logits.grad.shape == (0, 4)


def test_ignored_elements_cost_nothing_and_get_no_gradient() -> None:
    logits = torch.randn(6, 4, requires_grad=True)
    target = torch.tensor([0, 3, -100, 1, -100, 2])
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = fair_loss(logits, target, weight, reduction="none", label_smoothing=0.2)
    assert torch.all(loss[target == -100] == 0)
    loss.sum().backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[target == -100] == 0)
    mean = fair_loss(logits, target, weight, label_smoothing=0.2)
    assert_close(mean, loss.sum() / weight[target[target != -100]].sum())


def test_integer_targets_of_any_width_are_accepted() -> None:
    logits = torch.randn(3, 4)
    target = torch.tensor([0, 3, 1])
    expected = fair_loss(logits, target)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert_close(fair_loss(logits, target.to(dtype)), expected)


def test_class_weight_scales_the_penalty() -> None:
    logits = torch.tensor([[0.0, 1.0, 0.0]])  # wrong: penalty ~ lambda
    target = torch.tensor([0])
    weight = torch.tensor([3.0, 1.0, 1.0])
    weighted = fair_loss(logits, target, weight, reduction="sum")
    ce = F.cross_entropy(logits, target, weight, reduction="sum")
    assert_close(weighted - ce, torch.tensor(3.0 / 3), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_ignored_row_of_minus_infinity_logits_costs_nothing(impl: str, dtype: torch.dtype) -> None:
    """An ignored element whose logits are all ``-inf`` (a fully masked position) adds 0, as in
    F.cross_entropy, for every implementation (``"dense"`` used to give NaN). Its gradient: 0
    with ``"dense"``; ``"sparse"`` and ``"composite"`` follow F.cross_entropy's own gradient,
    NaN there (log_softmax of a row of ``-inf``), which is not asserted."""
    inf = math.inf
    logits = torch.tensor(
        [[1.0, 0.0, 2.0], [-inf, -inf, -inf], [0.5, 0.2, -1.0], [0.3, 0.31, 0.0]], dtype=dtype
    )
    target = torch.tensor([0, -100, 2, 0])
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    tolerance: dict[str, Any] = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    option_sets: list[dict[str, Any]] = [{}, {"z_loss_scale": 0.1, "label_smoothing": 0.1}]
    for reduction in ("none", "mean"):
        for options in option_sets:
            loss = fair_loss(logits, target, weight, reduction=reduction, impl=impl, **options)
            expected = fair_loss_reference(logits, target, weight, reduction=reduction, **options)
            assert loss.isfinite().all(), (reduction, options, loss)
            assert_close(loss, expected.to(dtype), **tolerance)
        cross_entropy = F.cross_entropy(logits, target, weight, reduction=reduction)
        penalty_off = fair_loss(
            logits, target, weight, reduction=reduction, impl=impl, scaling_factor=0.0
        )
        assert_close(penalty_off, cross_entropy, **tolerance)
    if impl == "dense":
        leaf = logits.clone().requires_grad_()
        loss = fair_loss(leaf, target, weight, impl=impl, z_loss_scale=0.1, label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss, leaf)
        assert grad.isfinite().all(), grad
        assert torch.equal(grad[1], torch.zeros_like(grad[1]))
        expected_leaf = logits.double()[[0, 2, 3]].requires_grad_()
        expected = fair_loss_reference(
            expected_leaf, target[[0, 2, 3]], weight.double(), z_loss_scale=0.1,
            label_smoothing=0.1,
        )  # fmt: skip
        (expected_grad,) = torch.autograd.grad(expected, expected_leaf)
        assert_close(grad[[0, 2, 3]], expected_grad.to(dtype), **tolerance)


# --- z-loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_with_ignored_elements_matches_the_reference(impl: str, reduction: str) -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 5, 3, dtype=torch.float64) * 3
    target = torch.randint(0, 5, (6, 3))
    target[2, 1] = -100
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    options: dict[str, Any] = {"z_loss_scale": 0.25, "label_smoothing": 0.1, **SMOOTH}
    loss = fair_loss(logits, target, weight, reduction=reduction, impl=impl, **options)
    expected = fair_loss_reference(logits, target, weight, reduction=reduction, **options)
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_z_loss_with_probability_targets(impl: str) -> None:
    torch.manual_seed(2)
    logits = torch.randn(7, 4, dtype=torch.float64)
    target = torch.softmax(torch.randn(7, 4, dtype=torch.float64), dim=1)
    loss = fair_loss(logits, target, z_loss_scale=0.5, impl=impl, **SMOOTH)
    expected = fair_loss_reference(logits, target, z_loss_scale=0.5, **SMOOTH)
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_z_loss_is_palms_term_on_top_of_the_loss() -> None:
    """The z-loss adds exactly z * logsumexp(z)**2 per non-ignored element, reduced alike."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 2, -100])
    without = fair_loss(logits, target, reduction="none")
    with_z = fair_loss(logits, target, reduction="none", z_loss_scale=1e-2)
    log_normalizer = torch.logsumexp(logits, dim=1)
    assert_close(with_z - without, torch.tensor([1e-2, 1e-2, 0.0]) * log_normalizer**2)
    mean = fair_loss(logits, target, z_loss_scale=1e-2)
    assert_close(mean, with_z.sum() / 2)
    # off: exactly the loss without it
    assert torch.equal(fair_loss(logits, target), fair_loss(logits, target, z_loss_scale=0.0))


# --- gradients ------------------------------------------------------------------------------------


def _logits(*shape: int) -> Tensor:
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
    options = dict(options)
    weight = options.pop("weight", None)

    def loss(z: Tensor) -> Tensor:
        return fair_loss(z, target, weight, **SMOOTH, **options)

    assert gradcheck(loss, (logits,))
    assert gradgradcheck(loss, (logits,))


def test_gradcheck_kdim_and_probability_targets() -> None:
    logits = _logits(2, 3, 2, 2)
    target = torch.softmax(torch.randn(2, 3, 2, 2, dtype=torch.float64), 1).requires_grad_()
    weight = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)

    def loss(z: Tensor, y: Tensor) -> Tensor:
        return fair_loss(z, y, weight, label_smoothing=0.1, reduction="none", **SMOOTH)

    assert gradcheck(loss, (logits, target))
    assert gradgradcheck(loss, (logits, target))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck_z_loss_with_ignored_elements(impl: str) -> None:
    logits = _logits(5, 4)
    target = torch.tensor([0, 3, -100, 1, 2])

    def loss(z: Tensor) -> Tensor:
        return fair_loss(z, target, z_loss_scale=0.3, impl=impl, **SMOOTH)

    assert gradcheck(loss, (logits,))


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
        assert_close(grad[row], upstream[row] * row_grad[row])
