"""Cross-entropy's part of FairLoss, for the implementations that compute it by hand.

It also holds the z-loss (:func:`z_loss_and_slope`), the optional term on the same normalizer.

``F.cross_entropy`` itself is the reference (:func:`fairloss._penalty.fair_loss_composite` calls
it). The fast implementations need its pieces separately, to share passes over the logits with
the penalty: the element loss from log-probabilities they already have, its gradient written
over a softmax buffer, and the ``"mean"`` divisor. Classes lie along dimension 1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fairloss._penalty import FairLossOptions, along_classes, compute_dtype

__all__ = [
    "cross_entropy_from_log_probs",
    "cross_entropy_gradient_",
    "mean_denominator",
    "probability_target_gradient",
    "reference_mask",
    "shifted_logits",
    "z_loss_and_slope",
]


def cross_entropy_from_log_probs(
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
    scale = -(1 - options.label_smoothing) * grad_loss.unsqueeze(1)
    grad = log_probs.mul_(scale)
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


def shifted_logits(logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(z, max, z - max, log sum exp(z - max))``, the start both of CE's passes share.

    ``z`` in the compute dtype; the maximum and the log-normalizer keep the class dimension
    (size 1), ready to broadcast.
    """
    values = logits.to(compute_dtype(logits.dtype))
    row_max = values.amax(dim=1, keepdim=True)
    shifted = values - row_max
    return values, row_max, shifted, shifted.exp().sum(dim=1, keepdim=True).log()


def z_loss_and_slope(log_normalizer: Tensor, z_loss_scale: float) -> tuple[Tensor, Tensor]:
    r"""The z-loss ``z_loss_scale * lse ** 2`` and its slope ``2 * z_loss_scale * lse``.

    ``lse`` is :math:`\log\sum_c e^{z_c}`, the softmax's log-normalizer, per element (PaLM's
    auxiliary loss, which keeps it near 0). Its gradient with respect to the logits is the slope
    times ``softmax(z)``. The caller masks ignored elements.
    """
    return z_loss_scale * log_normalizer.square(), (2 * z_loss_scale) * log_normalizer
