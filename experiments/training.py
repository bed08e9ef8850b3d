"""The training loop: mini-batch Adam, the validation split scored every epoch, and the
checkpoints that the best validation NLL, PLL and PBS pick."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from experiments.checks import expected
from experiments.datasets import LabeledData
from experiments.evaluation import predict_probabilities, score_predictions
from experiments.losses import LossFunction

__all__ = ["SELECTION_METRICS", "TrainingConfig", "TrainingOutcome", "train_model"]

SELECTION_METRICS = ("nll", "pll", "pbs")
"""Validation scores that pick a checkpoint (lowest wins, the earliest epoch on ties)."""

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class TrainingConfig:
    """How to train.

    Attributes:
        epochs (int): passes over the training split.
        batch_size (int): samples per optimizer step.
        learning_rate (float): Adam's learning rate.
        device (torch.device): where the model and the data live.
    """

    epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 1e-3
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(expected(name, "an integer larger than 0", repr(value)))
        if not self.learning_rate > 0:
            raise ValueError(
                expected("learning_rate", "a number larger than 0", repr(self.learning_rate))
            )


@dataclass
class TrainingOutcome:
    """What training leaves behind.

    Attributes:
        model (nn.Module): the model after the last epoch.
        history (list[dict[str, float]]): one entry per epoch: ``epoch`` (from 1),
            ``train_loss`` (the mean training loss over the epoch's batches, on the possibly
            noisy labels) and ``validation_<metric>`` for each metric of
            :func:`~experiments.evaluation.score_predictions`.
        selected_epochs (dict[str, int]): per name in :data:`SELECTION_METRICS`, the epoch with
            the lowest validation score (a NaN score counts as
            infinite).
        selected_states (dict[str, dict[str, Tensor]]): the model's weights at those epochs.
    """

    model: nn.Module
    history: list[dict[str, float]]
    selected_epochs: dict[str, int]
    selected_states: dict[str, StateDict]


def train_model(
    model: nn.Module,
    loss_function: LossFunction,
    train: LabeledData,
    validation: LabeledData,
    config: TrainingConfig,
    generator: torch.Generator,
) -> TrainingOutcome:
    """Train ``model`` in place and keep the checkpoints that the validation split picks.

    Each epoch shuffles the training split with ``generator`` (so a fixed generator seed fixes
    the batch order), takes one Adam step per batch of ``config.batch_size`` samples (the last
    batch may be smaller), then scores the whole validation split. A copy of the weights is kept
    for each name in :data:`SELECTION_METRICS` whenever that validation score improves.

    Args:
        model (nn.Module): maps features to logits; moved to ``config.device``.
        loss_function (LossFunction): logits and labels to the mean loss.
        train (LabeledData): the training split (its labels may be noisy).
        validation (LabeledData): the validation split.
        config (TrainingConfig): epochs, batch size, learning rate, device.
        generator (torch.Generator): a CPU generator for the shuffling.

    Returns:
        TrainingOutcome: the final model, the per-epoch history and the selected checkpoints.
    """
    device = config.device
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    train_features, train_labels = train.features.to(device), train.labels.to(device)
    validation_features = validation.features.to(device)

    history: list[dict[str, float]] = []
    best_scores = {name: float("inf") for name in SELECTION_METRICS}
    selected_epochs = {name: 0 for name in SELECTION_METRICS}
    selected_states: dict[str, StateDict] = {}
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        loss_sum, batch_count = 0.0, 0
        for batch in order.split(config.batch_size):
            loss = loss_function(model(train_features[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            batch_count += 1

        scores = score_predictions(
            predict_probabilities(model, validation_features), validation.labels
        )
        history.append(
            {"epoch": epoch, "train_loss": loss_sum / batch_count}
            | {f"validation_{name}": value for name, value in scores.items()}
        )
        for name in SELECTION_METRICS:
            score = scores[name] if math.isfinite(scores[name]) else float("inf")
            if name not in selected_states or score < best_scores[name]:
                best_scores[name] = score
                selected_epochs[name] = epoch
                selected_states[name] = {
                    key: value.detach().clone() for key, value in model.state_dict().items()
                }
    return TrainingOutcome(model, history, selected_epochs, selected_states)
