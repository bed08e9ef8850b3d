"""The losses under measurement, each built as ``loss_fn(logits, target) -> scalar`` for a case."""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fairloss
from benchmarks.cases import LABEL_SMOOTHING, Case, CaseInputs, loss_options

__all__ = [
    "BASELINES",
    "COMPILED",
    "LABELS",
    "LIBRARIES",
    "MEMORY_LIBRARIES",
    "NotApplicable",
    "build_loss",
    "forward_backward",
]

LossFn = Callable[[Tensor, Tensor], Tensor]

CROSS_ENTROPY = "cross_entropy"
FAIR_LOSS = "fair_loss"
CROSS_ENTROPY_COMPILED = "cross_entropy_compiled"
FAIR_LOSS_COMPILED = "fair_loss_compiled"
OLD_RELEASE = "fairloss_0_1_1"

#: Measured in this order for each case, each baseline right before the losses compared to it.
LIBRARIES = (CROSS_ENTROPY, FAIR_LOSS, OLD_RELEASE, CROSS_ENTROPY_COMPILED, FAIR_LOSS_COMPILED)
COMPILED = (CROSS_ENTROPY_COMPILED, FAIR_LOSS_COMPILED)
#: Peak memory is measured for the eager losses only.
MEMORY_LIBRARIES = (CROSS_ENTROPY, FAIR_LOSS, OLD_RELEASE)
#: The time (and memory) of each loss is divided by its baseline's, measured in the same run.
BASELINES = {
    FAIR_LOSS: CROSS_ENTROPY,
    OLD_RELEASE: CROSS_ENTROPY,
    FAIR_LOSS_COMPILED: CROSS_ENTROPY_COMPILED,
}
LABELS = {
    CROSS_ENTROPY: "F.cross_entropy",
    FAIR_LOSS: "fair_loss",
    OLD_RELEASE: "fairloss 0.1.1",
    CROSS_ENTROPY_COMPILED: "compiled F.cross_entropy",
    FAIR_LOSS_COMPILED: "compiled fair_loss",
}


class NotApplicable(Exception):
    """The loss cannot express this case (reported as ``n/a``, not as a failure)."""


def forward_backward(loss_fn: LossFn, logits: Tensor, target: Tensor) -> Tensor:
    """One training step's loss work: the loss and its gradient w.r.t. the logits.

    ``torch.autograd.grad`` returns a fresh gradient instead of accumulating into ``.grad``, so
    repeated calls do the same work as the first.
    """
    (grad,) = torch.autograd.grad(loss_fn(logits, target), logits)
    return grad


def build_loss(
    library: str, case: Case, inputs: CaseInputs, old_release: Optional[ModuleType] = None
) -> LossFn:
    """The loss function of ``library`` with the case's options bound.

    Compiled losses are ``torch.compile(..., fullgraph=True, dynamic=False)`` wrappers; they
    compile on their first call. Raises :class:`NotApplicable` when the loss cannot run the case.
    """
    options = loss_options(case, inputs)

    def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, **options)

    def fair_loss(logits: Tensor, target: Tensor) -> Tensor:
        return fairloss.fair_loss(logits, target, **options)

    if library == CROSS_ENTROPY:
        return cross_entropy
    if library == FAIR_LOSS:
        return fair_loss
    if library == CROSS_ENTROPY_COMPILED:
        return torch.compile(cross_entropy, fullgraph=True, dynamic=False)
    if library == FAIR_LOSS_COMPILED:
        return torch.compile(fair_loss, fullgraph=True, dynamic=False)
    if library == OLD_RELEASE:
        return _old_release_loss(case, old_release)
    raise ValueError(f"Expected argument `library` to be one of {LIBRARIES}, but got {library!r}.")


def _old_release_loss(case: Case, old_release: Optional[ModuleType]) -> LossFn:
    """0.1.1's ``FairLoss`` where it computes the same loss as ``fair_loss``.

    0.1.1 takes ``(N, C)`` logits only; its penalty ignores class weights and its mean is a plain
    mean (a different loss with ``weight``), and it one-hot encodes targets (no ``ignore_index``).
    Label smoothing goes through its ``cross_entropy`` module, as in ``fair_loss``.
    """
    if old_release is None:
        raise NotApplicable("0.1.1 not found")
    if case.spatial:
        raise NotApplicable("0.1.1 takes (N, C) only")
    if case.options in ("weight", "ignore_index"):
        raise NotApplicable(f"0.1.1 has no `{case.options}` with the same meaning")
    smoothing = LABEL_SMOOTHING if case.options == "label_smoothing" else 0.0
    cross_entropy = nn.CrossEntropyLoss(reduction="none", label_smoothing=smoothing)
    module: Callable[[Tensor, Tensor], Tensor] = old_release.FairLoss(cross_entropy=cross_entropy)
    return module
