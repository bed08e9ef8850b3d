"""The autograd Functions behind :func:`fairloss.fair_loss`: eager, and under ``torch.compile``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from fairloss import _ops
from fairloss._rows import (
    FairLossOptions,
    RowStatistics,
    _cross_entropy_from_log_probs,
    along_classes,
    clear_winners,
    compute_dtype,
    cross_entropy_gradient_,
    dense_beta_terms,
    fair_loss_rows_backward,
    fair_loss_rows_composite,
    fair_loss_rows_forward,
    penalty_and_slope,
    penalty_candidates,
    penalty_weight,
    reference_class,
    reference_mask,
)


class FairLossFunction(torch.autograd.Function):
    """Per-element FairLoss of ``(M, C)`` or ``(M, C, L)`` logits; saves per-element statistics.

    Forward returns the per-element losses in the compute dtype (float64 for float64 logits,
    float32 otherwise) and keeps, besides per-element numbers, the rows of ``softmax(beta * z)``
    of the unsaturated elements (see :class:`fairloss._rows.RowStatistics`). Backward rebuilds the
    gradient from the saved logits and statistics; when
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
        loss, statistics = fair_loss_rows_forward(
            logits, target, weight, options, keep_active_rows=True
        )
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
            grad_target = _probability_target_grad(logits, target, weight, options, grad_loss)
        return grad_logits, grad_target, None, None


class TraceableFairLossFunction(torch.autograd.Function):
    """:class:`FairLossFunction`'s counterpart under ``torch.compile`` for many classes.

    Same inputs and output; used above ``fairloss.functional.DENSE_COMPILED_MAX_CLASSES``. Its
    dense steps are plain PyTorch that the compiler fuses into cross-entropy's own passes over
    the logits (forward: row maximum, normalizer, gathers; backward: the softmax gradient from the
    saved row maximum and normalizer, one pass). The steps whose shapes depend on the data run
    through the operators of :mod:`fairloss._ops`: the penalty statistics of the unsaturated
    elements, and their gradient added in place. Double backward is not supported under
    ``torch.compile`` (AOTAutograd's limit), so there is no composite fallback here.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        options: FairLossOptions,
    ) -> Tensor:
        values, row_max, shifted, log_normalizer = _shifted_logits(logits)
        log_probs = shifted - log_normalizer
        ce = _cross_entropy_from_log_probs(log_probs, target, weight, options)
        reference, valid = reference_class(target, options)
        class_weight = penalty_weight(weight, reference, valid, values.dtype)
        if options.scaling_factor == 0.0 or options.penalty_scale == 0.0:
            penalty = beta_normalizer = penalty_slope = torch.zeros_like(ce)
        else:
            # Everything per element stays here, where the compiler fuses it into the pass that
            # computes the normalizer; even the clear-winner check over every logit is cheap there.
            max_gap = -shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
            reference_log_prob = log_probs.gather(1, reference.unsqueeze(1)).squeeze(1)
            element_max = row_max.squeeze(1)
            candidates = penalty_candidates(max_gap, valid, reference_log_prob, options)
            candidates &= ~clear_winners(values, element_max, max_gap, options.smooth_max_beta)
            penalty, beta_normalizer, penalty_slope = _ops.penalty_statistics(
                values,
                reference,
                class_weight,
                element_max,
                max_gap,
                candidates,
                options.smooth_max_beta,
                options.scaling_factor,
                options.penalty_scale,
            )
        ctx.options = options
        ctx.save_for_backward(
            logits, target, weight, reference, valid, beta_normalizer, penalty_slope, row_max,
            log_normalizer,
        )  # fmt: skip
        return ce + class_weight * penalty

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:
        (logits, target, weight, reference, valid, beta_normalizer, penalty_slope, row_max,
         log_normalizer) = ctx.saved_tensors  # fmt: skip
        options: FairLossOptions = ctx.options
        values = logits.to(compute_dtype(logits.dtype))
        grad_loss = grad_loss.to(values.dtype)
        grad_logits = None
        if ctx.needs_input_grad[0]:
            probs = ((values - row_max) - log_normalizer).exp()
            kept_grad = torch.where(valid, grad_loss, 0.0)  # 0 on ignored elements
            # (M, C, L): a one-hot mask the compiler fuses beats its strided scatter; for
            # (M, C) rows the scatter is the cheaper (measured on CPU).
            at_reference = reference_mask(values, reference) if values.dim() > 2 else None
            grad = cross_entropy_gradient_(
                probs, target, weight, options, reference, kept_grad, at_reference
            )
            _ops.add_penalty_gradient_(
                grad,
                values,
                reference,
                beta_normalizer,
                kept_grad * penalty_slope,
                options.smooth_max_beta,
            )
            grad_logits = grad.to(logits.dtype)
        grad_target = None
        if ctx.needs_input_grad[1]:
            grad_target = _probability_target_grad(logits, target, weight, options, grad_loss)
        return grad_logits, grad_target, None, None


class DenseFairLossFunction(torch.autograd.Function):
    """:class:`TraceableFairLossFunction`'s alternative under ``torch.compile`` for few classes.

    Everything is dense, with no data-dependent step: forward sums SmoothMax's terms
    ``exp(beta * (z - max))`` over every logit in the pass that computes cross-entropy's
    normalizer, and backward recomputes them in the pass that writes the gradient. That costs an
    ``exp`` per logit in each pass; with few classes per element it is cheaper than leaving the
    compiled graph for the operators of :mod:`fairloss._ops` (see
    ``fairloss.functional.DENSE_COMPILED_MAX_CLASSES``). Saves per-element statistics only.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        options: FairLossOptions,
    ) -> Tensor:
        values, row_max, shifted, log_normalizer = _shifted_logits(logits)
        reference, valid = reference_class(target, options)
        class_weight = penalty_weight(weight, reference, valid, values.dtype)
        max_gap = -shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
        nll = None
        if not options.probability_target:  # -log p[r] = log_normalizer + max_gap: no 2nd gather
            nll = torch.where(valid, class_weight * (log_normalizer.squeeze(1) + max_gap), 0.0)
        ce = _cross_entropy_from_log_probs(
            shifted - log_normalizer, target, weight, options, nll=nll
        )
        beta = options.smooth_max_beta
        beta_normalizer = dense_beta_terms(shifted, beta).sum(dim=1)
        penalty, slope = penalty_and_slope(
            max_gap, beta_normalizer, class_weight, beta, options.scaling_factor,
            options.penalty_scale,
        )  # fmt: skip
        ctx.options = options
        ctx.save_for_backward(
            logits, target, weight, reference, valid, row_max, log_normalizer, slope,
            slope / beta_normalizer,
        )  # fmt: skip
        return ce + class_weight * penalty

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:
        (logits, target, weight, reference, valid, row_max, log_normalizer, slope,
         beta_softmax_slope) = ctx.saved_tensors  # fmt: skip
        options: FairLossOptions = ctx.options
        values = logits.to(compute_dtype(logits.dtype))
        grad_loss = grad_loss.to(values.dtype)
        grad_logits = None
        if ctx.needs_input_grad[0]:
            shifted = values - row_max
            probs = (shifted - log_normalizer).exp()
            kept_grad = torch.where(valid, grad_loss, 0.0)  # 0 on ignored elements
            at_reference = reference_mask(values, reference)
            grad = cross_entropy_gradient_(
                probs, target, weight, options, reference, kept_grad, at_reference
            )
            # The penalty's part, c * (softmax(beta * z) - onehot(r)) with c = g * slope; the
            # division by the normalizer was done per element in forward, not per logit here.
            beta_softmax_scale = (kept_grad * beta_softmax_slope).unsqueeze(1)
            grad += dense_beta_terms(shifted, options.smooth_max_beta) * beta_softmax_scale
            grad -= at_reference * (kept_grad * slope).unsqueeze(1)
            grad_logits = grad.to(logits.dtype)
        grad_target = None
        if ctx.needs_input_grad[1]:
            grad_target = _probability_target_grad(logits, target, weight, options, grad_loss)
        return grad_logits, grad_target, None, None


class NativeFairLossFunction(torch.autograd.Function):
    """FairLoss of ``(M, C, L)`` logits through the native kernel of :mod:`fairloss._native`.

    For class-index targets without class weights or label smoothing, float32 or float64 logits
    on CPU; eager and under ``torch.compile`` alike (the kernel runs as the operators
    ``fairloss::kdim_forward`` and ``fairloss::kdim_backward``). Forward and backward are one
    fused pass over the logits each; saved are per-element statistics only. Double backward
    differentiates :func:`fairloss._rows.fair_loss_rows_composite`, as in
    :class:`FairLossFunction`.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        options: FairLossOptions,
    ) -> Tensor:
        logits, target = logits.contiguous(), target.contiguous()
        loss, *statistics = _ops.kdim_forward(
            logits,
            target,
            options.ignore_index,
            options.smooth_max_beta,
            options.scaling_factor,
            options.penalty_scale,
        )
        ctx.options = options
        ctx.save_for_backward(logits, target, weight, *statistics)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:
        logits, target, weight, *statistics = ctx.saved_tensors
        options: FairLossOptions = ctx.options
        if torch.is_grad_enabled():
            return _composite_backward(logits, target, weight, options, grad_loss, False)
        grad_logits = _ops.kdim_backward(
            logits,
            target,
            grad_loss.to(logits.dtype).contiguous(),
            *statistics,
            options.ignore_index,
            options.smooth_max_beta,
        )
        return grad_logits, None, None, None


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


def _shifted_logits(logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The compiled paths' shared start: ``(z, max, z - max, log sum exp(z - max))``.

    ``z`` in the compute dtype; the maximum and the log-normalizer keep the class dimension
    (size 1), ready to broadcast.
    """
    values = logits.to(compute_dtype(logits.dtype))
    row_max = values.amax(dim=1, keepdim=True)
    shifted = values - row_max
    return values, row_max, shifted, shifted.exp().sum(dim=1, keepdim=True).log()


def _probability_target_grad(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    grad_loss: Tensor,
) -> Tensor:
    """d(element loss)/d(target) for probability targets: ``-(1 - eps) * g * w * log_softmax(z)``.

    The penalty's reference class is an argmax of the target, which has no gradient. Returned in
    ``target``'s dtype.
    """
    log_probs = torch.log_softmax(logits.to(grad_loss.dtype), dim=1)
    scale = -(1 - options.label_smoothing) * grad_loss.unsqueeze(1)
    grad = log_probs.mul_(scale)
    if weight is not None:
        grad.mul_(along_classes(weight.to(grad.dtype), grad.dim()))
    return grad.to(target.dtype)
