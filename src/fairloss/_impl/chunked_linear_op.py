"""The chunked linear head under ``torch.compile``: one custom operator per direction.

Traced, :class:`fairloss._impl.chunked_linear.LinearFairLossFunction`'s Python loop over the
chunks is unrolled into the graph, one copy per chunk, and compile time grows with the number of
chunks (on this project's 2-core CPU, 1024 rows x 1000 classes took 35 s to compile and run in 4
chunks, 368 s in 64). So under ``torch.compile`` the same loop
(:func:`~fairloss._impl.chunked_linear.chunked_forward`,
:func:`~fairloss._impl.chunked_linear.chunked_backward`) runs inside the operators
``fairloss::linear_fair_loss`` and ``fairloss::linear_fair_loss_backward``, which the compiler
treats as opaque calls: compilation no longer depends on the number of chunks (the same 64
chunks: 18 s) and the compiled result is the eager one.

An operator's schema takes tensors, numbers, strings and lists of them, not the options object:
:func:`pack` flattens the options and settings into a list of numbers (and the implementation's
name), :func:`unpack` rebuilds them inside. For a summed loss the forward operator also returns
the gradients it computed along the way (for an upstream gradient of 1, the weight's and bias's
in the compute dtype), and backward scales them; for per-row losses backward recomputes each
chunk. Gradients the call does not need come back as empty tensors.

This module deliberately has no ``from __future__ import annotations``: ``custom_op`` reads the
operator schemas from the annotations.
"""

from typing import Any, Optional

import torch
from torch import Tensor

from fairloss._impl import dense, sparse
from fairloss._impl.chunked_linear import (
    ChunkedSettings,
    Head,
    chunked_backward,
    chunked_forward,
)
from fairloss._penalty import compute_dtype
from fairloss._validation import FairLossOptions

__all__ = ["linear_fair_loss_compiled", "pack", "unpack"]

_IMPLEMENTATIONS = {
    implementation.name: implementation
    for implementation in (sparse.IMPLEMENTATION, dense.IMPLEMENTATION)
}


def pack(options: FairLossOptions, settings: ChunkedSettings) -> list[float]:
    """The options and settings as numbers (``softcap`` None as 0; it is positive otherwise)."""
    assert options.penalty_scale is not None  # resolved for a single-device head
    return [
        float(options.ignore_index), options.label_smoothing, options.smooth_max_beta,
        options.scaling_factor, options.penalty_scale, options.z_loss_scale,
        options.softcap or 0.0, float(settings.chunk_size), float(settings.summed),
        float(settings.count_correct),
    ]  # fmt: skip


def unpack(
    numbers: list[float], implementation_name: str, grad_enabled: bool = True
) -> tuple[FairLossOptions, ChunkedSettings]:
    """The options and settings :func:`pack` flattened."""
    (
        ignore_index, label_smoothing, beta, scale, penalty_scale, z_loss_scale, softcap,
        chunk_size, summed, count_correct,
    ) = numbers  # fmt: skip
    options = FairLossOptions(
        ignore_index=int(ignore_index),
        label_smoothing=label_smoothing,
        smooth_max_beta=beta,
        scaling_factor=scale,
        penalty_scale=penalty_scale,
        z_loss_scale=z_loss_scale,
        softcap=softcap or None,
    )
    settings = ChunkedSettings(
        implementation=_IMPLEMENTATIONS[implementation_name],
        chunk_size=int(chunk_size),
        summed=bool(summed),
        grad_enabled=grad_enabled,
        count_correct=bool(count_correct),
    )
    return options, settings


def _or_empty(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if grad is None else grad


@torch.library.custom_op("fairloss::linear_fair_loss", mutates_args=())
def _forward_op(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    numbers: list[float],
    implementation_name: str,
    needs_grad: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(loss, correct, grad_input, grad_weight, grad_bias)``, gradients for a summed loss."""
    options, settings = unpack(numbers, implementation_name)
    head = Head.for_settings((input, linear_weight, linear_bias, target), options, settings)
    result = chunked_forward(
        head, weight, options, settings, (needs_grad[0], needs_grad[1], needs_grad[2])
    )
    grads: tuple[Optional[Tensor], ...] = (None, None, None)
    if result.gradients is not None:  # scaled in backward, in the compute dtype, as eagerly
        grads = result.gradients.unscaled()
    grad_input, grad_weight, grad_bias = (_or_empty(grad, input) for grad in grads)
    return result.loss, result.correct, grad_input, grad_weight, grad_bias


@_forward_op.register_fake
def _forward_fake(
    input: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor], *arguments: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    numbers, _, needs_grad = arguments[-3:]
    dtype = compute_dtype(input.dtype)
    summed = bool(numbers[-2])  # grads are computed for a summed loss (needs_grad says grad mode)
    loss = input.new_empty(() if summed else (input.shape[0],), dtype=dtype)
    grads = _empty_gradients((input, linear_weight, linear_bias), needs_grad, summed, dtype)
    return loss, input.new_empty((), dtype=torch.long), *grads


def _empty_gradients(
    tensors: tuple[Tensor, Tensor, Optional[Tensor]],
    needs_grad: list[bool],
    computed: bool,
    dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients' shapes as the operators return them (empty where not computed)."""
    input = tensors[0]
    grads = [
        torch.empty_like(tensor, dtype=dtype if position else input.dtype)
        if computed and needed and tensor is not None
        else input.new_empty(0)
        for position, (tensor, needed) in enumerate(zip(tensors, needs_grad))
    ]
    return grads[0], grads[1], grads[2]


@torch.library.custom_op("fairloss::linear_fair_loss_backward", mutates_args=())
def _backward_op(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    grad_output: Tensor,
    numbers: list[float],
    implementation_name: str,
    needs_grad: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_input, grad_weight, grad_bias)``, each chunk's logits recomputed."""
    options, settings = unpack(numbers, implementation_name)
    head = Head.for_settings((input, linear_weight, linear_bias, target), options, settings)
    needs = (needs_grad[0], needs_grad[1], needs_grad[2])
    grads = chunked_backward(head, weight, options, settings, needs, grad_output, None)
    return _or_empty(grads[0], input), _or_empty(grads[1], input), _or_empty(grads[2], input)


@_backward_op.register_fake
def _backward_fake(
    input: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor], *arguments: Any
) -> tuple[Tensor, Tensor, Tensor]:
    return _empty_gradients((input, linear_weight, linear_bias), arguments[-1], True)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    input, linear_weight, linear_bias, target, weight, numbers, name, needs_grad = inputs
    ctx.arguments = (numbers, name, needs_grad)
    ctx.ignore_index = int(numbers[0])
    ctx.grads_computed = output[2].numel() + output[3].numel() + output[4].numel() > 0
    ctx.has_bias = linear_bias is not None
    ctx.save_for_backward(input, linear_weight, linear_bias, target, weight, *output[2:])


def _backward(ctx: Any, grad_output: Tensor, *unused: Any) -> tuple[Optional[Tensor], ...]:
    input, linear_weight, linear_bias, target, weight, *precomputed = ctx.saved_tensors
    numbers, name, needs_grad = ctx.arguments
    needs = [flag and wanted for flag, wanted in zip(needs_grad, ctx.needs_input_grad[:3])]
    if ctx.grads_computed:
        # Forward's gradients are for an upstream gradient of 1. Without a counted row they are 0,
        # and stay 0 where an all-ignored "mean" brings 1 / 0.
        scale = torch.where((target != ctx.ignore_index).any(), grad_output, 0.0)
        grads = [(grad * scale.to(grad.dtype)).to(input.dtype) for grad in precomputed]
    else:
        grads = list(
            _backward_op(
                input, linear_weight, linear_bias, target, weight, grad_output, numbers, name,
                needs,
            )
        )  # fmt: skip
    grad_input = grads[0] if needs[0] else None
    grad_weight = grads[1] if needs[1] else None
    grad_bias = grads[2] if needs[2] and ctx.has_bias else None
    return grad_input, grad_weight, grad_bias, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def linear_fair_loss_compiled(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    settings: ChunkedSettings,
) -> tuple[Tensor, Tensor]:
    """What ``LinearFairLossFunction.apply`` returns, through the operators (for compiling).

    ``settings.implementation`` is the eager one (``"sparse"`` or ``"dense"``): it runs inside
    the operators.
    """
    grad_enabled = torch.is_grad_enabled()
    needs_grad = [
        grad_enabled and tensor is not None and tensor.requires_grad
        for tensor in (input, linear_weight, linear_bias)
    ]
    outputs = _forward_op(
        input, linear_weight, linear_bias, target, weight, pack(options, settings),
        settings.implementation.name, needs_grad,
    )  # fmt: skip
    return outputs[0], outputs[1]
