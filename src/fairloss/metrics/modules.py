"""Stateful scoring-rule metrics on ``torchmetrics.Metric`` (needs ``pytorch-fairloss[metrics]``).

Each scoring-rule class holds two states, the sum of the row scores and the row count, both
reduced across processes with ``dist_reduce_fx="sum"``; ``update`` adds a batch and ``compute``
returns the mean, which equals the functional score with ``reduction="mean"`` on all the batches
concatenated.

:class:`ClassificationScores` holds such sums for accuracy, log loss, Brier score, PLL and PBS at
once, with torchmetrics' own ``MulticlassCalibrationError`` inside for the calibration error of the
same predictions: one pass over the data gives every score that the experiment harness and
:func:`fairloss.integrations.transformers.fair_loss_metrics` report.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError

from fairloss._validation import expected
from fairloss.metrics.functional import (
    _brier_score_elements,
    _classification_scores_update,
    _log_loss_elements,
    _penalized_brier_score_elements,
    _penalized_log_loss_elements,
    _scoring_rule_compute,
    _scoring_rule_update,
    check_brier,
)

__all__ = [
    "BrierScore",
    "ClassificationScores",
    "LogLoss",
    "PenalizedBrierScore",
    "PenalizedLogLoss",
]


def _check_validate_args(validate_args: object) -> bool:
    if not isinstance(validate_args, bool):
        got = f"{type(validate_args).__name__} {validate_args!r}"
        raise TypeError(expected("validate_args", "a bool", got))
    return validate_args


def _check_count(name: str, value: object) -> int:
    """An integer larger than 0, for ``num_classes`` and ``n_bins``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(expected(name, "an integer", f"{type(value).__name__} {value!r}"))
    if value < 1:
        raise ValueError(expected(name, "an integer larger than 0", value))
    return value


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
        self.validate_args = _check_validate_args(validate_args)
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

    The mean over every row seen of :func:`fairloss.metrics.penalized_log_loss` (log loss plus
    :math:`\log C` on wrong rows); lower is better. ``validate_args``, ``kwargs``, ``update``
    and ``compute``: see :mod:`fairloss.metrics`.

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

    The mean over every row seen of :func:`fairloss.metrics.penalized_brier_score` (Brier score
    plus :math:`(C-1)/C` on wrong rows); lower is better. ``brier`` as there;
    ``validate_args``, ``kwargs``, ``update`` and ``compute``: see :mod:`fairloss.metrics`.

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
    r"""Logarithmic loss, accumulated over batches and processes.

    The mean over every row seen of :func:`fairloss.metrics.log_loss`; lower is better.
    ``validate_args``, ``kwargs``, ``update`` and ``compute``: see :mod:`fairloss.metrics`.

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
    r"""Multi-class Brier score, accumulated over batches and processes.

    The mean over every row seen of :func:`fairloss.metrics.brier_score`; lower is better
    (torchmetrics has no multi-class Brier score). ``brier`` as there; ``validate_args``,
    ``kwargs``, ``update`` and ``compute``: see :mod:`fairloss.metrics`.

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


class ClassificationScores(Metric):
    r"""Accuracy, log loss, Brier score, PLL, PBS and calibration error, over batches and processes.

    For probability rows :math:`q_n` over :math:`C` classes and true classes :math:`y_n`, over
    the :math:`N` rows seen since the last reset:

    .. math::
        \text{accuracy} = \frac{1}{N} \sum_{n} \bigl[\operatorname{argmax}_k q_{nk} = y_n\bigr],
        \qquad
        \text{nll} = \frac{1}{N} \sum_{n} -\log \max(q_{n y_n}, \epsilon),

    ``brier``, ``pll`` and ``pbs`` the means of :func:`fairloss.metrics.brier_score`,
    :func:`fairloss.metrics.penalized_log_loss` and :func:`fairloss.metrics.penalized_brier_score`
    (Ahmadian, Ghatee & Wahlström, 2025, doi:10.1016/j.ijar.2025.109421), and ``ece`` the
    expected calibration error of the top-class confidence over ``n_bins`` equal-width bins, L1
    norm: torchmetrics' ``MulticlassCalibrationError(num_classes, n_bins, norm="l1")``, kept in
    the attribute ``calibration`` and fed the same rows. Higher is better for ``accuracy``, lower
    for the others. An argmax tie counts as correct only when the first maximal class is
    :math:`y` (``accuracy``, as ``ece``'s), while PLL and PBS count every tie with :math:`y` as
    correct.

    Equivalent to, on all the rows at once::

        {"accuracy": (probs.argmax(1) == target).double().mean(),
         "nll": log_loss(probs, target), "brier": brier_score(probs, target),
         "pll": penalized_log_loss(probs, target), "pbs": penalized_brier_score(probs, target),
         "ece": multiclass_calibration_error(probs, target, num_classes, n_bins, norm="l1")}

    The sums and the row count are states reduced across processes with
    ``dist_reduce_fx="sum"``; the calibration error's inner metric syncs its own state when
    ``compute`` asks it for its value. ``reset`` clears both, and ``forward`` adds the batch to
    both and returns the scores of the batch alone. The sums are float32; call
    ``.set_dtype(torch.float64)`` to accumulate in float64 (torchmetrics computes the calibration
    error in float32 either way).

    Args:
        num_classes (int): the number of classes :math:`C`, the columns of ``probs``.
        n_bins (int, optional): equal-width confidence bins of the calibration error.
            Default: ``15``.
        brier (str, optional): the Brier score and the PBS's Brier part ``"sum"`` the squared
            errors over classes (the paper) or average them, ``"mean"``. Default: ``"sum"``.
        validate_args (bool, optional): check the values of each batch (probabilities in
            :math:`[0, 1]`, rows summing to 1, targets in range); a device sync on an
            accelerator. Types and shapes are always checked. Default: ``True``.
        kwargs: passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...),
            here and in the inner calibration metric.

    Shape:
        - ``update(probs, target)``: ``probs`` :math:`(N, C)`; ``target`` :math:`(N)` class
          indices or :math:`(N, C)` one-hot rows. :math:`N = 0` is allowed and adds nothing.
        - ``compute()``: a dict of scalars with the keys ``accuracy``, ``nll``, ``brier``,
          ``pll``, ``pbs`` and ``ece``, in that order. With no row seen (nothing updated since
          the last reset, or only empty batches) every value is NaN.

    Raises:
        ValueError, TypeError: from ``update``, as :func:`fairloss.metrics.penalized_log_loss`;
            ``probs`` with other than ``num_classes`` columns (ValueError).
        TypeError: ``num_classes`` or ``n_bins`` not an integer; ``validate_args`` not a bool.
        ValueError: ``num_classes`` or ``n_bins`` smaller than 1; ``brier`` not one of
            ``("sum", "mean")``.

    Example:
        >>> import torch
        >>> from fairloss.metrics import ClassificationScores
        >>> metric = ClassificationScores(num_classes=3, n_bins=5)
        >>> metric.update(torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]), torch.tensor([1, 1]))
        >>> metric.update(torch.tensor([[0.1, 0.1, 0.8]]), torch.tensor([2]))
        >>> {name: round(float(value), 4) for name, value in metric.compute().items()}
        {'accuracy': 0.6667, 'nll': 0.5946, 'brier': 0.3533,
         'pll': 0.9608, 'pbs': 0.5756, 'ece': 0.1667}
    """

    is_differentiable: bool = False
    higher_is_better: Union[bool, None] = None  # accuracy up, the others down
    full_state_update: bool = False

    correct: Tensor
    count: Tensor
    nll_sum: Tensor
    brier_sum: Tensor
    pll_sum: Tensor
    pbs_sum: Tensor

    def __init__(
        self,
        num_classes: int,
        *,
        n_bins: int = 15,
        brier: str = "sum",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = _check_count("num_classes", num_classes)
        self.n_bins = _check_count("n_bins", n_bins)
        self.brier = check_brier(brier)
        self.validate_args = _check_validate_args(validate_args)
        self._metric_kwargs = dict(kwargs)
        for name in ("correct", "count"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")
        for name in ("nll_sum", "brier_sum", "pll_sum", "pbs_sum"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")
        # Checked above and by update: the inner metric need not check again.
        self.calibration = MulticlassCalibrationError(
            num_classes=num_classes, n_bins=n_bins, norm="l1", validate_args=False, **kwargs
        )

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: ``probs`` :math:`(N, C)`, ``target`` :math:`(N)` indices or one-hot."""
        sums, count, target_index = _classification_scores_update(
            probs, target, self.num_classes, self.brier, self.validate_args
        )
        self.correct += sums["correct"]
        self.count += count
        self.nll_sum += sums["nll"]
        self.brier_sum += sums["brier"]
        self.pll_sum += sums["pll"]
        self.pbs_sum += sums["pbs"]
        self.calibration.update(probs, target_index)

    def compute(self) -> dict[str, Tensor]:
        """The scores over every row seen since the last reset (each NaN before any row)."""
        dtype = self.nll_sum.dtype
        if int(self.count) == 0:  # the inner metric has nothing to bin
            ece = torch.tensor(math.nan, dtype=dtype, device=self.nll_sum.device)
        else:
            ece = self.calibration.compute().to(dtype)
        return {
            "accuracy": _scoring_rule_compute(self.correct.to(dtype), self.count),
            "nll": _scoring_rule_compute(self.nll_sum, self.count),
            "brier": _scoring_rule_compute(self.brier_sum, self.count),
            "pll": _scoring_rule_compute(self.pll_sum, self.count),
            "pbs": _scoring_rule_compute(self.pbs_sum, self.count),
            "ece": ece,
        }

    def reset(self) -> None:
        """Clear the sums, the count and the calibration error's state."""
        super().reset()
        self.calibration.reset()

    def forward(self, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Add the batch to the state, and return the scores of this batch alone.

        torchmetrics' own ``forward`` resets and restores the states it holds, which would lose
        the inner calibration metric's: this one scores the batch in a fresh metric instead.
        """
        self.update(probs, target)
        # Synced across processes only with dist_sync_on_step, as torchmetrics' forward.
        batch_kwargs = {**self._metric_kwargs, "sync_on_compute": self.dist_sync_on_step}
        batch = ClassificationScores(
            self.num_classes,
            n_bins=self.n_bins,
            brier=self.brier,
            validate_args=False,  # checked by the update above
            **batch_kwargs,
        ).to(self.device)
        batch.set_dtype(self.nll_sum.dtype)
        batch.update(probs, target)
        return batch.compute()

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Add another ``ClassificationScores``' state, its calibration error's included.

        Raises:
            TypeError: ``incoming_state`` not a ``ClassificationScores`` (a dict of states would
                leave the calibration error out).
        """
        if not isinstance(incoming_state, ClassificationScores):
            got = type(incoming_state).__name__
            raise TypeError(expected("incoming_state", "a ClassificationScores", got))
        super().merge_state(incoming_state)
        self.calibration.merge_state(incoming_state.calibration)
