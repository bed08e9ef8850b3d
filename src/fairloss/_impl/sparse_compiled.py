"""The sparse implementation under ``torch.compile`` (CPU, many classes).

Cross-entropy's steps are the dense implementation's stages (:mod:`fairloss._impl.dense`),
plain PyTorch that the compiler fuses into few passes over the logits (forward: row maximum,
normalizer, gathers, the clear-winner check; backward: the softmax gradient from the saved
maximum and normalizer). The penalty's steps, whose shapes depend on the data —
:func:`fairloss._impl.sparse.penalty_statistics` and
:func:`fairloss._impl.sparse.recompute_penalty_gradient_` — run as the custom operators
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

from fairloss._impl import dense, sparse
from fairloss._impl.base import Implementation, Saved, Scoring
from fairloss._penalty import (
    clear_winners,
    compute_dtype,
    penalty_candidates,
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
    smooth_max: list[float],
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fairloss._impl.sparse.penalty_statistics` as an operator (without kept rows)."""
    beta, scale, penalty_scale = smooth_max
    penalty, beta_normalizer, penalty_slope, _ = sparse.penalty_statistics(
        logits, reference, class_weight, row_max, max_gap, candidates, (beta, scale, penalty_scale)
    )
    return penalty, beta_normalizer, penalty_slope


@penalty_statistics.register_fake
def _penalty_statistics_fake(logits: Tensor, *arguments: object) -> tuple[Tensor, Tensor, Tensor]:
    shape = logits.shape[:1] + logits.shape[2:]
    return logits.new_empty(shape), logits.new_empty(shape), logits.new_empty(shape)


@torch.library.custom_op("fairloss::add_penalty_gradient_", mutates_args=("grad",))
def add_penalty_gradient_(
    grad: Tensor,
    logits: Tensor,
    reference: Tensor,
    beta_normalizer: Tensor,
    penalty_gradient_scale: Tensor,
    smooth_max_beta: float,
) -> None:
    """:func:`fairloss._impl.sparse.recompute_penalty_gradient_` as an operator."""
    sparse.recompute_penalty_gradient_(
        grad, logits, reference, beta_normalizer, penalty_gradient_scale, smooth_max_beta
    )


@add_penalty_gradient_.register_fake
def _add_penalty_gradient_fake(grad: Tensor, *arguments: object) -> None:
    return None


def forward(
    logits: Tensor, scoring: Scoring, compact: bool, workspace: Optional[Tensor]
) -> tuple[Tensor, Saved]:
    """Element losses and per-element statistics (always compact); ``workspace`` is unused."""
    values = logits.to(compute_dtype(logits.dtype))
    loss, class_weight, statistics, sums = dense.single_device_stages(
        values, scoring, smooth_max=False
    )
    options, valid, row_max = scoring.options, statistics.valid, statistics.row_max
    if options.penalty_is_off:
        beta_normalizer = penalty_slope = torch.zeros_like(loss)
    else:
        # Everything per element stays here, where the compiler fuses it into the pass that
        # computes the normalizer; even the clear-winner check over every logit is cheap there.
        max_gap = -sums.reference_shift
        reference_log_prob = sums.reference_shift - statistics.log_normalizer
        candidates = penalty_candidates(max_gap, valid, reference_log_prob, options)
        candidates &= ~clear_winners(values, row_max, max_gap, options.smooth_max_beta)
        penalty, beta_normalizer, penalty_slope = penalty_statistics(
            values,
            statistics.reference,
            class_weight,
            row_max,
            max_gap,
            candidates,
            list(sparse.smooth_max_options(options)),
        )
        loss = loss + class_weight * penalty
    return loss, (*statistics, beta_normalizer, penalty_slope)


def backward(
    logits: Tensor, scoring: Scoring, saved: Saved, grad_loss: Tensor, workspace: Optional[Tensor]
) -> Tensor:
    """Cross-entropy's gradient in one fused pass, then the penalty's on its few elements."""
    *cross_entropy_statistics, beta_normalizer, penalty_slope = saved
    assert beta_normalizer is not None and penalty_slope is not None  # always saved
    statistics = dense.RowStatistics(*cross_entropy_statistics)  # type: ignore[arg-type]
    values = logits.to(compute_dtype(logits.dtype))
    grad = dense.gradient(
        values, statistics, grad_loss, *scoring, num_classes=values.shape[1], penalty=False
    )
    kept_grad = torch.where(statistics.valid, grad_loss.to(values.dtype), 0.0)
    add_penalty_gradient_(
        grad,
        values,
        statistics.reference,
        beta_normalizer,
        kept_grad * penalty_slope,
        scoring.options.smooth_max_beta,
    )
    return grad


IMPLEMENTATION = Implementation(
    name="sparse_compiled", synchronizes=True, forward=forward, backward=backward
)
