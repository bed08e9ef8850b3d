"""The options LLM trainers ask of a fused head: z-loss, logit softcapping, token accuracy.

Each is checked against an independent float64 statement (tests/reference.py plus plain tensor
algebra), for every implementation, and under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd import gradcheck

from fairloss import FairLoss, LinearFairLoss, fair_loss, linear_fair_loss
from tests.reference import fair_loss_reference

IMPLEMENTATIONS = ("sparse", "dense", "composite")
REDUCTIONS = ("mean", "sum", "none")
# Small beta and s keep the penalty smooth on the scale of gradcheck's finite differences.
SMOOTH: dict[str, Any] = {"smooth_max_beta": 2.0, "scaling_factor": 3.0}


def _linear_reference(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    softcap: Optional[float] = None,
    reduction: str = "mean",
    **options: object,
) -> Tensor:
    """The head in float64, capped as Gemma 2 caps it, then the float64 FairLoss oracle."""
    logits = F.linear(input.double(), linear_weight.double(), _double(linear_bias))
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = fair_loss_reference(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        reduction=reduction,
        **options,  # type: ignore[arg-type]
    )
    return loss.reshape(target.shape) if reduction == "none" else loss


def _double(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return None if tensor is None else tensor.double()


def _head(rows: int = 10, classes: int = 11, hidden: int = 6, seed: int = 0) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(2, rows // 2, hidden, dtype=torch.float64, generator=generator)
    weight = torch.randn(classes, hidden, dtype=torch.float64, generator=generator)
    bias = torch.randn(classes, dtype=torch.float64, generator=generator)
    target = torch.randint(0, classes, (2, rows // 2), generator=generator)
    target[0, 1] = -100
    return input, weight, bias, target


# --- z-loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fair_loss_z_loss_matches_the_reference(impl: str, reduction: str) -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 5, 3, dtype=torch.float64) * 3
    target = torch.randint(0, 5, (6, 3))
    target[2, 1] = -100
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    options: dict[str, Any] = {"z_loss_scale": 0.25, "label_smoothing": 0.1, **SMOOTH}
    loss = fair_loss(logits, target, weight, reduction=reduction, impl=impl, **options)
    expected = fair_loss_reference(logits, target, weight, reduction=reduction, **options)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fair_loss_z_loss_with_probability_targets(impl: str) -> None:
    torch.manual_seed(2)
    logits = torch.randn(7, 4, dtype=torch.float64)
    target = torch.softmax(torch.randn(7, 4, dtype=torch.float64), dim=1)
    loss = fair_loss(logits, target, z_loss_scale=0.5, impl=impl, **SMOOTH)
    expected = fair_loss_reference(logits, target, z_loss_scale=0.5, **SMOOTH)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_z_loss_is_palms_term_on_top_of_the_loss() -> None:
    """The z-loss adds exactly z * logsumexp(z)**2 per non-ignored element, reduced alike."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 2, -100])
    without = fair_loss(logits, target, reduction="none")
    with_z = fair_loss(logits, target, reduction="none", z_loss_scale=1e-2)
    log_normalizer = torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(
        with_z - without, torch.tensor([1e-2, 1e-2, 0.0]) * log_normalizer**2
    )
    mean = fair_loss(logits, target, z_loss_scale=1e-2)
    torch.testing.assert_close(mean, with_z.sum() / 2)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fair_loss_z_loss_gradcheck(impl: str) -> None:
    torch.manual_seed(3)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, -100, 1, 2])

    def loss(logits: Tensor) -> Tensor:
        return fair_loss(logits, target, z_loss_scale=0.3, impl=impl, **SMOOTH)

    assert gradcheck(loss, (logits,))


def test_fair_loss_z_loss_off_changes_nothing() -> None:
    torch.manual_seed(4)
    logits = torch.randn(8, 6)
    target = torch.randint(0, 6, (8,))
    assert torch.equal(fair_loss(logits, target), fair_loss(logits, target, z_loss_scale=0.0))


def test_fair_loss_module_passes_z_loss_scale() -> None:
    torch.manual_seed(5)
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    criterion = FairLoss(z_loss_scale=0.1)
    assert "z_loss_scale=0.1" in repr(criterion)
    torch.testing.assert_close(
        criterion(logits, target), fair_loss(logits, target, z_loss_scale=0.1)
    )


# --- the fused head: softcap, z-loss, accuracy ----------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_options_match_the_reference(impl: str, reduction: str) -> None:
    input, weight, bias, target = _head()
    class_weight = torch.rand(11, dtype=torch.float64) + 0.5
    options: dict[str, Any] = {
        "z_loss_scale": 0.2,
        "label_smoothing": 0.1,
        "weight": class_weight,
        **SMOOTH,
    }
    loss = linear_fair_loss(
        input, weight, target, linear_bias=bias, softcap=2.0, reduction=reduction, chunk_size=3,
        impl=impl, **options,
    )  # fmt: skip
    expected = _linear_reference(
        input, weight, target, linear_bias=bias, softcap=2.0, reduction=reduction, **options
    )
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_options_gradcheck(impl: str, reduction: str) -> None:
    input, weight, bias, target = _head(rows=6, classes=7, hidden=4)
    leaves = [tensor.requires_grad_() for tensor in (input, weight, bias)]

    def loss(input: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return linear_fair_loss(
            input, weight, target, linear_bias=bias, softcap=1.5, z_loss_scale=0.3,
            reduction=reduction, chunk_size=2, impl=impl, **SMOOTH,
        )  # fmt: skip

    # The first backward of a summed loss hands out forward's gradients, a second recomputes
    # them: equal up to rounding.
    assert gradcheck(loss, tuple(leaves), nondet_tol=1e-12)


def test_softcap_equals_capping_the_logits_first() -> None:
    """Gradients of input, weight and bias through the cap, against autograd on capped logits."""
    input, weight, bias, target = _head(rows=12, classes=9)
    leaves = [tensor.requires_grad_() for tensor in (input, weight, bias)]
    loss = linear_fair_loss(input * 4, weight, target, linear_bias=bias, softcap=3.0, chunk_size=5)
    grads = torch.autograd.grad(loss, leaves)
    capped = 3.0 * torch.tanh(F.linear(input * 4, weight, bias) / 3.0)
    expected = fair_loss(capped.reshape(-1, 9), target.reshape(-1), impl="composite")
    expected_grads = torch.autograd.grad(expected, leaves)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_a_large_softcap_is_no_cap() -> None:
    input, weight, bias, target = _head()
    capped = linear_fair_loss(input, weight, target, linear_bias=bias, softcap=1e9)
    plain = linear_fair_loss(input, weight, target, linear_bias=bias)
    torch.testing.assert_close(capped, plain, rtol=1e-12, atol=1e-12)


@given(
    rows=st.integers(1, 40),
    classes=st.integers(1, 12),
    chunk_size=st.integers(1, 16),
    ignore_index=st.sampled_from([-100, 0]),
    ignored_share=st.floats(0.0, 1.0),
    softcap=st.sampled_from([None, 0.5, 5.0]),
    impl=st.sampled_from(IMPLEMENTATIONS),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_accuracy_counts_argmax_hits_of_the_kept_rows(
    rows: int,
    classes: int,
    chunk_size: int,
    ignore_index: int,
    ignored_share: float,
    softcap: Optional[float],
    impl: str,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(rows, 3, generator=generator)
    weight = torch.randn(classes, 3, generator=generator)
    target = torch.randint(0, classes, (rows,), generator=generator)
    ignored = torch.rand(rows, generator=generator) < ignored_share
    target[ignored] = ignore_index
    loss, accuracy = linear_fair_loss(
        input, weight, target, ignore_index=ignore_index, softcap=softcap, chunk_size=chunk_size,
        return_accuracy=True, impl=impl,
    )  # fmt: skip
    logits = input.double() @ weight.double().T
    kept = target != ignore_index
    hits = (logits.argmax(dim=1) == target) & kept
    expected = hits.sum() / kept.sum() if kept.any() else torch.tensor(0.0)
    assert accuracy.dtype == torch.float32 and not accuracy.requires_grad
    torch.testing.assert_close(accuracy, expected.float())
    plain = linear_fair_loss(
        input, weight, target, ignore_index=ignore_index, softcap=softcap, chunk_size=chunk_size,
        impl=impl,
    )  # fmt: skip
    torch.testing.assert_close(loss, plain, equal_nan=True)  # all ignored: 0 / 0, as CE


def test_accuracy_has_no_gradient_and_leaves_the_loss_differentiable() -> None:
    input, weight, _, target = _head()
    input.requires_grad_()
    loss, accuracy = linear_fair_loss(input, weight, target, return_accuracy=True)
    assert accuracy.grad_fn is None
    loss.backward()
    assert input.grad is not None and torch.isfinite(input.grad).all()


def test_linear_module_exposes_the_options() -> None:
    torch.manual_seed(6)
    criterion = LinearFairLoss(
        4, 7, bias=True, dtype=torch.float64, z_loss_scale=0.1, softcap=2.0, return_accuracy=True
    )
    text = repr(criterion)
    assert "z_loss_scale=0.1" in text and "softcap=2.0" in text and "return_accuracy=True" in text
    input, target = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 7, (5,))
    loss, accuracy = criterion(input, target)
    expected_loss, expected_accuracy = linear_fair_loss(
        input, criterion.linear.weight, target, linear_bias=criterion.linear.bias,
        z_loss_scale=0.1, softcap=2.0, return_accuracy=True,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(accuracy, expected_accuracy)


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"z_loss_scale": -1.0}, ValueError, "z_loss_scale"),
        ({"z_loss_scale": math.inf}, ValueError, "z_loss_scale"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": -2.0}, ValueError, "softcap"),
        ({"softcap": "30"}, TypeError, "softcap"),
        ({"return_accuracy": 1}, TypeError, "return_accuracy"),
    ],
)
def test_bad_options_name_the_argument(
    options: dict[str, Any], error: type[Exception], name: str
) -> None:
    input, weight, _, target = _head()
    with pytest.raises(error, match=f"`{name}`"):
        linear_fair_loss(input, weight, target, **options)
    with pytest.raises(error, match=f"`{name}`"):
        LinearFairLoss(6, 11, **options)
    if name == "z_loss_scale":
        with pytest.raises(error, match=f"`{name}`"):
            logits = input[0] @ weight.T
            fair_loss(logits, target[0], z_loss_scale=options[name])


def test_options_run_on_meta_tensors() -> None:
    """No host synchronisation: the options run where no value can be read."""
    input = torch.randn(4, 8, 16, device="meta", requires_grad=True)
    weight = torch.randn(50, 16, device="meta", requires_grad=True)
    target = torch.randint(0, 50, (4, 8), device="meta")
    loss, accuracy = linear_fair_loss(
        input, weight, target, z_loss_scale=1e-4, softcap=30.0, return_accuracy=True, chunk_size=8
    )
    loss.backward()
    assert accuracy.device.type == "meta" and input.grad is not None
    logits = torch.randn(4, 50, device="meta", requires_grad=True)
    fair_loss(logits, target[:, 0], z_loss_scale=1e-4).backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


# --- torch.compile --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("impl", "reduction"), [("sparse", "none"), ("dense", "mean"), ("dense", "none")]
)
def test_compiled_linear_fair_loss_fullgraph_matches_the_reference(
    impl: str, reduction: str
) -> None:
    torch._dynamo.reset()
    input, weight, bias, target = _head(rows=24, classes=40, hidden=8)
    options: dict[str, Any] = {
        "reduction": reduction, "z_loss_scale": 1e-2, "label_smoothing": 0.1, **SMOOTH,
    }  # fmt: skip
    leaves = [tensor.requires_grad_() for tensor in (input, weight, bias)]
    compiled: Any = torch.compile(linear_fair_loss, fullgraph=True)
    loss, accuracy = compiled(
        input, weight, target, linear_bias=bias, softcap=4.0, chunk_size=5, return_accuracy=True,
        impl=impl, reduction=reduction, z_loss_scale=1e-2, label_smoothing=0.1, **SMOOTH,
    )  # fmt: skip
    grads = torch.autograd.grad(loss.sum(), leaves)
    expected = _linear_reference(input, weight, target, linear_bias=bias, softcap=4.0, **options)
    expected_grads = torch.autograd.grad(expected.sum(), leaves)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    logits = 4.0 * torch.tanh(F.linear(input, weight, bias) / 4.0)
    kept = target != -100
    expected_accuracy = ((logits.argmax(dim=-1) == target) & kept).sum() / kept.sum()
    torch.testing.assert_close(accuracy, expected_accuracy.to(accuracy.dtype))


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_compiled_all_ignored_mean_has_zero_gradients(impl: str) -> None:
    """As eagerly and as F.cross_entropy: the loss is 0 / 0, the gradients 0, not NaN."""
    torch._dynamo.reset()
    input, weight, _, target = _head(rows=8, classes=12)
    target.fill_(-100)
    leaves = [tensor.requires_grad_() for tensor in (input, weight)]
    compiled = torch.compile(linear_fair_loss, fullgraph=True)
    loss = compiled(input, weight, target, chunk_size=3, impl=impl, z_loss_scale=0.1)
    grads = torch.autograd.grad(loss, leaves)
    assert loss.isnan()
    for grad in grads:
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.slow
def test_compiled_bfloat16_gradients_are_as_accurate_as_eager() -> None:
    """Compiled scales forward's float32 gradients as eager does, rounding to bfloat16 once
    (rounding them before the scale roughly doubled the error)."""
    torch._dynamo.reset()
    input, weight, bias, target = _head(rows=20, classes=30, hidden=16)
    exact = [t.bfloat16().double().requires_grad_() for t in (input, weight, bias)]
    reference = _linear_reference(exact[0], exact[1], target, linear_bias=exact[2])
    expected = torch.autograd.grad(reference, exact)
    compiled = torch.compile(linear_fair_loss, fullgraph=True)
    errors = {}
    for name, function in (("eager", linear_fair_loss), ("compiled", compiled)):
        leaves = [t.detach().bfloat16().requires_grad_() for t in exact]
        grads = torch.autograd.grad(
            function(leaves[0], leaves[1], target, linear_bias=leaves[2]), leaves
        )
        assert all(grad.dtype == torch.bfloat16 for grad in grads)
        errors[name] = max(
            float(((grad.double() - want).abs() / want.abs().max()).max())
            for grad, want in zip(grads, expected)
        )
    assert errors["compiled"] <= 1.25 * errors["eager"], errors


@pytest.mark.slow
def test_compiled_linear_fair_loss_without_grad_and_for_the_weight_alone() -> None:
    torch._dynamo.reset()
    input, weight, _, target = _head(rows=16, classes=20, hidden=8)
    compiled = torch.compile(linear_fair_loss, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(input, weight, target), linear_fair_loss(input, weight, target)
        )
    weight.requires_grad_()
    (grad,) = torch.autograd.grad(compiled(input, weight, target, chunk_size=3), [weight])
    (expected,) = torch.autograd.grad(linear_fair_loss(input, weight, target), [weight])
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_dense_z_loss_keeps_ignored_rows_out_of_a_second_backward() -> None:
    """A retained graph's second backward recomputes: an inf upstream (all ignored "mean")
    must not reach the ignored rows through the z-loss."""
    input, weight, _, target = _head(rows=6, classes=5)
    target.fill_(-100)
    input.requires_grad_()
    loss = linear_fair_loss(input, weight, target, z_loss_scale=0.1, impl="dense")
    loss.backward(retain_graph=True)
    loss.backward()
    assert input.grad is not None and torch.equal(input.grad, torch.zeros_like(input.grad))
