"""Plots of ``python -m experiments compare``'s runs: reliability diagrams and training curves.

The PNG figures are drawn with matplotlib's object API and its Agg renderer: no pyplot, no global
backend switch, no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from experiments.evaluation import ECE_BINS
from experiments.runner import RunResult

__all__ = ["plot_reliability", "plot_training_curves", "reliability_bins"]

_CURVES = (
    ("validation_accuracy", "validation accuracy"),
    ("validation_nll", "validation NLL"),
    ("validation_pll", "validation PLL"),
)


def _grid_keys(results: Sequence[RunResult]) -> tuple[list[str], list[float]]:
    """Losses and noise rates in the order they first appear."""
    losses = list(dict.fromkeys(result.loss for result in results))
    noise_rates = list(dict.fromkeys(result.noise for result in results))
    return losses, noise_rates


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per equal-width bin of top-class confidence: mean confidence, accuracy and sample count.

    A sample with confidence :math:`p` falls in bin :math:`\lceil p B \rceil - 1` (bins
    :math:`(0, 1/B], (1/B, 2/B], \dots`), as in torchmetrics' calibration error. Empty bins
    have confidence and accuracy 0.

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.4, 0.6]])
        >>> confidence, accuracy, count = reliability_bins(probs, torch.tensor([0, 1, 1]), 2)
        >>> confidence, accuracy, count
        (tensor([0.0000, 0.8167]), tensor([0.0000, 0.6667]), tensor([0., 3.]))
    """
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).to(confidence.dtype)
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=confidence.dtype).index_add_(
        0, bins, torch.ones_like(confidence)
    )
    confidence_sum = torch.zeros_like(count).index_add_(0, bins, confidence)
    correct_sum = torch.zeros_like(count).index_add_(0, bins, correct)
    denominator = count.clamp_min(1)
    return confidence_sum / denominator, correct_sum / denominator, count


def plot_reliability(results: Sequence[RunResult], path: Path) -> None:
    """Reliability diagrams of the last models' test predictions: one panel per (noise rate,
    loss), rows by noise rate, the predictions of all seeds pooled.

    Bars show each non-empty confidence bin's accuracy (15 equal-width bins); the diagonal is
    perfect calibration; bars below it mean overconfidence, above it underconfidence. Each
    panel's title gives the mean ECE over seeds (torchmetrics, the table's value).
    """
    losses, noise_rates = _grid_keys(results)
    figure = Figure(figsize=(3.0 * len(losses), 3.0 * len(noise_rates)), layout="constrained")
    axes = figure.subplots(len(noise_rates), len(losses), squeeze=False, sharex=True, sharey=True)
    width = 1.0 / ECE_BINS
    bin_starts = torch.arange(ECE_BINS, dtype=torch.float64) * width
    for row, noise in enumerate(noise_rates):
        for column, loss in enumerate(losses):
            runs = [r for r in results if r.loss == loss and r.noise == noise]
            _, accuracy, count = reliability_bins(
                torch.cat([run.test_probabilities for run in runs]),
                torch.cat([run.test_labels for run in runs]),
            )
            filled = count > 0
            ax = axes[row][column]
            ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
            ax.bar(
                bin_starts[filled].tolist(),
                accuracy[filled].tolist(),
                width=width,
                align="edge",
                edgecolor="black",
                linewidth=0.5,
                alpha=0.8,
            )
            mean_ece = sum(run.test["ece"] for run in runs) / len(runs)
            ax.set_title(f"{loss}, noise {noise:g}\nECE {mean_ece:.3f}", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            if row == len(noise_rates) - 1:
                ax.set_xlabel("confidence")
            if column == 0:
                ax.set_ylabel("accuracy")
    figure.suptitle(f"Reliability on the {results[0].dataset} test split (seeds pooled)")
    figure.savefig(path, dpi=110)


def plot_training_curves(results: Sequence[RunResult], path: Path) -> None:
    """Validation accuracy, NLL and PLL per epoch, one line per loss (mean over seeds), one row
    per noise rate."""
    losses, noise_rates = _grid_keys(results)
    figure = Figure(figsize=(4.0 * len(_CURVES), 3.0 * len(noise_rates)), layout="constrained")
    axes = figure.subplots(len(noise_rates), len(_CURVES), squeeze=False, sharex=True)
    for row, noise in enumerate(noise_rates):
        for column, (key, label) in enumerate(_CURVES):
            ax = axes[row][column]
            for loss in losses:
                runs = [r for r in results if r.loss == loss and r.noise == noise]
                values = torch.tensor(
                    [[epoch[key] for epoch in run.history] for run in runs], dtype=torch.float64
                ).mean(dim=0)
                epochs = [epoch["epoch"] for epoch in runs[0].history]
                ax.plot(epochs, values.tolist(), label=loss, linewidth=1.2)
            ax.set_title(f"{label}, noise {noise:g}", fontsize=9)
            if row == len(noise_rates) - 1:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"Training curves on {results[0].dataset} (mean over seeds)")
    figure.savefig(path, dpi=110)
