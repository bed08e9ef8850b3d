"""``fair_loss_metrics``: accuracy, NLL, PLL, PBS and calibration error for ``Trainer``."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from fairloss._validation import expected

__all__ = ["fair_loss_metrics"]

#: Rows of logits turned into probabilities at a time by :func:`fair_loss_metrics`.
_METRIC_CHUNK_ROWS = 4096


def _as_tensor(array: Any) -> Tensor:
    return array if isinstance(array, Tensor) else torch.as_tensor(array)


def fair_loss_metrics(
    *, shift_labels: bool = False, ignore_index: int = -100, n_bins: int = 15
) -> Callable[[Any], dict[str, float]]:
    r"""A ``compute_metrics`` for ``Trainer``: accuracy, NLL, PLL, PBS and ECE of the eval logits.

    The returned callable takes Transformers' ``EvalPrediction`` (or a ``(predictions,
    label_ids)`` pair) and returns, over the rows whose label is not ``ignore_index``, with
    :math:`q` the softmax of the logits (computed in float64) and :math:`y` the label:

    * ``accuracy``: the share of rows whose argmax is :math:`y`;
    * ``nll``: the mean log loss :math:`-\log q_y` (:func:`fairloss.metrics.log_loss`);
    * ``pll``: the Penalized Log Loss, log loss plus :math:`\log C` on wrong rows
      (:func:`fairloss.metrics.penalized_log_loss`), Ahmadian, Ghatee & Wahlström (2025);
    * ``pbs``: the Penalized Brier Score (:func:`fairloss.metrics.penalized_brier_score`);
    * ``ece``: the expected calibration error, torchmetrics' ``MulticlassCalibrationError``
      (``norm="l1"``, ``n_bins`` equal-width bins).

    These are the scores of :class:`fairloss.metrics.ClassificationScores`, updated chunk by
    chunk with float64 sums.

    ``Trainer`` prefixes them with ``eval_``: select checkpoints by the Penalized Log Loss with
    ``metric_for_best_model="pll"`` and ``greater_is_better=False``.

    Logits :math:`(N, C)` with labels :math:`(N)` (sequence classification) are scored as they
    are; logits :math:`(B, T, V)` with labels :math:`(B, T)` are scored per token. With
    ``shift_labels=True`` (causal LMs) position :math:`t` is scored against label :math:`t + 1`,
    as Transformers' causal-LM loss pairs them; leave it ``False`` for token classification.
    When the model returns more than logits, ``predictions`` is a tuple and its first entry is
    taken as the logits. Rows are turned into probabilities 4096 at a time; the logits of the
    whole eval set are still gathered by ``Trainer`` first (its ``preprocess_logits_for_metrics``
    can cut them down, for example to a sample of positions).

    Args:
        shift_labels (bool, optional): score logits of position :math:`t` against label
            :math:`t + 1` (causal LMs). Default: ``False``.
        ignore_index (int, optional): labels with this value are left out (Transformers pads
            labels, and predictions across batches, with ``-100``). Default: ``-100``.
        n_bins (int, optional): bins of the calibration error. Default: ``15``.

    Returns:
        Callable: ``compute_metrics(eval_pred) -> dict[str, float]``. With no row left, every
        metric is NaN.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``n_bins`` smaller than 1; and, when called, logits and labels whose shapes
            do not fit each other.
        ImportError: torchmetrics is not installed (the ``transformers`` extra installs it).

    Example:
        >>> import numpy as np
        >>> from fairloss.integrations.transformers import fair_loss_metrics
        >>> compute_metrics = fair_loss_metrics()
        >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 3.0]])
        >>> labels = np.array([0, 1, 0])
        >>> {name: round(value, 4) for name, value in compute_metrics((logits, labels)).items()}
        {'accuracy': 0.6667, 'nll': 0.9869, 'pll': 1.3531, 'pbs': 0.8342, 'ece': 0.4936}
    """
    try:
        from fairloss.metrics.modules import ClassificationScores
    except ModuleNotFoundError as error:
        raise ImportError(
            "fair_loss_metrics needs torchmetrics (for the calibration error), which is not "
            'installed: `pip install "pytorch-fairloss[transformers]"` installs it.'
        ) from error

    if not isinstance(shift_labels, bool):
        got = f"{type(shift_labels).__name__} {shift_labels!r}"
        raise TypeError(expected("shift_labels", "a bool", got))
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        got = f"{type(ignore_index).__name__} {ignore_index!r}"
        raise TypeError(expected("ignore_index", "an integer", got))
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise TypeError(expected("n_bins", "an integer", f"{type(n_bins).__name__} {n_bins!r}"))
    if n_bins < 1:
        raise ValueError(expected("n_bins", "an integer larger than 0", n_bins))

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, label_ids = eval_pred[0], eval_pred[1]
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        logits, labels = _as_tensor(predictions), _as_tensor(label_ids)
        if shift_labels:
            if logits.dim() != 3 or labels.shape != logits.shape[:2]:
                raise ValueError(
                    expected(
                        "eval_pred",
                        "causal-LM logits (B, T, V) and labels (B, T) with shift_labels=True",
                        f"logits of shape {tuple(logits.shape)} and labels of shape "
                        f"{tuple(labels.shape)}",
                    )
                )
            logits, labels = logits[:, :-1], labels[:, 1:]
        if logits.dim() < 2 or labels.shape != logits.shape[:-1]:
            raise ValueError(
                expected(
                    "eval_pred",
                    "logits (N, C) with labels (N), or (B, T, V) with labels (B, T)",
                    f"logits of shape {tuple(logits.shape)} and labels of shape "
                    f"{tuple(labels.shape)}",
                )
            )
        num_classes = logits.shape[-1]
        kept = labels.reshape(-1) != ignore_index
        rows = logits.reshape(-1, num_classes)[kept].double()
        targets = labels.reshape(-1)[kept].long()
        names = ("accuracy", "nll", "pll", "pbs", "ece")
        if rows.shape[0] == 0:
            return dict.fromkeys(names, math.nan)
        scores = ClassificationScores(num_classes, n_bins=n_bins).set_dtype(torch.float64)
        for start in range(0, rows.shape[0], _METRIC_CHUNK_ROWS):
            probs = torch.softmax(rows[start : start + _METRIC_CHUNK_ROWS], dim=1)
            scores.update(probs, targets[start : start + _METRIC_CHUNK_ROWS])
        totals = scores.compute()
        return {name: float(totals[name]) for name in names}

    return compute_metrics
