"""Scores of a model's predictions: accuracy, NLL, ECE, Brier, PBS and PLL."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fairloss.metrics import probabilities_from_logits

__all__ = ["ECE_BINS", "METRIC_NAMES", "predict_probabilities", "score_predictions"]

METRIC_NAMES = ("accuracy", "nll", "ece", "brier", "pbs", "pll")
"""The keys of :func:`score_predictions`' result, in table order."""

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error."""


@torch.no_grad()
def predict_probabilities(model: nn.Module, features: Tensor, batch_size: int = 4096) -> Tensor:
    """The model's class probabilities for ``features``, in float64 on the CPU.

    The model runs in eval mode on ``features``' device, ``batch_size`` rows at a time; the
    softmax is taken in float64, so that the log loss of a confident wrong prediction is not cut
    off at float32's epsilon.

    Args:
        model (nn.Module): maps features ``(N, D)`` to logits ``(N, C)``.
        features (Tensor): the inputs, shape :math:`(N, D)`.
        batch_size (int, optional): rows per forward pass. Default: ``4096``.

    Returns:
        Tensor: probabilities of shape :math:`(N, C)`, rows summing to 1.

    Example:
        >>> model = nn.Linear(2, 3)
        >>> _ = model.weight.data.zero_(), model.bias.data.copy_(torch.tensor([0.0, 0.0, 1.0]))
        >>> predict_probabilities(model, torch.ones(1, 2))
        tensor([[0.2119, 0.2119, 0.5761]], dtype=torch.float64)
    """
    was_training = model.training
    model.eval()
    logits = torch.cat([model(batch) for batch in features.split(batch_size)])
    model.train(was_training)
    return probabilities_from_logits(logits.to("cpu", torch.float64))


def score_predictions(probs: Tensor, labels: Tensor) -> dict[str, float]:
    r"""Score probability predictions against the true labels.

    The scores of :class:`fairloss.metrics.ClassificationScores` (with float64 sums), in table
    order:

    - ``accuracy``: share of rows whose most probable class is the label.
    - ``nll``: mean log loss :math:`-\log q_y` (:func:`fairloss.metrics.log_loss`).
    - ``ece``: expected calibration error over 15 equal-width bins of the top-class confidence,
      L1 norm (torchmetrics' ``MulticlassCalibrationError``).
    - ``brier``: mean multi-class Brier score (:func:`fairloss.metrics.brier_score`).
    - ``pbs``, ``pll``: the penalized Brier score and penalized log loss
      (:func:`fairloss.metrics.penalized_brier_score`, :func:`fairloss.metrics.penalized_log_loss`).

    Higher is better for ``accuracy``; lower for all the others.

    Args:
        probs (Tensor): class probabilities, shape :math:`(N, C)`, rows summing to 1.
        labels (Tensor): class indices, shape :math:`(N,)`.

    Returns:
        dict[str, float]: one value per name in :data:`METRIC_NAMES`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]], dtype=torch.float64)
        >>> scores = score_predictions(probs, torch.tensor([0, 1, 1]))
        >>> {name: round(value, 4) for name, value in scores.items()}
        {'accuracy': 0.6667, 'nll': 0.6067, 'ece': 0.4, 'brier': 0.44, 'pbs': 0.6067, 'pll': 0.8378}
    """
    # Imported here, not with the module: it imports torchmetrics, and `python -m experiments
    # compare --help` imports this module and should not wait for that.
    from fairloss.metrics import ClassificationScores

    metric = ClassificationScores(num_classes=probs.shape[1], n_bins=ECE_BINS)
    metric.set_dtype(torch.float64)
    metric.update(probs, labels)
    scores = metric.compute()
    return {name: float(scores[name]) for name in METRIC_NAMES}
