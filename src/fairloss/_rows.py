"""The FairLoss math on logits with classes along dimension 1: ``(R, C)`` rows, or ``(R, C, L)``.

An *element* is one position outside the class dimension; per-element quantities have the
logits' shape without dimension 1. Keeping the class dimension in place (rather than moving it
last) lets ``(N, C, d1, ..., dk)`` inputs use PyTorch's strided softmax kernels without a copy.

Two implementations of one formula live here:

* :func:`fair_loss_rows_composite` — plain differentiable PyTorch; autograd derives its gradient.
  It is the readable statement of the semantics and the one that double backward
  differentiates.
* :func:`fair_loss_rows_forward` / :func:`fair_loss_rows_backward` — the fast path used by
  :class:`fairloss._autograd.FairLossFunction`. It keeps only per-element statistics between
  forward and backward and spends SmoothMax work only on the elements where the penalty is not
  saturated. Its data-dependent steps, :func:`penalty_statistics` and
  :func:`add_penalty_gradient_`, are also what :mod:`fairloss._ops` wraps for ``torch.compile``.

The compiled paths in :mod:`fairloss._autograd` also take the dense pieces from here
(:func:`penalty_and_slope`, :func:`dense_beta_terms`, :func:`cross_entropy_gradient_`).
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
    if options.ignore_index < 0:
        # The usual -100: every valid index is >= 0, and clamp_min is several times cheaper on
        # CPU than torch.where or masked_fill.
        return target.clamp_min(0), valid
    return torch.where(valid, target, 0), valid


def penalty_weight(
    weight: Optional[Tensor], reference: Tensor, valid: Tensor, dtype: torch.dtype
) -> Tensor:
    """``w[r]`` per element (1 without class weights) in ``dtype``, 0 on ignored elements."""
    if weight is None:
        return valid.to(dtype)
    return weight.to(compute_dtype(weight.dtype))[reference].to(dtype) * valid


def _smooth_max_terms(logits: Tensor, row_max: Tensor, beta: float) -> Tensor:
    """``exp(beta * (z_j - max))`` for ``(k, C)`` logits, arguments floored at the exp floor."""
    scaled = (logits - row_max.unsqueeze(1)).mul_(beta).clamp_min_(_exp_floor(logits.dtype))
    return scaled.exp_()


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
    class_weight = penalty_weight(weight, reference, valid, logits.dtype)
    # `where`, not a product: an all-ignored "mean" divides by 0 and inf * 0 would leak NaN.
    return ce + torch.where(valid, class_weight * penalty, 0.0)


def _cross_entropy_from_log_probs(
    log_probs: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    *,
    nll: Optional[Tensor] = None,
) -> Tensor:
    """``F.cross_entropy(..., reduction="none")`` given the log-probabilities, every option.

    ``nll``, for class-index targets, is ``F.nll_loss(..., reduction="none")`` when the caller
    already has it.
    """
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
    ce = nll
    if ce is None:
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
    """What the fast forward keeps for backward: per-element numbers, and the unsaturated rows.

    ``penalty_slope`` is ``w[r] * lambda * s / 2 * sech(s * negative_gap / 2) ** 2`` on the
    elements whose penalty gradient is not exactly zero in the compute dtype, and 0 elsewhere;
    ``beta_normalizer`` holds ``sum_j exp(beta * (z_j - max))`` (floored terms) on the elements
    whose SmoothMax forward computed (0 elsewhere): ``softmax(beta * z)`` is those terms over it.

    When forward keeps them, ``active_index`` lists the flat positions of the elements whose
    SmoothMax it computed and ``active_beta_softmax`` their rows of ``softmax(beta * z)`` (terms
    under the exp floor set to 0), so backward reads no logits for the penalty. They hold the
    unsaturated elements only: nothing in the usual case, at worst (every element unsaturated)
    as much as cross-entropy's saved log-softmax. Without them backward recomputes those rows.
    """

    reference: Tensor
    valid: Optional[Tensor]  # None: every element counts
    beta_normalizer: Tensor
    penalty_slope: Tensor
    active_index: Optional[Tensor] = None
    active_beta_softmax: Optional[Tensor] = None


def fair_loss_rows_forward(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    *,
    keep_active_rows: bool = False,
) -> tuple[Tensor, RowStatistics]:
    """Per-element FairLoss without autograd, and the statistics backward needs.

    ``keep_active_rows`` fills :class:`RowStatistics`' ``active_*`` fields (faster backward);
    callers that hold many statistics at once (the chunked linear head) leave it off.
    """
    loss, statistics, _ = _forward(
        logits, target, weight, options, keep_log_probs=False, keep_active_rows=keep_active_rows
    )
    return loss, statistics


def fair_loss_rows_forward_backward(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> tuple[Tensor, RowStatistics, Tensor]:
    """Per-row FairLoss and its gradient for an upstream gradient of ones, in one go.

    For summed losses whose gradient is wanted at once (the chunked linear path): forward's
    log-softmax buffer becomes backward's softmax in place, saving a pass and an allocation.
    """
    loss, statistics, log_probs = _forward(
        logits, target, weight, options, keep_log_probs=True, keep_active_rows=True
    )
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
    keep_active_rows: bool,
) -> tuple[Tensor, RowStatistics, Optional[Tensor]]:
    """Per-row FairLoss without autograd, the statistics backward needs, and maybe log_softmax."""
    logits = logits.to(compute_dtype(logits.dtype))
    log_probs = torch.log_softmax(logits, dim=1)
    reference, valid = reference_class(target, options)
    reference_log_prob = log_probs.gather(1, reference.unsqueeze(1)).squeeze(1)
    class_weight = penalty_weight(weight, reference, valid, logits.dtype)
    nll = None
    all_valid = options.probability_target or bool(valid.all())
    if not options.probability_target:  # the gathered log-probability saves nll_loss's gather
        nll = torch.mul(class_weight, reference_log_prob).neg_()
        if not all_valid:  # 0 * -inf on an ignored element would be NaN
            nll = torch.where(valid, nll, 0.0)
    kept_valid = None if all_valid else valid
    ce = _cross_entropy_from_log_probs(log_probs, target, weight, options, nll=nll)
    kept = log_probs if keep_log_probs else None
    del log_probs
    if options.scaling_factor == 0.0 or options.penalty_scale == 0.0 or logits.numel() == 0:
        zeros = torch.zeros_like(ce)
        return ce, RowStatistics(reference, kept_valid, zeros, zeros), kept
    row_max = logits.amax(dim=1)
    max_gap = row_max - logits.gather(1, reference.unsqueeze(1)).squeeze(1)
    candidates = penalty_candidates(max_gap, valid, reference_log_prob, options)
    penalty, beta_normalizer, penalty_slope, active = penalty_statistics(
        logits,
        reference,
        class_weight,
        row_max,
        max_gap,
        candidates,
        options.smooth_max_beta,
        options.scaling_factor,
        options.penalty_scale,
        keep_active_rows=keep_active_rows,
    )
    loss = ce.addcmul_(class_weight, penalty)  # ce is this function's own tensor
    statistics = RowStatistics(reference, kept_valid, beta_normalizer, penalty_slope, *active)
    return loss, statistics, kept


def _winner_margin(dtype: torch.dtype, beta: float) -> float:
    # A logit more than this below the maximum has its SmoothMax term under the exp floor.
    return -_exp_floor(dtype) / beta


def penalty_candidates(
    max_gap: Tensor, valid: Tensor, reference_log_prob: Tensor, options: FairLossOptions
) -> Tensor:
    """The elements whose penalty may need SmoothMax, from per-element numbers only.

    SmoothMax cannot matter for

    * an element whose reference logit lies below the maximum (``max_gap``) by more than
      ``2 * threshold / s``: it has ``tanh == 1`` and ``sech**2 == 0`` in the compute dtype
      whatever SmoothMax is (SmoothMax >= max);
    * a *clear winner*: the reference logit is the maximum and every other logit lies more than
      ``margin = -floor / beta`` below it, so each other term of ``sum exp(beta * (z - max))``
      is below the exp floor and the gap, the penalty and its gradient are 0. A winner with
      softmax probability ``p_r > 1 / (1 + exp(-margin))`` is clear without looking at its
      logits (any runner-up has ``p_j <= 1 - p_r < p_r * exp(-margin)``); for the other winners
      see :func:`clear_winners`.
    """
    dtype = max_gap.dtype
    margin = _winner_margin(dtype, options.smooth_max_beta)
    unsaturated = max_gap * (options.scaling_factor / 2) <= _saturation_threshold(dtype)
    # p_r above the bound (> 1/2) makes the reference the maximum: a clear winner.
    unsure = reference_log_prob <= -math.log1p(math.exp(-margin)) + 1e-6
    return valid & unsaturated & unsure


def clear_winners(
    logits: Tensor, row_max: Tensor, max_gap: Tensor, smooth_max_beta: float
) -> Tensor:
    """The clear winners (see :func:`penalty_candidates`), checked on every logit."""
    margin = _winner_margin(logits.dtype, smooth_max_beta)
    return (max_gap == 0) & _runner_up_outside_margin(logits, row_max, margin)


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
    *,
    keep_active_rows: bool = False,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """The penalty ``lambda * tanh(s * negative_gap / 2)`` per element, and what its gradient needs.

    Takes the logits with per-element numbers the caller computed alongside cross-entropy: the
    row maximum, ``max_gap = max - z[r]`` and :func:`penalty_candidates` (which a caller may
    already have narrowed with :func:`clear_winners`). Returns ``(penalty, beta_normalizer,
    penalty_slope, active)`` as described in :class:`RowStatistics`, with ``active`` =
    ``(active_index, active_beta_softmax)`` when ``keep_active_rows`` (else empty); the penalty
    is not yet multiplied by the class weight. Equal to :func:`fair_loss_rows_composite`'s
    penalty: SmoothMax is computed on the candidates only, the other elements get ``lambda``
    (saturated) or 0 (clear winners).
    """
    beta, scale, lam = smooth_max_beta, scaling_factor, penalty_scale
    penalty = max_gap.sign().mul_(lam)  # saturated elements: tanh = 1; winners (gap 0): 0
    beta_normalizer = torch.zeros_like(penalty)
    penalty_slope = torch.zeros_like(penalty)
    flat = candidates.reshape(-1).nonzero().squeeze(1)
    if flat.numel() > candidates.numel() // 4:
        # Mostly winners to check (trained logits): read the logits in place rather than
        # gathering most of them, and drop the clear winners.
        narrowed = candidates & ~clear_winners(logits, row_max, max_gap, beta)
        flat = narrowed.reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return penalty, beta_normalizer, penalty_slope, ()

    rows = logits.movedim(1, -1)[_element_index(flat, logits)]  # (k, C)
    rows_max = row_max.reshape(-1)[flat]
    rows_gap = max_gap.reshape(-1)[flat]
    terms = _smooth_max_terms(rows, rows_max, beta)
    term_sum = terms.sum(dim=1)
    rows_penalty, slope = penalty_and_slope(
        rows_gap, term_sum, class_weight.reshape(-1)[flat], beta, scale, lam
    )
    margin = _winner_margin(logits.dtype, beta)
    slope.masked_fill_((rows_gap == 0) & _runner_up_outside_margin(rows, rows_max, margin), 0.0)
    penalty.view(-1).index_copy_(0, flat, rows_penalty)
    penalty_slope.view(-1).index_copy_(0, flat, slope)
    beta_normalizer.view(-1).index_copy_(0, flat, term_sum)
    if not keep_active_rows:
        return penalty, beta_normalizer, penalty_slope, ()
    active = (slope != 0).nonzero().squeeze(1)  # clear winners out: no gradient to add
    beta_softmax = _beta_softmax_(terms[active], term_sum[active])
    return penalty, beta_normalizer, penalty_slope, (flat[active], beta_softmax)


def penalty_and_slope(
    max_gap: Tensor,
    beta_normalizer: Tensor,
    class_weight: Tensor,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: float,
) -> tuple[Tensor, Tensor]:
    """The penalty ``lambda * tanh(h)`` and its slope ``w[r] * lambda * s / 2 * sech(h) ** 2``.

    ``h = s * negative_gap / 2`` with ``negative_gap = max_gap + log(beta_normalizer) / beta``;
    ``sech(h) ** 2`` is ``4 e / (1 + e) ** 2`` with ``e = exp(-2 h)`` (``h >= 0``), which goes to
    0 without overflow.

    Most elements saturate, with ``h`` in the hundreds, and vectorized ``tanh`` and ``exp`` are
    several times slower on such arguments (``exp`` most of all where its result is subnormal).
    So ``tanh`` reads ``h`` capped at 20, where it rounds to 1 in float32 and float64, and
    ``sech ** 2`` is 0 from ``h = -floor / 2`` on, where it is below ``4 exp(floor)``.
    """
    half_scaled_gap = scaling_factor * (max_gap + beta_normalizer.log() / smooth_max_beta) / 2
    sech_limit = -_exp_floor(max_gap.dtype) / 2
    decay = torch.exp(-2 * half_scaled_gap.clamp_max(sech_limit))
    sech_squared = torch.where(half_scaled_gap < sech_limit, 4 * decay / (1 + decay) ** 2, 0.0)
    slope = class_weight * (penalty_scale * scaling_factor / 2) * sech_squared
    return penalty_scale * torch.tanh(half_scaled_gap.clamp_max(20.0)), slope


def dense_beta_terms(shifted: Tensor, smooth_max_beta: float) -> Tensor:
    """``exp(beta * (z - max))`` of every logit, 0 where the argument is under the exp floor.

    ``shifted`` is ``z - max``. Summed over classes this is SmoothMax's normalizer (the
    composite's floored terms, ``exp(floor)`` each, vanish in the rounding of a sum >= 1);
    divided by it, ``softmax(beta * z)``, the SmoothMax's gradient.
    """
    floor = _exp_floor(shifted.dtype)
    scaled = (shifted * smooth_max_beta).clamp_min(floor)  # exp far out is slow, and unused
    return torch.where(scaled > floor, scaled.exp(), 0.0)


def _element_index(flat: Tensor, logits: Tensor) -> tuple[Tensor, ...]:
    """Index of flat element positions into ``logits.movedim(1, -1)``: ``(row,)``/``(row, l)``."""
    if logits.dim() == 2:
        return (flat,)
    positions = logits.shape[2]
    return (flat // positions, flat % positions)


def _runner_up_outside_margin(logits: Tensor, row_max: Tensor, margin: float) -> Tensor:
    """Whether every logit but the maximum lies more than ``margin`` below it, per element.

    The sum of the logits' excess over ``max - margin`` is ``margin`` from the maximum alone; a
    runner-up within the margin adds more. A tolerance of ``1e-3 * margin`` admits only
    runners-up whose exp term is still below the floor's order of magnitude. The excess is
    ``(z - max) + margin``, not ``z - (max - margin)``: where ``margin`` is below half a unit in
    the last place of ``max`` (float32 logits of a few million), ``max - margin`` rounds to
    ``max`` and tied maxima would look like clear winners.
    """
    excess = (logits - row_max.unsqueeze(1)).add_(margin).clamp_min_(0).sum(dim=1)
    return excess <= margin * (1 + 1e-3)


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

    Cross-entropy's part (:func:`cross_entropy_gradient_`) plus, on the elements with a nonzero
    penalty slope, ``grad_loss * penalty_slope * (softmax(beta * z) - onehot(r))``. A ``softmax``
    buffer of the logits, when given, is overwritten with the gradient.
    """
    logits = logits.to(compute_dtype(logits.dtype))
    grad_loss = kept_gradient(grad_loss.to(logits.dtype), statistics.valid)
    probs = torch.softmax(logits, dim=1) if softmax is None else softmax
    grad = cross_entropy_gradient_(probs, target, weight, options, statistics.reference, grad_loss)
    penalty_gradient_scale = grad_loss * statistics.penalty_slope
    if statistics.active_index is None:
        add_penalty_gradient_(
            grad,
            logits,
            statistics.reference,
            statistics.beta_normalizer,
            penalty_gradient_scale,
            options.smooth_max_beta,
        )
    else:
        assert statistics.active_beta_softmax is not None  # kept together
        _add_rows_penalty_gradient_(
            grad,
            statistics.reference,
            penalty_gradient_scale,
            statistics.active_index,
            statistics.active_beta_softmax,
        )
    return grad


def kept_gradient(grad_loss: Tensor, valid: Optional[Tensor]) -> Tensor:
    """``grad_loss`` with 0 on ignored elements (``valid`` None: there are none)."""
    return grad_loss if valid is None else torch.where(valid, grad_loss, 0.0)


def cross_entropy_gradient_(
    probs: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    reference: Tensor,
    grad_loss: Tensor,
    reference_mask: Optional[Tensor] = None,
) -> Tensor:
    """Cross-entropy's gradient ``g * ((sum_c w_c y'_c) p - w * y')``, written over ``probs``.

    ``p = softmax(z)`` (``probs``, overwritten and returned), ``eps`` = label smoothing, ``y'``
    the smoothed target distribution, ``g`` = ``grad_loss``, already 0 on ignored elements;
    ``reference`` is the target index with ignored elements pointing at class 0. Given
    ``reference_mask`` (:func:`reference_mask`), the target's term is subtracted through it
    rather than scattered: a compiler fuses the mask into its pass over the logits, while it
    runs a scatter as a separate kernel.
    """
    num_classes = probs.shape[1]
    eps = options.label_smoothing
    class_weights = None if weight is None else weight.to(probs.dtype)
    grad = probs
    if options.probability_target:
        smoothed = target.to(probs.dtype) * (1 - eps) + eps / num_classes
        if class_weights is not None:
            smoothed.mul_(along_classes(class_weights, probs.dim()))
        grad.mul_((grad_loss * smoothed.sum(dim=1)).unsqueeze(1))
        return grad.sub_(smoothed.mul_(grad_loss.unsqueeze(1)))

    if class_weights is None and eps == 0.0:  # the common case, in two passes
        grad.mul_(grad_loss.unsqueeze(1))
        return _subtract_at_reference_(grad, reference, grad_loss, reference_mask)
    total_weight: float | Tensor
    if class_weights is None:
        target_weight = torch.ones_like(grad_loss)
        total_weight = float(num_classes)
    else:
        target_weight = class_weights[reference]
        total_weight = class_weights.sum()
    row_scale = grad_loss * ((1 - eps) * target_weight + eps * total_weight / num_classes)
    grad.mul_(row_scale.unsqueeze(1))
    if eps > 0:  # before the scatter: a compiler fuses it into the pass above, not after it
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
    return _subtract_at_reference_(
        grad, reference, (1 - eps) * grad_loss * target_weight, reference_mask
    )


def _subtract_at_reference_(
    grad: Tensor, reference: Tensor, amount: Tensor, reference_mask: Optional[Tensor]
) -> Tensor:
    """``grad[:, reference] -= amount`` per element: scattered, or through ``reference_mask``."""
    if reference_mask is None:
        return grad.scatter_add_(1, reference.unsqueeze(1), -amount.unsqueeze(1))
    return grad.sub_(reference_mask * amount.unsqueeze(1))


def reference_mask(logits: Tensor, reference: Tensor) -> Tensor:
    """``onehot(reference)`` along dimension 1 of ``logits``, as a boolean tensor."""
    classes = torch.arange(logits.shape[1], device=logits.device)
    return along_classes(classes, logits.dim()) == reference.unsqueeze(1)


def add_penalty_gradient_(
    grad: Tensor,
    logits: Tensor,
    reference: Tensor,
    beta_normalizer: Tensor,
    penalty_gradient_scale: Tensor,
    smooth_max_beta: float,
) -> None:
    """Add the penalty's gradient ``c * (softmax(beta * z) - onehot(r))`` to ``grad`` in place.

    ``c`` = ``penalty_gradient_scale`` per element; only elements with ``c != 0`` are touched,
    and ``softmax(beta * z)`` is recomputed on those rows only, exactly as forward computed it:
    floored ``exp(beta * (z - max))`` terms over ``beta_normalizer``.
    """
    flat = penalty_gradient_scale.reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return
    rows = logits.movedim(1, -1)[_element_index(flat, logits)]
    terms = _smooth_max_terms(rows, rows.amax(dim=1), smooth_max_beta)
    beta_softmax = _beta_softmax_(terms, beta_normalizer.reshape(-1)[flat])
    _add_rows_penalty_gradient_(grad, reference, penalty_gradient_scale, flat, beta_softmax)


def _beta_softmax_(terms: Tensor, term_sum: Tensor) -> Tensor:
    """``softmax(beta * z)`` from the floored terms, in place; floored terms become exact zeros."""
    floor_term = math.exp(_exp_floor(terms.dtype))
    return torch.threshold_(terms, floor_term, 0.0).div_(term_sum.unsqueeze(1))


def _add_rows_penalty_gradient_(
    grad: Tensor,
    reference: Tensor,
    penalty_gradient_scale: Tensor,
    flat: Tensor,
    beta_softmax: Tensor,
) -> None:
    """Add ``c * (softmax(beta * z) - onehot(r))`` at the elements ``flat`` of ``grad``."""
    slope = penalty_gradient_scale.reshape(-1)[flat].unsqueeze(1)
    penalty_grad = beta_softmax * slope
    reference_column = reference.reshape(-1)[flat].unsqueeze(1)
    penalty_grad.scatter_add_(1, reference_column, -slope)
    # The elements are distinct: gather, add, scatter back (cheaper than an accumulating put).
    grad_class_last = grad.movedim(1, -1)
    index = _element_index(flat, grad)
    grad_class_last[index] = penalty_grad.add_(grad_class_last[index])
