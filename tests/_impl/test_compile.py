"""torch.compile(fullgraph=True) traces fair_loss and linear_fair_loss without graph breaks, and
the compiled results equal eager ones and the float64 oracle.

The matrix holds what differs under the compiler, once each:

- the implementation: ``"auto"`` compiles ``"dense"`` for few classes (at most
  ``DENSE_COMPILED_MAX_CLASSES``; 7 here) and the sparse implementation's custom operators for
  many (300 here); the linear head runs as its own two custom operators;
- the layout: ``(N, C)`` or ``(N, C, d1, ...)`` (the linear head: ``(N, H)`` or ``(B, T, H)``);
- the target: class indices or class probabilities (whose own gradient is compared too).

Dtype, reduction, options (class weights, ignored elements, label smoothing, z-loss, steepness,
the penalty off) and the logit regime (near-ties, saturated "trained" logits, masked classes at
``-inf``) alternate across the cases rather than multiplying them; one case compiles the
``FairLoss`` module. Each compiled function is compared with the same implementation eagerly and,
in float64, with the oracle. Dynamo's cache is reset when this module starts and ends, and where
a test needs a fresh one (dynamic shapes); within the module the recompile limit is raised and
reaching it fails, so that no call falls back to eager mode unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from fairloss import FairLoss, _impl, fair_loss, linear_fair_loss
from fairloss._impl import dense, sparse_compiled
from tests.reference import fair_loss_reference, linear_fair_loss_reference

FEW, MANY = 7, 300  # classes: "auto" compiles "dense" for FEW, the sparse operators for MANY
# Small beta and s keep the penalty smooth where gradients are compared at a tight tolerance.
SMOOTH: dict[str, Any] = {"smooth_max_beta": 2.0, "scaling_factor": 3.0}


@pytest.fixture(autouse=True, scope="module")
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


# --- fair_loss: the matrix ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]  # (N, C) or (N, C, d...)
    probability: bool
    dtype: torch.dtype
    reduction: str
    regime: str  # "random", "near-ties", "trained" or "masked" (some classes at -inf)
    options: dict[str, Any] = field(default_factory=dict)  # "weight": True, "ignore": share
    module: bool = False  # compile FairLoss(...) rather than fair_loss
    # Inductor generates code once per implementation x layout; the other target kind of each
    # traces the same graph through Dynamo and AOTAutograd ("aot_eager"), without the code
    # generation that makes a cold compile cost seconds.
    backend: str = "inductor"

    @property
    def id(self) -> str:
        path = "dense" if self.shape[1] == FEW else "sparse"
        layout = "rows" if len(self.shape) == 2 else "kdim"
        target = "probabilities" if self.probability else "indices"
        dtype = str(self.dtype)[6:]
        return f"{path}-{layout}-{target}-{dtype}-{self.reduction}-{self.regime}-{self.backend}"


CASES = [
    Case((64, FEW), False, torch.float64, "mean", "near-ties",
         {"weight": True, "ignore": 0.2, "label_smoothing": 0.1}),
    Case((32, FEW), True, torch.float32, "none", "random", {"z_loss_scale": 0.01},
         backend="aot_eager"),
    Case((4, FEW, 5, 3), False, torch.float32, "none", "masked",
         {"ignore": 0.1, "z_loss_scale": 0.05}, backend="aot_eager"),
    Case((4, FEW, 9), True, torch.float64, "mean", "near-ties",
         {"weight": True, "label_smoothing": 0.2}, module=True),
    Case((48, MANY), False, torch.float32, "sum", "trained",
         {"smooth_max_beta": 20.0, "scaling_factor": 5.0}, backend="aot_eager"),
    Case((16, MANY), True, torch.float64, "none", "near-ties",
         {"weight": True, "label_smoothing": 0.1}),
    Case((4, MANY, 3), False, torch.float64, "none", "masked", {"weight": True, "ignore": 0.2}),
    Case((4, MANY, 2), True, torch.float32, "mean", "trained",
         {"scaling_factor": 0.0, "z_loss_scale": 0.01}, backend="aot_eager"),
]  # fmt: skip


def _inputs(case: Case, seed: int) -> tuple[Tensor, Tensor, Optional[Tensor], dict[str, Any]]:
    """Float64 logits, target and class weights, and the case's keyword options."""
    generator = torch.Generator().manual_seed(seed)
    shape, num_classes = case.shape, case.shape[1]
    element_shape = (shape[0], *shape[2:])
    if case.probability:
        target = torch.softmax(torch.randn(shape, generator=generator, dtype=torch.float64), 1)
        one_hot = target
    else:
        target = torch.randint(0, num_classes, element_shape, generator=generator)
        one_hot = F.one_hot(target, num_classes).movedim(-1, 1).double()
        ignored = torch.rand(element_shape, generator=generator) < case.options.get("ignore", 0)
        target = target.masked_fill(ignored, -100)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    if case.regime == "near-ties":
        logits = logits * 0.01
    elif case.regime == "trained":
        logits = logits + 5 * one_hot
    elif case.regime == "masked":  # a third of the other classes masked out
        masked = (torch.rand(shape, generator=generator) < 0.33) & (one_hot == 0)
        logits = logits.masked_fill(masked, -torch.inf)
    weight = None
    if case.options.get("weight"):
        weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.5
    keywords = {k: v for k, v in case.options.items() if k not in ("weight", "ignore")}
    return logits, target, weight, keywords


def _value_and_grads(
    loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, target: Tensor
) -> list[Tensor]:
    """The loss and its gradients: of the logits, and of a probability target."""
    leaves = [logits.detach().clone().requires_grad_()]
    if target.is_floating_point():
        leaves.append(target.detach().clone().requires_grad_())
    loss = loss_fn(leaves[0], leaves[-1] if len(leaves) == 2 else target)
    generator = torch.Generator().manual_seed(1)
    upstream = torch.rand(loss.shape, generator=generator, dtype=torch.float64) + 0.5
    return [loss.detach(), *torch.autograd.grad(loss, leaves, upstream.to(loss.dtype))]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_compiled_matches_eager_and_the_oracle(case: Case) -> None:
    logits, target, weight, keywords = _inputs(case, seed=len(case.shape))
    num_classes = case.shape[1]
    compiled_impl = _impl.select("auto", device=logits.device, num_classes=num_classes,
                                 compiling=True)  # fmt: skip
    expected_impl = dense.IMPLEMENTATION if num_classes == FEW else sparse_compiled.IMPLEMENTATION
    assert compiled_impl is expected_impl
    eager_impl = "dense" if num_classes == FEW else "sparse"  # the same implementation, eagerly
    logits = logits.to(case.dtype)
    target = target.to(case.dtype) if case.probability else target
    weight = None if weight is None else weight.to(case.dtype)

    def eager(z: Tensor, y: Tensor) -> Tensor:
        return fair_loss(z, y, weight, reduction=case.reduction, impl=eager_impl, **keywords)

    def automatic(z: Tensor, y: Tensor) -> Tensor:
        return fair_loss(z, y, weight, reduction=case.reduction, **keywords)

    module = FairLoss(weight, reduction=case.reduction, **keywords)
    compiled: Any = torch.compile(
        module if case.module else automatic, fullgraph=True, backend=case.backend
    )
    ours = _value_and_grads(compiled, logits, target)
    theirs = _value_and_grads(eager, logits, target)
    for value in ours:
        assert value.dtype == case.dtype and value.isfinite().all()
    rtol, atol = (1e-9, 1e-12) if case.dtype == torch.float64 else (1.3e-6, 1e-5)
    assert_close(ours[0], theirs[0], rtol=rtol, atol=atol)
    # The gradient is a difference of terms as large as the penalty slope lambda * s / 2 (x the
    # class weight, < 1.5 here, x the upstream gradient, < 1.5, and x 1 / the mean's divisor,
    # which is at least 40% of the elements here); the two paths round them in different orders.
    slope_bound = 2.25 * keywords.get("scaling_factor", 1000.0) / 2 / num_classes
    if case.reduction == "mean":
        slope_bound /= 0.4 * (logits.numel() // num_classes)
    grad_atol = max(atol, 4 * torch.finfo(case.dtype).eps * slope_bound)
    for grad, expected in zip(ours[1:], theirs[1:]):
        assert_close(grad, expected, rtol=rtol, atol=grad_atol)
    if case.dtype == torch.float64:  # masked classes: at -1e4 the oracle's exp is 0 as well

        def oracle(z: Tensor, y: Tensor) -> Tensor:
            return fair_loss_reference(
                z.clamp_min(-1e4), y, weight, reduction=case.reduction, **keywords
            )

        for ours_value, reference in zip(ours, _value_and_grads(oracle, logits, target)):
            assert_close(ours_value, reference, rtol=1e-7, atol=1e-10)


def test_compiled_with_dynamic_shapes_follows_the_batch() -> None:
    for path, num_classes in (("dense", FEW), ("sparse", MANY)):
        torch._dynamo.reset()  # the batch sizes below must meet one dynamic graph
        compiled = torch.compile(fair_loss, fullgraph=True, dynamic=True)
        for batch in (5, 17, 33):
            generator = torch.Generator().manual_seed(batch)
            logits = torch.randn(batch, num_classes, generator=generator) * 0.02
            target = torch.randint(0, num_classes, (batch,), generator=generator)
            expected = fair_loss(logits, target, impl=path)
            assert_close(compiled(logits, target), expected, msg=path)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_compiled_negative_target_raises_like_cross_entropy(path: str) -> None:
    # -1 is not the default ignore_index -100: an out-of-range class, which cross-entropy
    # rejects (eagerly and compiled); it must not become class 0. (With a few hundred classes
    # Inductor's CPU bounds check fires inside a parallel loop and aborts the process, for
    # compiled F.cross_entropy as for FairLoss: torch 2.13's behaviour, not tested here.)
    logits = torch.randn(4, 5)
    target = torch.tensor([0, -1, 2, 1])
    compiled_cross_entropy = torch.compile(F.cross_entropy, fullgraph=True)
    with pytest.raises((RuntimeError, IndexError)):
        compiled_cross_entropy(logits, target)
    compiled = torch.compile(fair_loss, fullgraph=True)
    with pytest.raises((RuntimeError, IndexError), match="out of bounds"):
        compiled(logits, target, impl=path)


def _statistics_arguments(shape: tuple[int, ...]) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, generator=generator) * 0.01
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    valid = target != 3
    reference = target.masked_fill(~valid, 0)
    class_weight = valid.to(logits.dtype)
    row_max = logits.amax(dim=1)
    max_gap = row_max - logits.gather(1, reference.unsqueeze(1)).squeeze(1)
    candidates = valid & (max_gap < 0.05)
    beta, scale, lam = 1000.0, 1000.0, 0.2
    return (logits, reference, class_weight, row_max, max_gap, candidates, [beta, scale, lam])


@pytest.mark.parametrize("shape", [(16, 5), (4, 5, 6)], ids=["rows", "k-dim"])
def test_custom_operators_pass_opcheck(shape: tuple[int, ...]) -> None:
    arguments = _statistics_arguments(shape)
    torch.library.opcheck(sparse_compiled.penalty_statistics, arguments)
    logits, reference = arguments[0], arguments[1]
    _, beta_normalizer, penalty_slope = sparse_compiled.penalty_statistics(*arguments)
    assert int((penalty_slope != 0).sum()) > 0  # the gradient operator has work to do
    grad = torch.softmax(logits, dim=1)
    gradient_arguments = (grad, logits, reference, beta_normalizer, penalty_slope, 1000.0)
    torch.library.opcheck(sparse_compiled.add_penalty_gradient_, gradient_arguments)


# --- linear_fair_loss: the head's custom operators ------------------------------------------------


def _head(
    leading: tuple[int, ...], classes: int, hidden: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float64 input ``(*leading, hidden)``, head, bias and target (some ignored)."""
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(*leading, hidden, dtype=torch.float64, generator=generator)
    weight = torch.randn(classes, hidden, dtype=torch.float64, generator=generator)
    bias = torch.randn(classes, dtype=torch.float64, generator=generator)
    target = torch.randint(0, classes, leading, generator=generator)
    target.view(-1)[1::5] = -100
    return input, weight, bias, target


def test_compiled_linear_rows_per_row_losses_match_the_reference() -> None:
    """``(N, H)`` rows, the sparse chunks, ``reduction="none"`` (gradients recomputed in
    backward), every option, accuracy; then the same function without grad, for the weight
    alone, and with every row ignored under "mean" (0 / 0: gradients 0, not NaN)."""
    input, weight, bias, target = _head((24,), classes=40, hidden=8)
    options: dict[str, Any] = {
        "reduction": "none", "z_loss_scale": 1e-2, "label_smoothing": 0.1, "softcap": 4.0,
        **SMOOTH,
    }  # fmt: skip
    leaves = [tensor.clone().requires_grad_() for tensor in (input, weight, bias)]
    compiled: Any = torch.compile(linear_fair_loss, fullgraph=True)
    loss, accuracy = compiled(
        leaves[0], leaves[1], target, linear_bias=leaves[2], chunk_size=5, return_accuracy=True,
        impl="sparse", **options,
    )  # fmt: skip
    grads = torch.autograd.grad(loss.sum(), leaves)
    exact = [tensor.clone().requires_grad_() for tensor in (input, weight, bias)]
    expected = linear_fair_loss_reference(
        exact[0], exact[1], target, linear_bias=exact[2], **options
    )
    expected_grads = torch.autograd.grad(expected.sum(), exact)
    assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    logits = 4.0 * torch.tanh(F.linear(input, weight, bias) / 4.0)
    kept = target != -100
    expected_accuracy = ((logits.argmax(dim=-1) == target) & kept).sum() / kept.sum()
    assert_close(accuracy, expected_accuracy.to(accuracy.dtype))

    with torch.no_grad():
        assert_close(compiled(input, weight, target), linear_fair_loss(input, weight, target))
    head = weight.clone().requires_grad_()
    (grad,) = torch.autograd.grad(compiled(input, head, target, chunk_size=3), [head])
    (expected_grad,) = torch.autograd.grad(linear_fair_loss(input, head, target), [head])
    assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)

    ignored = torch.full_like(target, -100)
    leaves = [tensor.clone().requires_grad_() for tensor in (input, weight)]
    loss = compiled(*leaves, ignored, chunk_size=3, impl="sparse", z_loss_scale=0.1)
    assert loss.isnan()  # 0 / 0, as F.cross_entropy
    for grad in torch.autograd.grad(loss, leaves):
        assert torch.equal(grad, torch.zeros_like(grad))


def test_compiled_linear_sequence_in_bfloat16_is_as_accurate_as_eager() -> None:
    """``(B, T, H)`` input, the dense chunks, "mean" in bfloat16: compiled scales forward's
    float32 gradients as eager does, rounding to bfloat16 once (rounding them before the scale
    roughly doubled the error). Then every position ignored: gradients 0, not NaN."""
    input, weight, bias, target = _head((2, 10), classes=30, hidden=16)
    exact = [t.bfloat16().double().requires_grad_() for t in (input, weight, bias)]
    options: dict[str, Any] = {"impl": "dense", "z_loss_scale": 1e-3, "chunk_size": 7}
    reference = linear_fair_loss_reference(
        exact[0], exact[1], target, linear_bias=exact[2], z_loss_scale=1e-3
    )
    expected = [reference.detach(), *torch.autograd.grad(reference, exact)]
    compiled: Any = torch.compile(linear_fair_loss, fullgraph=True)
    errors = {}
    for name, function in (("eager", linear_fair_loss), ("compiled", compiled)):
        leaves = [t.detach().bfloat16().requires_grad_() for t in exact]
        loss = function(leaves[0], leaves[1], target, linear_bias=leaves[2], **options)
        results = [loss.detach(), *torch.autograd.grad(loss, leaves)]
        assert all(result.dtype == torch.bfloat16 for result in results)
        assert_close(results[0].double(), expected[0], rtol=1.6e-2, atol=1e-2)
        errors[name] = max(
            float(((result.double() - want).abs() / want.abs().max()).max())
            for result, want in zip(results[1:], expected[1:])
        )
    # A margin for the machine's kernels; the error this guards against was about twice eager's.
    assert errors["compiled"] <= 1.5 * errors["eager"], errors

    leaves = [t.detach().bfloat16().requires_grad_() for t in exact]
    ignored = torch.full_like(target, -100)
    loss = compiled(leaves[0], leaves[1], ignored, linear_bias=leaves[2], **options)
    assert loss.isnan()
    for grad in torch.autograd.grad(loss, leaves):
        assert torch.equal(grad, torch.zeros_like(grad))
