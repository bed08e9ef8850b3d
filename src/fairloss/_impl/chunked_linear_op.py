"""The chunked linear head under ``torch.compile``: one custom operator per direction.

Traced, :class:`fairloss._impl.chunked_linear.LinearFairLossFunction`'s Python loop over the
chunks is unrolled into the graph, one copy per chunk, and compile time grows with the number of
chunks (an LM head's 8192 rows make 64 at the default chunk size): on this project's 2-core CPU,
1024 rows x 1000 classes took 35 s to compile and run in 4 chunks, 368 s in 64. So under
``torch.compile`` the same loop
(:func:`~fairloss._impl.chunked_linear.chunked_forward`,
:func:`~fairloss._impl.chunked_linear.chunked_backward`) runs inside the operators
``fairloss::linear_fair_loss`` and ``fairloss::linear_fair_loss_backward``, which the compiler
treats as opaque calls: compilation no longer depends on the number of chunks (the same 64
chunks: 18 s) and the compiled result is the eager one.

For a summed loss the forward operator also returns the gradients it computed along the way
(for an upstream gradient of 1, the weight's and bias's in the compute dtype), and backward
scales them; for per-row losses backward recomputes each chunk. Gradients the call
does not need come back as empty tensors.

This module deliberately has no ``from __future__ import annotations``: ``custom_op`` reads the
operator schemas from the annotations.
"""

from typing import Any, Optional

import torch
from torch import Tensor

from fairloss._impl import dense, sparse
from fairloss._impl.chunked_linear import (
    LinearFairLossSettings,
    chunked_backward,
    chunked_forward,
)
from fairloss._penalty import FairLossOptions, compute_dtype

__all__ = ["linear_fair_loss_compiled"]

_IMPLEMENTATIONS = {
    implementation.name: implementation
    for implementation in (sparse.IMPLEMENTATION, dense.IMPLEMENTATION)
}


def _settings(
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
    summed: bool,
    chunk_size: int,
    softcap: Optional[float],
    z_loss_scale: float,
    count_correct: bool,
    implementation_name: str,
) -> LinearFairLossSettings:
    """The settings an operator's flat arguments stand for (eager inside: rows may be dropped)."""
    implementation = _IMPLEMENTATIONS[implementation_name]
    options = FairLossOptions(
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        probability_target=False,
    )
    return LinearFairLossSettings(
        options=options,
        implementation=implementation,
        drop_ignored_rows=implementation.synchronizes,
        summed=summed,
        chunk_size=chunk_size,
        grad_enabled=True,
        softcap=softcap,
        z_loss_scale=z_loss_scale,
        count_correct=count_correct,
    )


def _or_empty(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if grad is None else grad


@torch.library.custom_op("fairloss::linear_fair_loss", mutates_args=())
def _forward_op(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
    summed: bool,
    chunk_size: int,
    softcap: Optional[float],
    z_loss_scale: float,
    count_correct: bool,
    implementation_name: str,
    needs_input_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(loss, correct, grad_input, grad_weight, grad_bias)``, gradients for a summed loss."""
    settings = _settings(
        ignore_index, label_smoothing, smooth_max_beta, scaling_factor, penalty_scale, summed,
        chunk_size, softcap, z_loss_scale, count_correct, implementation_name,
    )  # fmt: skip
    needs_grad = (needs_input_grad, needs_weight_grad, needs_bias_grad)
    result = chunked_forward(
        input, linear_weight, linear_bias, target, weight, settings, needs_grad
    )
    grads: tuple[Optional[Tensor], ...] = (None, None, None)
    if result.gradients is not None:  # scaled in backward, in the compute dtype, as eagerly
        grads = result.gradients.unscaled()
    return (
        result.loss,
        result.correct,
        _or_empty(grads[0], input),
        _or_empty(grads[1], input),
        _or_empty(grads[2], input),
    )


@_forward_op.register_fake
def _forward_fake(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
    summed: bool,
    chunk_size: int,
    softcap: Optional[float],
    z_loss_scale: float,
    count_correct: bool,
    implementation_name: str,
    needs_input_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dtype = compute_dtype(input.dtype)
    loss = input.new_empty(() if summed else (input.shape[0],), dtype=dtype)
    correct = input.new_empty((), dtype=torch.long)
    grads_computed = summed  # the flags say whether grad mode is on
    grad_input = torch.empty_like(input) if grads_computed and needs_input_grad else None
    grad_weight = None
    if grads_computed and needs_weight_grad:
        grad_weight = torch.empty_like(linear_weight, dtype=dtype)
    grad_bias = None
    if grads_computed and needs_bias_grad and linear_bias is not None:
        grad_bias = torch.empty_like(linear_bias, dtype=dtype)
    return (
        loss,
        correct,
        _or_empty(grad_input, input),
        _or_empty(grad_weight, input),
        _or_empty(grad_bias, input),
    )


@torch.library.custom_op("fairloss::linear_fair_loss_backward", mutates_args=())
def _backward_op(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    grad_output: Tensor,
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
    summed: bool,
    chunk_size: int,
    softcap: Optional[float],
    z_loss_scale: float,
    implementation_name: str,
    needs_input_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_input, grad_weight, grad_bias)``, each chunk's logits recomputed."""
    settings = _settings(
        ignore_index, label_smoothing, smooth_max_beta, scaling_factor, penalty_scale, summed,
        chunk_size, softcap, z_loss_scale, False, implementation_name,
    )  # fmt: skip
    needs_grad = (needs_input_grad, needs_weight_grad, needs_bias_grad)
    grads = chunked_backward(
        input, linear_weight, linear_bias, target, weight, settings, needs_grad, grad_output, None
    )
    return _or_empty(grads[0], input), _or_empty(grads[1], input), _or_empty(grads[2], input)


@_backward_op.register_fake
def _backward_fake(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    grad_output: Tensor,
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
    summed: bool,
    chunk_size: int,
    softcap: Optional[float],
    z_loss_scale: float,
    implementation_name: str,
    needs_input_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    grad_input = torch.empty_like(input) if needs_input_grad else input.new_empty(0)
    grad_weight = torch.empty_like(linear_weight) if needs_weight_grad else input.new_empty(0)
    grad_bias = input.new_empty(0)
    if needs_bias_grad and linear_bias is not None:
        grad_bias = torch.empty_like(linear_bias)
    return grad_input, grad_weight, grad_bias


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    input, linear_weight, linear_bias, target, weight = inputs[:5]
    ctx.arguments = inputs[5:]
    ctx.grads_computed = output[2].numel() + output[3].numel() + output[4].numel() > 0
    ctx.has_bias = linear_bias is not None
    ctx.save_for_backward(input, linear_weight, linear_bias, target, weight, *output[2:])


def _backward(ctx: Any, grad_output: Tensor, *unused: Any) -> tuple[Optional[Tensor], ...]:
    input, linear_weight, linear_bias, target, weight, *precomputed = ctx.saved_tensors
    (
        ignore_index, label_smoothing, smooth_max_beta, scaling_factor, penalty_scale, summed,
        chunk_size, softcap, z_loss_scale, _, implementation_name, *needs,
    ) = ctx.arguments  # fmt: skip
    needs_input, needs_weight, needs_bias = (
        flag and wanted for flag, wanted in zip(needs, ctx.needs_input_grad[:3])
    )
    if ctx.grads_computed:
        # Forward's gradients are for an upstream gradient of 1. Without a counted row they are 0,
        # and stay 0 where an all-ignored "mean" brings 1 / 0.
        any_kept = (target != ignore_index).any()
        scale = torch.where(any_kept, grad_output, 0.0)
        grads = [(grad * scale.to(grad.dtype)).to(input.dtype) for grad in precomputed]
    else:
        grads = list(
            _backward_op(
                input, linear_weight, linear_bias, target, weight, grad_output, ignore_index,
                label_smoothing, smooth_max_beta, scaling_factor, penalty_scale, summed,
                chunk_size, softcap, z_loss_scale, implementation_name, needs_input,
                needs_weight, needs_bias,
            )
        )  # fmt: skip
    grad_input = grads[0] if needs_input else None
    grad_weight = grads[1] if needs_weight else None
    grad_bias = grads[2] if needs_bias and ctx.has_bias else None
    return (grad_input, grad_weight, grad_bias, None, None) + (None,) * len(ctx.arguments)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def linear_fair_loss_compiled(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    settings: LinearFairLossSettings,
) -> tuple[Tensor, Tensor]:
    """What ``LinearFairLossFunction.apply`` returns, through the operators (for compiling).

    ``settings.implementation`` is the eager one (``"sparse"`` or ``"dense"``): it runs inside
    the operators.
    """
    options = settings.options
    grad_enabled = torch.is_grad_enabled()
    needs = [
        grad_enabled and tensor is not None and tensor.requires_grad
        for tensor in (input, linear_weight, linear_bias)
    ]
    outputs = _forward_op(
        input, linear_weight, linear_bias, target, weight, options.ignore_index,
        options.label_smoothing, options.smooth_max_beta, options.scaling_factor,
        options.penalty_scale, settings.summed, settings.chunk_size, settings.softcap,
        settings.z_loss_scale, settings.count_correct, settings.implementation.name, *needs,
    )  # fmt: skip
    return outputs[0], outputs[1]
