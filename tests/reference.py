"""An independent float64 oracle for FairLoss, written straight from the formulas.

It shares no code with the library: plain tensor algebra in float64, autograd for gradients.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor


def fair_loss_reference(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    smooth_max_beta: float = 1000.0,
    scaling_factor: float = 1000.0,
    penalty_scale: Optional[float] = None,
    z_loss_scale: float = 0.0,
) -> Tensor:
    """FairLoss in float64; differentiable w.r.t. ``input`` (and probability ``target``).

    ``z_loss_scale`` adds PaLM's z-loss ``z_loss_scale * logsumexp(z) ** 2`` per counted element.
    """
    logits = input.double()
    probability_target = target.is_floating_point()
    if logits.dim() == 1:
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
        element_shape: tuple[int, ...] = ()
    else:
        element_shape = (logits.shape[0], *logits.shape[2:])
        logits = logits.movedim(1, -1)
        if probability_target:
            target = target.movedim(1, -1)
    num_classes = logits.shape[-1]
    logits = logits.reshape(-1, num_classes)
    class_weight = (
        torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
    )
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    eps = label_smoothing

    if probability_target:
        probs = target.reshape(-1, num_classes).double()
        smoothed = probs * (1 - eps) + eps / num_classes
        cross_entropy = -(class_weight * smoothed * log_probs).sum(-1)
        reference = probs.argmax(-1)
        valid = torch.ones_like(reference, dtype=torch.bool)
    else:
        labels = target.reshape(-1)
        valid = labels != ignore_index
        reference = torch.where(valid, labels, torch.zeros_like(labels))
        picked = -class_weight[reference] * log_probs.gather(1, reference[:, None]).squeeze(1)
        uniform = -(class_weight * log_probs).sum(-1) / num_classes
        cross_entropy = torch.where(valid, (1 - eps) * picked + eps * uniform, 0.0)

    beta = smooth_max_beta
    smooth_max = torch.logsumexp(beta * logits, dim=-1) / beta
    gap = logits.gather(1, reference[:, None]).squeeze(1) - smooth_max
    lam = 1.0 / num_classes if penalty_scale is None else penalty_scale
    penalty = lam * torch.tanh(-scaling_factor * gap / 2)
    z_loss = z_loss_scale * torch.logsumexp(logits, dim=-1) ** 2
    loss = cross_entropy + torch.where(valid, class_weight[reference] * penalty + z_loss, 0.0)

    if reduction == "none":
        return loss.reshape(element_shape)
    if reduction == "sum":
        return loss.sum()
    if probability_target:
        return loss.sum() / loss.shape[0]
    return loss.sum() / torch.where(valid, class_weight[reference], 0.0).sum()


def linear_fair_loss_reference(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    softcap: Optional[float] = None,
    reduction: str = "mean",
    **options: Any,
) -> Tensor:
    """The linear head ``(*, H) -> (*, V)`` in float64, capped at ``softcap * tanh(z / softcap)``
    (Gemma 2) when given, then :func:`fair_loss_reference` of its rows; ``"none"``: shape ``(*)``.
    """
    bias = None if linear_bias is None else linear_bias.double()
    logits = torch.nn.functional.linear(input.double(), linear_weight.double(), bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = fair_loss_reference(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        None if weight is None else weight.double(),
        reduction=reduction,
        **options,
    )
    return loss.reshape(target.shape) if reduction == "none" else loss


def seed_penalty(gap: float, num_classes: int, scaling_factor: float = 1000.0) -> float:
    """The 0.1.1 penalty written as it is documented: ``(2 * sigmoid(-s * gap) - 1) / C``."""
    return (2.0 / (1.0 + math.exp(scaling_factor * gap)) - 1.0) / num_classes
