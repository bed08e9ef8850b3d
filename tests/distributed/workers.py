"""What each rank runs: many cases in one process group, each compared on the rank itself.

The oracle on every rank is single-process :func:`fairloss.fair_loss` of the gathered logits
(``impl="composite"``, float64; ``impl="dense"`` as well for values), and for the linear head
:func:`fairloss.linear_fair_loss` of the whole head (``impl="composite"``, and the chunked
default). Mismatches are recorded as strings, never raised (see :mod:`tests.distributed.harness`).
World size 2 also runs DDP, FSDP2, the tensor-parallel example and the synced metrics
(:mod:`tests.distributed.metric_workers`) in the same processes.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fairloss import FairLoss, fair_loss, linear_fair_loss
from fairloss.distributed import (
    vocab_parallel_fair_loss,
    vocab_parallel_linear_fair_loss,
)
from tests.distributed.harness import Report, init_gloo, slice_bounds
from tests.distributed.metric_workers import check_synced_metrics

NUM_CLASSES = 7
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tensor_parallel.py"

# Options of the logits version; "weight": True means random class weights.
LOGITS_CASES: list[dict[str, Any]] = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"ignore_index": 4},
    {"ignore_index": 4, "reduction": "none"},
    {"weight": True},
    {"weight": True, "reduction": "none"},
    {"weight": True, "reduction": "sum"},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": True},
    {"label_smoothing": 1.0, "reduction": "none"},
    {"penalty_scale": 0.5},
    {"penalty_scale": 0.0, "reduction": "none"},
    {"scaling_factor": 0.0, "weight": True},
    {"smooth_max_beta": 1.0, "scaling_factor": 1.0},
    {"smooth_max_beta": 1.0, "scaling_factor": 1.0, "weight": True, "reduction": "none"},
    {"smooth_max_beta": 10.0, "scaling_factor": 10.0},
    {"smooth_max_beta": 10.0, "scaling_factor": 10.0, "label_smoothing": 0.1, "reduction": "sum"},
    {"smooth_max_beta": 10.0, "scaling_factor": 1000.0},
    {"z_loss_scale": 0.01},
    {"z_loss_scale": 0.1, "weight": True, "label_smoothing": 0.1, "reduction": "none"},
    {
        "weight": True,
        "label_smoothing": 0.1,
        "penalty_scale": 2.0,
        "smooth_max_beta": 10.0,
        "scaling_factor": 10.0,
        "ignore_index": 4,
        "z_loss_scale": 0.05,
    },
]

LINEAR_CASES: list[dict[str, Any]] = [
    {},
    {"reduction": "none"},
    {"reduction": "sum", "chunk_size": 1, "bias": False},
    {"weight": True, "label_smoothing": 0.1, "z_loss_scale": 0.01, "chunk_size": 3},
    {"smooth_max_beta": 10.0, "scaling_factor": 10.0, "chunk_size": 4, "reduction": "none"},
    {"smooth_max_beta": 1.0, "scaling_factor": 1.0, "ignore_index": 2, "weight": True},
    {"softcap": 1.5, "reduction": "none", "chunk_size": 2},
    {
        "softcap": 0.8,
        "weight": True,
        "label_smoothing": 0.1,
        "z_loss_scale": 0.01,
        "ignore_index": 2,
        "smooth_max_beta": 10.0,
        "scaling_factor": 10.0,
    },
]

DTENSOR_CASES: list[dict[str, Any]] = [
    {},
    {"weight": True, "label_smoothing": 0.1, "reduction": "none"},
    {"smooth_max_beta": 10.0, "scaling_factor": 10.0, "z_loss_scale": 0.01, "reduction": "sum"},
]


class Failures(list[str]):
    """Mismatch messages of one section; ``check`` compares without raising."""

    def check(
        self,
        name: str,
        actual: Optional[Tensor],
        expected: Optional[Tensor],
        rtol: float = 1e-12,
        atol: float = 1e-14,
    ) -> None:
        if actual is None or expected is None:
            self.append(f"{name}: missing ({actual=}, {expected=})")
            return
        try:
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as error:
            self.append(f"{name}: {error}")


def gathered(tensor: Optional[Tensor]) -> Optional[Tensor]:
    """A DTensor gathered (``full_tensor``); a plain tensor as it is."""
    gather = getattr(tensor, "full_tensor", None)
    return tensor if gather is None else gather()


def head_weight(model: nn.Module) -> Tensor:
    """The output layer's weight, gathered if sharded, detached."""
    weight = model.get_submodule("out").weight
    assert isinstance(weight, Tensor)
    whole = gathered(weight)
    assert whole is not None
    return whole.detach()


def logits_data(sizes: tuple[int, ...], seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random float64 logits with ties and near-ties between the first and the last slice.

    Rows 0-3 put the maximum on one rank and the target on another, 4e-7 apart or tied; row 4 has
    them 1e-3 apart (an unsaturated penalty at beta = s = 1000); rows 5 and 6 are ignored.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(12, NUM_CLASSES, generator=generator, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (12,), generator=generator)
    first, last = 1, sum(sizes[:-1]) + sizes[-1] - 1  # on the first and on the last rank
    near = [(0, 4e-7, last), (1, -4e-7, first), (2, 0.0, last), (3, 0.0, first), (4, 1e-3, last)]
    for row, below, row_target in near:
        logits[row, first] = logits[row].max() + 2.0
        logits[row, last] = logits[row, first] - below
        target[row] = row_target
    target[5:7] = -100
    return logits, target, torch.rand(NUM_CLASSES, generator=generator, dtype=torch.float64) + 0.5


def _options(case: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    options = {key: value for key, value in case.items() if key not in ("weight", "bias")}
    return options, bool(case.get("weight", False))


def _with_ignore_index(target: Tensor, options: dict[str, Any]) -> Tensor:
    """The ignored targets (-100 in the data) set to the case's ``ignore_index``."""
    return torch.where(target == -100, options.get("ignore_index", -100), target)


def check_logits_cases(rank: int, sizes: tuple[int, ...]) -> tuple[Failures, int]:
    failures, count = Failures(), 0
    mine = slice_bounds(sizes, rank)
    datasets = {"near ties": logits_data(sizes)}
    big, big_target, big_weight = logits_data(sizes, seed=1)
    datasets["saturated"] = (200 * big, big_target, big_weight)
    datasets["all ignored"] = (big, torch.full_like(big_target, -100), big_weight)
    for data_name, (logits, data_target, class_weight) in datasets.items():
        for case in LOGITS_CASES:
            options, weighted = _options(case)
            if data_name == "all ignored" and options.get("ignore_index", -100) != -100:
                continue
            name = f"{data_name} {case}"
            target = _with_ignore_index(data_target, options)
            weight = class_weight if weighted else None
            full = logits.clone().requires_grad_()
            expected = fair_loss(full, target, weight, impl="composite", **options)
            dense = fair_loss(logits, target, weight, impl="dense", **options)
            upstream = torch.linspace(-1.0, 2.0, expected.numel(), dtype=torch.float64)
            (expected * upstream.reshape(expected.shape)).sum().backward()
            assert full.grad is not None

            local = logits[:, mine].clone().requires_grad_()
            local_weight = None if weight is None else weight[mine]
            loss = vocab_parallel_fair_loss(local, target, weight=local_weight, **options)
            (loss * upstream.reshape(loss.shape)).sum().backward()
            failures.check(f"{name} value", loss, expected)
            failures.check(f"{name} value vs dense", loss, dense)
            failures.check(f"{name} gradient", local.grad, full.grad[:, mine])
            count += 1
    # a rank without classes: (0, 7) on two ranks, (3, 0, 4) on three
    empty_sizes = (0, NUM_CLASSES) if len(sizes) == 2 else (3, 0, NUM_CLASSES - 3)
    logits, target, class_weight = logits_data(empty_sizes, seed=3)
    mine_or_empty = slice_bounds(empty_sizes, rank)
    for case in ({}, {"weight": True, "label_smoothing": 0.1, "z_loss_scale": 0.1}):
        options, weighted = _options(case)
        weight = class_weight if weighted else None
        full = logits.clone().requires_grad_()
        expected = fair_loss(full, target, weight, impl="composite", reduction="none", **options)
        upstream = torch.linspace(-1.0, 2.0, expected.numel(), dtype=torch.float64)
        (expected * upstream).sum().backward()
        local = logits[:, mine_or_empty].clone().requires_grad_()
        local_weight = None if weight is None else weight[mine_or_empty]
        loss = vocab_parallel_fair_loss(
            local, target, weight=local_weight, reduction="none", **options
        )
        (loss * upstream).sum().backward()
        failures.check(f"empty slice {case} value", loss, expected)
        assert full.grad is not None
        failures.check(f"empty slice {case} gradient", local.grad, full.grad[:, mine_or_empty])
        count += 1
    # float32 logits: computed in float32, as on one device
    logits, target, _ = logits_data(sizes, seed=2)
    single = logits.float()
    local = single[:, mine].clone().requires_grad_()
    full = single.clone().requires_grad_()
    fair_loss(full, target, smooth_max_beta=10.0, scaling_factor=10.0).backward()
    loss = vocab_parallel_fair_loss(local, target, smooth_max_beta=10.0, scaling_factor=10.0)
    loss.backward()
    expected = fair_loss(single, target, smooth_max_beta=10.0, scaling_factor=10.0)
    if loss.dtype != torch.float32 or local.grad is None or local.grad.dtype != torch.float32:
        failures.append("float32: the result or the gradient is not float32")
    failures.check("float32 value", loss, expected, rtol=1e-5, atol=1e-6)
    assert full.grad is not None and local.grad is not None
    failures.check("float32 gradient", local.grad, full.grad[:, mine], rtol=1e-5, atol=1e-6)
    # bfloat16 logits: computed in float32, returned in bfloat16, as on one device
    half = logits.bfloat16()
    local = half[:, mine].clone().requires_grad_()
    full = half.clone().requires_grad_()
    fair_loss(full, target, label_smoothing=0.1).backward()
    loss = vocab_parallel_fair_loss(local, target, label_smoothing=0.1)
    loss.backward()
    if loss.dtype != torch.bfloat16 or local.grad is None or local.grad.dtype != torch.bfloat16:
        failures.append("bfloat16: the result or the gradient is not bfloat16")
    expected = fair_loss(half, target, label_smoothing=0.1)
    failures.check("bfloat16 value", loss, expected, rtol=1e-2, atol=1e-2)
    assert full.grad is not None and local.grad is not None
    failures.check("bfloat16 gradient", local.grad, full.grad[:, mine], rtol=1e-2, atol=1e-3)
    return failures, count + 2


def _draw(generator: torch.Generator, choices: list[Any]) -> Any:
    return choices[int(torch.randint(len(choices), (1,), generator=generator))]


def check_random_cases(rank: int, world_size: int, count: int = 40) -> tuple[Failures, int]:
    """Random vocabularies split at random (slices of 0 included), batches (empty included),
    logit scales and options, drawn alike on every rank from one seed; logits and linear.

    The gradients' absolute tolerance is 1e-12: with one class and s = 1000 the penalty's two
    gradient terms, each up to s / 2 = 500, cancel, leaving a few units in the last place of 500.
    """
    failures = Failures()
    generator = torch.Generator().manual_seed(7)
    for index in range(count):
        num_classes = int(torch.randint(1, 14, (1,), generator=generator))
        cuts = torch.randint(0, num_classes + 1, (world_size - 1,), generator=generator)
        bounds = [0, *sorted(int(cut) for cut in cuts), num_classes]
        sizes = tuple(bounds[r + 1] - bounds[r] for r in range(world_size))
        mine = slice_bounds(sizes, rank)
        rows = int(torch.randint(0, 10, (1,), generator=generator))
        scale = _draw(generator, [0.1, 3.0, 100.0])
        logits = scale * torch.randn(rows, num_classes, generator=generator, dtype=torch.float64)
        target = torch.randint(0, num_classes, (rows,), generator=generator)
        target[torch.rand(rows, generator=generator) < 0.2] = -100
        class_weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.1
        beta_and_s = _draw(generator, [1.0, 10.0, 1000.0])
        options: dict[str, Any] = {
            "reduction": _draw(generator, ["mean", "sum", "none"]),
            "label_smoothing": _draw(generator, [0.0, 0.0, 0.1]),
            "smooth_max_beta": beta_and_s,
            "scaling_factor": _draw(generator, [beta_and_s, 1000.0]),
            "penalty_scale": _draw(generator, [None, None, 0.3]),
            "z_loss_scale": _draw(generator, [0.0, 0.0, 0.01]),
        }
        weight = _draw(generator, [None, class_weight])
        name = f"random {index}: sizes {sizes}, {rows} rows, scale {scale}, {options}"
        full = logits.clone().requires_grad_()
        expected = fair_loss(full, target, weight, impl="composite", **options)
        upstream = torch.linspace(-1.0, 2.0, expected.numel(), dtype=torch.float64)
        (expected * upstream.reshape(expected.shape)).sum().backward()
        local = logits[:, mine].clone().requires_grad_()
        local_weight = None if weight is None else weight[mine]
        loss = vocab_parallel_fair_loss(local, target, weight=local_weight, **options)
        (loss * upstream.reshape(loss.shape)).sum().backward()
        failures.check(f"{name} value", loss, expected)
        assert full.grad is not None
        failures.check(f"{name} gradient", local.grad, full.grad[:, mine], atol=1e-12)
        # the same logits from a linear head: the identity matrix, the logits as its input
        head = torch.eye(num_classes, dtype=torch.float64)
        hidden = logits.clone().requires_grad_()
        linear_loss = vocab_parallel_linear_fair_loss(
            hidden, head[mine], target, weight=local_weight, chunk_size=3, **options
        )
        (linear_loss * upstream.reshape(linear_loss.shape)).sum().backward()
        failures.check(f"{name} linear value", linear_loss, expected)
        failures.check(f"{name} linear input gradient", hidden.grad, full.grad, atol=1e-12)
    return failures, count


def check_out_of_range_target(rank: int, sizes: tuple[int, ...]) -> Failures:
    """A class index >= V raises ValueError on every rank, after round 1 (V is known there)."""
    failures = Failures()
    logits, target, _ = logits_data(sizes)
    target = target.clone()
    target[8] = NUM_CLASSES
    try:
        vocab_parallel_fair_loss(logits[:, slice_bounds(sizes, rank)], target)
        failures.append("an out-of-range target did not raise")
    except ValueError as error:
        if "Expected argument `target`" not in str(error) or f"[0, {NUM_CLASSES})" not in str(
            error
        ):
            failures.append(f"unexpected message: {error}")
    return failures


def check_linear_cases(rank: int, sizes: tuple[int, ...]) -> tuple[Failures, int]:
    failures, count = Failures(), 0
    mine = slice_bounds(sizes, rank)
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    head = torch.randn(NUM_CLASSES, 4, generator=generator, dtype=torch.float64)
    bias = torch.randn(NUM_CLASSES, generator=generator, dtype=torch.float64)
    class_weight = torch.rand(NUM_CLASSES, generator=generator, dtype=torch.float64) + 0.5
    data_target = torch.randint(0, NUM_CLASSES, (2, 5), generator=generator)
    data_target[0, 1] = data_target[1, 3] = -100
    data_target[1, 0] = 2  # the ignore_index of one case
    for case in LINEAR_CASES:
        options, weighted = _options(case)
        chunk_size = options.pop("chunk_size", None)
        with_bias = case.get("bias", True)
        target = _with_ignore_index(data_target, options)
        weight = class_weight if weighted else None
        full_input = hidden.clone().requires_grad_()
        full_head = head.clone().requires_grad_()
        full_bias = bias.clone().requires_grad_() if with_bias else None
        expected = linear_fair_loss(
            full_input, full_head, target, linear_bias=full_bias, weight=weight,
            impl="composite", **options,
        )  # fmt: skip
        upstream = torch.linspace(-1.0, 2.0, expected.numel(), dtype=torch.float64)
        (expected * upstream.reshape(expected.shape)).sum().backward()
        # the single-device chunked head, as the user would call it
        single_leaves = [hidden.clone().requires_grad_(), head.clone().requires_grad_()]
        if with_bias:
            single_leaves.append(bias.clone().requires_grad_())
        single = linear_fair_loss(
            single_leaves[0], single_leaves[1], target,
            linear_bias=single_leaves[2] if with_bias else None, weight=weight,
            chunk_size=chunk_size, **options,
        )  # fmt: skip
        (single * upstream.reshape(single.shape)).sum().backward()

        local_input = hidden.clone().requires_grad_()
        local_head = head[mine].clone().requires_grad_()
        local_bias = bias[mine].clone().requires_grad_() if with_bias else None
        loss = vocab_parallel_linear_fair_loss(
            local_input,
            local_head,
            target,
            local_linear_bias=local_bias,
            weight=None if weight is None else weight[mine],
            chunk_size=chunk_size,
            **options,
        )
        (loss * upstream.reshape(loss.shape)).sum().backward()
        name = f"linear {case}"
        failures.check(f"{name} value", loss, expected)
        failures.check(f"{name} value vs linear_fair_loss", loss, single)
        assert full_input.grad is not None and full_head.grad is not None
        failures.check(f"{name} input gradient", local_input.grad, full_input.grad)
        failures.check(f"{name} weight gradient", local_head.grad, full_head.grad[mine])
        single_grads = [leaf.grad for leaf in single_leaves]
        failures.check(f"{name} input gradient vs linear_fair_loss", local_input.grad,
                       single_grads[0])  # fmt: skip
        head_grad = single_grads[1]
        failures.check(f"{name} weight gradient vs linear_fair_loss", local_head.grad,
                       None if head_grad is None else head_grad[mine])  # fmt: skip
        if full_bias is not None and local_bias is not None:
            assert full_bias.grad is not None
            failures.check(f"{name} bias gradient", local_bias.grad, full_bias.grad[mine])
            bias_grad = single_grads[2]
            failures.check(f"{name} bias gradient vs linear_fair_loss", local_bias.grad,
                           None if bias_grad is None else bias_grad[mine])  # fmt: skip
        count += 1
    return failures, count


def check_dtensor_cases(world_size: int) -> tuple[Failures, int]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    failures, count = Failures(), 0
    mesh = init_device_mesh("cpu", (world_size,))
    logits, target, class_weight = logits_data((4, 3))  # DTensor splits as torch.chunk does
    for case in DTENSOR_CASES:
        options, weighted = _options(case)
        weight = class_weight if weighted else None
        full = logits.clone().requires_grad_()
        expected = fair_loss(full, target, weight, impl="composite", **options)
        upstream = torch.linspace(-1.0, 2.0, expected.numel(), dtype=torch.float64)
        (expected * upstream.reshape(expected.shape)).sum().backward()
        sharded = distribute_tensor(logits, mesh, [Shard(1)]).requires_grad_()
        loss = fair_loss(sharded, target, weight, **options)
        (loss * upstream.reshape(loss.shape)).sum().backward()
        failures.check(f"DTensor {case} value", loss, expected)
        assert sharded.grad is not None and full.grad is not None
        failures.check(f"DTensor {case} gradient", gathered(sharded.grad), full.grad)
        count += 1
    replicated = distribute_tensor(logits, mesh, [Replicate()])
    try:
        fair_loss(replicated, target)
        failures.append("a replicated DTensor did not raise")
    except ValueError as error:
        if "Shard(1)" not in str(error):
            failures.append(f"unexpected message for a replicated DTensor: {error}")
    return failures, count


def check_fair_loss_dispatch(world_size: int) -> dict[str, Any]:
    """``fairloss.fair_loss`` (and ``FairLoss``) on DTensor logits equal the gathered logits'."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world_size,))
    logits, target, class_weight = logits_data((4, 3))
    full = logits.clone().requires_grad_()
    expected = fair_loss(full, target, class_weight, impl="composite", label_smoothing=0.1)
    expected.backward()
    sharded = distribute_tensor(logits, mesh, [Shard(1)]).requires_grad_()
    loss = fair_loss(sharded, target, class_weight, label_smoothing=0.1)
    module_loss = FairLoss(class_weight, label_smoothing=0.1)(sharded.detach(), target)
    failures = Failures()
    loss.backward()
    failures.check("fair_loss(DTensor) value", gathered(loss), expected)
    failures.check("FairLoss()(DTensor) value", gathered(module_loss), expected.detach())
    assert sharded.grad is not None and full.grad is not None
    failures.check("fair_loss(DTensor) gradient", gathered(sharded.grad), full.grad)
    return {"failures": failures}


def _tiny_model(num_classes: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers = OrderedDict(hidden=nn.Linear(5, 8), act=nn.Tanh(), out=nn.Linear(8, num_classes))
    return nn.Sequential(layers).double()


def _sgd_losses(
    model: nn.Module, loss_of: Callable[[nn.Module], Tensor], steps: int = 4
) -> list[Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def check_tensor_parallel_training(world_size: int) -> Failures:
    """parallelize_module + FairLoss on the DTensor logits = the unsharded model, step by step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    failures = Failures()
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(4, 4, 5, generator=generator, dtype=torch.float64)  # (batch, sequence)
    target = torch.randint(0, NUM_CLASSES, (4, 4), generator=generator)
    target[1, 3] = -100
    tokens = target.view(-1)
    options: dict[str, Any] = {
        "smooth_max_beta": 10.0,
        "scaling_factor": 10.0,
        "label_smoothing": 0.05,
    }
    reference = _tiny_model(NUM_CLASSES)
    expected = _sgd_losses(
        reference, lambda m: fair_loss(m(inputs).view(-1, NUM_CLASSES), tokens, **options)
    )
    mesh = init_device_mesh("cpu", (world_size,))
    parallel = parallelize_module(
        _tiny_model(NUM_CLASSES), mesh, {"out": ColwiseParallel(use_local_output=False)}
    )
    # (batch, sequence, C) logits placed Shard(2); viewed as (tokens, C), placed Shard(1)
    losses = _sgd_losses(
        parallel,
        lambda m: fair_loss(m(inputs).view(-1, NUM_CLASSES), tokens, **options),
    )
    failures.check("tensor-parallel losses", torch.stack(losses), torch.stack(expected))
    failures.check(
        "tensor-parallel head after training", head_weight(parallel), head_weight(reference)
    )
    if torch.allclose(expected[0], expected[-1]):
        failures.append("training did not change the loss: the comparison proves nothing")
    return failures


def _data_parallel_losses(
    wrap: Callable[[nn.Module], nn.Module], rank: int, world_size: int
) -> tuple[list[Tensor], nn.Module, list[Tensor], nn.Module]:
    """A data-parallel run on this rank's half of the batch, and the full-batch run."""
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(8 * world_size, 5, generator=generator, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (8 * world_size,), generator=generator)
    mine = slice(8 * rank, 8 * (rank + 1))
    criterion = FairLoss(smooth_max_beta=10.0, scaling_factor=10.0)
    reference = _tiny_model(NUM_CLASSES)
    expected = _sgd_losses(reference, lambda m: criterion(m(inputs), target))
    model = wrap(_tiny_model(NUM_CLASSES))

    def shard_loss(m: nn.Module) -> Tensor:
        return criterion(m(inputs[mine]), target[mine])

    losses = _sgd_losses(model, shard_loss)
    return losses, model, expected, reference


def _mean_over_ranks(values: list[Tensor]) -> Tensor:
    stacked = torch.stack(values)
    dist.all_reduce(stacked)
    return stacked / dist.get_world_size()


def check_ddp(rank: int, world_size: int) -> Failures:
    from torch.nn.parallel import DistributedDataParallel

    failures = Failures()
    losses, model, expected, reference = _data_parallel_losses(
        DistributedDataParallel, rank, world_size
    )
    failures.check("DDP mean loss per step", _mean_over_ranks(losses), torch.stack(expected))
    trained = head_weight(model.get_submodule("module"))
    failures.check("DDP head after training", trained, head_weight(reference))
    return failures


def check_fsdp(rank: int, world_size: int) -> dict[str, Any]:
    """FSDP2's ``fully_shard`` on CPU/gloo; a skip reason if this torch cannot run it."""
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as error:
        return {"skip": f"torch.distributed.fsdp.fully_shard is not available: {error}"}

    mesh = init_device_mesh("cpu", (world_size,))

    def wrap(model: nn.Module) -> nn.Module:
        fully_shard(model, mesh=mesh)
        return model

    try:
        losses, model, expected, reference = _data_parallel_losses(wrap, rank, world_size)
    except Exception as error:
        return {"skip": f"fully_shard does not train on CPU/gloo in this torch: {error!r:.300}"}
    failures = Failures()
    failures.check("FSDP2 mean loss per step", _mean_over_ranks(losses), torch.stack(expected))
    failures.check("FSDP2 head after training", head_weight(model), head_weight(reference))
    return {"failures": failures}


def check_example(rank: int, world_size: int, port: int) -> Failures:
    """The example's ``main``, started as torchrun would, against its ``train(None)``."""
    failures = Failures()
    spec = importlib.util.spec_from_file_location("tensor_parallel_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    losses = example.main()
    expected = example.train(None)
    failures.check("example losses", torch.tensor(losses), torch.tensor(expected), rtol=1e-6)
    if len(losses) != example.STEPS or losses[0] == losses[-1]:
        failures.append(f"the example did not train: {losses}")
    return failures


def vocab_parallel_worker(
    rank: int, world_size: int, directory: str, sizes: tuple[int, ...], port: Optional[int]
) -> Report:
    """Every check for one world size, in one process group; ``port`` runs the extras too (DDP,
    FSDP2, the synced metrics, then the example in its own group)."""
    init_gloo(rank, world_size, str(Path(directory) / "init"))
    report: Report = {}
    try:
        report["logits"], report["logits cases"] = check_logits_cases(rank, sizes)
        report["out of range"] = check_out_of_range_target(rank, sizes)
        report["random"], report["random cases"] = check_random_cases(rank, world_size)
        report["linear"], report["linear cases"] = check_linear_cases(rank, sizes)
        report["dtensor"], report["dtensor cases"] = check_dtensor_cases(world_size)
        report["dispatch"] = check_fair_loss_dispatch(world_size)
        report["tensor parallel"] = check_tensor_parallel_training(world_size)
        if port is not None:
            report["ddp"] = check_ddp(rank, world_size)
            report["fsdp"] = check_fsdp(rank, world_size)
            report["metrics"] = check_synced_metrics(rank, world_size)
    finally:
        dist.destroy_process_group()
    if port is not None:
        report["example"] = check_example(rank, world_size, port)
    return report
