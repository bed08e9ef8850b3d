"""The sparse implementation under ``torch.compile`` (CPU, many classes).

The dense steps are plain PyTorch that the compiler fuses into cross-entropy's own passes over
the logits (forward: row maximum, normalizer, gathers, the clear-winner check; backward: the
softmax gradient from the saved maximum and normalizer, in one pass). The steps whose shapes
depend on the data — :func:`fairloss._impl.sparse.penalty_statistics` and
:func:`fairloss._impl.sparse.add_penalty_gradient_` — run as the custom operators
``fairloss::penalty_statistics`` and ``fairloss::add_penalty_gradient_``, opaque to the compiler
and eager inside the compiled graph. They synchronise with the host, so this implementation is
chosen on CPU only. Double backward is not supported under ``torch.compile`` (AOTAutograd's
limit).

This module deliberately has no ``from __future__ import annotations``: ``custom_op`` reads the
operator schemas from the annotations.
"""

from typing import Optional

import torch
from torch import Tensor

from fairloss._cross_entropy import (
    cross_entropy_from_log_probs,
    cross_entropy_gradient_,
    reference_mask,
    shifted_logits,
)
from fairloss._impl import sparse
from fairloss._impl.base import Implementation, Saved
from fairloss._penalty import (
    FairLossOptions,
    clear_winners,
    compute_dtype,
    penalty_candidates,
    penalty_weight,
    reference_class,
)

__all__ = ["IMPLEMENTATION", "add_penalty_gradient_", "penalty_statistics"]


@torch.library.custom_op("fairloss::penalty_statistics", mutates_args=())
def penalty_statistics(
    logits: Tensor,
    reference: Tensor,
    class_weight: Tensor,
    row_max: Tensor,
    max_gap: Tensor,
    candidates: Tensor,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fairloss._impl.sparse.penalty_statistics` as an operator (without kept rows)."""
    penalty, beta_normalizer, penalty_slope, _ = sparse.penalty_statistics(
        logits,
        reference,
        class_weight,
        row_max,
        max_gap,
        candidates,
        smooth_max_beta,
        scaling_factor,
        penalty_scale,
    )
    return penalty, beta_normalizer, penalty_slope


@penalty_statistics.register_fake
def _penalty_statistics_fake(
    logits: Tensor,
    reference: Tensor,
    class_weight: Tensor,
    row_max: Tensor,
    max_gap: Tensor,
    candidates: Tensor,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    shape = row_max.shape
    return row_max.new_empty(shape), row_max.new_empty(shape), row_max.new_empty(shape)


@torch.library.custom_op("fairloss::add_penalty_gradient_", mutates_args=("grad",))
def add_penalty_gradient_(
    grad: Tensor,
    logits: Tensor,
    reference: Tensor,
    beta_normalizer: Tensor,
    penalty_gradient_scale: Tensor,
    smooth_max_beta: float,
) -> None:
    """:func:`fairloss._impl.sparse.add_penalty_gradient_` as an operator."""
    sparse.add_penalty_gradient_(
        grad, logits, reference, beta_normalizer, penalty_gradient_scale, smooth_max_beta
    )


@add_penalty_gradient_.register_fake
def _add_penalty_gradient_fake(
    grad: Tensor,
    logits: Tensor,
    reference: Tensor,
    beta_normalizer: Tensor,
    penalty_gradient_scale: Tensor,
    smooth_max_beta: float,
) -> None:
    return None


def forward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    compact: bool,
    workspace: Optional[Tensor],
) -> tuple[Tensor, Saved]:
    """Element losses and per-element statistics (always compact); ``workspace`` is unused."""
    values, row_max, shifted, log_normalizer = shifted_logits(logits)
    log_probs = shifted - log_normalizer
    ce = cross_entropy_from_log_probs(log_probs, target, weight, options)
    reference, valid = reference_class(target, options)
    class_weight = penalty_weight(weight, reference, valid, values.dtype)
    if options.penalty_is_off:
        penalty = beta_normalizer = penalty_slope = torch.zeros_like(ce)
    else:
        # Everything per element stays here, where the compiler fuses it into the pass that
        # computes the normalizer; even the clear-winner check over every logit is cheap there.
        max_gap = -shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
        reference_log_prob = log_probs.gather(1, reference.unsqueeze(1)).squeeze(1)
        element_max = row_max.squeeze(1)
        candidates = penalty_candidates(max_gap, valid, reference_log_prob, options)
        candidates &= ~clear_winners(values, element_max, max_gap, options.smooth_max_beta)
        penalty, beta_normalizer, penalty_slope = penalty_statistics(
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
    saved = (reference, valid, beta_normalizer, penalty_slope, row_max, log_normalizer)
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
    """Cross-entropy's gradient in one fused pass, then the penalty's on its few elements."""
    reference, valid, beta_normalizer, penalty_slope, row_max, log_normalizer = saved
    assert reference is not None and valid is not None and beta_normalizer is not None
    assert penalty_slope is not None and row_max is not None and log_normalizer is not None
    values = logits.to(compute_dtype(logits.dtype))
    probs = ((values - row_max) - log_normalizer).exp()
    kept_grad = torch.where(valid, grad_loss.to(values.dtype), 0.0)  # 0 on ignored elements
    # (M, C, L): a one-hot mask the compiler fuses beats its strided scatter; for (M, C) rows
    # the scatter is the cheaper (measured on CPU).
    at_reference = reference_mask(values, reference) if values.dim() > 2 else None
    grad = cross_entropy_gradient_(
        probs, target, weight, options, reference, kept_grad, at_reference
    )
    add_penalty_gradient_(
        grad,
        values,
        reference,
        beta_normalizer,
        kept_grad * penalty_slope,
        options.smooth_max_beta,
    )
    return grad


IMPLEMENTATION = Implementation(
    name="sparse_compiled", synchronizes=True, forward=forward, backward=backward
)
