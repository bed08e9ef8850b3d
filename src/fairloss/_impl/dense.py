"""The dense implementation: every step on every logit, no data-dependent shape, no host sync.

Forward sums SmoothMax's terms ``exp(beta * (z - max))`` over every logit next to
cross-entropy's normalizer; backward recomputes them where it writes the gradient. That costs an
``exp`` per logit in each pass more than cross-entropy, and nothing else: saved are per-element
statistics only. It is what runs off the CPU (it runs on ``device="meta"`` too), and under
``torch.compile`` for few classes, where the compiler fuses it into cross-entropy's own passes
(:func:`fairloss._impl.select` says when).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fairloss._cross_entropy import (
    cross_entropy_from_log_probs,
    cross_entropy_gradient_,
    reference_mask,
    shifted_logits,
)
from fairloss._impl.base import Implementation, Saved
from fairloss._penalty import (
    FairLossOptions,
    compute_dtype,
    dense_smooth_max_terms,
    penalty_and_slope,
    penalty_weight,
    reference_class,
    smooth_max_normalizer,
)

__all__ = ["IMPLEMENTATION"]


def forward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    compact: bool,
    workspace: Optional[Tensor],
) -> tuple[Tensor, Saved]:
    """Element losses, and ``(reference, valid, max, log_normalizer, slope, slope / normalizer)``.

    The statistics are per element whatever ``compact`` says; ``workspace`` is not used (off
    the CPU, the caching allocator reuses freed blocks).
    """
    values, row_max, shifted, log_normalizer = shifted_logits(logits)
    reference, valid = reference_class(target, options)
    class_weight = penalty_weight(weight, reference, valid, values.dtype)
    max_gap = -shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
    nll = None
    if not options.probability_target:  # -log p[r] = log_normalizer + max_gap: no 2nd gather
        nll = torch.where(valid, class_weight * (log_normalizer.squeeze(1) + max_gap), 0.0)
    ce = cross_entropy_from_log_probs(shifted - log_normalizer, target, weight, options, nll=nll)
    if options.penalty_is_off:
        zeros = torch.zeros_like(ce)
        return ce, (reference, valid, row_max, log_normalizer, zeros, zeros)
    beta = options.smooth_max_beta
    beta_normalizer = smooth_max_normalizer(shifted, beta)
    penalty, slope = penalty_and_slope(
        max_gap, beta_normalizer, class_weight, beta, options.scaling_factor,
        options.penalty_scale,
    )  # fmt: skip
    saved = (reference, valid, row_max, log_normalizer, slope, slope / beta_normalizer)
    return ce + class_weight * penalty, saved


def backward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    saved: Saved,
    grad_loss: Tensor,
    workspace: Optional[Tensor],
) -> Tensor:
    """Gradient of ``sum(grad_loss * loss)``: cross-entropy's and the penalty's, one pass each."""
    reference, valid, row_max, log_normalizer, slope, beta_softmax_slope = saved
    assert reference is not None and valid is not None and slope is not None  # always saved
    assert row_max is not None and log_normalizer is not None and beta_softmax_slope is not None
    values = logits.to(compute_dtype(logits.dtype))
    shifted = values - row_max
    probs = (shifted - log_normalizer).exp()
    kept_grad = torch.where(valid, grad_loss.to(values.dtype), 0.0)  # 0 on ignored elements
    at_reference = reference_mask(values, reference)
    grad = cross_entropy_gradient_(
        probs, target, weight, options, reference, kept_grad, at_reference
    )
    if options.penalty_is_off:
        return grad
    # The penalty's part, c * (softmax(beta * z) - onehot(r)) with c = g * slope; the division
    # by the normalizer was done per element in forward, not per logit here. c is kept finite:
    # with s near the dtype's largest number the slope overflows, and at a clear winner (where
    # the two terms cancel exactly) inf - inf would be NaN instead of 0.
    largest = torch.finfo(values.dtype).max
    beta_softmax_scale = (kept_grad * beta_softmax_slope).clamp(-largest, largest)
    grad += dense_smooth_max_terms(shifted, options.smooth_max_beta) * beta_softmax_scale.unsqueeze(
        1
    )
    grad -= at_reference * (kept_grad * slope).clamp(-largest, largest).unsqueeze(1)
    return grad


IMPLEMENTATION = Implementation(
    name="dense", synchronizes=False, forward=forward, backward=backward
)
