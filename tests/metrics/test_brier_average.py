"""``brier="sum" | "mean"``: the paper's summed Brier part and the authors' code's averaged one."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

import fairloss.metrics as metrics
from fairloss.metrics import brier_score, penalized_brier_score


def mean_brier_reference(row: list[float], true_class: int, penalized: bool) -> float:
    """The authors' TensorFlow code: reduce_mean over classes of (q - onehot)^2, then + (C-1)/C
    on a wrong row (another class strictly more probable than the true one)."""
    num_classes = len(row)
    squared = [(q - (1.0 if k == true_class else 0.0)) ** 2 for k, q in enumerate(row)]
    value = math.fsum(squared) / num_classes
    wrong = any(q > row[true_class] for k, q in enumerate(row) if k != true_class)
    return value + ((num_classes - 1) / num_classes if penalized and wrong else 0.0)


@st.composite
def rows_and_targets(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    num_classes = draw(st.integers(1, 12))
    num_rows = draw(st.integers(1, 9))
    weights = draw(
        st.lists(
            st.lists(st.integers(0, 4), min_size=num_classes, max_size=num_classes).filter(any),
            min_size=num_rows,
            max_size=num_rows,
        )
    )
    rows = torch.tensor(weights, dtype=torch.float64)
    targets = draw(st.lists(st.integers(0, num_classes - 1), min_size=num_rows, max_size=num_rows))
    return rows / rows.sum(dim=1, keepdim=True), torch.tensor(targets)


@settings(max_examples=60, deadline=None)
@given(batch=rows_and_targets(), penalized=st.booleans())
def test_mean_matches_the_float64_reference(batch: tuple[Tensor, Tensor], penalized: bool) -> None:
    probs, target = batch
    function = penalized_brier_score if penalized else brier_score
    expected = [
        mean_brier_reference(row, label, penalized)
        for row, label in zip(probs.tolist(), target.tolist())
    ]
    got = function(probs, target, reduction="none", brier="mean")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(
        function(probs, target, brier="mean"),
        torch.tensor(math.fsum(expected) / len(expected)).double(),
    )


def test_default_is_the_sum_and_mean_divides_the_brier_part_by_c() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(50, 7, generator=generator, dtype=torch.float64), 1)
    target = torch.randint(0, 7, (50,), generator=generator)
    for function in (brier_score, penalized_brier_score):
        default = function(probs, target, reduction="none")
        torch.testing.assert_close(default, function(probs, target, reduction="none", brier="sum"))
    summed = brier_score(probs, target, reduction="none")
    torch.testing.assert_close(
        brier_score(probs, target, reduction="none", brier="mean"), summed / 7
    )
    penalty = penalized_brier_score(probs, target, reduction="none") - summed
    torch.testing.assert_close(
        penalized_brier_score(probs, target, reduction="none", brier="mean"), summed / 7 + penalty
    )


def test_worked_example_in_the_authors_convention() -> None:
    """The paper's example rows (true class 1): A correct, B wrong; Brier parts 0.6534, 0.5202."""
    probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]], dtype=torch.float64)
    got = penalized_brier_score(probs, torch.tensor([1, 1]), reduction="none", brier="mean")
    torch.testing.assert_close(
        got, torch.tensor([0.6534 / 3, 0.5202 / 3 + 2 / 3], dtype=torch.float64)
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_classes=st.integers(2, 30))
def test_mean_variant_still_scores_every_correct_row_better(
    data: st.DataObject, num_classes: int
) -> None:
    weights = st.lists(st.floats(0.0, 1.0), min_size=num_classes, max_size=num_classes)
    correct = torch.tensor(data.draw(weights.filter(lambda row: sum(row) > 0)), dtype=torch.float64)
    wrong = torch.tensor(data.draw(weights.filter(lambda row: sum(row) > 0)), dtype=torch.float64)
    correct, wrong = correct / correct.sum(), wrong / wrong.sum()
    assume(bool(wrong.min() < wrong.max()))
    correct_target = int(correct.argmax())
    wrong_target = int(torch.nonzero(wrong < wrong.max())[0, 0])
    scores = penalized_brier_score(
        torch.stack([correct, wrong]),
        torch.tensor([correct_target, wrong_target]),
        reduction="none",
        brier="mean",
    )
    threshold = (num_classes - 1) / num_classes
    assert float(scores[0]) <= threshold < float(scores[1])


@pytest.mark.parametrize("function", [brier_score, penalized_brier_score])
@pytest.mark.parametrize("brier", ["avg", "SUM", None, 1])
def test_bad_brier_raises(function: Callable[..., Tensor], brier: object) -> None:
    with pytest.raises(
        ValueError, match=r"Expected argument `brier` to be one of \('sum', 'mean'\)"
    ):
        function(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), brier=brier)


@pytest.mark.parametrize(
    ("class_name", "function"),
    [("BrierScore", brier_score), ("PenalizedBrierScore", penalized_brier_score)],
)
@pytest.mark.parametrize("brier", ["sum", "mean"])
def test_metric_classes_accumulate_the_chosen_average(
    class_name: str, function: Callable[..., Tensor], brier: str
) -> None:
    pytest.importorskip("torchmetrics")
    generator = torch.Generator().manual_seed(1)
    metric = getattr(metrics, class_name)(brier=brier).set_dtype(torch.float64)
    batches = []
    for size in (5, 1, 8):
        probs = torch.softmax(torch.randn(size, 4, generator=generator, dtype=torch.float64), 1)
        target = torch.randint(0, 4, (size,), generator=generator)
        metric.update(probs, target)
        batches.append((probs, target))
    all_probs = torch.cat([probs for probs, _ in batches])
    all_target = torch.cat([target for _, target in batches])
    torch.testing.assert_close(metric.compute(), function(all_probs, all_target, brier=brier))
    with pytest.raises(ValueError, match=r"Expected argument `brier` to be one of"):
        getattr(metrics, class_name)(brier="average")
