"""What every implementation of FairLoss provides, and the one autograd Function that runs it.

An implementation computes per-element FairLoss of logits with classes along dimension 1,
``(M, C)`` or ``(M, C, L)``, in the compute dtype (:func:`fairloss._penalty.compute_dtype`),
through three functions with one signature each (:class:`Implementation`). The formula itself
comes from :mod:`fairloss._penalty`; an implementation only decides how much of it to compute
where.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from fairloss._cross_entropy import probability_target_gradient
from fairloss._penalty import fair_loss_composite
from fairloss._validation import FairLossOptions

__all__ = ["Implementation", "Saved", "Scoring", "autograd_function"]

#: What forward keeps for backward: tensors (or None), saved with ``save_for_backward``.
Saved = tuple[Optional[Tensor], ...]


class Scoring(NamedTuple):
    """What logits are scored against: the targets, the class weights and the options."""

    target: Tensor
    weight: Optional[Tensor]
    options: FairLossOptions


@dataclass(frozen=True)
class Implementation:
    """One way to compute FairLoss's element losses and their gradient.

    * ``forward(logits, scoring, compact, workspace)`` returns the element losses and what
      backward needs. ``compact=True`` asks for O(elements) statistics only (the chunked linear
      head holds every chunk's at once).
    * ``backward(logits, scoring, saved, grad_loss, workspace)`` returns the gradient of
      ``sum(grad_loss * loss)`` with respect to the logits, in the compute dtype.
    * ``synchronizes``: whether it waits for the device (``nonzero``, ``bool(tensor)``): such an
      implementation runs on the CPU only.
    * ``fused_forward_backward(logits, scoring, workspace)``, optional, returns
      ``(loss, saved, grad)`` with the gradient for an upstream gradient of ones and compact
      statistics, sharing work between the two.

    ``workspace`` is None or a buffer of the logits' shape and compute dtype that the caller
    owns: an implementation may write its logits-sized temporary into it (the gradient it
    returns may be that buffer) instead of allocating one. The chunked linear head passes one
    buffer to every chunk when ``uses_workspace`` says the implementation takes it, so that it
    allocates its large buffers once per call (the CPU's allocator may otherwise keep each
    chunk's freed buffer mapped).
    """

    name: str
    synchronizes: bool
    forward: Callable[[Tensor, Scoring, bool, Optional[Tensor]], tuple[Tensor, Saved]]
    backward: Callable[[Tensor, Scoring, Saved, Tensor, Optional[Tensor]], Tensor]
    fused_forward_backward: Optional[
        Callable[[Tensor, Scoring, Optional[Tensor]], tuple[Tensor, Saved, Tensor]]
    ] = None
    uses_workspace: bool = False

    def forward_backward(
        self, logits: Tensor, scoring: Scoring, workspace: Optional[Tensor]
    ) -> tuple[Tensor, Saved, Tensor]:
        """Element losses, compact statistics and the gradient for an upstream gradient of ones.

        For summed losses whose gradient is wanted at once (the chunked linear head).
        """
        if self.fused_forward_backward is not None:
            return self.fused_forward_backward(logits, scoring, workspace)
        loss, saved = self.forward(logits, scoring, True, workspace)
        ones = torch.ones_like(loss)
        return loss, saved, self.backward(logits, scoring, saved, ones, workspace)


def autograd_function(implementation: Implementation) -> type[torch.autograd.Function]:
    """An autograd Function computing ``implementation``'s element losses.

    ``apply(logits, target, weight, options)`` returns the element losses in the compute dtype.
    Backward calls the implementation's backward; when a graph of the backward is requested
    (double backward, eager only) it differentiates :func:`fairloss._penalty.fair_loss_composite`
    instead, so that higher derivatives stay exact. Probability targets get their gradient too.
    """

    class FairLossFunction(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any,
            logits: Tensor,
            target: Tensor,
            weight: Optional[Tensor],
            options: FairLossOptions,
        ) -> Tensor:
            scoring = Scoring(target, weight, options)
            loss, saved = implementation.forward(logits, scoring, False, None)
            ctx.options = options
            ctx.save_for_backward(logits, target, weight, *saved)
            return loss

        @staticmethod
        def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:
            logits, target, weight, *saved = ctx.saved_tensors
            options: FairLossOptions = ctx.options
            wants_logits_grad, wants_target_grad = ctx.needs_input_grad[:2]
            if torch.is_grad_enabled():
                return _composite_backward(
                    logits, target, weight, options, grad_loss, wants_target_grad
                )
            grad_logits = grad_target = None
            if wants_logits_grad:
                scoring = Scoring(target, weight, options)
                grad = implementation.backward(logits, scoring, tuple(saved), grad_loss, None)
                grad_logits = grad.to(logits.dtype)
            if wants_target_grad:
                grad_target = probability_target_gradient(
                    logits, target, weight, options, grad_loss
                )
            return grad_logits, grad_target, None, None

    FairLossFunction.__name__ = FairLossFunction.__qualname__ = (
        f"{implementation.name.title().replace('_', '')}FairLossFunction"
    )
    return FairLossFunction


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
    loss = fair_loss_composite(logits, target, weight, options)
    grads = torch.autograd.grad(loss, inputs, grad_loss, create_graph=True, allow_unused=True)
    by_input = dict(zip([id(t) for t in inputs], grads))
    grad_logits = by_input.get(id(logits))
    grad_target = by_input.get(id(target)) if wants_target_grad else None
    return grad_logits, grad_target, None, None
