"""One run: deterministic per seed, noise on the training labels only, checkpoint selection."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from experiments import runner
from experiments.datasets import Dataset
from experiments.noise import add_label_noise
from experiments.runner import RunResult, RunSpec, run_experiment, run_grid
from experiments.splits import split_dataset
from experiments.training import SELECTION_METRICS, TrainingConfig

TINY = TrainingConfig(epochs=2, batch_size=256)


def _run(
    dataset: Dataset, loss: str, noise: float, seed: int, config: TrainingConfig = TINY
) -> RunResult:
    return run_experiment(dataset, split_dataset(dataset, seed), RunSpec(loss, noise, seed), config)


def test_same_seed_gives_identical_results(digits: Dataset) -> None:
    first = _run(digits, "fairloss", 0.3, seed=5)
    again = _run(digits, "fairloss", 0.3, seed=5)
    assert first.test == again.test
    assert first.history == again.history
    assert first.selected_test_accuracy == again.selected_test_accuracy
    assert torch.equal(first.test_probabilities, again.test_probabilities)


def test_another_seed_gives_other_results(digits: Dataset) -> None:
    first = _run(digits, "ce", 0.3, seed=5)
    other = _run(digits, "ce", 0.3, seed=6)
    assert first.test["nll"] != other.test["nll"]


def test_the_run_leaves_torch_global_generator_alone(digits: Dataset) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _run(digits, "ce", 0.0, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_noise_touches_the_training_labels_only(digits: Dataset, monkeypatch: Any) -> None:
    seed, noise = 3, 0.3
    clean = split_dataset(digits, seed)
    trained_on: dict[str, Any] = {}
    real_train_model = runner.train_model

    def recording_train_model(model, loss_function, train, validation, config, generator):
        trained_on["train_labels"] = train.labels
        trained_on["train_features"] = train.features
        trained_on["validation_labels"] = validation.labels
        return real_train_model(model, loss_function, train, validation, config, generator)

    monkeypatch.setattr(runner, "train_model", recording_train_model)
    result = run_experiment(digits, clean, RunSpec("ce", noise, seed), TINY)

    changed = trained_on["train_labels"] != clean.train.labels
    assert int(changed.sum()) == round(noise * len(clean.train)) == result.noisy_labels == 323
    assert torch.equal(trained_on["train_features"], clean.train.features)
    assert torch.equal(trained_on["validation_labels"], clean.validation.labels)
    assert torch.equal(result.test_labels, clean.test.labels)
    assert torch.equal(clean.train.labels, split_dataset(digits, seed).train.labels), (
        "the splits' own labels stay clean"
    )


def test_noise_is_shared_by_all_losses_of_a_seed(digits: Dataset, monkeypatch: Any) -> None:
    noisy_labels: list[torch.Tensor] = []

    def recording_noise(labels, rate, num_classes, generator, noise_type):
        assert noise_type == "symmetric"
        noisy = add_label_noise(labels, rate, num_classes, generator, noise_type)
        noisy_labels.append(noisy)
        return noisy

    monkeypatch.setattr(runner, "add_label_noise", recording_noise)
    run_grid(digits, ["ce", "fairloss"], [0.3], [0, 1], TrainingConfig(epochs=1), progress=False)
    assert len(noisy_labels) == 4
    assert torch.equal(noisy_labels[0], noisy_labels[1])  # seed 0: ce, fairloss
    assert torch.equal(noisy_labels[2], noisy_labels[3])  # seed 1
    assert not torch.equal(noisy_labels[0][:100], noisy_labels[2][:100])


def test_selected_checkpoints_are_the_best_validation_epochs(digits: Dataset) -> None:
    config = TrainingConfig(epochs=6, batch_size=64)
    result = _run(digits, "ce", 0.5, seed=1, config=config)

    assert [entry["epoch"] for entry in result.history] == list(range(1, 7))
    for name in SELECTION_METRICS:
        scores = [entry[f"validation_{name}"] for entry in result.history]
        assert result.selected_epochs[name] == 1 + scores.index(min(scores))
        # Training is deterministic, so a run stopped at the selected epoch is that checkpoint.
        stopped = _run(
            digits,
            "ce",
            0.5,
            seed=1,
            config=TrainingConfig(epochs=result.selected_epochs[name], batch_size=64),
        )
        assert result.selected_test_accuracy[name] == stopped.test["accuracy"]
        # Every test score of the selected checkpoint is kept, not only its accuracy.
        assert result.selected_test[name] == stopped.test


def test_pair_noise_reaches_the_training_labels_only(digits: Dataset, monkeypatch: Any) -> None:
    seed = 2
    clean = split_dataset(digits, seed)
    trained_on: dict[str, Any] = {}
    real_train_model = runner.train_model

    def recording_train_model(model, loss_function, train, validation, config, generator):
        trained_on["train_labels"] = train.labels
        return real_train_model(model, loss_function, train, validation, config, generator)

    monkeypatch.setattr(runner, "train_model", recording_train_model)
    result = run_experiment(digits, clean, RunSpec("focal", 0.2, seed, "pair"), TINY)

    changed = trained_on["train_labels"] != clean.train.labels
    assert int(changed.sum()) == round(0.2 * len(clean.train)) == result.noisy_labels
    assert torch.equal(trained_on["train_labels"][changed], (clean.train.labels[changed] + 1) % 10)
    assert result.noise_type == "pair" and torch.equal(result.test_labels, clean.test.labels)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "Expected argument `epochs` to be an integer larger than 0, but got 0."),
        ("batch_size", 2.5, "Expected argument `batch_size` to be an integer larger than 0"),
        ("learning_rate", 0.0, "Expected argument `learning_rate` to be a number larger than 0"),
    ],
)
def test_bad_training_config_raises(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**{field: value})  # type: ignore[arg-type]
