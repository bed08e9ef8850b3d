"""The autograd Function behind :func:`fairloss.fair_loss`'s eager path."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from fairloss._rows import (
    FairLossOptions,
    RowStatistics,
    along_classes,
    fair_loss_rows_backward,
    fair_loss_rows_composite,
    fair_loss_rows_forward,
)


class FairLossFunction(torch.autograd.Function):
    """Per-row FairLoss of ``(M, C)`` logits that saves only per-row statistics.

    Forward returns the ``(M,)`` element losses in the compute dtype (float64 for float64 logits,
    float32 otherwise). Backward rebuilds the gradient from the saved logits and statistics; when
    a graph of the backward is requested (double backward) it differentiates
    :func:`fairloss._rows.fair_loss_rows_composite` instead, so higher derivatives stay exact.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        options: FairLossOptions,
    ) -> Tensor:
        loss, statistics = fair_loss_rows_forward(logits, target, weight, options)
        ctx.options = options
        ctx.save_for_backward(logits, target, weight, *statistics)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:
        logits, target, weight, *saved = ctx.saved_tensors
        options: FairLossOptions = ctx.options
        wants_target_grad = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            return _composite_backward(
                logits, target, weight, options, grad_loss, wants_target_grad
            )
        statistics = RowStatistics(*saved)
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_logits = fair_loss_rows_backward(
                logits, target, weight, options, statistics, grad_loss
            ).to(logits.dtype)
        grad_target = None
        if wants_target_grad:
            grad_target = _probability_target_grad(logits, weight, options, grad_loss)
            grad_target = grad_target.to(target.dtype)
        return grad_logits, grad_target, None, None


def _composite_backward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    grad_loss: Tensor,
    wants_target_grad: bool,
) -> tuple[Optional[Tensor], ...]:
    """Backward with ``create_graph=True``: differentiate the composite, keeping the graph."""
    inputs = [tensor for tensor in (logits, target) if tensor.requires_grad]
    loss = fair_loss_rows_composite(logits, target, weight, options)
    grads = torch.autograd.grad(loss, inputs, grad_loss, create_graph=True, allow_unused=True)
    by_input = dict(zip([id(t) for t in inputs], grads))
    grad_logits = by_input.get(id(logits))
    grad_target = by_input.get(id(target)) if wants_target_grad else None
    return grad_logits, grad_target, None, None


def _probability_target_grad(
    logits: Tensor, weight: Optional[Tensor], options: FairLossOptions, grad_loss: Tensor
) -> Tensor:
    """d(element loss)/d(target) for probability targets: ``-(1 - eps) * g * w * log_softmax(z)``.

    The penalty's reference class is an argmax of the target, which has no gradient.
    """
    log_probs = torch.log_softmax(logits.to(grad_loss.dtype), dim=1)
    scale = -(1 - options.label_smoothing) * grad_loss.unsqueeze(1)
    grad = log_probs.mul_(scale)
    if weight is not None:
        grad.mul_(along_classes(weight.to(grad.dtype), grad.dim()))
    return grad
