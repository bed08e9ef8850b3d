r"""FairLoss's penalty, stated once: every implementation imports its pieces from here.

For logits :math:`z` with classes along dimension 1, reference class :math:`r`, class weight
:math:`w_r`, :math:`\beta` = ``smooth_max_beta``, :math:`s` = ``scaling_factor`` and
:math:`\lambda` = ``penalty_scale``, each element adds to cross-entropy

.. math::
    w_r\,\lambda\,\tanh(h),\qquad
    h = \tfrac{s}{2}\Big(\underbrace{(\max z - z_r)}_{\text{max gap}}
        + \tfrac{1}{\beta}\log\textstyle\sum_c e^{\beta (z_c - \max z)}\Big)
      = \tfrac{s}{2}\big(\operatorname{SmoothMax}_\beta(z) - z_r\big) \ge 0,

whose gradient is :math:`w_r \lambda \tfrac{s}{2}\operatorname{sech}^2(h)\,
(\operatorname{softmax}(\beta z) - \operatorname{onehot}(r))` (the *slope* times SmoothMax's
gradient minus the reference's one-hot).

This module holds that formula and the numerical rules that let implementations skip work
without changing a result:

* :func:`penalty_and_slope` — the value and the slope from the max gap and SmoothMax's
  normalizer :math:`\sum_c e^{\beta (z_c - \max z)}`; :func:`add_penalty_gradient_` — the
  gradient's form, assembled here only;
* :func:`smooth_max_terms_` / :func:`smooth_max_normalizer` — the normalizer's terms, floored at
  :func:`exp_floor`; :func:`beta_softmax_` turns them into :math:`\operatorname{softmax}(\beta z)`;
* :func:`saturation_threshold` — beyond it, :math:`\tanh(h) = 1` and
  :math:`\operatorname{sech}^2(h) = 0` in the compute dtype; :func:`penalty_candidates`,
  :func:`clear_winners` — the elements whose penalty needs SmoothMax at all (the *clear-winner
  rule*);
* :func:`fair_loss_composite` — the whole loss in plain differentiable PyTorch: the readable
  statement, the reference the tests compare against, and what double backward differentiates.

A new penalty shape means editing :func:`penalty_and_slope` and :func:`fair_loss_composite`
here, and the test oracle.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fairloss._validation import FairLossOptions

__all__ = [
    "add_penalty_gradient_",
    "along_classes",
    "beta_softmax_",
    "clear_winners",
    "compute_dtype",
    "dense_smooth_max_terms",
    "exp_floor",
    "fair_loss_composite",
    "finite_max",
    "penalty_and_slope",
    "penalty_candidates",
    "penalty_weight",
    "reference_class",
    "runner_up_outside_margin",
    "saturation_threshold",
    "smooth_max_normalizer",
    "smooth_max_terms_",
    "winner_margin",
    "z_loss_and_slope",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """FairLoss computes in float64 for float64 input and in float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def exp_floor(dtype: torch.dtype) -> float:
    """The smallest argument SmoothMax's ``exp`` is given; smaller ones are raised to it.

    ``exp`` of arguments far below ``log(tiny)`` is several times slower on CPU (it underflows
    through the subnormals), and its value is lost next to the row's largest term ``exp(0) = 1``.
    """
    return math.log(torch.finfo(dtype).tiny) + 8.0


def saturation_threshold(dtype: torch.dtype) -> float:
    """For ``h`` above this, ``sech(h)**2 <= 4 exp(-2h)`` rounds to 0 and ``tanh(h)`` to 1."""
    finfo = torch.finfo(dtype)  # in logs: tiny * eps is subnormal, 0 where they flush to zero
    return 0.5 * (math.log(4.0) - math.log(finfo.tiny) - math.log(finfo.eps))


def winner_margin(dtype: torch.dtype, smooth_max_beta: float) -> float:
    """A logit more than this below the maximum has its SmoothMax term under the exp floor."""
    return -exp_floor(dtype) / smooth_max_beta


def finite_max(row_max: Tensor) -> Tensor:
    """The maximum to shift logits by: 0 where it is infinite, as ``torch.logsumexp`` shifts.

    A row of ``-inf`` logits (an ignored, fully masked row) then shifts to ``-inf``, not NaN.
    """
    return torch.where(row_max.isinf(), 0.0, row_max)


def along_classes(values: Tensor, ndim: int) -> Tensor:
    """A ``(C,)`` vector shaped to broadcast along dimension 1 of an ``ndim``-dimensional tensor."""
    return values.view(1, -1, *([1] * (ndim - 2)))


def reference_class(
    target: Tensor, options: FairLossOptions, *, clamp: bool = False
) -> tuple[Tensor, Tensor]:
    """The class each element's penalty compares against, and which elements count.

    Returns ``(reference, valid)``: the target index (or the target's argmax over classes, first
    on ties, for probability targets), with ignored elements pointing at class 0; ``valid`` is
    False on ignored elements. ``clamp=True`` (for targets already checked to lie in range) maps a
    negative ``ignore_index`` to 0 with ``clamp_min``, several times cheaper on CPU than
    ``torch.where``; without it any other out-of-range index is kept, so that the gathers that use
    it raise as cross-entropy's do.
    """
    if options.probability_target:
        reference = target.argmax(dim=1)
        return reference, torch.ones_like(reference, dtype=torch.bool)
    valid = target != options.ignore_index
    if clamp and options.ignore_index < 0:
        return target.clamp_min(0), valid
    return torch.where(valid, target, 0), valid


def penalty_weight(
    weight: Optional[Tensor], reference: Tensor, valid: Tensor, dtype: torch.dtype
) -> Tensor:
    """``w[r]`` per element (1 without class weights) in ``dtype``, 0 on ignored elements."""
    if weight is None:
        return valid.to(dtype)
    return weight.to(compute_dtype(weight.dtype))[reference].to(dtype) * valid


def penalty_and_slope(
    max_gap: Tensor,
    beta_normalizer: Tensor,
    class_weight: Tensor,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: Union[float, Tensor],
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
    sech_limit = -exp_floor(max_gap.dtype) / 2
    decay = torch.exp(-2 * half_scaled_gap.clamp_max(sech_limit))
    sech_squared = torch.where(half_scaled_gap < sech_limit, 4 * decay / (1 + decay) ** 2, 0.0)
    # lambda * s / 2 may exceed the dtype's range where sech**2 is tiny: scale in two steps.
    slope = class_weight * penalty_scale * (sech_squared * (scaling_factor / 2))
    return penalty_scale * torch.tanh(half_scaled_gap.clamp_max(20.0)), slope


def smooth_max_terms_(rows: Tensor, row_max: Tensor, smooth_max_beta: float) -> Tensor:
    """``exp(beta * (z_j - max))`` for ``(k, C)`` rows of logits, written over them; arguments
    floored at the exp floor."""
    scaled = rows.sub_(row_max.unsqueeze(1)).mul_(smooth_max_beta)
    return scaled.clamp_min_(exp_floor(rows.dtype)).exp_()


def smooth_max_normalizer(shifted: Tensor, smooth_max_beta: float) -> Tensor:
    """SmoothMax's normalizer ``sum_c exp(beta * (z_c - max))``, arguments floored at the floor.

    ``shifted`` is ``z - max``, classes along dimension 1. The floored terms, ``exp(floor)``
    each, vanish in the rounding of a sum >= 1.
    """
    scaled = (shifted * smooth_max_beta).clamp_min(exp_floor(shifted.dtype))
    return scaled.exp().sum(dim=1)


def dense_smooth_max_terms(shifted: Tensor, smooth_max_beta: float) -> Tensor:
    """``exp(beta * (z - max))`` of every logit, 0 where the argument is under the exp floor.

    ``shifted`` is ``z - max``, classes along dimension 1. Divided by SmoothMax's normalizer this
    is ``softmax(beta * z)``, SmoothMax's gradient, with exact zeros under the floor.
    """
    floor = exp_floor(shifted.dtype)
    scaled = (shifted * smooth_max_beta).clamp_min_(floor)  # exp far out is slow, and unused
    return torch.where(scaled > floor, scaled.exp(), 0.0)


def add_penalty_gradient_(
    grad: Tensor,
    beta_terms: Tensor,
    term_scale: Tensor,
    reference: Tensor,
    amount: Tensor,
    at_reference: Optional[Tensor] = None,
) -> Tensor:
    """Add the penalty's gradient ``c * (softmax(beta * z) - onehot(r))`` to ``grad`` in place.

    ``softmax(beta * z) * c`` is ``beta_terms * term_scale`` (terms of
    :func:`dense_smooth_max_terms` with ``term_scale = c / normalizer``, or rows of
    :func:`beta_softmax_` with ``term_scale = c``); ``amount`` (``c``, or 0 where another rank
    holds ``r``) is subtracted at ``reference``, or through the boolean mask ``at_reference``.
    The two cancel at a clear winner before ``grad`` is added: with a huge ``c`` the other order
    would round ``grad`` away. Classes along dimension 1.
    """
    penalty_grad = beta_terms * term_scale.unsqueeze(1)
    if at_reference is not None:
        penalty_grad.sub_(at_reference * amount.unsqueeze(1))
    else:
        penalty_grad.scatter_add_(1, reference.unsqueeze(1), amount.neg().unsqueeze(1))
    return grad.add_(penalty_grad)


def beta_softmax_(terms: Tensor, term_sum: Tensor) -> Tensor:
    """``softmax(beta * z)`` from :func:`smooth_max_terms_`, in place; floored terms become 0."""
    floor_term = math.exp(exp_floor(terms.dtype))
    return torch.threshold_(terms, floor_term, 0.0).div_(term_sum.unsqueeze(1))


def penalty_candidates(
    max_gap: Tensor, valid: Tensor, reference_log_prob: Tensor, options: FairLossOptions
) -> Tensor:
    """The elements whose penalty may need SmoothMax, from per-element numbers only.

    SmoothMax cannot matter for

    * an element whose reference logit lies below the maximum (``max_gap``) by more than
      ``2 * threshold / s``: it has ``tanh == 1`` and ``sech**2 == 0`` in the compute dtype
      whatever SmoothMax is (SmoothMax >= max);
    * a *clear winner*: the reference logit is the maximum and every other logit lies more than
      :func:`winner_margin` below it, so each other term of ``sum exp(beta * (z - max))`` is
      below the exp floor and the gap, the penalty and its gradient are 0. A winner with softmax
      probability ``p_r > 1 / (1 + exp(-margin))`` is clear without looking at its logits (any
      runner-up has ``p_j <= 1 - p_r < p_r * exp(-margin)``); for the other winners see
      :func:`clear_winners`.
    """
    dtype = max_gap.dtype
    margin = winner_margin(dtype, options.smooth_max_beta)
    unsaturated = max_gap * (options.scaling_factor / 2) <= saturation_threshold(dtype)
    # p_r above the bound (> 1/2) makes the reference the maximum: a clear winner.
    unsure = reference_log_prob <= -math.log1p(math.exp(-margin)) + 1e-6
    return valid & unsaturated & unsure


def clear_winners(
    logits: Tensor, row_max: Tensor, max_gap: Tensor, smooth_max_beta: float
) -> Tensor:
    """The clear winners (see :func:`penalty_candidates`), checked on every logit."""
    margin = winner_margin(logits.dtype, smooth_max_beta)
    return (max_gap == 0) & runner_up_outside_margin(logits, row_max, margin)


def runner_up_outside_margin(logits: Tensor, row_max: Tensor, margin: float) -> Tensor:
    """Whether every logit but the maximum lies more than ``margin`` below it, per element.

    The sum of the logits' excess over ``max - margin`` is ``margin`` from the maximum alone; a
    runner-up within the margin adds more. A tolerance of ``1e-3 * margin`` admits only
    runners-up whose exp term is still below the floor's order of magnitude. The excess is
    ``(z - max) + margin``, not ``z - (max - margin)``: where ``margin`` is below half a unit in
    the last place of ``max`` (float32 logits of a few million), ``max - margin`` rounds to
    ``max`` and tied maxima would look like clear winners.

    Eagerly the rows go :data:`CHECK_BLOCK` numbers at a time, so the temporary excess stays
    small beside the logits (a compiler fuses it away): a logits-sized temporary per chunk of the
    linear head raised its peak memory up to 1.9x, where glibc kept it on a fragmented heap.
    """
    rows = logits.shape[0]
    if not torch.compiler.is_compiling() and logits.numel() > CHECK_BLOCK:
        rows = max(1, CHECK_BLOCK * logits.shape[0] // logits.numel())
    excess = torch.cat(
        [
            (block - block_max.unsqueeze(1)).add_(margin).clamp_min_(0).sum(dim=1)
            for block, block_max in zip(logits.split(rows), row_max.split(rows))
        ]
    )
    return excess <= margin * (1 + 1e-3)


#: Numbers of logits :func:`runner_up_outside_margin` checks at a time (256 KB in float32).
CHECK_BLOCK = 2**16


def fair_loss_composite(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> Tensor:
    """Per-element FairLoss in plain differentiable PyTorch (compute dtype, classes along dim 1).

    ``CE + w[r] * lambda * tanh(s * (SmoothMax(z) - z[r]) / 2) + zeta * logsumexp(z) ** 2``, with
    ``SmoothMax(z) = logsumexp(beta * z) / beta`` written as
    ``max + log(sum exp(beta * (z - max))) / beta``, so that the negative gap
    ``(max - z[r]) + log(...) / beta`` is a sum of two non-negative terms. Autograd derives the
    gradient, and its gradient's gradient. No data-dependent step: it runs on any device.
    """
    logits = logits.to(compute_dtype(logits.dtype))
    class_weight_values = None if weight is None else weight.to(logits.dtype)
    loss = F.cross_entropy(
        logits,
        target,
        class_weight_values,
        ignore_index=options.ignore_index,
        reduction="none",
        label_smoothing=options.label_smoothing,
    )
    reference, valid = reference_class(target, options)
    # `where`, not a product: an all-ignored "mean" divides by 0 and inf * 0 would leak NaN.
    if options.z_loss_scale > 0:
        z_loss, _ = z_loss_and_slope(torch.logsumexp(logits, dim=1), options.z_loss_scale)
        loss = loss + torch.where(valid, z_loss, 0.0)
    if options.penalty_is_off:
        return loss
    assert options.penalty_scale is not None  # resolved for single-device logits
    shifted = logits - finite_max(logits.detach().amax(dim=1, keepdim=True))
    beta = options.smooth_max_beta
    log_sum = smooth_max_normalizer(shifted, beta).log()  # max(shifted) = 0: no second max pass
    shifted_reference = shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
    negative_gap = log_sum / beta - shifted_reference
    penalty = options.penalty_scale * torch.tanh(options.scaling_factor * negative_gap / 2)
    class_weight = penalty_weight(weight, reference, valid, logits.dtype)
    return loss + torch.where(valid, class_weight * penalty, 0.0)


def z_loss_and_slope(log_normalizer: Tensor, z_loss_scale: float) -> tuple[Tensor, Tensor]:
    r"""PaLM's z-loss ``z_loss_scale * lse ** 2`` and its slope ``2 * z_loss_scale * lse``.

    ``lse`` is :math:`\log\sum_c e^{z_c}`, the softmax's log-normalizer, per element. Its gradient
    with respect to the logits is the slope times ``softmax(z)``. The caller masks ignored
    elements.
    """
    return z_loss_scale * log_normalizer.square(), (2 * z_loss_scale) * log_normalizer
