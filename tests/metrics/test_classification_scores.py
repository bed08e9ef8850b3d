"""ClassificationScores: every score in one pass, equal to the functional rules and torchmetrics."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import fairloss.metrics as metrics

pytest.importorskip("torchmetrics")

from torchmetrics.classification import MulticlassCalibrationError

from fairloss.metrics import ClassificationScores

NAMES = ("accuracy", "nll", "brier", "pll", "pbs", "ece")


def _random_batch(
    generator: torch.Generator, num_rows: int, num_classes: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    logits = 3 * torch.randn(num_rows, num_classes, generator=generator, dtype=dtype)
    target = torch.randint(0, num_classes, (num_rows,), generator=generator)
    return metrics.probabilities_from_logits(logits), target


def _reference(probs: Tensor, target: Tensor, n_bins: int, brier: str = "sum") -> dict[str, Tensor]:
    """The same scores from the functional rules and torchmetrics' own calibration error."""
    calibration = MulticlassCalibrationError(
        num_classes=probs.shape[1], n_bins=n_bins, norm="l1", validate_args=False
    )
    calibration.update(probs, target)
    return {
        "accuracy": (probs.argmax(dim=1) == target).to(probs.dtype).mean(),
        "nll": metrics.log_loss(probs, target),
        "brier": metrics.brier_score(probs, target, brier=brier),
        "pll": metrics.penalized_log_loss(probs, target),
        "pbs": metrics.penalized_brier_score(probs, target, brier=brier),
        "ece": calibration.compute().to(probs.dtype),
    }


def _assert_scores_close(
    actual: dict[str, Tensor], expected: dict[str, Tensor], **tolerances: Any
) -> None:
    assert tuple(actual) == NAMES
    for name in NAMES:
        torch.testing.assert_close(actual[name], expected[name], msg=name, **tolerances)


@settings(max_examples=25, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(0, 9), min_size=1, max_size=5).filter(any),
    num_classes=st.integers(1, 9),
    n_bins=st.integers(1, 20),
    brier=st.sampled_from(("sum", "mean")),
    seed=st.integers(0, 2**16),
)
def test_batches_equal_the_functional_rules_and_torchmetrics_on_all_rows(
    batch_sizes: list[int], num_classes: int, n_bins: int, brier: str, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    metric = ClassificationScores(num_classes, n_bins=n_bins, brier=brier)
    batches = [_random_batch(generator, size, num_classes) for size in batch_sizes]
    for index, (probs, target) in enumerate(batches):
        # alternate the two target forms: the state does not care
        metric.update(probs, F.one_hot(target, num_classes) if index % 2 else target)

    all_probs = torch.cat([probs for probs, _ in batches])
    all_target = torch.cat([target for _, target in batches])
    _assert_scores_close(metric.compute(), _reference(all_probs, all_target, n_bins, brier))
    assert int(metric.count) == sum(batch_sizes)


def test_chunked_updates_equal_one_update() -> None:
    generator = torch.Generator().manual_seed(3)
    probs, target = _random_batch(generator, 1000, 7, torch.float64)
    whole = ClassificationScores(7).set_dtype(torch.float64)
    whole.update(probs, target)
    chunked = ClassificationScores(7).set_dtype(torch.float64)
    for probs_chunk, target_chunk in zip(probs.split(128), target.split(128)):
        chunked.update(probs_chunk, target_chunk)
    whole_scores, chunked_scores = whole.compute(), chunked.compute()
    assert all(value.dtype == torch.float64 for value in whole_scores.values())
    _assert_scores_close(chunked_scores, whole_scores, rtol=1e-12, atol=1e-12)


def test_float64_state_matches_the_float64_functional_rules() -> None:
    generator = torch.Generator().manual_seed(8)
    probs, target = _random_batch(generator, 50, 4, torch.float64)
    metric = ClassificationScores(4, n_bins=10).set_dtype(torch.float64)
    metric.update(probs, target)
    # the calibration error is float32 inside torchmetrics, in the metric and the reference alike
    _assert_scores_close(metric.compute(), _reference(probs, target, 10), rtol=1e-12, atol=1e-12)


def test_no_rows_gives_nan_for_every_score() -> None:
    """Documented: before any row every value is NaN (0 / 0, as a mean of nothing)."""
    metric = ClassificationScores(3)
    with pytest.warns(UserWarning, match="called before the ``update`` method"):
        scores = metric.compute()
    assert tuple(scores) == NAMES and all(math.isnan(value) for value in scores.values())

    metric.update(torch.empty(0, 3), torch.empty(0, dtype=torch.long))  # no warning: updated
    assert all(math.isnan(value) for value in metric.compute().values())


def test_an_empty_batch_adds_nothing() -> None:
    generator = torch.Generator().manual_seed(2)
    probs, target = _random_batch(generator, 20, 3)
    with_empty = ClassificationScores(3)
    with_empty.update(probs[:0], target[:0])
    with_empty.update(probs, target)
    with_empty.update(probs[:0], F.one_hot(target[:0], 3))
    without = ClassificationScores(3)
    without.update(probs, target)
    _assert_scores_close(with_empty.compute(), without.compute())


def test_reset_clears_the_calibration_error_too() -> None:
    generator = torch.Generator().manual_seed(5)
    first, second = _random_batch(generator, 30, 4), _random_batch(generator, 30, 4)
    metric = ClassificationScores(4)
    metric.update(*first)
    metric.reset()
    metric.update(*second)
    _assert_scores_close(metric.compute(), _reference(*second, n_bins=15))


def test_forward_returns_the_batch_and_accumulates_every_batch() -> None:
    generator = torch.Generator().manual_seed(6)
    batches = [_random_batch(generator, size, 5) for size in (12, 7, 20)]
    metric = ClassificationScores(5, n_bins=6)
    for probs, target in batches:
        _assert_scores_close(metric(probs, target), _reference(probs, target, 6))
    all_probs = torch.cat([probs for probs, _ in batches])
    all_target = torch.cat([target for _, target in batches])
    _assert_scores_close(metric.compute(), _reference(all_probs, all_target, 6))


def test_merge_state_merges_the_calibration_error_too() -> None:
    generator = torch.Generator().manual_seed(7)
    first, second = _random_batch(generator, 25, 3), _random_batch(generator, 14, 3)
    metric, other = ClassificationScores(3), ClassificationScores(3)
    metric.update(*first)
    other.update(*second)
    metric.merge_state(other)
    merged = (torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
    _assert_scores_close(metric.compute(), _reference(*merged, n_bins=15))
    with pytest.raises(
        TypeError, match=r"^Expected argument `incoming_state` to be a ClassificationScores"
    ):
        metric.merge_state({"count": torch.tensor(3)})


def test_accuracy_counts_the_first_maximal_class_as_the_prediction() -> None:
    """A tie: argmax picks class 0, so accuracy (and the ECE's accuracy) call row 2 wrong, while
    PLL and PBS count a tie with the true class as correct."""
    metric = ClassificationScores(2)
    metric.update(torch.tensor([[0.9, 0.1], [0.5, 0.5]]), torch.tensor([0, 1]))
    scores = metric.compute()
    assert float(scores["accuracy"]) == 0.5
    torch.testing.assert_close(scores["pll"], -(torch.tensor([0.9, 0.5]).log()).mean())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_classes": 3.0}, TypeError, r"`num_classes` to be an integer, but got float 3\.0"),
        ({"num_classes": True}, TypeError, r"`num_classes` to be an integer, but got bool True"),
        (
            {"num_classes": 0},
            ValueError,
            r"`num_classes` to be an integer larger than 0, but got 0\.",
        ),
        ({"num_classes": 3, "n_bins": 0}, ValueError, r"`n_bins` to be an integer larger than 0"),
        ({"num_classes": 3, "n_bins": "15"}, TypeError, r"`n_bins` to be an integer, but got str"),
        ({"num_classes": 3, "brier": "avg"}, ValueError, r"`brier` to be one of \('sum', 'mean'\)"),
        ({"num_classes": 3, "validate_args": 1}, TypeError, r"`validate_args` to be a bool"),
    ],
)
def test_constructor_errors(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=rf"^Expected argument {message}"):
        ClassificationScores(**kwargs)


def test_update_errors() -> None:
    metric = ClassificationScores(3)
    with pytest.raises(
        ValueError,
        match=r"^Expected argument `probs` to be a tensor of shape \(N, 3\), one column per class, "
        r"but got shape \(1, 2\)\.$",
    ):
        metric.update(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"^Expected argument `probs` to be rows that sum to 1"):
        metric.update(torch.tensor([[0.7, 0.7, 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"^Expected argument `target` to be class indices in"):
        metric.update(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([3]))
    with pytest.raises(TypeError, match=r"^Expected argument `probs` to be a floating point"):
        metric.update(torch.tensor([[0, 1, 0]]), torch.tensor([1]))
    assert int(metric.count) == 0 and metric.calibration.confidences == []

    unchecked = ClassificationScores(3, validate_args=False)
    unchecked.update(torch.tensor([[0.7, 0.7, 0.0]]), torch.tensor([0]))
    assert int(unchecked.count) == 1
