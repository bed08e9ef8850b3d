r"""Cross-entropy's part of FairLoss from per-element numbers, and the reduction.

``F.cross_entropy`` is the reference (:func:`fairloss._penalty.fair_loss_composite` calls it).
The other implementations reduce the logits to a few numbers per element, so that they share
their passes with the penalty and, sharded by class, add up over ranks. With
:math:`x_c = z_c - M` (or :math:`\log p_c`, where :math:`\log S = 0`), class weights :math:`w`
(ones without), :math:`W = \sum_c w_c`, target probabilities :math:`y` (the one-hot of an index
target :math:`r`) and label smoothing :math:`\varepsilon`:

.. math::
    \operatorname{CE} = (1 - \varepsilon)\,(m \log S - d)
        + \tfrac{\varepsilon}{C}\,(W \log S - e),\qquad
    m = \textstyle\sum_c w_c y_c,\quad d = \sum_c w_c y_c x_c,\quad e = \sum_c w_c x_c,

with :math:`S = \sum_c e^{x_c}`; its gradient is
:math:`g\,\big(a\,\operatorname{softmax}(z) - (1 - \varepsilon)\,w \odot y
- \tfrac{\varepsilon}{C} w\big)` with :math:`a = (1 - \varepsilon) m + \varepsilon W / C` (plus
the z-loss's slope, which multiplies the same softmax). :func:`probability_target_sums` and
:func:`smoothing_sum` compute :math:`m, d, e` (for class indices :math:`m = w_r`,
:math:`d = w_r x_r`); :func:`cross_entropy_rows` the loss and :math:`a`;
:func:`cross_entropy_gradient_` the gradient. Classes lie along dimension 1.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from fairloss._penalty import along_classes, compute_dtype, z_loss_and_slope
from fairloss._validation import FairLossOptions

__all__ = [
    "CrossEntropyRows",
    "cross_entropy_gradient_",
    "cross_entropy_rows",
    "mean_denominator",
    "probability_target_gradient",
    "probability_target_sums",
    "reduce",
    "smoothing_sum",
]

Number = Union[int, float, Tensor]


class CrossEntropyRows(NamedTuple):
    """Per element: the loss (0 on ignored elements), the coefficient :math:`a` of
    ``softmax(z)`` in its gradient, and the amount :math:`(1 - \\varepsilon) w_r` subtracted at
    the target index (class-index targets; 0 where another rank holds the target)."""

    loss: Tensor
    softmax_scale: Tensor
    reference_amount: Tensor


def probability_target_sums(
    shifted: Tensor, target: Tensor, weight: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """:math:`m` and :math:`d` of class-probability targets, from ``shifted`` (:math:`x`).

    For class indices they are :math:`w_r` and :math:`w_r x_r`, which callers have at hand.
    """
    weighted_target = target.to(shifted.dtype)
    if weight is not None:
        weighted_target = weighted_target * along_classes(weight.to(shifted.dtype), shifted.dim())
    return weighted_target.sum(dim=1), (weighted_target * shifted).sum(dim=1)


def smoothing_sum(shifted: Tensor, weight: Optional[Tensor]) -> Tensor:
    """:math:`e = \\sum_c w_c x_c`, label smoothing's sum over every class."""
    if weight is None:
        return shifted.sum(dim=1)
    return (shifted * along_classes(weight.to(shifted.dtype), shifted.dim())).sum(dim=1)


def cross_entropy_rows(
    mass: Tensor,
    target_shift: Tensor,
    smoothing: Optional[Tensor],
    log_normalizer: Optional[Tensor],
    valid: Optional[Tensor],
    options: FairLossOptions,
    *,
    num_classes: Number,
    total_weight: Number,
    log_sum_exp: Optional[Callable[[], Tensor]] = None,
) -> CrossEntropyRows:
    """The element losses and gradient coefficients from :math:`m, d` and :math:`e`.

    ``smoothing`` (:math:`e`) is needed with label smoothing only. ``log_normalizer`` is
    :math:`\\log S` (None: 0, for sums over log-probabilities); ``valid`` is False on ignored
    elements (None: every element counts); ``total_weight`` is :math:`W`. With a z-loss,
    ``log_sum_exp()`` gives :math:`\\log\\sum_c e^{z_c}`.
    """
    eps = options.label_smoothing
    loss = -target_shift if log_normalizer is None else mass * log_normalizer - target_shift
    softmax_scale = mass
    if eps > 0:
        assert smoothing is not None  # given with label smoothing
        uniform = -smoothing
        if log_normalizer is not None:
            uniform = uniform + total_weight * log_normalizer
        loss = (1 - eps) * loss + (eps / num_classes) * uniform
        softmax_scale = (1 - eps) * mass + eps * total_weight / num_classes
    if valid is not None:  # `where`: 0 * inf on an ignored element would be NaN
        loss = torch.where(valid, loss, 0.0)
    if options.z_loss_scale > 0:
        assert log_sum_exp is not None  # given with a z-loss
        z_loss, slope = z_loss_and_slope(log_sum_exp(), options.z_loss_scale)
        if valid is not None:
            z_loss, slope = torch.where(valid, z_loss, 0.0), torch.where(valid, slope, 0.0)
        loss, softmax_scale = loss + z_loss, softmax_scale + slope
    return CrossEntropyRows(loss, softmax_scale, (1 - eps) * mass)


def cross_entropy_gradient_(
    probs: Tensor,
    rows: CrossEntropyRows,
    grad_loss: Tensor,
    reference: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    *,
    num_classes: Number,
    at_reference: Optional[Tensor] = None,
) -> Tensor:
    """``g * (a * p - (1 - eps) * w * y - eps / C * w)``, written over ``probs`` (``p``).

    ``grad_loss`` (``g``) is 0 on ignored elements; ``reference`` is the target index, within
    range. The target's term of class indices is scattered, or subtracted through the boolean
    ``at_reference`` when given (a compiler fuses a mask into its pass, not a scatter).
    """
    grad = probs.mul_((grad_loss * rows.softmax_scale).unsqueeze(1))
    eps = options.label_smoothing
    weight_along = None if weight is None else along_classes(weight.to(grad.dtype), grad.dim())
    if options.probability_target:
        weighted_target = target.to(grad.dtype) * (1 - eps)
        if weight_along is not None:
            weighted_target = weighted_target.mul_(weight_along)
        grad.addcmul_(weighted_target, grad_loss.unsqueeze(1), value=-1)
    else:
        amount = (grad_loss * rows.reference_amount).unsqueeze(1)
        if at_reference is None:
            grad.scatter_add_(1, reference.unsqueeze(1), amount.neg())
        else:
            grad.sub_(at_reference * amount)
    if eps > 0:
        per_class = torch.ones_like(grad[:1]) if weight_along is None else weight_along
        grad.addcmul_(per_class, (grad_loss * (eps / num_classes)).unsqueeze(1), value=-1)
    return grad


def probability_target_gradient(
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
    grad = log_probs.mul_(-(1 - options.label_smoothing) * grad_loss.unsqueeze(1))
    if weight is not None:
        grad.mul_(along_classes(weight.to(grad.dtype), grad.dim()))
    return grad.to(target.dtype)


def mean_denominator(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> Tensor:
    """Cross-entropy's ``"mean"`` divisor: total target weight, or the element count.

    ``logits`` has its classes along dimension 1 and is used for its shape, dtype and device
    only (a meta tensor of the logits' shape does as well).
    """
    dtype = compute_dtype(logits.dtype)
    if options.probability_target:
        element_count = logits.numel() // logits.shape[1] if logits.shape[1] else 0
        # A fill, not torch.tensor(...): copying a host number to a GPU would synchronise.
        return torch.full((), float(element_count), dtype=dtype, device=logits.device)
    valid = target != options.ignore_index
    if weight is None:
        return valid.sum().to(dtype)
    safe_target = target.masked_fill(~valid, 0)
    return (weight.to(dtype)[safe_target] * valid).sum()


def reduce(
    element_loss: Tensor,
    reduction: str,
    denominator: Callable[[], Tensor],
    output_dtype: torch.dtype,
    shape: tuple[int, ...],
) -> Tensor:
    """``"none"``: the element losses in ``shape``; ``"sum"``; ``"mean"``: sum / denominator."""
    if reduction == "none":
        return element_loss.reshape(shape).to(output_dtype)
    total = element_loss.sum()
    if reduction == "mean":
        total = total / denominator()
    return total.to(output_dtype)
