"""linear_fair_loss / LinearFairLoss: the chunked head against the unfused path and the oracle."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.autograd import gradcheck
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from fairloss import LinearFairLoss, fair_loss, linear_fair_loss
from fairloss._impl.chunked_linear import default_chunk_size
from tests.reference import fair_loss_reference

# Small beta and s keep the penalty smooth on the scale of gradcheck's finite differences.
SMOOTH: dict[str, Any] = {"smooth_max_beta": 2.0, "scaling_factor": 3.0}


@dataclass
class HeadCase:
    input: Tensor  # (*, H)
    linear_weight: Tensor  # (V, H)
    linear_bias: Optional[Tensor]
    target: Tensor  # (*)
    weight: Optional[Tensor]
    options: dict[str, Any] = field(default_factory=dict)

    def leaves(self) -> list[Tensor]:
        tensors = [self.input, self.linear_weight, self.linear_bias]
        return [tensor for tensor in tensors if tensor is not None]


@st.composite
def head_cases(
    draw: st.DrawFn, dtype: torch.dtype = torch.float64, max_scaling_factor: float = 1000.0
) -> HeadCase:
    """Random hidden states, head, targets with ignored rows, and every option."""
    num_classes = draw(st.sampled_from([1, 2, 3, 7, 31, 64]))
    hidden_size = draw(st.sampled_from([1, 2, 5, 16]))
    layout = draw(st.sampled_from(["unbatched", "rows", "sequence"]))
    if layout == "unbatched":
        leading: tuple[int, ...] = ()
    elif layout == "rows":
        leading = (draw(st.integers(0, 40)),)
    else:
        leading = (draw(st.integers(1, 3)), draw(st.integers(1, 9)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.01, 1.0, 6.0]))
    hidden = torch.randn(*leading, hidden_size, generator=generator, dtype=torch.float64)
    head = torch.randn(num_classes, hidden_size, generator=generator, dtype=torch.float64)
    head = head * scale
    bias = None
    if draw(st.booleans()):
        bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, num_classes, leading, generator=generator)
    options: dict[str, Any] = {}
    pattern = draw(st.sampled_from(["none", "some", "all", "inside-range"]))
    if pattern != "none":
        ignore_index = 0 if pattern == "inside-range" else draw(st.sampled_from([-100, 255]))
        share = 1.0 if pattern == "all" else 0.4
        drop = torch.rand(leading, generator=generator) < share
        target = target.masked_fill(drop, ignore_index)
        options["ignore_index"] = ignore_index
    weight = None
    if draw(st.booleans()):
        weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.5
    if draw(st.booleans()):
        options["label_smoothing"] = draw(st.sampled_from([0.1, 1.0]))
    options["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    options["smooth_max_beta"] = draw(st.sampled_from([2.0, 1000.0]))
    scales = [scale for scale in (0.0, 3.0, 1000.0) if scale <= max_scaling_factor]
    options["scaling_factor"] = draw(st.sampled_from(scales))
    options["penalty_scale"] = draw(st.sampled_from([None, 1.6]))
    options["chunk_size"] = draw(st.sampled_from([None, 1, 2, 3, 7, 64]))

    def leaf(tensor: Optional[Tensor]) -> Optional[Tensor]:
        return None if tensor is None else tensor.to(dtype).requires_grad_()

    return HeadCase(
        leaf(hidden),  # type: ignore[arg-type]
        leaf(head),  # type: ignore[arg-type]
        leaf(bias),
        target,
        None if weight is None else weight.to(dtype),
        options,
    )


def _chunked(case: HeadCase, **overrides: Any) -> Tensor:
    options = {**case.options, **overrides}
    return linear_fair_loss(
        case.input,
        case.linear_weight,
        case.target,
        linear_bias=case.linear_bias,
        weight=case.weight,
        **options,
    )


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
    logits = F.linear(case.input.double(), case.linear_weight.double(), _double(case.linear_bias))
    num_classes = case.linear_weight.shape[0]
    loss = fair_loss_reference(
        logits.reshape(-1, num_classes), case.target.reshape(-1), _double(case.weight), **options
    )
    return loss.reshape(case.target.shape) if options["reduction"] == "none" else loss


def _any(value: object) -> Any:
    """A deliberately wrong argument, hidden from the type checker."""
    return value


def _double(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return None if tensor is None else tensor.double()


def _value_and_grads(loss: Tensor, leaves: list[Tensor], seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    upstream = (torch.rand(loss.shape, generator=generator, dtype=torch.float64) + 0.5).to(
        loss.dtype
    )
    if loss.numel() == 0 or not loss.requires_grad:
        return [loss.detach()] + [torch.zeros_like(leaf) for leaf in leaves]
    grads = torch.autograd.grad(loss, leaves, upstream, allow_unused=True)
    zeros = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
    return [loss.detach(), *zeros]


@pytest.mark.parametrize("impl", ["sparse", "dense"])
@given(case=head_cases())
def test_matches_unfused_fair_loss_and_oracle_float64(impl: str, case: HeadCase) -> None:
    """Both chunk implementations; "dense" keeps the ignored rows in (the sync-free path)."""
    chunked = _value_and_grads(_chunked(case, impl=impl), case.leaves())
    unfused = _value_and_grads(_unfused(case), case.leaves())
    oracle = _value_and_grads(_oracle(case), case.leaves())
    for ours, theirs, reference in zip(chunked, unfused, oracle):
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, rtol=1e-9, atol=1e-11, equal_nan=True)
        assert_close(ours, reference, rtol=1e-7, atol=1e-9, equal_nan=True)


# In float32 a steep penalty (s = 1000) near a tie turns the last-bit differences of two
# matrix-product orders into large gradient differences; float64 above covers s = 1000.
@given(head_cases(dtype=torch.float32, max_scaling_factor=3.0))
def test_matches_unfused_fair_loss_float32(case: HeadCase) -> None:
    chunked = _value_and_grads(_chunked(case), case.leaves())
    unfused = _value_and_grads(_unfused(case), case.leaves())
    assert chunked[0].dtype == torch.float32
    for ours, theirs in zip(chunked, unfused):
        scale = float(theirs.abs().max()) if theirs.numel() and theirs.isfinite().all() else 1.0
        assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True)


@given(head_cases(), st.sampled_from([1, 2, 5]))
def test_result_does_not_depend_on_chunk_size(case: HeadCase, chunk_size: int) -> None:
    whole = _value_and_grads(_chunked(case, chunk_size=10**6), case.leaves())
    chunked = _value_and_grads(_chunked(case, chunk_size=chunk_size), case.leaves())
    for ours, theirs in zip(chunked, whole):
        assert_close(ours, theirs, rtol=1e-12, atol=1e-13, equal_nan=True)


def _small_case(reduction: str, *, bias: bool, ignore: bool, weighted: bool) -> HeadCase:
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


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "variant",
    [
        {"bias": False, "ignore": False, "weighted": False},
        {"bias": True, "ignore": True, "weighted": False},
        {"bias": True, "ignore": False, "weighted": True},
    ],
    ids=["plain", "bias-ignore", "bias-weight"],
)
def test_gradcheck_float64(reduction: str, variant: dict[str, bool]) -> None:
    case = _small_case(reduction, **variant)
    leaves = case.leaves()

    def loss(*tensors: Tensor) -> Tensor:
        hidden, head, *bias = tensors
        return linear_fair_loss(
            hidden,
            head,
            case.target,
            linear_bias=bias[0] if bias else None,
            weight=case.weight,
            label_smoothing=0.1,
            **case.options,
        )

    # The first backward scales the gradients precomputed in forward, a repeated one recomputes
    # them: equal up to rounding, hence the small tolerance for "reentrancy".
    assert gradcheck(loss, tuple(leaves), nondet_tol=1e-12)


# torch's chunked path takes no label smoothing (it falls back with a warning): reference only.
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("chunked_torch", "extras"),
    [(chunked, extras) for chunked in (False, True) for extras in ("plain", "weight", "ignore")]
    + [(False, "smoothing")],
)
def test_without_penalty_equals_linear_cross_entropy(
    reduction: str, chunked_torch: bool, extras: str
) -> None:
    case = _small_case(reduction, bias=True, ignore=extras == "ignore", weighted=extras == "weight")
    smoothing = 0.2 if extras == "smoothing" else 0.0
    ours = _value_and_grads(
        _chunked(case, scaling_factor=0.0, label_smoothing=smoothing), case.leaves()
    )
    options = nn.LinearCrossEntropyOptions() if chunked_torch else None
    theirs = F.linear_cross_entropy(
        case.input,
        case.linear_weight,
        case.target,
        linear_bias=case.linear_bias,
        weight=case.weight,
        reduction=reduction,
        ignore_index=-100,
        label_smoothing=smoothing,
        options=options,
    )
    for mine, reference in zip(ours, _value_and_grads(theirs, case.leaves())):
        assert_close(mine, reference, rtol=1e-10, atol=1e-12)


def test_upstream_gradient_scales_summed_gradients() -> None:
    case = _small_case("mean", bias=True, ignore=True, weighted=True)
    once = torch.autograd.grad(_chunked(case), case.leaves())
    scaled = torch.autograd.grad(_chunked(case) * -2.5, case.leaves())
    for single, times in zip(once, scaled):
        assert_close(times, -2.5 * single)


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
    chunked = _value_and_grads(_chunked(case), case.leaves())
    unfused = _value_and_grads(_unfused(case), case.leaves())
    exact = HeadCase(
        hidden.detach().double().requires_grad_(),
        head.detach().double().requires_grad_(),
        None,
        target,
        None,
        options,
    )
    oracle = _value_and_grads(_oracle(exact), exact.leaves())
    tolerance = {torch.bfloat16: 1.6e-2, torch.float16: 1e-3}[dtype]
    for ours, theirs, reference in zip(chunked, unfused, oracle):
        assert ours.dtype == dtype
        our_error = float((ours.double() - reference).abs().max())
        their_error = float((theirs.double() - reference).abs().max())
        scale = float(reference.abs().max())
        assert our_error <= max(their_error, tolerance * scale)
        assert_close(ours.double(), reference, rtol=tolerance, atol=tolerance * scale)


def test_ignored_rows_never_reach_the_head() -> None:
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    head = torch.randn(6, 4, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.tensor([1, -100, 2, 5, -100, -100, 0, 3, -100])
    poisoned = hidden.clone()
    poisoned[target == -100] = float("nan")  # a NaN row that entered the product would show
    poisoned.requires_grad_()
    kept = target != -100
    loss = linear_fair_loss(poisoned, head, target, chunk_size=2)
    grad_hidden, grad_head = torch.autograd.grad(loss, [poisoned, head])
    expected = linear_fair_loss(hidden[kept], head, target[kept])
    assert_close(loss, expected)
    assert_close(grad_head, torch.autograd.grad(expected, head)[0])
    assert torch.equal(grad_hidden[~kept], torch.zeros_like(grad_hidden[~kept]))
    assert grad_hidden[kept].isfinite().all()


class _LargestOutput(TorchDispatchMode):
    """Records the operators called and the largest number of elements of any tensor returned."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.operators: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.operators.add(str(func.overloadpacket))
        result = func(*args, **(kwargs or {}))
        for output in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(output, Tensor):
                self.largest = max(self.largest, output.numel())
        return result


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_materializes_the_full_logits(reduction: str) -> None:
    rows, hidden_size, num_classes, chunk_size = 64, 4, 97, 8
    hidden = torch.randn(rows, hidden_size, requires_grad=True)
    head = torch.randn(num_classes, hidden_size, requires_grad=True)
    target = torch.randint(0, num_classes, (rows,))
    with _LargestOutput() as recorder:
        loss = linear_fair_loss(hidden, head, target, reduction=reduction, chunk_size=chunk_size)
        loss.sum().backward()
    assert chunk_size * num_classes <= recorder.largest < 2 * chunk_size * num_classes
    with _LargestOutput() as unfused_recorder:
        fair_loss(F.linear(hidden, head), target, reduction=reduction).sum().backward()
    assert unfused_recorder.largest == rows * num_classes


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
    with torch.no_grad(), _LargestOutput() as recorder:
        assert not linear_fair_loss(hidden, head, target).requires_grad
    assert "aten.addmm_" not in recorder.operators  # no weight gradient precomputed
    with _LargestOutput() as recorder:
        linear_fair_loss(hidden, head, target)
    assert "aten.addmm_" in recorder.operators


def test_shapes_of_leading_dimensions() -> None:
    head = torch.randn(7, 3)
    sequence = linear_fair_loss(
        torch.randn(2, 5, 3), head, torch.randint(0, 7, (2, 5)), reduction="none"
    )
    single = linear_fair_loss(torch.randn(3), head, torch.tensor(4), reduction="none")
    assert sequence.shape == (2, 5) and single.shape == ()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_raises(reduction: str) -> None:
    hidden = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    head = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    loss = linear_fair_loss(hidden, head, torch.tensor([0, 1, 2, 3]), reduction=reduction)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss.sum(), hidden, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_backward_recomputes_the_same_gradients(reduction: str) -> None:
    case = _small_case(reduction, bias=True, ignore=True, weighted=True)
    loss = _chunked(case).sum()
    first = torch.autograd.grad(loss, case.leaves(), retain_graph=True)
    second = torch.autograd.grad(loss * 3.0, case.leaves())
    for once, again in zip(first, second):
        assert_close(again, 3.0 * once)


def test_default_chunk_size() -> None:
    for rows, num_classes in [(8192, 32000), (8192, 128000), (7, 5), (3, 10**8)]:
        chunk = default_chunk_size(rows, num_classes)
        assert 1 <= chunk <= rows
        assert chunk & (chunk - 1) == 0 or chunk == rows  # a power of two, or every row
        assert chunk * num_classes <= max(2**23, num_classes)
        assert chunk == rows or 2 * chunk * num_classes > 2**23  # the largest such power
    assert default_chunk_size(10**6, 10) == 2**19  # a small head: large chunks
    assert default_chunk_size(0, 8) == 1


def test_module_mirrors_the_functional() -> None:
    torch.manual_seed(0)
    weight = torch.rand(11) + 0.5
    criterion = LinearFairLoss(
        6, 11, bias=True, weight=weight, ignore_index=3, label_smoothing=0.1, chunk_size=4
    )
    assert torch.equal(criterion.state_dict()["weight"], weight)
    assert set(criterion.state_dict()) == {"weight", "linear.weight", "linear.bias"}
    hidden = torch.randn(2, 9, 6)
    target = torch.randint(0, 11, (2, 9))
    loss = criterion(hidden, target)
    expected = linear_fair_loss(
        hidden,
        criterion.linear.weight,
        target,
        linear_bias=criterion.linear.bias,
        weight=weight,
        ignore_index=3,
        label_smoothing=0.1,
    )
    assert_close(loss, expected)
    loss.backward()
    assert criterion.linear.weight.grad is not None and criterion.linear.bias.grad is not None
    doubled = criterion.to(torch.float64)
    assert doubled.weight is not None and doubled.weight.dtype == torch.float64
    assert doubled(hidden.double(), target).dtype == torch.float64
    assert "num_classes=11" in repr(criterion) and "chunk_size=4" in repr(criterion)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, w, t: linear_fair_loss(x.long(), w, t), TypeError, "`input` to be a floating"),
        (
            lambda x, w, t: linear_fair_loss(x[0, 0], w, t),
            ValueError,
            r"`input` .* but got a scalar",
        ),
        (lambda x, w, t: linear_fair_loss(x, w[0], t), ValueError, r"`linear_weight` .*\(V, 3\)"),
        (lambda x, w, t: linear_fair_loss(x, w[:, :2], t), ValueError, r"shape \(5, 2\)"),
        (lambda x, w, t: linear_fair_loss(x, w.double(), t), TypeError, "input's dtype"),
        (lambda x, w, t: linear_fair_loss(x, _any([[1.0]]), t), TypeError, "`linear_weight`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, linear_bias=torch.zeros(4)),
            ValueError,
            r"`linear_bias` .*\(5,\)",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, linear_bias=torch.zeros(5).double()),
            TypeError,
            "`linear_bias`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, torch.rand(4, 5)),
            TypeError,
            "does not take class probabilities",
        ),
        (lambda x, w, t: linear_fair_loss(x, w, t[:3]), ValueError, r"`target` .*\(4,\)"),
        (lambda x, w, t: linear_fair_loss(x, w, t + 5), ValueError, r"class indices in \[0, 5\)"),
        (lambda x, w, t: linear_fair_loss(x, w, t, chunk_size=0), ValueError, "`chunk_size`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, chunk_size=_any(2.0)),
            TypeError,
            "`chunk_size`",
        ),
        (lambda x, w, t: linear_fair_loss(x, w, t, reduction="avg"), ValueError, "`reduction`"),
        (lambda x, w, t: linear_fair_loss(x, w, t, weight=torch.ones(4)), ValueError, "`weight`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, label_smoothing=1.5),
            ValueError,
            "`label_smoothing`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, smooth_max_beta=0.0),
            ValueError,
            "`smooth_max_beta`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, penalty_scale=-1.0),
            ValueError,
            "`penalty_scale`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, ignore_index=_any(1.5)),
            TypeError,
            "`ignore_index`",
        ),
    ],
)
def test_errors(call: Any, error: type, match: str) -> None:
    hidden = torch.randn(4, 3)
    head = torch.randn(5, 3)
    target = torch.tensor([0, 1, 2, 4])
    with pytest.raises(error, match=match):
        call(hidden, head, target)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "avg"}, ValueError, "`reduction`"),
        ({"weight": torch.ones(3)}, ValueError, r"`weight` .*\(5,\)"),
        ({"chunk_size": -1}, ValueError, "`chunk_size`"),
        ({"scaling_factor": math.inf}, ValueError, "`scaling_factor`"),
        ({"ignore_index": None}, TypeError, "`ignore_index`"),
        ({"label_smoothing": "0.1"}, TypeError, "`label_smoothing`"),
    ],
)
def test_module_errors(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LinearFairLoss(3, 5, **kwargs)


def test_next_token_example_learns() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "next_token_head.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, check=True, timeout=120
    )
    accuracies = [float(line.split()[-1]) for line in result.stdout.splitlines()[1:]]
    assert len(accuracies) == 4
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.3


class _LargeAllocations(TorchDispatchMode):
    """Counts the operator outputs of at least ``threshold`` elements that are new memory.

    Outputs of mutating (``out=``, in-place) and aliasing (view) operators reuse memory and
    are not counted.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        schema = func._schema
        if schema.is_mutable or any(output.alias_info for output in schema.returns):
            return result
        for output in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(output, Tensor) and output.numel() >= self.threshold:
                self.count += 1
        return result


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_large_buffers_are_allocated_once_per_call_not_per_chunk(reduction: str) -> None:
    rows, hidden_size, num_classes = 256, 16, 300
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, (rows,), generator=generator)
    target[::7] = -100
    counts = []
    for chunk_size in (8, 64):  # 32 and 4 chunks
        hidden = torch.randn(rows, hidden_size, generator=generator, requires_grad=True)
        head = torch.randn(num_classes, hidden_size, generator=generator, requires_grad=True)
        with _LargeAllocations(threshold=8 * num_classes) as recorder:
            loss = linear_fair_loss(
                hidden, head, target, reduction=reduction, chunk_size=chunk_size
            )
            loss.sum().backward()
        counts.append(recorder.count)
    assert counts[0] == counts[1] <= 6


# Each run is a fresh process: the resident-size growth of one forward+backward at an LM head's
# size (the logits would be 8192 x 32000 floats, 1000 MiB). The bound is generous (4x the
# weight gradient, 250 MiB): torch's chunked F.linear_cross_entropy grows by ~200 MiB here.
_PEAK_MEMORY_SCRIPT = """
import resource, torch
from fairloss import linear_fair_loss
torch.set_num_threads(2)
N, V, H = 8192, 32000, 512
g = torch.Generator().manual_seed({seed})
x = (torch.randn(N, H, generator=g) * 0.5).requires_grad_()
w = (torch.randn(V, H, generator=g) * 0.05).requires_grad_()
t = torch.randint(0, V, (N,), generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
linear_fair_loss(x, w, t).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.slow
def test_peak_memory_stays_far_below_the_full_logits_in_every_run() -> None:
    weight_gradient_mib = 32000 * 512 * 4 / 2**20
    growths = []
    for seed in range(2):
        run = subprocess.run(
            [sys.executable, "-c", _PEAK_MEMORY_SCRIPT.format(seed=seed)],
            capture_output=True,
            text=True,
            check=True,
        )
        growths.append(float(run.stdout.strip().splitlines()[-1]))
    assert max(growths) < 4 * weight_gradient_mib, growths
