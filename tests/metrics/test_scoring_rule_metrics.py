"""torchmetrics classes: update over batches then compute equals the functional on all the data."""

from __future__ import annotations

import importlib
import sys
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import fairloss
import fairloss.metrics as metrics

pytest.importorskip("torchmetrics")

PAIRS: list[tuple[str, Callable[..., Tensor]]] = [
    ("LogLoss", metrics.log_loss),
    ("BrierScore", metrics.brier_score),
    ("PenalizedLogLoss", metrics.penalized_log_loss),
    ("PenalizedBrierScore", metrics.penalized_brier_score),
]


def _random_batch(
    generator: torch.Generator, num_rows: int, num_classes: int
) -> tuple[Tensor, Tensor]:
    logits = 3 * torch.randn(num_rows, num_classes, generator=generator)
    target = torch.randint(0, num_classes, (num_rows,), generator=generator)
    return metrics.probabilities_from_logits(logits), target


@settings(max_examples=25, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(0, 7), min_size=1, max_size=5),
    num_classes=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    pair=st.sampled_from(PAIRS),
)
def test_update_then_compute_equals_functional_on_concatenated_data(
    batch_sizes: list[int], num_classes: int, seed: int, pair: tuple[str, Callable[..., Tensor]]
) -> None:
    class_name, function = pair
    generator = torch.Generator().manual_seed(seed)
    metric = getattr(metrics, class_name)()
    batches = [_random_batch(generator, size, num_classes) for size in batch_sizes]
    for index, (probs, target) in enumerate(batches):
        # alternate the two target forms: the state does not care
        metric.update(probs, F.one_hot(target, num_classes) if index % 2 else target)

    all_probs = torch.cat([probs for probs, _ in batches])
    all_target = torch.cat([target for _, target in batches])
    expected = function(all_probs, all_target)
    torch.testing.assert_close(metric.compute(), expected, equal_nan=True)
    assert int(metric.count) == sum(batch_sizes)


@pytest.mark.parametrize(("class_name", "function"), PAIRS)
def test_reset_and_float64_state(class_name: str, function: Callable[..., Tensor]) -> None:
    generator = torch.Generator().manual_seed(4)
    metric = getattr(metrics, class_name)()
    metric.update(*_random_batch(generator, 5, 3))
    metric.reset()
    with pytest.warns(UserWarning, match="called before the ``update`` method"):
        assert torch.isnan(metric.compute())

    metric = getattr(metrics, class_name)().set_dtype(torch.float64)
    probs, target = _random_batch(generator, 11, 4)
    metric.update(probs.double(), target)
    result = metric.compute()
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, function(probs.double(), target), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("class_name", "function"), PAIRS)
def test_update_raises_the_functional_errors(
    class_name: str, function: Callable[..., Tensor]
) -> None:
    metric = getattr(metrics, class_name)()
    probs = torch.tensor([[0.7, 0.7]])
    with pytest.raises(ValueError, match=r"^Expected argument `probs` to be rows that sum to 1"):
        metric.update(probs, torch.tensor([0]))
    with pytest.raises(
        ValueError, match=r"^Expected argument `target` to be class indices in \[0, 2\)"
    ):
        metric.update(torch.tensor([[0.3, 0.7]]), torch.tensor([5]))
    unchecked = getattr(metrics, class_name)(validate_args=False)
    unchecked.update(probs, torch.tensor([0]))
    torch.testing.assert_close(
        unchecked.compute(), function(probs, torch.tensor([0]), validate_args=False)
    )


def test_validate_args_must_be_a_bool() -> None:
    with pytest.raises(
        TypeError, match=r"^Expected argument `validate_args` to be a bool, but got str 'yes'\.$"
    ):
        metrics.PenalizedLogLoss(validate_args="yes")  # type: ignore[arg-type]


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'PenalisedLogLoss'"):
        metrics.PenalisedLogLoss  # noqa: B018


def test_missing_torchmetrics_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairloss, "metrics", metrics)  # restored afterwards, as sys.modules
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # makes `import torchmetrics` fail
    monkeypatch.delitem(sys.modules, "fairloss.metrics.modules", raising=False)
    monkeypatch.delitem(sys.modules, "fairloss.metrics", raising=False)
    fresh_metrics = importlib.import_module("fairloss.metrics")
    # the functional part works without torchmetrics
    assert float(fresh_metrics.log_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))) == 0.0
    with pytest.raises(
        ImportError, match=r'needs torchmetrics.*pip install "pytorch-fairloss\[metrics\]"'
    ):
        fresh_metrics.PenalizedBrierScore  # noqa: B018


def test_works_beside_torchmetrics_calibration_error() -> None:
    """The documented pairing: the same probs and targets feed MulticlassCalibrationError."""
    from torchmetrics.classification import MulticlassCalibrationError

    generator = torch.Generator().manual_seed(5)
    probs, target = _random_batch(generator, 40, 3)
    calibration = MulticlassCalibrationError(num_classes=3, n_bins=5)
    penalized = metrics.PenalizedBrierScore()
    calibration.update(probs, target)
    penalized.update(probs, target)
    assert 0.0 <= float(calibration.compute()) <= 1.0
    torch.testing.assert_close(penalized.compute(), metrics.penalized_brier_score(probs, target))
