"""The FairLoss math on logits with classes along dimension 1: ``(R, C)`` rows, or ``(R, C, L)``.

An *element* is one position outside the class dimension; per-element quantities have the
logits' shape without dimension 1. Keeping the class dimension in place (rather than moving it
last) lets ``(N, C, d1, ..., dk)`` inputs use PyTorch's strided softmax kernels without a copy.

Two implementations of one formula live here:

* :func:`fair_loss_rows_composite` — plain differentiable PyTorch; autograd derives its gradient.
  It is the readable statement of the semantics, the path taken under ``torch.compile`` and the
  one that double backward differentiates.
* :func:`fair_loss_rows_forward` / :func:`fair_loss_rows_backward` — the fast eager path used by
  :class:`fairloss._autograd.FairLossFunction`. It keeps only per-row statistics between forward
  and backward and spends SmoothMax work only on the rows where the penalty is not saturated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class FairLossOptions:
    """The non-tensor options of one FairLoss call (``penalty_scale`` already resolved)."""

    ignore_index: int
    label_smoothing: float
    smooth_max_beta: float
    scaling_factor: float
    penalty_scale: float
    probability_target: bool


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """FairLoss computes in float64 for float64 input and in float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exp_floor(dtype: torch.dtype) -> float:
    # exp() of arguments far below log(tiny) is several times slower on CPU (it underflows
    # through the subnormals) and its value is lost next to the row's largest term exp(0) = 1.
    return math.log(torch.finfo(dtype).tiny) + 8.0


def _saturation_threshold(dtype: torch.dtype) -> float:
    # For x above this, sech(x)**2 <= 4 exp(-2x) rounds to zero and tanh(x) to one in `dtype`.
    finfo = torch.finfo(dtype)
    return 0.5 * math.log(4.0 / (finfo.tiny * finfo.eps))


def along_classes(values: Tensor, ndim: int) -> Tensor:
    """A ``(C,)`` vector shaped to broadcast along dimension 1 of an ``ndim``-dimensional tensor."""
    return values.view(1, -1, *([1] * (ndim - 2)))


def reference_class(target: Tensor, options: FairLossOptions) -> tuple[Tensor, Tensor]:
    """The class each row's penalty compares against, and which rows count.

    Returns ``(reference, valid)``: the target index (or the target's argmax over classes, first
    on ties, for probability targets), with ignored rows pointing at class 0; ``valid`` is False
    on ignored rows.
    """
    if options.probability_target:
        reference = target.argmax(dim=1)
        return reference, torch.ones_like(reference, dtype=torch.bool)
    valid = target != options.ignore_index
    return target.masked_fill(~valid, 0), valid


def penalty_weight(weight: Optional[Tensor], reference: Tensor, valid: Tensor) -> Tensor:
    """``w[r]`` per row (1 without class weights), 0 on ignored rows."""
    if weight is None:
        return valid.to(torch.get_default_dtype())
    return weight.to(compute_dtype(weight.dtype))[reference] * valid


def _log_sum_exp_beta(logits: Tensor, row_max: Tensor, beta: float) -> Tensor:
    """``log(sum_j exp(beta * (z_j - max)))`` per row of ``(k, C)`` logits, terms floored."""
    scaled = (logits - row_max.unsqueeze(1)).mul_(beta).clamp_min_(_exp_floor(logits.dtype))
    return scaled.exp_().sum(dim=1).log_()


def fair_loss_rows_composite(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> Tensor:
    """Per-row FairLoss in plain differentiable PyTorch (compute dtype, shape ``(M,)``).

    ``element = CE + w[r] * lambda * tanh(s * (SmoothMax(z) - z[r]) / 2)``, with
    ``SmoothMax(z) = logsumexp(beta * z) / beta``, written as
    ``max + log(sum exp(beta * (z - max))) / beta``
    so that the negative gap ``(max - z[r]) + log(...) / beta`` is a sum of two non-negative terms.
    Cross-entropy is spelled out from the same row maximum as the SmoothMax, so a compiler fuses
    both into one pass over each row.
    """
    logits = logits.to(compute_dtype(logits.dtype))
    row_max = logits.detach().amax(dim=1, keepdim=True)
    shifted = logits - row_max
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    ce = _cross_entropy_from_log_probs(log_probs, target, weight, options)

    reference, valid = reference_class(target, options)
    beta = options.smooth_max_beta
    scaled = (beta * shifted).clamp_min(_exp_floor(logits.dtype))
    log_sum = scaled.exp().sum(dim=1).log()  # max(scaled) = 0: no second max pass
    shifted_reference = shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
    negative_gap = log_sum / beta - shifted_reference
    penalty = options.penalty_scale * torch.tanh(options.scaling_factor * negative_gap / 2)
    class_weight = penalty_weight(weight, reference, valid).to(logits.dtype)
    # `where`, not a product: an all-ignored "mean" divides by 0 and inf * 0 would leak NaN.
    return ce + torch.where(valid, class_weight * penalty, 0.0)


def _cross_entropy_from_log_probs(
    log_probs: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> Tensor:
    """``F.cross_entropy(..., reduction="none")`` given the log-probabilities, every option."""
    num_classes = log_probs.shape[1]
    eps = options.label_smoothing
    class_weight = None if weight is None else weight.to(log_probs.dtype)
    class_weight_along = (
        None if class_weight is None else along_classes(class_weight, log_probs.dim())
    )
    if options.probability_target:
        smoothed = target.to(log_probs.dtype) * (1 - eps) + eps / num_classes
        weighted = smoothed if class_weight_along is None else smoothed * class_weight_along
        return -(log_probs * weighted).sum(dim=1)
    ce = F.nll_loss(
        log_probs, target, class_weight, ignore_index=options.ignore_index, reduction="none"
    )
    if eps == 0.0:
        return ce
    weighted_log_probs = log_probs if class_weight_along is None else log_probs * class_weight_along
    uniform = -weighted_log_probs.sum(dim=1) / num_classes
    valid = target != options.ignore_index
    return (1 - eps) * ce + eps * torch.where(valid, uniform, 0.0)


class RowStatistics(NamedTuple):
    """What the fast forward keeps for backward: per-element numbers, no tensor of the logits' size.

    ``active`` (a boolean mask over elements) marks the elements whose penalty gradient is not
    exactly zero in the compute dtype; ``smooth_max`` and ``penalty_slope`` hold, for those only
    (in mask order), SmoothMax(z) and ``w[r] * lambda * s / 2 * sech(s * negative_gap / 2) ** 2``.
    """

    reference: Tensor
    valid: Tensor
    active: Tensor
    smooth_max: Tensor
    penalty_slope: Tensor


def fair_loss_rows_forward(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> tuple[Tensor, RowStatistics]:
    """Per-row FairLoss without autograd, and the statistics backward needs."""
    loss, statistics, _ = _forward(logits, target, weight, options, keep_log_probs=False)
    return loss, statistics


def fair_loss_rows_forward_backward(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> tuple[Tensor, RowStatistics, Tensor]:
    """Per-row FairLoss and its gradient for an upstream gradient of ones, in one go.

    For summed losses whose gradient is wanted at once (the chunked linear path): forward's
    log-softmax buffer becomes backward's softmax in place, saving a pass and an allocation.
    """
    loss, statistics, log_probs = _forward(logits, target, weight, options, keep_log_probs=True)
    assert log_probs is not None  # kept on request
    grad = fair_loss_rows_backward(
        logits, target, weight, options, statistics, torch.ones_like(loss), log_probs.exp_()
    )
    return loss, statistics, grad


def _forward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    *,
    keep_log_probs: bool,
) -> tuple[Tensor, RowStatistics, Optional[Tensor]]:
    """Per-row FairLoss without autograd, and the statistics backward needs.

    Equal to :func:`fair_loss_rows_composite`. A row whose reference logit lies below the row
    maximum by more than ``2 * threshold / s`` has ``tanh == 1`` and ``sech**2 == 0`` in the compute
    dtype whatever SmoothMax is (SmoothMax >= max), so SmoothMax is computed only for the others.
    """
    logits = logits.to(compute_dtype(logits.dtype))
    log_probs = torch.log_softmax(logits, dim=1)
    ce = _cross_entropy_from_log_probs(log_probs, target, weight, options)
    reference, valid = reference_class(target, options)
    reference_log_prob = log_probs.gather(1, reference.unsqueeze(1)).squeeze(1)
    kept = log_probs if keep_log_probs else None
    del log_probs
    class_weight = penalty_weight(weight, reference, valid).to(logits.dtype)
    scale, lam = options.scaling_factor, options.penalty_scale
    no_rows = logits.new_zeros(0)
    if scale == 0.0 or lam == 0.0 or logits.numel() == 0:
        return ce, RowStatistics(reference, valid, torch.zeros_like(valid), no_rows, no_rows), kept

    row_max = logits.amax(dim=1)
    reference_logit = logits.gather(1, reference.unsqueeze(1)).squeeze(1)
    max_gap = row_max - reference_logit
    beta = options.smooth_max_beta
    unsaturated = valid & (scale * max_gap / 2 <= _saturation_threshold(logits.dtype))
    active = _drop_clear_winners(
        logits, row_max, reference_log_prob, unsaturated & (max_gap == 0), unsaturated, beta
    )

    penalty = (max_gap > 0).to(ce.dtype) * lam  # saturated rows: tanh = 1; winners: 0
    where = active.nonzero(as_tuple=True)  # one nonzero for every use below
    log_sum = _log_sum_exp_beta(logits.movedim(1, -1)[where], row_max[where], beta)
    negative_gap = max_gap[where] + log_sum / beta
    half_scaled_gap = scale * negative_gap / 2
    penalty[where] = lam * torch.tanh(half_scaled_gap)
    decay = torch.exp(-2 * half_scaled_gap)
    sech_squared = 4 * decay / (1 + decay) ** 2
    penalty_slope = class_weight[where] * (lam * scale / 2) * sech_squared
    smooth_max = row_max[where] + log_sum / beta
    loss = ce + class_weight * penalty
    return loss, RowStatistics(reference, valid, active, smooth_max, penalty_slope), kept


def _drop_clear_winners(
    logits: Tensor,
    row_max: Tensor,
    reference_log_prob: Tensor,
    winners: Tensor,
    unsaturated: Tensor,
    beta: float,
) -> Tensor:
    """The mask of elements that need SmoothMax: ``unsaturated`` minus the clear winners.

    A clear winner's reference logit is the maximum and every other logit lies more than
    ``margin = -floor / beta`` below it: each other term of ``sum exp(beta * (z - max))`` is below
    the exp floor, so the gap is 0, the penalty 0 and its gradient 0 in the compute dtype.
    A winner with softmax probability ``p_r > 1 / (1 + exp(-margin))`` is clear without looking
    at its logits (any runner-up has ``p_j <= 1 - p_r < p_r * exp(-margin)``); the other winners
    are checked logit by logit.
    """
    margin = -_exp_floor(logits.dtype) / beta
    confident = reference_log_prob > -math.log1p(math.exp(-margin)) + 1e-6
    unsaturated = unsaturated & ~(winners & confident)
    unsure = winners & ~confident
    unsure_count = int(unsure.sum())
    if unsure_count > 0:
        # Sum of the logits' excess over (max - margin): the max alone contributes `margin`;
        # a runner-up within the margin adds more (a tolerance of 1e-3 * margin admits only
        # runners-up whose exp term is still below the floor's order of magnitude). Most rows
        # are read in place; a few are gathered first.
        class_last = logits.movedim(1, -1)
        where = unsure.nonzero(as_tuple=True)
        if unsure_count > unsure.numel() // 4:
            threshold = (row_max - margin).unsqueeze(-1)
            excess = (class_last - threshold).clamp_min_(0).sum(dim=-1)[where]
        else:
            threshold = (row_max[where] - margin).unsqueeze(-1)
            excess = (class_last[where] - threshold).clamp_min_(0).sum(dim=-1)
        clear = torch.zeros_like(unsure)
        clear[where] = excess <= margin * (1 + 1e-3)
        unsaturated = unsaturated & ~clear
    return unsaturated


def fair_loss_rows_backward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    statistics: RowStatistics,
    grad_loss: Tensor,
    softmax: Optional[Tensor] = None,
) -> Tensor:
    """Gradient of ``sum(grad_loss * rows_loss)`` w.r.t. the logits, built in one buffer.

    Cross-entropy part, with ``p = softmax(z)``, ``eps`` = label smoothing, ``y'`` the smoothed
    target distribution: ``g * ((sum_c w_c y'_c) p - w * y')``. Penalty part on active rows:
    ``g * penalty_slope * (softmax(beta * z) - onehot(r))``. A ``softmax`` buffer of the logits,
    when given, is overwritten with the gradient.
    """
    logits = logits.to(compute_dtype(logits.dtype))
    num_classes = logits.shape[1]
    eps = options.label_smoothing
    grad_loss = grad_loss.to(logits.dtype)
    class_weights = None if weight is None else weight.to(logits.dtype)
    grad = torch.softmax(logits, dim=1) if softmax is None else softmax
    if options.probability_target:
        smoothed = target.to(logits.dtype) * (1 - eps) + eps / num_classes
        if class_weights is not None:
            smoothed.mul_(along_classes(class_weights, logits.dim()))
        grad.mul_((grad_loss * smoothed.sum(dim=1)).unsqueeze(1))
        grad.sub_(smoothed.mul_(grad_loss.unsqueeze(1)))
    else:
        grad_loss = torch.where(statistics.valid, grad_loss, 0.0)
        reference = statistics.reference
        total_weight: float | Tensor
        if class_weights is None:
            target_weight = torch.ones_like(grad_loss)
            total_weight = float(num_classes)
        else:
            target_weight = class_weights[reference]
            total_weight = class_weights.sum()
        row_scale = grad_loss * ((1 - eps) * target_weight + eps * total_weight / num_classes)
        grad.mul_(row_scale.unsqueeze(1))
        picked = -(1 - eps) * grad_loss * target_weight
        grad.scatter_add_(1, reference.unsqueeze(1), picked.unsqueeze(1))
        if eps > 0:
            smoothing_row = (
                torch.ones(num_classes, dtype=grad.dtype, device=grad.device)
                if class_weights is None
                else class_weights
            )
            grad.addcmul_(
                (grad_loss * (eps / num_classes)).unsqueeze(1),
                along_classes(smoothing_row, grad.dim()),
                value=-1,
            )

    if statistics.penalty_slope.numel() > 0:
        where = statistics.active.nonzero(as_tuple=True)
        slope = grad_loss[where] * statistics.penalty_slope
        scaled = (logits.movedim(1, -1)[where] - statistics.smooth_max.unsqueeze(1)).mul_(
            options.smooth_max_beta
        )
        floor = _exp_floor(logits.dtype)
        beta_softmax = torch.threshold_(scaled.clamp_min_(floor).exp_(), math.exp(floor), 0.0)
        penalty_grad = beta_softmax.mul_(slope.unsqueeze(1))
        active_rows = torch.arange(slope.numel(), device=grad.device)
        penalty_grad[active_rows, statistics.reference[where]] -= slope
        # The active elements are distinct: gather, add, scatter back through the class-last view.
        grad_class_last = grad.movedim(1, -1)
        grad_class_last[where] = penalty_grad.add_(grad_class_last[where])
    return grad
