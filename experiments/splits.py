"""Stratified train/validation/test splits, fixed by a seed, standardized by training statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from experiments.checks import expected
from experiments.datasets import DEMO_EXTRA_HINT, Dataset, LabeledData, import_optional

__all__ = ["Splits", "split_dataset", "standardize"]


@dataclass(frozen=True)
class Splits:
    """The three splits of one run. Only ``train`` is ever trained on (and only its labels get
    noise); ``validation`` picks checkpoints; ``test`` is scored once per checkpoint."""

    train: LabeledData
    validation: LabeledData
    test: LabeledData


def split_dataset(
    dataset: Dataset,
    seed: int,
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
) -> Splits:
    """Split a dataset into stratified train, validation and test parts, then standardize them.

    Without a test split of its own, the dataset's pool is cut into ``test_fraction`` for test,
    ``validation_fraction`` for validation and the rest for training, each stratified by label
    (class proportions kept). With one (torchvision's datasets), that test split is kept as is
    and ``validation_fraction`` of the pool goes to validation. scikit-learn's
    ``train_test_split`` draws the cuts with ``random_state=seed``: the same seed gives the same
    splits. Features are then standardized with :func:`standardize`.

    Args:
        dataset (Dataset): what to split.
        seed (int): fixes the cuts.
        test_fraction (float, optional): share of the pool for testing, used only when the
            dataset has no test split. Default: ``0.2``.
        validation_fraction (float, optional): share of the pool for validation. Default: ``0.2``.

    Returns:
        Splits: float32 features, int64 labels.

    Raises:
        ValueError: fractions outside :math:`(0, 1)`, or summing to 1 or more.

    Example:
        >>> from experiments.datasets import load_dataset
        >>> splits = split_dataset(load_dataset("digits"), seed=0)
        >>> len(splits.train), len(splits.validation), len(splits.test)
        (1077, 360, 360)
    """
    for name, fraction in (
        ("test_fraction", test_fraction),
        ("validation_fraction", validation_fraction),
    ):
        if not 0.0 < fraction < 1.0:
            raise ValueError(expected(name, "a number in (0, 1)", repr(fraction)))
    model_selection = import_optional(
        "sklearn.model_selection", "Splitting a dataset", DEMO_EXTRA_HINT
    )
    pool = dataset.pool
    pool_indices = torch.arange(len(pool))

    def stratified_cut(indices: Tensor, share: float) -> tuple[Tensor, Tensor]:
        labels = pool.labels[indices].numpy()
        kept, cut = model_selection.train_test_split(
            indices.numpy(), test_size=share, stratify=labels, random_state=seed
        )
        return torch.as_tensor(kept), torch.as_tensor(cut)

    if dataset.test is None:
        if test_fraction + validation_fraction >= 1.0:
            raise ValueError(
                expected(
                    "test_fraction + validation_fraction",
                    "less than 1",
                    f"{test_fraction} + {validation_fraction}",
                )
            )
        rest_indices, test_indices = stratified_cut(pool_indices, test_fraction)
        train_indices, validation_indices = stratified_cut(
            rest_indices, validation_fraction / (1.0 - test_fraction)
        )
        test = pool.subset(test_indices)
    else:
        train_indices, validation_indices = stratified_cut(pool_indices, validation_fraction)
        test = dataset.test
    return standardize(Splits(pool.subset(train_indices), pool.subset(validation_indices), test))


def standardize(splits: Splits) -> Splits:
    r"""Center and scale every feature by the training split's mean and standard deviation.

    .. math::
        x' = \frac{x - \mu_{\text{train}}}{\sigma_{\text{train}}}

    A feature that is constant on the training split (:math:`\sigma_{\text{train}} = 0`, such as
    a border pixel) is only centered, as scikit-learn's ``StandardScaler`` does. Validation and
    test statistics are never looked at.

    Args:
        splits (Splits): the raw splits.

    Returns:
        Splits: the same samples and labels, with standardized float32 features.

    Example:
        >>> train = LabeledData(torch.tensor([[0.0, 5.0], [2.0, 5.0]]), torch.tensor([0, 1]))
        >>> test = LabeledData(torch.tensor([[4.0, 6.0]]), torch.tensor([1]))
        >>> standardize(Splits(train, test, test)).test.features
        tensor([[2.1213, 1.0000]])
    """
    train_features = splits.train.features.to(torch.float64)
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0) if len(splits.train) > 1 else torch.zeros_like(mean)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def scaled(part: LabeledData) -> LabeledData:
        features = (part.features.to(torch.float64) - mean) / std
        return LabeledData(features.to(torch.float32), part.labels)

    return Splits(scaled(splits.train), scaled(splits.validation), scaled(splits.test))
