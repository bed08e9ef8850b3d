"""Label noise, injected into the training labels only: symmetric and pair-flip."""

from __future__ import annotations

import torch
from torch import Tensor

from experiments.checks import expected

__all__ = [
    "NOISE_TYPES",
    "add_label_noise",
    "noisy_label_count",
    "pair_flip_label_noise",
    "symmetric_label_noise",
]

NOISE_TYPES = ("symmetric", "pair")
"""The noise models: ``"symmetric"`` (:func:`symmetric_label_noise`) and ``"pair"``
(:func:`pair_flip_label_noise`)."""


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
    check_noise_arguments(labels, rate, num_classes)
    count = noisy_label_count(rate, labels.shape[0])
    flipped = torch.randperm(labels.shape[0], generator=generator)[:count]
    offsets = torch.randint(1, num_classes, (count,), generator=generator)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + offsets.to(labels.dtype)) % num_classes
    return noisy


def check_noise_arguments(labels: Tensor, rate: float, num_classes: int) -> None:
    """The checks every noise model shares; see :func:`symmetric_label_noise`'s ``Raises``."""
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


def pair_flip_label_noise(
    labels: Tensor, rate: float, num_classes: int, generator: torch.Generator
) -> Tensor:
    r"""Pair-flip (asymmetric) noise: flip exactly ``round(rate * N)`` labels to the next class.

    The labels to flip are a uniformly random subset of size :math:`k = \operatorname{round}(
    \eta N)`, :math:`\eta` = ``rate``; each flipped label :math:`y` becomes
    :math:`(y + 1) \bmod C`. This is the "pair" noise of the noisy-label literature (each class
    is confused with one fixed neighbour, as Han et al. 2018, "Co-teaching", use it), with an exact
    count as :func:`symmetric_label_noise` has. For :math:`C = 2` the two models are the same. The
    compare command applies it to the training split only.

    Args:
        labels (Tensor): class indices in :math:`[0, C)`, shape :math:`(N,)`; not modified.
        rate (float): the noise rate :math:`\eta \in [0, 1]`.
        num_classes (int): the number of classes :math:`C`, at least 2.
        generator (torch.Generator): the source of randomness, for reproducible noise.

    Returns:
        Tensor: a new label tensor, equal to ``labels`` except at the flipped positions.

    Raises:
        ValueError, TypeError: as :func:`symmetric_label_noise`.

    Example:
        >>> labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
        >>> pair_flip_label_noise(labels, 0.3, 3, torch.Generator().manual_seed(0))
        tensor([0, 2, 2, 0, 2, 2, 0, 2, 2, 0])
    """
    check_noise_arguments(labels, rate, num_classes)
    count = noisy_label_count(rate, labels.shape[0])
    flipped = torch.randperm(labels.shape[0], generator=generator)[:count]
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + 1) % num_classes
    return noisy


def add_label_noise(
    labels: Tensor, rate: float, num_classes: int, generator: torch.Generator, noise_type: str
) -> Tensor:
    """Apply the noise model ``noise_type`` (one of :data:`NOISE_TYPES`) to ``labels``.

    Raises:
        ValueError: an unknown ``noise_type``, and the errors of the noise model.

    Example:
        >>> labels = torch.tensor([0, 1, 2, 3])
        >>> add_label_noise(labels, 1.0, 4, torch.Generator().manual_seed(0), "pair")
        tensor([1, 2, 3, 0])
    """
    if noise_type == "symmetric":
        return symmetric_label_noise(labels, rate, num_classes, generator)
    if noise_type == "pair":
        return pair_flip_label_noise(labels, rate, num_classes, generator)
    raise ValueError(expected("noise_type", f"one of {NOISE_TYPES}", repr(noise_type)))
