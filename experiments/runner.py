"""One run per (loss, noise, seed), and the grid of them behind ``make demo``'s compare."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from experiments.datasets import Dataset, LabeledData
from experiments.evaluation import predict_probabilities, score_predictions
from experiments.losses import make_loss
from experiments.model import make_mlp
from experiments.noise import add_label_noise
from experiments.splits import Splits, split_dataset
from experiments.training import TrainingConfig, train_model

__all__ = ["RunResult", "RunSpec", "run_experiment", "run_grid"]

_NOISE_STREAM, _SHUFFLE_STREAM, _STREAM_COUNT = 0, 1, 2


def _generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one use (``stream``) of one seed; no two (seed, stream) pairs share
    a generator seed, so the noise and the batch order are drawn independently."""
    return torch.Generator().manual_seed(seed * _STREAM_COUNT + stream)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: which loss (a spec's text, see
    :func:`~experiments.losses.parse_loss_spec`), how much training-label noise of which
    type (:data:`~experiments.noise.NOISE_TYPES`), which seed."""

    loss: str
    noise: float
    seed: int
    noise_type: str = "symmetric"


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        dataset (str), loss (str), noise (float), seed (int): what ran (``loss`` is the
            spec's text).
        split_sizes (dict[str, int]): samples in the ``train``, ``validation`` and ``test``
            splits.
        noisy_labels (int): training labels that the noise changed.
        test (dict[str, float]): the test scores of the model after the last epoch.
        selected_epochs (dict[str, int]): the epochs that the best validation NLL, PLL and PBS
            pick.
        selected_test_accuracy (dict[str, float]): the test accuracy at each of those epochs.
        history (list[dict[str, float]]): the per-epoch training loss and validation scores.
        seconds (float): wall time of the run.
        test_probabilities (Tensor): the last model's test probabilities ``(N, C)``, float64.
        test_labels (Tensor): the test labels ``(N,)``.
        noise_type (str): the noise model, ``"symmetric"`` or ``"pair"``.
        selected_test (dict[str, dict[str, float]]): per selection metric, every test score of
            the selected checkpoint (``selected_test_accuracy`` is their ``"accuracy"``).
    """

    dataset: str
    loss: str
    noise: float
    seed: int
    split_sizes: dict[str, int]
    noisy_labels: int
    test: dict[str, float]
    selected_epochs: dict[str, int]
    selected_test_accuracy: dict[str, float]
    history: list[dict[str, float]]
    seconds: float
    test_probabilities: Tensor
    test_labels: Tensor
    noise_type: str = "symmetric"
    selected_test: dict[str, dict[str, float]] = field(default_factory=dict)


def run_experiment(
    dataset: Dataset, splits: Splits, spec: RunSpec, config: TrainingConfig
) -> RunResult:
    """Train one model on ``splits`` as ``spec`` says, and score it on the test split.

    The seed fixes everything that is random: the training-label noise (the same for every
    loss), the model's initial weights (the same for every loss and noise rate) and the batch
    order. On the CPU, the same arguments give the same result.

    Args:
        dataset (Dataset): the dataset ``splits`` came from (its name and class count).
        splits (Splits): the train/validation/test splits for ``spec.seed``.
        spec (RunSpec): the loss, the noise rate and the seed.
        config (TrainingConfig): epochs, batch size, learning rate, device.

    Returns:
        RunResult: test scores of the last model and of the selected checkpoints, and the
        training history.
    """
    start = time.perf_counter()
    noisy_train_labels = add_label_noise(
        splits.train.labels,
        spec.noise,
        dataset.num_classes,
        _generator(spec.seed, _NOISE_STREAM),
        spec.noise_type,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = make_mlp(splits.train.features.shape[1], dataset.num_classes)
    outcome = train_model(
        model,
        make_loss(spec.loss, dataset.num_classes),
        LabeledData(splits.train.features, noisy_train_labels),
        splits.validation,
        config,
        _generator(spec.seed, _SHUFFLE_STREAM),
    )
    test_features = splits.test.features.to(config.device)
    test_probabilities = predict_probabilities(outcome.model, test_features)
    selected_test = {}
    for name, state in outcome.selected_states.items():
        outcome.model.load_state_dict(state)
        selected_probabilities = predict_probabilities(outcome.model, test_features)
        selected_test[name] = score_predictions(selected_probabilities, splits.test.labels)
    return RunResult(
        dataset=dataset.name,
        loss=spec.loss,
        noise=spec.noise,
        seed=spec.seed,
        split_sizes={
            "train": len(splits.train),
            "validation": len(splits.validation),
            "test": len(splits.test),
        },
        noisy_labels=int((noisy_train_labels != splits.train.labels).sum()),
        test=score_predictions(test_probabilities, splits.test.labels),
        selected_epochs=outcome.selected_epochs,
        selected_test_accuracy={name: scores["accuracy"] for name, scores in selected_test.items()},
        history=outcome.history,
        seconds=time.perf_counter() - start,
        test_probabilities=test_probabilities,
        test_labels=splits.test.labels,
        noise_type=spec.noise_type,
        selected_test=selected_test,
    )


def run_grid(
    dataset: Dataset,
    losses: Sequence[str],
    noise_rates: Sequence[float],
    seeds: Sequence[int],
    config: TrainingConfig,
    *,
    progress: bool = True,
    noise_type: str = "symmetric",
) -> list[RunResult]:
    """Run every (loss, noise rate, seed) combination.

    Each seed gets its own splits (:func:`~experiments.splits.split_dataset`), shared by
    all losses and noise rates, so the losses are compared on the same data, noise and initial
    weights.

    Args:
        dataset (Dataset): the data.
        losses (Sequence[str]): loss names (keys of :data:`~experiments.losses.LOSSES`).
        noise_rates (Sequence[float]): training-label noise rates in :math:`[0, 1]`.
        seeds (Sequence[int]): seeds, each at least 0.
        config (TrainingConfig): epochs, batch size, learning rate, device.
        progress (bool, optional): show a tqdm progress bar over the runs (on stderr).
            Default: ``True``.
        noise_type (str, optional): the noise model of every rate, one of
            :data:`~experiments.noise.NOISE_TYPES`. Default: ``"symmetric"``.

    Returns:
        list[RunResult]: one per run, seed by seed, then noise rate, then loss.
    """
    results = []
    with tqdm(
        total=len(losses) * len(noise_rates) * len(seeds), disable=not progress, unit="run"
    ) as bar:
        for seed in seeds:
            splits = split_dataset(dataset, seed)
            for noise in noise_rates:
                for loss in losses:
                    bar.set_postfix(loss=loss, noise=noise, seed=seed)
                    results.append(
                        run_experiment(
                            dataset, splits, RunSpec(loss, noise, seed, noise_type), config
                        )
                    )
                    bar.update()
    return results
