"""FairLoss's data-dependent steps as ``torch.library`` custom ops, for ``torch.compile``.

Used by :class:`fairloss._autograd.TraceableFairLossFunction`, the compiled path for inputs with
many classes (fewer run dense, with no data-dependent step).

The penalty needs SmoothMax only on the few elements where it is not saturated; finding them
(``nonzero``) gives tensors whose size depends on the data, which a compiled graph cannot hold.
Wrapped as opaque operators with fixed-shape outputs, these steps run eagerly inside a compiled
graph while the compiler fuses everything around them (the cross-entropy part).

This module deliberately has no ``from __future__ import annotations``: ``custom_op`` reads the
operator schema from the annotations.
"""

import torch
from torch import Tensor

from fairloss import _rows

__all__ = ["add_penalty_gradient_", "penalty_statistics"]


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
    """:func:`fairloss._rows.penalty_statistics` as an operator (without the kept rows)."""
    penalty, beta_normalizer, penalty_slope, _ = _rows.penalty_statistics(
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
    """:func:`fairloss._rows.add_penalty_gradient_` as an operator."""
    _rows.add_penalty_gradient_(
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
