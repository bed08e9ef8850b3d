"""linear_fair_loss: the fused head against the unfused path (``fair_loss(F.linear(...))``), the
float64 oracle and torch's ``F.linear_cross_entropy``; its options (z-loss, logit softcapping,
token accuracy); its gradients (one gradcheck section).

How it computes (chunk sizes, memory, ignored rows dropped before the product) is in
``_impl/test_chunked_linear.py``; meta tensors and CUDA in ``_impl/test_devices.py``;
``torch.compile`` in ``_impl/test_compile.py``; errors in ``test_validation.py``; the module in
``test_modules.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.autograd import gradcheck
from torch.testing import assert_close

from fairloss import fair_loss, linear_fair_loss
from tests.devices import IMPLEMENTATIONS
from tests.reference import linear_fair_loss_reference
from tests.strategies import HeadCase, head_cases, value_and_grads

REDUCTIONS = ("mean", "sum", "none")
# Small beta and s keep the penalty smooth on the scale of gradcheck's finite differences.
SMOOTH: dict[str, Any] = {"smooth_max_beta": 2.0, "scaling_factor": 3.0}


def _unfused(case: HeadCase) -> Tensor:
    """``fair_loss(F.linear(...))`` with the class dimension moved where cross-entropy wants it."""
    options = {key: value for key, value in case.options.items() if key != "chunk_size"}
    logits = F.linear(case.input, case.linear_weight, case.linear_bias)
    num_classes = case.linear_weight.shape[0]
    loss = fair_loss(
        logits.reshape(-1, num_classes), case.target.reshape(-1), case.weight, **options
    )
    return loss.reshape(case.target.shape) if options["reduction"] == "none" else loss


def _oracle(case: HeadCase) -> Tensor:
    options = {key: value for key, value in case.options.items() if key != "chunk_size"}
    return linear_fair_loss_reference(
        case.input, case.linear_weight, case.target, linear_bias=case.linear_bias,
        weight=case.weight, **options,
    )  # fmt: skip


def _small_case(
    reduction: str, *, bias: bool = True, ignore: bool = False, weighted: bool = False
) -> HeadCase:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 3, generator=generator, dtype=torch.float64).requires_grad_()
    head = torch.randn(4, 3, generator=generator, dtype=torch.float64).requires_grad_()
    linear_bias = torch.randn(4, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.tensor([0, 3, 1, 2, 3])
    options: dict[str, Any] = {"reduction": reduction, "chunk_size": 2, **SMOOTH}
    if ignore:
        target[1] = -100
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64) if weighted else None
    return HeadCase(hidden, head, linear_bias if bias else None, target, weight, options)


def _head(rows: int = 10, classes: int = 11, hidden: int = 6, seed: int = 0) -> tuple[Tensor, ...]:
    """Float64 ``(2, rows // 2, hidden)`` input, head, bias and target (one ignored)."""
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(2, rows // 2, hidden, dtype=torch.float64, generator=generator)
    weight = torch.randn(classes, hidden, dtype=torch.float64, generator=generator)
    bias = torch.randn(classes, dtype=torch.float64, generator=generator)
    target = torch.randint(0, classes, (2, rows // 2), generator=generator)
    target[0, 1] = -100
    return input, weight, bias, target


# --- against the unfused path and the oracle ------------------------------------------------------


@pytest.mark.parametrize("impl", ["sparse", "dense"])
@given(case=head_cases())
def test_matches_unfused_fair_loss_and_oracle_float64(impl: str, case: HeadCase) -> None:
    """Both chunk implementations; "dense" keeps the ignored rows in (the sync-free path)."""
    chunked = value_and_grads(case.loss(impl=impl), case.leaves())
    unfused = value_and_grads(_unfused(case), case.leaves())
    oracle = value_and_grads(_oracle(case), case.leaves())
    for ours, theirs, reference in zip(chunked, unfused, oracle):
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, rtol=1e-9, atol=1e-11, equal_nan=True)
        assert_close(ours, reference, rtol=1e-7, atol=1e-9, equal_nan=True)


# In float32 a steep penalty (s = 1000) near a tie turns the last-bit differences of two
# matrix-product orders into large gradient differences; float64 above covers s = 1000.
@given(head_cases(dtype=torch.float32, max_scaling_factor=3.0))
def test_matches_unfused_fair_loss_float32(case: HeadCase) -> None:
    chunked = value_and_grads(case.loss(), case.leaves())
    unfused = value_and_grads(_unfused(case), case.leaves())
    assert chunked[0].dtype == torch.float32
    for ours, theirs in zip(chunked, unfused):
        scale = float(theirs.abs().max()) if theirs.numel() and theirs.isfinite().all() else 1.0
        assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True)


# torch's chunked path takes no label smoothing (it falls back with a warning): reference only.
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("chunked_torch", "extras"),
    [(chunked, extras) for chunked in (False, True) for extras in ("plain", "weight", "ignore")]
    + [(False, "smoothing")],
)
def test_without_penalty_equals_linear_cross_entropy(
    reduction: str, chunked_torch: bool, extras: str
) -> None:
    case = _small_case(reduction, ignore=extras == "ignore", weighted=extras == "weight")
    smoothing = 0.2 if extras == "smoothing" else 0.0
    ours = value_and_grads(case.loss(scaling_factor=0.0, label_smoothing=smoothing), case.leaves())
    options = nn.LinearCrossEntropyOptions() if chunked_torch else None
    theirs = F.linear_cross_entropy(
        case.input, case.linear_weight, case.target, linear_bias=case.linear_bias,
        weight=case.weight, reduction=reduction, ignore_index=-100, label_smoothing=smoothing,
        options=options,
    )  # fmt: skip
    for mine, reference in zip(ours, value_and_grads(theirs, case.leaves())):
        assert_close(mine, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_half_precision_accumulates_in_float32(dtype: torch.dtype, reduction: str) -> None:
    # Its error against the float64 oracle (on the same rounded inputs) must be no larger than
    # that of the unfused path at the same dtype, and within the dtype's tolerance.
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(40, 24, generator=generator).to(dtype).requires_grad_()
    head = (torch.randn(300, 24, generator=generator) / 5).to(dtype).requires_grad_()
    target = torch.randint(0, 300, (40,), generator=generator)
    target[::7] = -100
    # A moderate steepness: with s = 1000 the penalty turns any rounding of a near-tie into a
    # large change, which would measure the inputs' rounding rather than the accumulation.
    options = {
        "reduction": reduction,
        "chunk_size": 16,
        "smooth_max_beta": 10.0,
        "scaling_factor": 10.0,
    }
    case = HeadCase(hidden, head, None, target, None, options)
    chunked = value_and_grads(case.loss(), case.leaves())
    unfused = value_and_grads(_unfused(case), case.leaves())
    exact = HeadCase(
        hidden.detach().double().requires_grad_(),
        head.detach().double().requires_grad_(),
        None,
        target,
        None,
        options,
    )
    oracle = value_and_grads(_oracle(exact), exact.leaves())
    tolerance = {torch.bfloat16: 1.6e-2, torch.float16: 1e-3}[dtype]
    for ours, theirs, reference in zip(chunked, unfused, oracle):
        assert ours.dtype == dtype
        our_error = float((ours.double() - reference).abs().max())
        their_error = float((theirs.double() - reference).abs().max())
        scale = float(reference.abs().max())
        assert our_error <= max(their_error, tolerance * scale)
        assert_close(ours.double(), reference, rtol=tolerance, atol=tolerance * scale)


def test_shapes_of_leading_dimensions() -> None:
    head = torch.randn(7, 3)
    sequence = linear_fair_loss(
        torch.randn(2, 5, 3), head, torch.randint(0, 7, (2, 5)), reduction="none"
    )
    single = linear_fair_loss(torch.randn(3), head, torch.tensor(4), reduction="none")
    assert sequence.shape == (2, 5) and single.shape == ()


# --- options: z-loss, softcap, accuracy -----------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_options_match_the_reference(impl: str, reduction: str) -> None:
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
    expected = linear_fair_loss_reference(
        input, weight, target, linear_bias=bias, softcap=2.0, reduction=reduction, **options
    )
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_softcap_equals_capping_the_logits_first() -> None:
    """Gradients of input, weight and bias through the cap, against autograd on capped logits."""
    input, weight, bias, target = _head(rows=12, classes=9)
    leaves = [tensor.requires_grad_() for tensor in (input, weight, bias)]
    loss = linear_fair_loss(input * 4, weight, target, linear_bias=bias, softcap=3.0, chunk_size=5)
    grads = torch.autograd.grad(loss, leaves)
    capped = 3.0 * torch.tanh(F.linear(input * 4, weight, bias) / 3.0)
    expected = fair_loss(capped.reshape(-1, 9), target.reshape(-1), impl="composite")
    expected_grads = torch.autograd.grad(expected, leaves)
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_a_large_softcap_is_no_cap() -> None:
    input, weight, bias, target = _head()
    capped = linear_fair_loss(input, weight, target, linear_bias=bias, softcap=1e9)
    plain = linear_fair_loss(input, weight, target, linear_bias=bias)
    assert_close(capped, plain, rtol=1e-12, atol=1e-12)


def _argmax_bounds(
    logits: Tensor, target: Tensor, kept: Tensor, tolerance: float
) -> tuple[int, int]:
    """Fewest and most argmax hits of the kept rows when logits within ``tolerance`` of a row's
    maximum may tie with it or pass it (float32 rounding of these float64 values)."""
    index = target.clamp(0, logits.shape[1] - 1)[:, None]  # ignored rows: any class
    target_logit = logits.gather(1, index).squeeze(1)
    best_other = logits.scatter(1, index, -torch.inf).amax(dim=1)  # -inf for one class
    sure = kept & (target_logit > best_other + tolerance)
    possible = kept & (target_logit >= best_other - tolerance)
    return int(sure.sum()), int(possible.sum())


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
    """The share of kept rows whose argmax (first on ties) is the target. The function sees
    float32 (capped) logits: where the float64 ones lie within rounding of a tie (softcap=0.5
    saturates tanh into exact float32 ties), either answer is right for that row."""
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
    assert accuracy.dtype == torch.float32 and not accuracy.requires_grad
    kept = target != ignore_index
    logits = input.double() @ weight.double().T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    fewest, most = _argmax_bounds(logits, target, kept, tolerance=1e-4)
    count = int(kept.sum())
    if count == 0:
        assert float(accuracy) == 0.0
    else:
        hits = round(float(accuracy) * count)
        assert_close(accuracy, torch.tensor(hits / count))
        assert fewest <= hits <= most, (fewest, hits, most)
    plain = linear_fair_loss(
        input, weight, target, ignore_index=ignore_index, softcap=softcap, chunk_size=chunk_size,
        impl=impl,
    )  # fmt: skip
    assert_close(loss, plain, equal_nan=True)  # all ignored: 0 / 0, as CE


def test_accuracy_is_the_argmax_share_and_has_no_gradient() -> None:
    input, weight, _, target = _head()
    input.requires_grad_()
    loss, accuracy = linear_fair_loss(input, weight, target, return_accuracy=True, chunk_size=3)
    logits = F.linear(input.detach(), weight)
    kept = target != -100
    expected = ((logits.argmax(dim=-1) == target) & kept).sum() / kept.sum()
    assert accuracy.dtype == torch.float64  # the loss's, at least float32
    assert_close(accuracy, expected.double())
    assert accuracy.grad_fn is None
    loss.backward()
    assert input.grad is not None and torch.isfinite(input.grad).all()


# --- gradients ------------------------------------------------------------------------------------

#: name: (the small case's layout, options, impl)
GRADCHECK_VARIANTS: dict[str, tuple[dict[str, bool], dict[str, Any], str]] = {
    "plain-sparse": ({"bias": False}, {}, "sparse"),
    "bias-ignore-dense": ({"ignore": True}, {"label_smoothing": 0.1}, "dense"),
    "bias-weight-sparse": ({"weighted": True}, {"label_smoothing": 0.1}, "sparse"),
    **{
        f"softcap-z-loss-{impl}": (
            {"ignore": True, "weighted": True},
            {"softcap": 1.5, "z_loss_scale": 0.3},
            impl,
        )
        for impl in IMPLEMENTATIONS
    },
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", sorted(GRADCHECK_VARIANTS))
def test_gradcheck_float64(reduction: str, variant: str) -> None:
    layout, options, impl = GRADCHECK_VARIANTS[variant]
    case = _small_case(reduction, **layout)

    def loss(*tensors: Tensor) -> Tensor:
        hidden, head, *bias = tensors
        return linear_fair_loss(
            hidden, head, case.target, linear_bias=bias[0] if bias else None, weight=case.weight,
            impl=impl, **options, **case.options,
        )  # fmt: skip

    # The first backward of a summed loss scales the gradients precomputed in forward, a
    # repeated one recomputes them: equal up to rounding, hence the tolerance for "reentrancy".
    assert gradcheck(loss, tuple(case.leaves()), nondet_tol=1e-12)


def test_upstream_gradient_scales_summed_gradients() -> None:
    case = _small_case("mean", ignore=True, weighted=True)
    once = torch.autograd.grad(case.loss(), case.leaves())
    scaled = torch.autograd.grad(case.loss() * -2.5, case.leaves())
    for single, times in zip(once, scaled):
        assert_close(times, -2.5 * single)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_backward_recomputes_the_same_gradients(reduction: str) -> None:
    case = _small_case(reduction, ignore=True, weighted=True)
    loss = case.loss().sum()
    first = torch.autograd.grad(loss, case.leaves(), retain_graph=True)
    second = torch.autograd.grad(loss * 3.0, case.leaves())
    for once, again in zip(first, second):
        assert_close(again, 3.0 * once)


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


def test_gradients_only_for_leaves_that_require_them() -> None:
    hidden = torch.randn(6, 3)
    head = torch.randn(5, 3, requires_grad=True)
    bias = torch.randn(5)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    for reduction in ("sum", "none"):
        loss = linear_fair_loss(hidden, head, target, linear_bias=bias, reduction=reduction)
        loss.sum().backward()
        assert hidden.grad is None and bias.grad is None and head.grad is not None
        expected = torch.autograd.grad(
            fair_loss(F.linear(hidden, head, bias), target, reduction=reduction).sum(), head
        )[0]
        assert_close(head.grad, expected)
        head.grad = None


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_raises(reduction: str) -> None:
    hidden = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    head = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    loss = linear_fair_loss(hidden, head, torch.tensor([0, 1, 2, 3]), reduction=reduction)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss.sum(), hidden, create_graph=True)
