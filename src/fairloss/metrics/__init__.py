r"""Superior scoring rules for probabilistic classifiers: PLL and PBS, with their plain bases.

The functions need only torch. The stateful ``torchmetrics`` classes (``PenalizedLogLoss``,
``PenalizedBrierScore``, ``LogLoss``, ``BrierScore``, and ``ClassificationScores``, which adds
accuracy and the calibration error) are imported on first use and need the ``metrics`` extra:
``pip install "pytorch-fairloss[metrics]"``.

The four scoring-rule functions share their arguments, shapes and errors, stated here once:

* ``probs`` (Tensor): predicted class probabilities, :math:`(N, C)`; each row lies in
  :math:`[0, 1]` and sums to 1 (within ``max(1e-4, 2 * torch.finfo(probs.dtype).eps)``). For
  logits, pass :func:`probabilities_from_logits` of them.
* ``target`` (Tensor): true classes, integer class indices in :math:`[0, C)` of shape
  :math:`(N)`, or one-hot rows of shape :math:`(N, C)` (any real dtype).
* ``reduction`` (str): ``"none"`` | ``"mean"`` (over rows; NaN for zero rows) | ``"sum"``.
  Default: ``"mean"``.
* ``validate_args`` (bool): check the values of ``probs`` and ``target`` (ranges, row sums,
  one-hot rows). The check reads the data, a device sync on an accelerator; turn it off in hot
  loops on inputs you trust. Types and shapes are always checked. Default: ``True``.
* The output is a scalar, or :math:`(N)` with ``reduction="none"``: float32 for float16,
  bfloat16 and float32 ``probs``, float64 for float64.
* ``ValueError``: ``reduction`` (or ``brier``) unknown; ``probs`` not :math:`(N, C)`; ``target``
  of neither shape; with ``validate_args``, a probability outside :math:`[0, 1]` (or NaN), a row
  not summing to 1, a class index outside :math:`[0, C)`, a row that is not one-hot.
  ``TypeError``: ``probs`` not floating point; ``target`` not real, or boolean class indices.

The metric classes (torchmetrics ``Metric`` subclasses) hold sums and a row count, reduced
across processes by sum: ``update(probs, target)`` adds a batch (the functions' ``probs`` and
``target``), ``compute()`` returns the mean over every row seen, as the function's ``"mean"``
over all batches concatenated. ``validate_args`` checks each batch's values (a device sync on an
accelerator); other keyword arguments go to ``torchmetrics.Metric``. States are float32:
``.set_dtype(torch.float64)`` accumulates in float64.

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
