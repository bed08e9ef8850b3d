"""FairLoss's operators for ``torch.compile``, registered with ``torch.library``.

* ``fairloss::penalty_statistics`` and ``fairloss::add_penalty_gradient_``, used by
  :class:`fairloss._autograd.TraceableFairLossFunction`, the compiled path for inputs with many
  classes (fewer run dense, with no data-dependent step). The penalty needs SmoothMax only on
  the few elements where it is not saturated; finding them (``nonzero``) gives tensors whose
  size depends on the data, which a compiled graph cannot hold. Wrapped as opaque operators with
  fixed-shape outputs, these steps run eagerly inside a compiled graph while the compiler fuses
  everything around them (the cross-entropy part).
* ``fairloss::kdim_forward`` and ``fairloss::kdim_backward``, the native kernel of
  :mod:`fairloss._native` as used by :class:`fairloss._autograd.NativeFairLossFunction`, eager
  and compiled.

This module deliberately has no ``from __future__ import annotations``: ``custom_op`` reads the
operator schema from the annotations.
"""

from typing import Any

import torch
from torch import Tensor

from fairloss import _native, _rows

__all__ = ["add_penalty_gradient_", "kdim_backward", "kdim_forward", "penalty_statistics"]


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


@torch.library.custom_op("fairloss::kdim_forward", mutates_args=())
def kdim_forward(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """FairLoss of contiguous ``(M, C, L)`` logits by the native kernel (:mod:`fairloss._native`).

    Returns, each ``(M, L)`` in the logits' dtype: the element losses (no class weight, no label
    smoothing), ``log sum exp(z - max)``, the row maximum ``max``, the penalty slope and the slope
    over SmoothMax's normalizer (backward's coefficient of ``softmax(beta * z)``).
    """
    floor = _rows._exp_floor(logits.dtype)
    outputs = _native_kernel().kdim_forward(
        logits,
        target,
        ignore_index,
        smooth_max_beta,
        scaling_factor,
        penalty_scale,
        floor,
        _rows._saturation_threshold(logits.dtype),
        -floor / 2,
    )
    return tuple(outputs)


@kdim_forward.register_fake
def _kdim_forward_fake(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    shape = (logits.shape[0], logits.shape[2])
    return tuple(logits.new_empty(shape) for _ in range(5))  # type: ignore[return-value]


@torch.library.custom_op("fairloss::kdim_backward", mutates_args=())
def kdim_backward(
    logits: Tensor,
    target: Tensor,
    grad_loss: Tensor,
    log_normalizer: Tensor,
    row_max: Tensor,
    penalty_slope: Tensor,
    beta_softmax_slope: Tensor,
    ignore_index: int,
    smooth_max_beta: float,
) -> Tensor:
    """Gradient of ``sum(grad_loss * kdim_forward(...)[0])`` w.r.t. the logits, natively."""
    return _native_kernel().kdim_backward(
        logits,
        target,
        grad_loss,
        log_normalizer,
        row_max,
        penalty_slope,
        beta_softmax_slope,
        ignore_index,
        smooth_max_beta,
        _rows._exp_floor(logits.dtype),
    )


@kdim_backward.register_fake
def _kdim_backward_fake(
    logits: Tensor,
    target: Tensor,
    grad_loss: Tensor,
    log_normalizer: Tensor,
    row_max: Tensor,
    penalty_slope: Tensor,
    beta_softmax_slope: Tensor,
    ignore_index: int,
    smooth_max_beta: float,
) -> Tensor:
    return torch.empty_like(logits)


def _native_kernel() -> Any:
    module = _native.extension()
    if module is None:
        raise RuntimeError(
            "fairloss: the native kernel is not available (see fairloss._native.extension)"
        )
    return module
