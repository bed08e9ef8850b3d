"""Symmetric label noise, injected into the training labels only."""

from __future__ import annotations

import torch
from torch import Tensor

from fairloss._validation import expected

__all__ = ["noisy_label_count", "symmetric_label_noise"]


def noisy_label_count(rate: float, num_samples: int) -> int:
    """How many labels :func:`symmetric_label_noise` changes: ``round(rate * num_samples)``.

    Python's ``round`` rounds halves to the even neighbour.

    Example:
        >>> noisy_label_count(0.3, 1077)
        323
    """
    return round(rate * num_samples)


def symmetric_label_noise(
    labels: Tensor, rate: float, num_classes: int, generator: torch.Generator
) -> Tensor:
    r"""Flip exactly ``round(rate * N)`` labels, each to a uniformly chosen *different* class.

    The labels to flip are a uniformly random subset of size :math:`k = \operatorname{round}(
    \eta N)`, :math:`\eta` = ``rate``; each flipped label :math:`y` becomes
    :math:`(y + o) \bmod C` with an offset :math:`o` drawn uniformly from :math:`\{1, \dots, C-1\}`,
    which is a uniform draw among the :math:`C - 1` other classes. So the realized noise rate is
    exactly :math:`k / N` (no flip lands back on the true class, as it can in the variant that
    draws the new label from all :math:`C` classes), and a sample's label is kept with
    probability :math:`1 - k/N` and becomes any given other class with probability
    :math:`k / (N (C - 1))`. The compare command applies it to the training split only;
    validation and test labels stay clean.

    Args:
        labels (Tensor): class indices in :math:`[0, C)`, shape :math:`(N,)`; not modified.
        rate (float): the noise rate :math:`\eta \in [0, 1]`.
        num_classes (int): the number of classes :math:`C`, at least 2.
        generator (torch.Generator): the source of randomness, for reproducible noise.

    Returns:
        Tensor: a new label tensor, equal to ``labels`` except at the flipped positions.

    Raises:
        ValueError: ``rate`` outside :math:`[0, 1]`; ``num_classes`` below 2; ``labels`` not of
            shape :math:`(N,)` or outside :math:`[0, C)`.
        TypeError: ``labels`` not an integer tensor.

    Example:
        >>> labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
        >>> noisy = symmetric_label_noise(labels, 0.3, 3, torch.Generator().manual_seed(0))
        >>> int((noisy != labels).sum())
        3
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(expected("rate", "a number in [0, 1]", repr(rate)))
    if num_classes < 2:
        raise ValueError(expected("num_classes", "an integer of at least 2", repr(num_classes)))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(expected("labels", "an integer tensor of class indices", labels.dtype))
    if labels.dim() != 1:
        raise ValueError(
            expected("labels", "a tensor of shape (N,)", f"shape {tuple(labels.shape)}")
        )
    if labels.numel() > 0 and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            expected("labels", f"class indices in [0, {num_classes})", labels.unique().tolist())
        )
    count = noisy_label_count(rate, labels.shape[0])
    flipped = torch.randperm(labels.shape[0], generator=generator)[:count]
    offsets = torch.randint(1, num_classes, (count,), generator=generator)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + offsets.to(labels.dtype)) % num_classes
    return noisy
