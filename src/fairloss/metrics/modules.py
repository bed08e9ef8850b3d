"""Stateful scoring-rule metrics on ``torchmetrics.Metric`` (needs ``pytorch-fairloss[metrics]``).

Each class holds two states, the sum of the row scores and the row count, both reduced across
processes with ``dist_reduce_fx="sum"``; ``update`` adds a batch and ``compute`` returns the mean,
which equals the functional score with ``reduction="mean"`` on all the batches concatenated.

For the calibration error of the same predictions use torchmetrics' own
``torchmetrics.classification.MulticlassCalibrationError(num_classes=C)`` with the same
``probs`` and class-index ``target``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from fairloss._validation import expected
from fairloss.metrics.functional import (
    _brier_score_elements,
    _log_loss_elements,
    _penalized_brier_score_elements,
    _penalized_log_loss_elements,
    _scoring_rule_compute,
    _scoring_rule_update,
    check_brier,
)

__all__ = ["BrierScore", "LogLoss", "PenalizedBrierScore", "PenalizedLogLoss"]


class _MeanScoringRule(Metric):
    """A mean of per-row scores over every row seen, synced across processes by sum and count."""

    is_differentiable: bool = True
    higher_is_better: bool = False
    full_state_update: bool = False
    plot_lower_bound: float = 0.0

    score_sum: Tensor
    count: Tensor

    def __init__(self, *, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(validate_args, bool):
            got = f"{type(validate_args).__name__} {validate_args!r}"
            raise TypeError(expected("validate_args", "a bool", got))
        self.validate_args = validate_args
        self.add_state("score_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: ``probs`` :math:`(N, C)`, ``target`` :math:`(N)` indices or one-hot."""
        score_sum, count = _scoring_rule_update(
            self._element_scores, probs, target, self.validate_args
        )
        self.score_sum += score_sum
        self.count += count

    def compute(self) -> Tensor:
        """The mean score over every row seen since the last reset (NaN before any row)."""
        return _scoring_rule_compute(self.score_sum, self.count)

    def _element_scores(self, probs: Tensor, target_index: Tensor) -> Tensor:
        raise NotImplementedError


class PenalizedLogLoss(_MeanScoringRule):
    r"""Penalized Logarithmic Loss (PLL), accumulated over batches and processes.

    The mean over all rows seen of

    .. math::
        \operatorname{PLL}(q, y) = -\log \max(q_y, \epsilon)
            + \log(C)\,\bigl[\max_{k \ne y} q_k > q_y\bigr]

    as in :func:`fairloss.metrics.penalized_log_loss` (Ahmadian, Ghatee & Wahlström, 2025,
    doi:10.1016/j.ijar.2025.109421). Lower is better; every correct prediction scores better
    than every wrong one.

    Args:
        validate_args (bool, optional): check the values of each batch (probabilities in
            :math:`[0, 1]`, rows summing to 1, targets in range); a device sync on an
            accelerator. Default: ``True``.
        kwargs: passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).

    The state is float32; call ``.set_dtype(torch.float64)`` to accumulate in float64.

    Shape:
        - ``update(probs, target)``: ``probs`` :math:`(N, C)`; ``target`` :math:`(N)` class
          indices or :math:`(N, C)` one-hot rows.
        - ``compute()``: a scalar.

    Raises:
        ValueError, TypeError: from ``update``, as :func:`fairloss.metrics.penalized_log_loss`.
        TypeError: ``validate_args`` not a bool.

    Example:
        >>> import torch
        >>> from fairloss.metrics import PenalizedLogLoss
        >>> metric = PenalizedLogLoss()
        >>> metric.update(torch.tensor([[0.33, 0.34, 0.33]]), torch.tensor([1]))  # correct
        >>> metric.update(torch.tensor([[0.51, 0.49, 0.00]]), torch.tensor([1]))  # wrong
        >>> metric.compute()
        tensor(1.4454)
    """

    def _element_scores(self, probs: Tensor, target_index: Tensor) -> Tensor:
        return _penalized_log_loss_elements(probs, target_index)


class PenalizedBrierScore(_MeanScoringRule):
    r"""Penalized Brier Score (PBS), accumulated over batches and processes.

    The mean over all rows seen of

    .. math::
        \operatorname{PBS}(q, y) = \sum_{k=1}^{C} (q_k - [k = y])^2
            + \tfrac{C - 1}{C}\,\bigl[\max_{k \ne y} q_k > q_y\bigr]

    as in :func:`fairloss.metrics.penalized_brier_score` (the paper's formula, squared error
    summed over classes). Lower is better; every correct prediction scores better than every
    wrong one.

    Args:
        brier (str, optional): the Brier part's squared errors ``"sum"``-med over classes (the
            paper) or averaged, ``"mean"`` (the authors' code). Default: ``"sum"``.
        validate_args (bool, optional): check the values of each batch; a device sync on an
            accelerator. Default: ``True``.
        kwargs: passed to ``torchmetrics.Metric``.

    The state is float32; call ``.set_dtype(torch.float64)`` to accumulate in float64.

    Shape:
        - ``update(probs, target)``: ``probs`` :math:`(N, C)`; ``target`` :math:`(N)` class
          indices or :math:`(N, C)` one-hot rows.
        - ``compute()``: a scalar.

    Raises:
        ValueError, TypeError: from ``update``, as :func:`fairloss.metrics.penalized_brier_score`.
        ValueError: ``brier`` not one of ``("sum", "mean")``.
        TypeError: ``validate_args`` not a bool.

    Example:
        >>> import torch
        >>> from fairloss.metrics import PenalizedBrierScore
        >>> metric = PenalizedBrierScore()
        >>> metric.update(torch.tensor([[0.33, 0.34, 0.33]]), torch.tensor([1]))  # correct
        >>> metric.update(torch.tensor([[0.51, 0.49, 0.00]]), torch.tensor([1]))  # wrong
        >>> metric.compute()
        tensor(0.9201)
    """

    def __init__(self, *, brier: str = "sum", validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(validate_args=validate_args, **kwargs)
        self.brier = check_brier(brier)

    def _element_scores(self, probs: Tensor, target_index: Tensor) -> Tensor:
        return _penalized_brier_score_elements(probs, target_index, self.brier)


class LogLoss(_MeanScoringRule):
    r"""Logarithmic loss :math:`-\log \max(q_y, \epsilon)`, accumulated over batches and processes.

    The mean over all rows seen, as :func:`fairloss.metrics.log_loss`; lower is better.

    Args:
        validate_args (bool, optional): check the values of each batch; a device sync on an
            accelerator. Default: ``True``.
        kwargs: passed to ``torchmetrics.Metric``.

    Shape:
        - ``update(probs, target)``: ``probs`` :math:`(N, C)`; ``target`` :math:`(N)` or
          :math:`(N, C)` one-hot.
        - ``compute()``: a scalar.

    Raises:
        ValueError, TypeError: from ``update``, as :func:`fairloss.metrics.log_loss`.
        TypeError: ``validate_args`` not a bool.

    Example:
        >>> import torch
        >>> from fairloss.metrics import LogLoss
        >>> metric = LogLoss()
        >>> probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]])
        >>> metric.update(probs, torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.8961)
    """

    def _element_scores(self, probs: Tensor, target_index: Tensor) -> Tensor:
        return _log_loss_elements(probs, target_index)


class BrierScore(_MeanScoringRule):
    r"""Multi-class Brier score :math:`\sum_k (q_k - [k = y])^2`, accumulated over batches.

    The mean over all rows seen, as :func:`fairloss.metrics.brier_score` (summed over classes,
    range :math:`[0, 2]`, or averaged with ``brier="mean"``); lower is better. It is the plain
    score beside :class:`PenalizedBrierScore` (torchmetrics has no multi-class Brier score).

    Args:
        brier (str, optional): ``"sum"`` of the squared errors over classes (the paper) or their
            ``"mean"``. Default: ``"sum"``.
        validate_args (bool, optional): check the values of each batch; a device sync on an
            accelerator. Default: ``True``.
        kwargs: passed to ``torchmetrics.Metric``.

    Shape:
        - ``update(probs, target)``: ``probs`` :math:`(N, C)`; ``target`` :math:`(N)` or
          :math:`(N, C)` one-hot.
        - ``compute()``: a scalar.

    Raises:
        ValueError, TypeError: from ``update``, as :func:`fairloss.metrics.brier_score`.
        ValueError: ``brier`` not one of ``("sum", "mean")``.
        TypeError: ``validate_args`` not a bool.

    Example:
        >>> import torch
        >>> from fairloss.metrics import BrierScore
        >>> metric = BrierScore()
        >>> probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]])
        >>> metric.update(probs, torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.5868)
    """

    def __init__(self, *, brier: str = "sum", validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(validate_args=validate_args, **kwargs)
        self.brier = check_brier(brier)

    def _element_scores(self, probs: Tensor, target_index: Tensor) -> Tensor:
        return _brier_score_elements(probs, target_index, self.brier)
