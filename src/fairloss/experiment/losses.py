"""The losses that ``fairloss compare`` trains with, by name."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from fairloss._validation import expected
from fairloss.functional import fair_loss

__all__ = ["LOSSES", "LossFunction", "LossSpec", "make_loss"]

LossFunction = Callable[[Tensor, Tensor], Tensor]
"""Logits ``(N, C)`` and class indices ``(N,)`` to a scalar mean loss."""


@dataclass(frozen=True)
class LossSpec:
    """A named loss: a one-line description and a factory taking the number of classes."""

    description: str
    make: Callable[[int], LossFunction]


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec("cross-entropy (F.cross_entropy)", lambda num_classes: F.cross_entropy),
    "fairloss": LossSpec(
        "FairLoss with its defaults (penalty_scale = 1/C)", lambda num_classes: fair_loss
    ),
    "fairloss-pll": LossSpec(
        "FairLoss with penalty_scale = log(C): a smooth Penalized Log Loss",
        lambda num_classes: functools.partial(fair_loss, penalty_scale=math.log(num_classes)),
    ),
    "ce-label-smoothing": LossSpec(
        "cross-entropy with label_smoothing=0.1",
        lambda num_classes: functools.partial(F.cross_entropy, label_smoothing=0.1),
    ),
}


def make_loss(name: str, num_classes: int) -> LossFunction:
    """The loss function called ``name``, for ``num_classes`` classes.

    Args:
        name (str): a key of :data:`LOSSES`: ``"ce"``, ``"fairloss"``, ``"fairloss-pll"`` or
            ``"ce-label-smoothing"``.
        num_classes (int): the number of classes :math:`C`.

    Raises:
        ValueError: an unknown ``name``.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1])
        >>> print(f"{make_loss('ce', 3)(logits, target):.4f}")
        2.2395
        >>> print(f"{make_loss('fairloss-pll', 3)(logits, target):.4f}")
        3.3382
    """
    if name not in LOSSES:
        raise ValueError(expected("name", f"one of {tuple(LOSSES)}", repr(name)))
    return LOSSES[name].make(num_classes)
