"""Off the CPU nothing synchronises with the host: proven on ``meta`` tensors, and on CUDA.

A meta tensor has no data, so any step that needs one (``.item()``, ``nonzero``, ``bool(t)``, a
shape that depends on values) raises there. ``fair_loss`` and ``linear_fair_loss`` run forward
and backward on meta tensors for every family of options, as ``F.cross_entropy`` does. Where a
GPU exists, the same calls run on CUDA under ``torch.cuda.set_sync_debug_mode("error")`` (any
synchronising call raises) and equal the CPU's results. ``make gpu-check`` runs this file
(``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from fairloss import FairLoss, LinearFairLoss, fair_loss, linear_fair_loss

# One entry per family of options: (name, logits shape, options; "weight" / "probability" flags).
OPTION_FAMILIES: list[tuple[str, tuple[int, ...], dict[str, Any]]] = [
    ("defaults", (12, 7), {}),
    ("sum", (12, 7), {"reduction": "sum"}),
    ("none", (12, 7), {"reduction": "none"}),
    ("ignored", (12, 7), {"ignore": True}),
    ("ignore-index-in-range", (12, 7), {"ignore_index": 2}),
    ("weight", (12, 7), {"weight": True, "ignore": True}),
    ("label-smoothing", (12, 7), {"label_smoothing": 0.2, "weight": True}),
    ("penalty-scale", (12, 7), {"penalty_scale": 2.0, "smooth_max_beta": 5.0}),
    ("penalty-off", (12, 7), {"scaling_factor": 0.0}),
    ("z-loss", (12, 7), {"z_loss_scale": 1e-4, "ignore": True}),
    ("probability", (12, 7), {"probability": True, "label_smoothing": 0.1}),
    ("k-dim", (3, 5, 4, 6), {"ignore": True, "reduction": "none"}),
    ("k-dim-probability", (3, 5, 4), {"probability": True, "weight": True}),
    ("unbatched", (9,), {}),
]
IDS = [family[0] for family in OPTION_FAMILIES]


def _inputs(
    shape: tuple[int, ...], options: dict[str, Any], device: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    generator = torch.Generator().manual_seed(len(shape) + len(options))
    class_dim = 0 if len(shape) == 1 else 1
    num_classes = shape[class_dim]
    logits = torch.randn(shape, generator=generator) * 0.05  # near ties: the penalty works
    keywords = {k: v for k, v in options.items() if k not in ("weight", "ignore", "probability")}
    if options.get("probability"):
        target = torch.softmax(torch.randn(shape, generator=generator), dim=class_dim).to(dtype)
    else:
        element_shape = shape[:class_dim] + shape[class_dim + 1 :]
        target = torch.randint(0, num_classes, element_shape, generator=generator)
        if options.get("ignore"):
            target[..., ::3] = -100
    if options.get("weight"):
        keywords["weight"] = (torch.rand(num_classes, generator=generator) + 0.5).to(device, dtype)
    return logits.to(device, dtype), target.to(device), keywords


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("name", "shape", "options"), OPTION_FAMILIES, ids=IDS)
def test_fair_loss_runs_on_meta_tensors(
    name: str, shape: tuple[int, ...], options: dict, dtype: torch.dtype
) -> None:
    logits, target, keywords = _inputs(shape, options, "meta", dtype)
    logits.requires_grad_()
    loss = fair_loss(logits, target, **keywords)
    expected = torch.nn.functional.cross_entropy(
        logits, target, **{k: v for k, v in keywords.items() if k in ("weight", "reduction")}
    )
    assert loss.device.type == "meta" and loss.shape == expected.shape
    assert loss.dtype == expected.dtype == dtype
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad.shape == logits.shape and grad.device.type == "meta" and grad.dtype == dtype


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss_scale": 1e-4, "softcap": 30.0, "return_accuracy": True}],
    ids=["defaults", "z_loss-softcap-accuracy"],
)
def test_linear_fair_loss_runs_on_meta_tensors(
    reduction: str, with_bias: bool, options: dict[str, Any]
) -> None:
    hidden = torch.randn(2, 9, 16, device="meta", requires_grad=True)
    head = torch.randn(50, 16, device="meta", requires_grad=True)
    bias = torch.randn(50, device="meta", requires_grad=True) if with_bias else None
    target = torch.randint(0, 50, (2, 9), device="meta")
    weight = torch.rand(50, device="meta")
    result = linear_fair_loss(
        hidden, head, target, linear_bias=bias, weight=weight, reduction=reduction,
        label_smoothing=0.1, chunk_size=4, **options,
    )  # fmt: skip
    loss, *accuracy = result if isinstance(result, tuple) else (result,)
    assert loss.shape == ((2, 9) if reduction == "none" else ())
    assert all(value.device.type == "meta" and value.shape == () for value in accuracy)
    leaves = [leaf for leaf in (hidden, head, bias) if leaf is not None]
    grads = torch.autograd.grad(loss.sum(), leaves)
    assert [g.shape for g in grads] == [leaf.shape for leaf in leaves]


def test_modules_run_on_meta_tensors() -> None:
    criterion = FairLoss(torch.ones(7), label_smoothing=0.1).to("meta")
    logits = torch.randn(4, 7, device="meta", requires_grad=True)
    criterion(logits, torch.randint(0, 7, (4,), device="meta")).backward()
    head = LinearFairLoss(8, 7, bias=True, device="meta")
    head(torch.randn(4, 8, device="meta"), torch.randint(0, 7, (4,), device="meta")).backward()
    assert head.linear.weight.grad is not None and head.linear.weight.grad.device.type == "meta"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def no_sync() -> Iterator[None]:
    """Any CUDA call that synchronises with the host raises inside the test."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _value_and_grad(loss_fn: Any, logits: Tensor, target: Tensor, keywords: dict) -> list[Tensor]:
    leaf = logits.detach().clone().requires_grad_()
    loss = loss_fn(leaf, target, **keywords)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return [loss.detach(), grad]


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("name", "shape", "options"), OPTION_FAMILIES, ids=IDS)
def test_fair_loss_on_cuda_never_syncs_and_matches_the_cpu(
    name: str, shape: tuple[int, ...], options: dict, dtype: torch.dtype, no_sync: None
) -> None:
    logits, target, keywords = _inputs(shape, options, "cuda", dtype)
    on_cuda = _value_and_grad(fair_loss, logits, target, keywords)
    torch.cuda.set_sync_debug_mode("default")  # moving results to the CPU syncs, by design
    cpu_keywords = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in keywords.items()}
    on_cpu = _value_and_grad(fair_loss, logits.cpu(), target.cpu(), cpu_keywords)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for ours, theirs in zip(on_cuda, on_cpu):
        assert ours.dtype == theirs.dtype
        assert_close(ours.cpu(), theirs, rtol=tolerance, atol=tolerance)


@cuda
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss_scale": 1e-3, "softcap": 5.0, "return_accuracy": True}],
    ids=["defaults", "z_loss-softcap-accuracy"],
)
def test_linear_fair_loss_on_cuda_never_syncs_and_matches_the_cpu(
    reduction: str, options: dict, no_sync: None
) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 32, generator=generator)
    head = torch.randn(300, 32, generator=generator) * 0.1
    target = torch.randint(0, 300, (64,), generator=generator)
    target[::5] = -100

    def run(device: str) -> list[Tensor]:
        x, w = hidden.to(device).requires_grad_(), head.to(device).requires_grad_()
        result = linear_fair_loss(
            x, w, target.to(device), reduction=reduction, chunk_size=16, **options
        )
        loss, *accuracy = result if isinstance(result, tuple) else (result,)
        grads = torch.autograd.grad(loss.sum(), [x, w])
        return [loss.detach(), *accuracy, *grads]

    on_cuda = run("cuda")
    torch.cuda.set_sync_debug_mode("default")
    for ours, theirs in zip(on_cuda, run("cpu")):
        assert_close(ours.cpu(), theirs, rtol=1e-4, atol=1e-5)


@cuda
def test_compiled_fair_loss_on_cuda_never_syncs(no_sync: None) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(fair_loss, fullgraph=True)
    logits = torch.randn(64, 1000, device="cuda") * 0.05
    target = torch.randint(0, 1000, (64,), device="cuda")
    torch.cuda.set_sync_debug_mode("default")  # compiling itself may sync; its result may not
    _value_and_grad(compiled, logits, target, {})
    torch.cuda.set_sync_debug_mode("error")
    value, grad = _value_and_grad(compiled, logits, target, {})
    torch.cuda.set_sync_debug_mode("default")
    eager_value, eager_grad = _value_and_grad(fair_loss, logits, target, {})
    assert_close(value, eager_value, rtol=1e-5, atol=1e-6)
    assert_close(grad, eager_grad, rtol=1e-5, atol=1e-6)
