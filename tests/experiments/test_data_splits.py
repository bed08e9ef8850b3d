"""Dataset loading and the stratified, seeded, standardized splits."""

from __future__ import annotations

import pytest
import torch

from experiments.datasets import Dataset, LabeledData, load_dataset
from experiments.splits import Splits, split_dataset, standardize


@pytest.mark.parametrize(
    ("name", "num_samples", "num_features", "num_classes"),
    [("digits", 1797, 64, 10), ("wine", 178, 13, 3), ("breast-cancer", 569, 30, 2)],
)
def test_sklearn_datasets_load_as_float_features_and_int_labels(
    name: str, num_samples: int, num_features: int, num_classes: int
) -> None:
    dataset = load_dataset(name)
    assert dataset.name == name and dataset.num_classes == num_classes and dataset.test is None
    assert dataset.pool.features.shape == (num_samples, num_features)
    assert dataset.pool.features.dtype == torch.float32
    assert dataset.pool.labels.dtype == torch.long
    assert set(dataset.pool.labels.tolist()) == set(range(num_classes))


def test_unknown_dataset_raises() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `name` to be one of \('digits'"):
        load_dataset("imagenet")


def _rows(features: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(row) for row in features.tolist()}


def test_splits_partition_the_pool_stratified(digits: Dataset) -> None:
    splits = split_dataset(digits, seed=0)
    sizes = [len(splits.train), len(splits.validation), len(splits.test)]
    assert sum(sizes) == len(digits.pool)
    assert sizes == [1077, 360, 360]

    # Same samples, no overlap: compare the label multiset and the class counts per split.
    all_labels = torch.cat([splits.train.labels, splits.validation.labels, splits.test.labels])
    assert torch.equal(all_labels.bincount(), digits.pool.labels.bincount())
    pool_share = digits.pool.labels.bincount() / len(digits.pool)
    for part in (splits.train, splits.validation, splits.test):
        expected_counts = pool_share * len(part)
        assert torch.all((part.labels.bincount() - expected_counts).abs() <= 1.0)


def test_splits_are_disjoint(digits: Dataset) -> None:
    # Standardizing is one affine map per feature, so distinct raw rows stay distinct.
    splits = split_dataset(digits, seed=0)
    train, validation, test = (
        _rows(part.features) for part in (splits.train, splits.validation, splits.test)
    )
    assert not (train & validation) and not (train & test) and not (validation & test)


def test_same_seed_same_splits_other_seed_other_splits(digits: Dataset) -> None:
    first, again, other = (split_dataset(digits, seed) for seed in (0, 0, 1))
    assert torch.equal(first.test.features, again.test.features)
    assert torch.equal(first.train.labels, again.train.labels)
    assert not torch.equal(first.test.features, other.test.features)


def test_training_features_are_standardized(digits: Dataset) -> None:
    splits = split_dataset(digits, seed=0)
    mean = splits.train.features.mean(dim=0)
    std = splits.train.features.std(dim=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    # Features constant on the training split (blank border pixels) stay constant: std 0.
    constant = std < 1e-6
    assert 0 < int(constant.sum()) < 8
    torch.testing.assert_close(std[~constant], torch.ones_like(std[~constant]), atol=1e-4, rtol=0)


def test_standardize_uses_training_statistics_only() -> None:
    train = LabeledData(torch.tensor([[1.0, 7.0], [3.0, 7.0]]), torch.tensor([0, 1]))
    far_away = LabeledData(torch.tensor([[100.0, 9.0]]), torch.tensor([0]))
    result = standardize(Splits(train, far_away, far_away))
    # mean (2, 7); std (sqrt(2), 0 -> 1): the constant feature is only centered.
    expected = torch.tensor([[(100.0 - 2.0) / 2.0**0.5, 2.0]])
    torch.testing.assert_close(result.test.features, expected)
    torch.testing.assert_close(result.validation.features, expected)
    assert torch.equal(result.test.labels, far_away.labels)


def test_a_dataset_with_its_own_test_split_keeps_it() -> None:
    generator = torch.Generator().manual_seed(0)
    pool = LabeledData(torch.randn(100, 3, generator=generator), torch.arange(4).repeat(25))
    test = LabeledData(torch.randn(12, 3, generator=generator), torch.arange(4).repeat(3))
    splits = split_dataset(Dataset("fake", 4, pool, test), seed=0, validation_fraction=0.2)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (80, 20, 12)
    assert torch.equal(splits.test.labels, test.labels)
    assert torch.equal(splits.validation.labels.bincount(), torch.full((4,), 5))


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"test_fraction": 0.0}, r"`test_fraction` to be a number in \(0, 1\), but got 0.0"),
        ({"validation_fraction": 1.0}, r"`validation_fraction` to be a number in \(0, 1\)"),
        (
            {"test_fraction": 0.5, "validation_fraction": 0.5},
            r"`test_fraction \+ validation_fraction` to be less than 1, but got 0.5 \+ 0.5",
        ),
    ],
)
def test_bad_fractions_raise(digits: Dataset, fractions: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_dataset(digits, seed=0, **fractions)
