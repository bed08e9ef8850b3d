"""Fixtures for the tests of ``python -m experiments compare`` and its experiment modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from experiments.datasets import Dataset, load_dataset


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one thread, as ``python -m experiments compare`` does by default: the tiny models
    here run several times slower with more threads on a busy machine. The setting is restored
    after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")
