"""Datasets for ``python -m experiments compare``, loaded as feature and label tensors.

scikit-learn's bundled sets (``digits``, ``wine``, ``breast-cancer``) ship inside scikit-learn and
need no download. ``mnist``, ``fashion-mnist`` and ``cifar10`` come through torchvision, which
downloads them into a data folder on first use; images are flattened to one feature per pixel
(and channel).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from experiments.checks import expected

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "LabeledData",
    "MissingDependencyError",
    "load_dataset",
]

DEMO_EXTRA_HINT = 'pip install "pytorch-fairloss[demo]"'
VISION_EXTRA_HINT = (
    'pip install "pytorch-fairloss[vision]" (or the torchvision release that matches your torch)'
)

_SKLEARN_LOADERS = {
    "digits": "load_digits",
    "wine": "load_wine",
    "breast-cancer": "load_breast_cancer",
}
_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
}
DATASET_NAMES = tuple(_SKLEARN_LOADERS) + tuple(_TORCHVISION_CLASSES)


class MissingDependencyError(ImportError):
    """An optional package that a dataset or the experiment needs is not installed."""


@dataclass(frozen=True)
class LabeledData:
    """Samples as tensors: ``features`` ``(N, D)`` (float32) and ``labels`` ``(N,)`` (int64)."""

    features: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor) -> LabeledData:
        """The samples at ``indices``."""
        return LabeledData(self.features[indices], self.labels[indices])


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to split.

    Attributes:
        name (str): the name it was loaded by.
        num_classes (int): the number of classes :math:`C`; labels lie in :math:`[0, C)`.
        pool (LabeledData): the samples that the train (and validation) splits are drawn from,
            and the test split too when the source has no test split of its own.
        test (LabeledData, optional): the source's own test split (torchvision's datasets), or
            ``None``.
    """

    name: str
    num_classes: int
    pool: LabeledData
    test: Optional[LabeledData] = None


def load_dataset(name: str, data_dir: Union[str, Path] = "data") -> Dataset:
    """Load a dataset by name.

    Args:
        name (str): one of :data:`DATASET_NAMES`.
        data_dir (str or Path, optional): where torchvision keeps (and downloads) its datasets;
            unused by scikit-learn's bundled ones. Default: ``"data"``.

    Returns:
        Dataset: float32 features, one row per sample, and int64 labels.

    Raises:
        ValueError: an unknown ``name``.
        MissingDependencyError: scikit-learn (for the bundled sets) or torchvision (for the image
            sets) is not installed; the message says what to install.

    Example:
        >>> dataset = load_dataset("wine")
        >>> dataset.num_classes, tuple(dataset.pool.features.shape), dataset.test is None
        (3, (178, 13), True)
    """
    if name in _SKLEARN_LOADERS:
        return _load_sklearn(name)
    if name in _TORCHVISION_CLASSES:
        return _load_torchvision(name, Path(data_dir))
    raise ValueError(expected("name", f"one of {DATASET_NAMES}", repr(name)))


def import_optional(module: str, needed_for: str, install_hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingDependencyError(
            f"{needed_for} needs {module.split('.')[0]}, which is not installed. "
            f"Install it with: {install_hint}"
        ) from error


def _load_sklearn(name: str) -> Dataset:
    sklearn_datasets = import_optional("sklearn.datasets", f"The dataset {name!r}", DEMO_EXTRA_HINT)
    loader: Callable[..., Any] = getattr(sklearn_datasets, _SKLEARN_LOADERS[name])
    features, labels = loader(return_X_y=True)
    pool = LabeledData(
        torch.as_tensor(features, dtype=torch.float32),
        torch.as_tensor(labels, dtype=torch.long),
    )
    return Dataset(name, num_classes=int(pool.labels.max()) + 1, pool=pool)


def _load_torchvision(name: str, data_dir: Path) -> Dataset:
    """Load a torchvision dataset (downloading it into ``data_dir`` if needed).

    The dataset class is looked up in ``torchvision.datasets`` at call time, and only its
    ``data``, ``targets`` and ``classes`` attributes are read: no transforms, no PIL.
    """
    vision_datasets = import_optional(
        "torchvision.datasets", f"The dataset {name!r}", VISION_EXTRA_HINT
    )
    dataset_class = getattr(vision_datasets, _TORCHVISION_CLASSES[name])
    train = dataset_class(root=str(data_dir), train=True, download=True)
    test = dataset_class(root=str(data_dir), train=False, download=True)
    return Dataset(
        name,
        num_classes=len(train.classes),
        pool=_images_to_labeled_data(train),
        test=_images_to_labeled_data(test),
    )


def _images_to_labeled_data(image_dataset: Any) -> LabeledData:
    """Flatten a torchvision image dataset's ``data`` (uint8, ``(N, H, W)`` or ``(N, H, W, 3)``,
    a tensor or a NumPy array) into float32 rows, and its ``targets`` into int64 labels."""
    images = torch.as_tensor(image_dataset.data)
    features = images.reshape(images.shape[0], -1).to(torch.float32)
    labels = torch.as_tensor(image_dataset.targets, dtype=torch.long).reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            expected(
                "image_dataset",
                "as many targets as images",
                f"{labels.shape[0]} targets for {features.shape[0]} images",
            )
        )
    return LabeledData(features, labels)
