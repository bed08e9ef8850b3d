"""The native CPU kernel for ``(N, C, d1, ...)`` inputs (:mod:`fairloss._native`).

Checked against the float64 oracle and against the PyTorch implementation it stands in for
(:class:`fairloss._autograd.FairLossFunction`), eager and under ``torch.compile``, over logit
regimes that take each branch of the kernel: saturated penalties, clear winners, runners-up
within SmoothMax's margin, exact ties, ignored elements and masked classes.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close

import fairloss.functional
from fairloss import _native, fair_loss
from fairloss._rows import FairLossOptions
from tests.reference import fair_loss_reference

# The kernel is part of the supported set-up on Linux with a C++ compiler and ninja: there it must
# build, so that these tests never pass by skipping.
_BUILD_EXPECTED = (
    sys.platform == "linux"
    and shutil.which("c++") is not None
    and shutil.which("ninja") is not None
)
needs_kernel = pytest.mark.skipif(
    not _BUILD_EXPECTED, reason="no C++ compiler or ninja: the native kernel is not built here"
)


def _pytorch_implementation(*args: Any, **kwargs: Any) -> Tensor:
    """``fair_loss`` with the native kernel switched off."""
    original = fairloss.functional._native_applies
    fairloss.functional._native_applies = lambda *_: False
    try:
        return fair_loss(*args, **kwargs)
    finally:
        fairloss.functional._native_applies = original


def _logits(shape: tuple[int, ...], regime: str, seed: int, dtype: torch.dtype) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    scale = {"random": 1.0, "near-ties": 0.01, "ties": 1.0, "confident": 30.0}[regime]
    logits = logits * scale
    if regime == "ties":
        logits = logits.round(decimals=1)
    return logits.to(dtype)


def _targets(shape: tuple[int, ...], seed: int, ignored_every: int = 7) -> Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    target.view(-1)[::ignored_every] = -100
    return target


def _loss_and_grad(
    function: Any, logits: Tensor, target: Tensor, **kwargs: Any
) -> tuple[Tensor, ...]:
    leaf = logits.detach().clone().requires_grad_()
    loss = function(leaf, target, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return loss.detach(), grad


@needs_kernel
def test_the_kernel_builds_where_a_compiler_is_available() -> None:
    assert _native.extension() is not None


@pytest.mark.parametrize(
    ("rows", "weight", "options", "expected"),
    [
        ((2, 5, 16), None, {}, True),
        ((2, 5, 15), None, {}, False),  # too few positions per sample
        ((2, 5), None, {}, False),  # (N, C) rows
        ((2, 5, 16), torch.ones(5), {}, False),
        ((2, 5, 16), None, {"label_smoothing": 0.1}, False),
        ((2, 5, 16), None, {"probability_target": True}, False),
        ((2, 5, 16), None, {"scaling_factor": 1e39}, False),  # s/2 overflows float32
        ((1, 2**24 + 1, 16), None, {}, False),  # class indices beyond float32's integers
    ],
)
def test_the_kernel_takes_index_targets_without_weight_or_smoothing(
    rows: tuple[int, ...], weight: Any, options: dict[str, Any], expected: bool
) -> None:
    resolved = FairLossOptions(
        ignore_index=-100,
        label_smoothing=options.get("label_smoothing", 0.0),
        smooth_max_beta=1000.0,
        scaling_factor=options.get("scaling_factor", 1000.0),
        penalty_scale=0.2,
        probability_target=options.get("probability_target", False),
    )
    logits = torch.zeros(()).expand(rows)  # only the shape, dtype and device are read
    applies = fairloss.functional._native_applies(logits, weight, resolved)
    assert applies == (expected and _native.available())
    half = torch.zeros((), dtype=torch.half).expand(rows)
    assert not fairloss.functional._native_applies(half, None, resolved)


@needs_kernel
@pytest.mark.parametrize("regime", ["random", "near-ties", "ties", "confident"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_float64_matches_the_oracle(regime: str, reduction: str) -> None:
    shape = (3, 7, 5, 9)
    logits = _logits(shape, regime, seed=3, dtype=torch.float64)
    target = _targets(shape, seed=3)
    loss, grad = _loss_and_grad(fair_loss, logits, target, reduction=reduction)
    expected, expected_grad = _loss_and_grad(
        fair_loss_reference, logits, target, reduction=reduction
    )
    assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-7, atol=1e-10)


@needs_kernel
@pytest.mark.parametrize("regime", ["random", "near-ties", "ties", "confident"])
@pytest.mark.parametrize("shape", [(4, 21, 64), (2, 3, 8, 8), (1, 40, 33), (3, 1, 20)])
def test_float32_matches_the_pytorch_implementation(regime: str, shape: tuple[int, ...]) -> None:
    logits = _logits(shape, regime, seed=5, dtype=torch.float32)
    target = _targets(shape, seed=5)
    loss, grad = _loss_and_grad(fair_loss, logits, target, reduction="none")
    expected, expected_grad = _loss_and_grad(
        _pytorch_implementation, logits, target, reduction="none"
    )
    assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # The gradient is a difference of terms as large as the penalty slope s * lambda / 2: a few
    # float32 ulps of it (the two implementations round in different orders).
    slope_ulps = 4 * torch.finfo(torch.float32).eps * 1000.0 / (2 * shape[1])
    assert_close(grad, expected_grad, rtol=1e-5, atol=max(1e-5, 1.5 * slope_ulps))


@needs_kernel
@settings(deadline=None, max_examples=40)
@given(
    batch=st.integers(1, 3),
    num_classes=st.integers(1, 33),
    positions=st.sampled_from([(16,), (17,), (4, 5), (3, 2, 7), (70,)]),
    scale=st.sampled_from([1e-3, 0.05, 1.0, 20.0]),
    smooth_max_beta=st.sampled_from([1.0, 50.0, 1000.0]),
    scaling_factor=st.sampled_from([0.0, 3.0, 1000.0]),
    penalty_scale=st.sampled_from([None, 0.0, 0.7]),
    ignored_every=st.sampled_from([1, 3, 10**6]),
    seed=st.integers(0, 2**31 - 1),
)
@example(  # one class: the exact gap is 0, the oracle's is its rounding (see below)
    batch=1,
    num_classes=1,
    positions=(16,),
    scale=20.0,
    smooth_max_beta=50.0,
    scaling_factor=1000.0,
    penalty_scale=None,
    ignored_every=3,
    seed=0,
)
def test_random_shapes_and_options_match_the_oracle(
    batch: int,
    num_classes: int,
    positions: tuple[int, ...],
    scale: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: Any,
    ignored_every: int,
    seed: int,
) -> None:
    shape = (batch, num_classes, *positions)
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    target = _targets(shape, seed, ignored_every)
    options = dict(
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        reduction="sum",
    )
    loss, grad = _loss_and_grad(fair_loss, logits, target, **options)
    expected, expected_grad = _loss_and_grad(fair_loss_reference, logits, target, **options)
    # The oracle's SmoothMax, logsumexp(beta * z) / beta, is off by about eps * |z| from z itself
    # when one class dominates, and s / 2 amplifies that in the penalty: with 20 * randn logits
    # it gives 2e-12 where the exact gap is 0 (a single class). Hence the absolute tolerance.
    assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    assert_close(grad, expected_grad, rtol=1e-7, atol=1e-10)


@needs_kernel
def test_a_small_penalty_keeps_its_relative_accuracy() -> None:
    # h = s/2 * gap is about 1e-8 here: tanh(h) must be accurate relative to itself.
    logits = torch.zeros(1, 3, 16, dtype=torch.float64)
    logits[0, 1], logits[0, 2] = -20.0, -300.0
    target = torch.zeros(1, 16, dtype=torch.long)
    options: dict[str, Any] = {"smooth_max_beta": 1.0, "scaling_factor": 1e-3}
    loss, _ = _loss_and_grad(fair_loss, logits, target, reduction="none", **options)
    expected = fair_loss_reference(logits, target, reduction="none", **options)
    assert_close(loss, expected, rtol=1e-13, atol=0.0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_runner_up_inside_the_margin_keeps_its_gradient(dtype: torch.dtype) -> None:
    # The runner-up's SmoothMax term exp(-17) vanishes next to 1 in the normalizer's rounding,
    # yet it lies inside the margin (beta = 1), so the target is not a clear winner: its
    # gradient is slope * softmax(beta * z), about 7e-6, not 0.
    logits = torch.zeros(1, 3, 16, dtype=dtype)
    logits[0, 1], logits[0, 2] = -17.0, -200.0
    target = torch.zeros(1, 16, dtype=torch.long)
    options: dict[str, Any] = {"smooth_max_beta": 1.0, "reduction": "none"}
    _, grad = _loss_and_grad(fair_loss, logits, target, **options)
    _, expected_grad = _loss_and_grad(fair_loss_reference, logits.double(), target, **options)
    assert_close(grad[0, 1], expected_grad[0, 1].to(dtype), rtol=1e-5, atol=0.0)


@needs_kernel
def test_masked_classes_get_no_gradient() -> None:
    logits = _logits((2, 6, 20), "random", seed=9, dtype=torch.float32)
    logits[:, 4:] = float("-inf")
    target = torch.randint(0, 4, (2, 20), generator=torch.Generator().manual_seed(9))
    loss, grad = _loss_and_grad(fair_loss, logits, target, reduction="none")
    expected, expected_grad = _loss_and_grad(
        _pytorch_implementation, logits, target, reduction="none"
    )
    assert torch.isfinite(loss).all()
    assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
    assert (grad[:, 4:] == 0).all()


@needs_kernel
def test_double_backward_is_exact() -> None:
    logits = _logits((2, 4, 20), "near-ties", seed=11, dtype=torch.float64).requires_grad_()
    target = _targets((2, 4, 20), seed=11, ignored_every=5)

    def loss(z: Tensor) -> Tensor:
        return fair_loss(z, target, smooth_max_beta=3.0, scaling_factor=2.0, reduction="sum")

    assert torch.autograd.gradcheck(loss, (logits,))
    assert torch.autograd.gradgradcheck(loss, (logits,))


@needs_kernel
@pytest.mark.slow
def test_compiled_matches_eager() -> None:
    shape = (2, 21, 8, 8)
    logits = _logits(shape, "near-ties", seed=13, dtype=torch.float32)
    target = _targets(shape, seed=13)
    compiled = torch.compile(fair_loss, fullgraph=True)
    loss, grad = _loss_and_grad(compiled, logits, target)
    expected, expected_grad = _loss_and_grad(fair_loss, logits, target)
    assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)


@needs_kernel
@pytest.mark.slow
def test_compiled_rejects_a_class_index_out_of_range() -> None:
    # Compiled calls skip the up-front index check; the kernel checks before reading the logit.
    logits = torch.zeros(1, 3, 16)
    target = torch.zeros(1, 16, dtype=torch.long)
    target[0, 5] = 3
    with pytest.raises(IndexError, match=r"Target 3 is out of bounds"):
        torch.compile(fair_loss, fullgraph=True)(logits, target)


@pytest.fixture
def rebuilt_extension() -> Iterator[None]:
    """Forget the loaded kernel before and after a test that changes how it loads."""
    _native.extension.cache_clear()
    yield
    _native.extension.cache_clear()


def test_the_environment_variable_turns_the_kernel_off(
    rebuilt_extension: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_native.DISABLE_VARIABLE, "0")
    assert _native.extension() is None
    logits, target = torch.randn(2, 3, 16), torch.randint(0, 3, (2, 16))
    assert_close(fair_loss(logits, target), fair_loss_reference(logits, target).float())


def test_a_failed_build_warns_and_falls_back(
    rebuilt_extension: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_load(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setattr("torch.utils.cpp_extension.load", failing_load)
    with pytest.warns(RuntimeWarning, match="could not build the native CPU kernel"):
        assert _native.extension() is None
    logits, target = torch.randn(2, 3, 16), torch.randint(0, 3, (2, 16))
    assert_close(fair_loss(logits, target), fair_loss_reference(logits, target).float())
