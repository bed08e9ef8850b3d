"""The torchvision loaders, against a fake ``torchvision`` that serves tiny files from a folder.

torchvision cannot be installed next to this project's torch build, so the tests put a stand-in
module into ``sys.modules``. It mimics the real classes' interface that the loader uses:
``Class(root=..., train=..., download=...)`` with ``data``, ``targets`` and ``classes``. MNIST and
FashionMNIST keep ``data`` as a uint8 tensor ``(N, H, W)`` and ``targets`` as a tensor; CIFAR10
keeps a uint8 NumPy array ``(N, H, W, 3)`` and a list of ints.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Imported before any fake exists: torchmetrics (which the experiment uses) probes for
# torchvision once, when it is first imported, and would take the fake for the real package.
import experiments.evaluation  # noqa: F401
from experiments.cli import main
from experiments.datasets import MissingDependencyError, load_dataset

NUM_CLASSES = 10
CLASS_NAMES = [f"class {index}" for index in range(NUM_CLASSES)]


def _write_fake_folder(root: Path, class_name: str, channels: bool) -> dict[str, dict[str, Any]]:
    """Write ``root/<class_name>/{train,test}.pt`` with tiny random images; return them."""
    generator = torch.Generator().manual_seed(0)
    written = {}
    for split, per_class in (("train", 10), ("test", 3)):
        count = NUM_CLASSES * per_class
        shape = (count, 4, 4, 3) if channels else (count, 4, 4)
        images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        targets = torch.arange(NUM_CLASSES).repeat(per_class)
        written[split] = {"data": images, "targets": targets}
        (root / class_name).mkdir(parents=True, exist_ok=True)
        torch.save(written[split], root / class_name / f"{split}.pt")
    return written


def _fake_dataset_class(
    class_name: str, channels_last_numpy: bool, calls: list[dict[str, Any]]
) -> type:
    class FakeVisionDataset:
        classes = CLASS_NAMES

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append({"class": class_name, "root": root, "train": train, "download": download})
            stored = torch.load(Path(root) / class_name / f"{'train' if train else 'test'}.pt")
            if channels_last_numpy:  # as torchvision.datasets.CIFAR10
                self.data = stored["data"].numpy()
                self.targets = stored["targets"].tolist()
            else:  # as torchvision.datasets.MNIST / FashionMNIST
                self.data = stored["data"]
                self.targets = stored["targets"]

    FakeVisionDataset.__name__ = class_name
    return FakeVisionDataset


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Install a fake ``torchvision`` package; return the list its dataset classes log calls to."""
    calls: list[dict[str, Any]] = []
    package = types.ModuleType("torchvision")
    datasets_module = types.ModuleType("torchvision.datasets")
    # Packages that probe for torchvision with importlib.util.find_spec need a spec.
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    datasets_module.__spec__ = importlib.machinery.ModuleSpec("torchvision.datasets", None)
    datasets_module.MNIST = _fake_dataset_class("MNIST", False, calls)  # type: ignore[attr-defined]
    datasets_module.FashionMNIST = _fake_dataset_class("FashionMNIST", False, calls)  # type: ignore[attr-defined]
    datasets_module.CIFAR10 = _fake_dataset_class("CIFAR10", True, calls)  # type: ignore[attr-defined]
    package.datasets = datasets_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets_module)
    return calls


@pytest.mark.parametrize(
    ("name", "class_name", "channels"),
    [
        ("mnist", "MNIST", False),
        ("fashion-mnist", "FashionMNIST", False),
        ("cifar10", "CIFAR10", True),
    ],
)
def test_loads_train_and_test_splits_as_flat_rows(
    fake_torchvision: list[dict[str, Any]],
    tmp_path: Path,
    name: str,
    class_name: str,
    channels: bool,
) -> None:
    written = _write_fake_folder(tmp_path, class_name, channels)

    dataset = load_dataset(name, tmp_path)

    assert fake_torchvision == [
        {"class": class_name, "root": str(tmp_path), "train": True, "download": True},
        {"class": class_name, "root": str(tmp_path), "train": False, "download": True},
    ]
    assert dataset.name == name and dataset.num_classes == NUM_CLASSES
    assert dataset.test is not None
    for part, split in ((dataset.pool, "train"), (dataset.test, "test")):
        images = written[split]["data"]
        assert part.features.dtype == torch.float32 and part.labels.dtype == torch.long
        assert part.features.shape == (images.shape[0], 48 if channels else 16)
        torch.testing.assert_close(part.features, images.reshape(images.shape[0], -1).float())
        assert torch.equal(part.labels, written[split]["targets"])


def test_compare_runs_on_a_torchvision_dataset(
    fake_torchvision: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_fake_folder(tmp_path / "data", "FashionMNIST", channels=False)
    status = main(
        [
            "compare",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--losses",
            "ce",
            "--noise",
            "0.5",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    # The pool of 100 loses 20% to validation; the dataset's own 30 test images are the test split.
    assert "fashion-mnist: train/validation/test 80/20/30, 10 classes" in out
    row = (tmp_path / "out" / "runs.csv").read_text().splitlines()[1].split(",")
    assert row[:4] == ["fashion-mnist", "ce", "0.5", "0"]
    assert row[4:8] == ["80", "20", "30", "40"]  # split sizes, then round(0.5 * 80) noisy labels


def test_missing_torchvision_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pytorch-fairloss\[vision\]"):
        load_dataset("mnist", tmp_path)

    status = main(["compare", "--dataset", "cifar10", "--out", str(tmp_path), "--quiet"])
    assert status == 1
    error = capsys.readouterr().err
    assert "The dataset 'cifar10' needs torchvision, which is not installed" in error
    assert 'pip install "pytorch-fairloss[vision]"' in error


def test_numpy_targets_are_accepted() -> None:
    from experiments.datasets import _images_to_labeled_data

    fake = types.SimpleNamespace(
        data=np.zeros((3, 2, 2, 3), dtype=np.uint8), targets=np.array([2, 0, 1])
    )
    converted = _images_to_labeled_data(fake)
    assert converted.features.shape == (3, 12) and converted.labels.tolist() == [2, 0, 1]

    mismatched = types.SimpleNamespace(data=np.zeros((3, 2, 2)), targets=[0, 1])
    with pytest.raises(ValueError, match="as many targets as images, but got 2 targets for 3"):
        _images_to_labeled_data(mismatched)
