"""Superior scoring rules for probabilistic classifiers: PLL and PBS, with their plain bases.

The functions need only torch. The stateful ``torchmetrics`` classes (``PenalizedLogLoss``,
``PenalizedBrierScore``, ``LogLoss``, ``BrierScore``, and ``ClassificationScores``, which adds
accuracy and the calibration error) are imported on first use and need the ``metrics`` extra:
``pip install "pytorch-fairloss[metrics]"``.

Reference: Ahmadian, Ghatee & Wahlström (2025), "Superior scoring rules for probabilistic
evaluation of single-label multi-class classification tasks", International Journal of
Approximate Reasoning, doi:10.1016/j.ijar.2025.109421, arXiv:2407.17697.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fairloss.metrics.functional import (
    brier_score,
    log_loss,
    penalized_brier_score,
    penalized_log_loss,
    probabilities_from_logits,
)

if TYPE_CHECKING:
    from fairloss.metrics.modules import (
        BrierScore,
        ClassificationScores,
        LogLoss,
        PenalizedBrierScore,
        PenalizedLogLoss,
    )

__all__ = [
    "BrierScore",
    "ClassificationScores",
    "LogLoss",
    "PenalizedBrierScore",
    "PenalizedLogLoss",
    "brier_score",
    "log_loss",
    "penalized_brier_score",
    "penalized_log_loss",
    "probabilities_from_logits",
]

_METRIC_CLASSES = (
    "BrierScore",
    "ClassificationScores",
    "LogLoss",
    "PenalizedBrierScore",
    "PenalizedLogLoss",
)


def __getattr__(name: str) -> Any:
    """Import the torchmetrics-based classes on first access, with a clear message if absent."""
    if name not in _METRIC_CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from fairloss.metrics import modules
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != "torchmetrics":
            raise
        raise ImportError(
            f"fairloss.metrics.{name} needs torchmetrics, which is not installed. Install it "
            'with `pip install "pytorch-fairloss[metrics]"`; the functions in fairloss.metrics '
            "(penalized_log_loss, penalized_brier_score, ...) work without it."
        ) from error
    return getattr(modules, name)
