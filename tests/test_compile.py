"""torch.compile(fullgraph=True) traces fair_loss without graph breaks and matches eager.

Under ``torch.compile`` on CPU, ``fair_loss`` runs one of two implementations, chosen by
``fairloss._impl.select`` from the number of classes: ``"dense"`` (no data-dependent step) or
``"sparse"`` (dense steps the compiler fuses, the data-dependent ones as custom operators).
Every compiled test runs each (the ``compiled_path`` fixture passes ``impl=``), comparing with
the same implementation eagerly (itself checked against the float64 oracle elsewhere) and with
the oracle directly, over the option combinations, layouts and logit regimes that take
different branches of the penalty.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from fairloss import FairLoss, _impl, fair_loss
from fairloss._impl import sparse_compiled
from tests.reference import fair_loss_reference

pytestmark = pytest.mark.slow


@pytest.fixture(params=["dense", "sparse"])
def compiled_path(request: pytest.FixtureRequest) -> str:
    """The ``impl`` every compiled call of a test passes, whatever its number of classes."""
    return str(request.param)


def test_the_compiled_path_follows_the_number_of_classes() -> None:
    limit = _impl.DENSE_COMPILED_MAX_CLASSES
    cpu, meta = torch.device("cpu"), torch.device("meta")

    def select(impl: str, device: torch.device, num_classes: int, compiling: bool) -> Any:
        return _impl.select(impl, device=device, num_classes=num_classes, compiling=compiling)

    assert select("auto", cpu, limit, True) is _impl.dense.IMPLEMENTATION
    assert select("auto", cpu, limit + 1, True) is sparse_compiled.IMPLEMENTATION
    assert select("auto", cpu, limit + 1, False) is _impl.sparse.IMPLEMENTATION
    assert select("auto", meta, limit + 1, True) is _impl.dense.IMPLEMENTATION
    assert select("auto", meta, 3, False) is _impl.dense.IMPLEMENTATION
    assert select("auto", cpu, 0, False) is None  # no classes: the composite
    assert select("composite", cpu, 5, True) is None
    assert select("sparse", cpu, 5, True) is sparse_compiled.IMPLEMENTATION


def _logits(shape: tuple[int, ...], regime: str, target: Tensor, seed: int) -> Tensor:
    """``near-ties``: many unsaturated elements; ``trained``: the target wins most elements."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    if regime == "near-ties":
        return logits * 0.01
    if regime == "trained":
        if target.is_floating_point():
            return logits + 5 * target
        one_hot = torch.nn.functional.one_hot(target.clamp_min(0), shape[1]).movedim(-1, 1)
        return logits + 5 * one_hot
    return logits


def _index_target(shape: tuple[int, ...], ignore_share: float, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    element_shape = (shape[0], *shape[2:])
    target = torch.randint(0, shape[1], element_shape, generator=generator)
    ignored = torch.rand(element_shape, generator=generator) < ignore_share
    return target.masked_fill(ignored, -100)


CASES: list[tuple[tuple[int, ...], str, dict[str, Any], bool]] = [
    # (shape, regime, options, probability target)
    ((64, 7), "random", {}, False),
    ((64, 7), "near-ties", {}, False),
    ((64, 7), "trained", {}, False),
    ((96, 5), "near-ties", {"weight": True, "ignore": 0.2, "label_smoothing": 0.1}, False),
    ((4, 6, 5, 3), "near-ties", {"ignore": 0.1}, False),
    ((4, 6, 5, 3), "trained", {"weight": True, "label_smoothing": 0.2}, False),
    ((8, 4, 9), "near-ties", {"weight": True}, True),
    ((32, 10), "random", {"scaling_factor": 0.0}, False),
    ((32, 10), "near-ties", {"smooth_max_beta": 20.0, "scaling_factor": 5.0}, False),
]


def _case_inputs(
    shape: tuple[int, ...], regime: str, options: dict[str, Any], probability: bool, seed: int
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    if probability:
        generator = torch.Generator().manual_seed(seed + 2)
        target = torch.softmax(torch.randn(shape, generator=generator, dtype=torch.float64), 1)
    else:
        target = _index_target(shape, options.get("ignore", 0.0), seed)
    logits = _logits(shape, regime, target, seed)
    keywords = {k: v for k, v in options.items() if k not in ("weight", "ignore")}
    if options.get("weight"):
        generator = torch.Generator().manual_seed(seed + 3)
        keywords["weight"] = torch.rand(shape[1], generator=generator, dtype=torch.float64) + 0.5
    return logits, target, keywords


def _compiled_and_eager(
    loss_fn: Callable[..., Tensor], logits: Tensor, target: Tensor, backend: str = "inductor"
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    outputs = []
    for function in (compiled, loss_fn):
        leaf = logits.detach().clone().requires_grad_()
        loss = function(leaf, target)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        outputs.append((loss.detach(), grad))
    return outputs[0], outputs[1]


# Each case compiles anew (a few seconds on 2 cores): every case runs once per path, with the
# dtype and reduction alternating between cases rather than multiplying them.
VARIANTS = [
    (case, dtype, reduction)
    for index, case in enumerate(CASES)
    for dtype, reduction in [
        ((torch.float64, "mean"), (torch.float32, "none"), (torch.float64, "none"))[index % 3]
    ]
]


@pytest.mark.parametrize(
    ("shape", "regime", "options", "probability", "dtype", "reduction"),
    [(*case, dtype, reduction) for case, dtype, reduction in VARIANTS],
    ids=[
        f"{'x'.join(map(str, c[0]))}-{c[1]}-{'-'.join(c[2]) or 'defaults'}-{r}-{str(d)[6:]}"
        for c, d, r in VARIANTS
    ],
)
def test_compiled_matches_eager_and_the_oracle(
    shape: tuple[int, ...],
    regime: str,
    options: dict[str, Any],
    probability: bool,
    reduction: str,
    dtype: torch.dtype,
    compiled_path: str,
) -> None:
    logits, target, keywords = _case_inputs(shape, regime, options, probability, seed=len(shape))
    logits = logits.to(dtype)
    if probability:
        target = target.to(dtype)
    weight: Optional[Tensor] = keywords.pop("weight", None)
    if weight is not None:
        weight = weight.to(dtype)

    def loss_fn(z: Tensor, y: Tensor) -> Tensor:
        return fair_loss(z, y, weight, reduction=reduction, impl=compiled_path, **keywords)

    (compiled_loss, compiled_grad), (eager_loss, eager_grad) = _compiled_and_eager(
        loss_fn, logits, target
    )
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (1.3e-6, 1e-5)
    assert_close(compiled_loss, eager_loss, rtol=rtol, atol=atol)
    # The gradient is a difference of terms as large as the penalty slope lambda * s / 2 (x the
    # class weight, < 1.5 here, and x 1 / the mean's divisor, which is at least 40% of the
    # elements here); the two paths round them in different orders, by a few ulps.
    slope_bound = 1.5 * keywords.get("scaling_factor", 1000.0) / 2 / shape[1]
    if reduction == "mean":
        slope_bound /= 0.4 * (logits.numel() // shape[1])
    grad_atol = max(atol, 4 * torch.finfo(dtype).eps * slope_bound)
    assert_close(compiled_grad, eager_grad, rtol=rtol, atol=grad_atol)
    if dtype == torch.float64:
        oracle_logits = logits.detach().clone().requires_grad_()
        oracle = fair_loss_reference(oracle_logits, target, weight, reduction=reduction, **keywords)
        (oracle_grad,) = torch.autograd.grad(oracle.sum(), oracle_logits)
        assert_close(compiled_loss, oracle.detach(), rtol=1e-9, atol=1e-12)
        assert_close(compiled_grad, oracle_grad, rtol=1e-7, atol=1e-10)


def test_compiled_probability_target_gradient_matches_eager(compiled_path: str) -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 4, 3, generator=generator, dtype=torch.float64) * 0.05
    target = torch.softmax(torch.randn(6, 4, 3, generator=generator, dtype=torch.float64), 1)

    def target_grad(function: Callable[..., Tensor]) -> Tensor:
        leaf = target.clone().requires_grad_()
        loss = function(logits, leaf, label_smoothing=0.1, impl=compiled_path)
        (grad,) = torch.autograd.grad(loss, leaf)
        return grad

    torch._dynamo.reset()
    compiled = torch.compile(fair_loss, fullgraph=True, backend="inductor")
    assert_close(target_grad(compiled), target_grad(fair_loss), rtol=1e-9, atol=1e-12)


def test_compiled_with_dynamic_shapes_follows_the_batch(compiled_path: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(fair_loss, fullgraph=True, dynamic=True, backend="inductor")
    for batch in (5, 17, 33):
        generator = torch.Generator().manual_seed(batch)
        logits = torch.randn(batch, 6, generator=generator) * 0.02
        target = torch.randint(0, 6, (batch,), generator=generator)
        expected = fair_loss(logits, target, impl=compiled_path)
        assert_close(compiled(logits, target, impl=compiled_path), expected)


def test_module_compiles_with_probability_targets() -> None:
    torch._dynamo.reset()
    criterion = FairLoss(reduction="none")
    logits = torch.randn(4, 3, 2)
    target = torch.softmax(torch.randn(4, 3, 2), 1)
    compiled = torch.compile(criterion, fullgraph=True, backend="aot_eager")
    assert_close(compiled(logits, target), criterion(logits, target), rtol=1e-5, atol=1e-6)


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


def test_compiled_masked_classes_match_eager(compiled_path: str) -> None:
    # -inf logits (masked classes) give finite losses and zero gradients there, as in eager.
    inf = float("inf")
    logits = torch.tensor(
        [[1.0, -inf, 0.5, -inf, 0.0], [-inf, -inf, 3.0, -inf, -inf], [0.2, 0.9, -inf, -inf, -inf]]
    )
    target = torch.tensor([0, 2, 0])

    def loss_fn(z: Tensor, y: Tensor) -> Tensor:
        return fair_loss(z, y, reduction="none", impl=compiled_path)

    (compiled_loss, compiled_grad), (eager_loss, eager_grad) = _compiled_and_eager(
        loss_fn, logits, target
    )
    assert torch.isfinite(compiled_loss).all() and torch.isfinite(compiled_grad).all()
    assert_close(compiled_loss, eager_loss, rtol=1.3e-6, atol=1e-5)
    assert_close(compiled_grad, eager_grad, rtol=1.3e-6, atol=1e-5)


def test_compiled_negative_target_raises_like_cross_entropy(compiled_path: str) -> None:
    # -1 is not the default ignore_index -100: an out-of-range class, which cross-entropy
    # rejects (eagerly and compiled); it must not become class 0. (With a few hundred classes
    # Inductor's CPU bounds check fires inside a parallel loop and aborts the process, for
    # compiled F.cross_entropy as for FairLoss: torch 2.13's behaviour, not tested here.)
    logits = torch.randn(4, 5)
    target = torch.tensor([0, -1, 2, 1])
    torch._dynamo.reset()
    compiled_cross_entropy = torch.compile(torch.nn.functional.cross_entropy, fullgraph=True)
    with pytest.raises((RuntimeError, IndexError)):
        compiled_cross_entropy(logits, target)
    compiled = torch.compile(fair_loss, fullgraph=True)
    with pytest.raises((RuntimeError, IndexError), match="out of bounds"):
        compiled(logits, target, impl=compiled_path)
