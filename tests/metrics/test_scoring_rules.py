"""Functional scoring rules: float64 reference, the paper's example, superiority, errors."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scoring_rules_reference import RULES, is_wrong, reduce, scores
from torch import Tensor

from fairloss.metrics import (
    brier_score,
    log_loss,
    penalized_brier_score,
    penalized_log_loss,
    probabilities_from_logits,
)

RULE_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "log_loss": log_loss,
    "brier_score": brier_score,
    "penalized_log_loss": penalized_log_loss,
    "penalized_brier_score": penalized_brier_score,
}
PENALIZED = ("penalized_log_loss", "penalized_brier_score")
# (rtol, atol) per dtype
TOLERANCES = {torch.float32: (2e-6, 2e-6), torch.float64: (1e-12, 1e-12)}

# The paper's worked example: true class 1 of 3; A is correct, B is wrong.
EXAMPLE_A = [0.33, 0.34, 0.33]
EXAMPLE_B = [0.51, 0.49, 0.00]


def _expected(rule: str, probs: Tensor, target_index: Tensor, reduction: str) -> Tensor:
    log_floor = torch.finfo(probs.dtype).eps
    rows = probs.double().tolist()
    values = scores(rule, rows, target_index.tolist(), log_floor)
    return torch.tensor(reduce(values, reduction), dtype=probs.dtype)


@st.composite
def probability_rows(draw: st.DrawFn, min_classes: int = 1, max_classes: int = 12) -> Tensor:
    """Rows of small integer weights, normalized: zeros and ties between classes are common."""
    num_classes = draw(st.integers(min_classes, max_classes))
    num_rows = draw(st.integers(0, 9))
    weights = draw(
        st.lists(
            st.lists(st.integers(0, 4), min_size=num_classes, max_size=num_classes).filter(any),
            min_size=num_rows,
            max_size=num_rows,
        )
    )
    rows = torch.tensor(weights, dtype=torch.float64).reshape(num_rows, num_classes)
    return rows / rows.sum(dim=1, keepdim=True)


@settings(max_examples=60, deadline=None)
@given(
    probs=probability_rows(),
    data=st.data(),
    rule=st.sampled_from(RULES),
    reduction=st.sampled_from(("mean", "sum", "none")),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    one_hot=st.booleans(),
)
def test_matches_float64_reference(
    probs: Tensor, data: st.DataObject, rule: str, reduction: str, dtype: torch.dtype, one_hot: bool
) -> None:
    num_rows, num_classes = probs.shape
    probs = probs.to(dtype)
    target_index = torch.tensor(
        data.draw(st.lists(st.integers(0, num_classes - 1), min_size=num_rows, max_size=num_rows)),
        dtype=torch.long,
    )
    target = F.one_hot(target_index, num_classes) if one_hot else target_index

    result = RULE_FUNCTIONS[rule](probs, target, reduction=reduction)

    expected = _expected(rule, probs, target_index, reduction)
    assert result.dtype == dtype
    assert result.shape == expected.shape
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(result, expected, equal_nan=True, rtol=rtol, atol=atol)


def test_worked_example_plain_rules_prefer_wrong_penalized_prefer_correct() -> None:
    probs = torch.tensor([EXAMPLE_A, EXAMPLE_B], dtype=torch.float64)
    target = torch.tensor([1, 1])
    assert not is_wrong(EXAMPLE_A, 1)
    assert is_wrong(EXAMPLE_B, 1)
    for rule, function in RULE_FUNCTIONS.items():
        score_a, score_b = function(probs, target, reduction="none")
        torch.testing.assert_close(
            torch.stack([score_a, score_b]), _expected(rule, probs, target, "none")
        )
        if rule in PENALIZED:
            assert score_a < score_b, rule  # lower is better: A, the correct one, wins
        else:
            assert score_b < score_a, rule  # the plain rule prefers the wrong B


def test_worked_example_matches_authors_table() -> None:
    """The authors' README table: Brier 0.6534 / 0.5202 and log loss (base 10) 0.4685 / 0.3098."""
    probs = torch.tensor([EXAMPLE_A, EXAMPLE_B], dtype=torch.float64)
    target = torch.tensor([1, 1])
    brier = brier_score(probs, target, reduction="none")
    log10_loss = log_loss(probs, target, reduction="none") / math.log(10)
    torch.testing.assert_close(brier, torch.tensor([0.6534, 0.5202], dtype=torch.float64))
    torch.testing.assert_close(
        log10_loss, torch.tensor([0.4685, 0.3098], dtype=torch.float64), atol=5e-5, rtol=0
    )


def _correct_and_wrong_rows(
    data: st.DataObject, num_classes: int
) -> tuple[Tensor, int, Tensor, int]:
    """A row with its argmax as target (correct) and a row with a non-maximal target (wrong)."""
    weight = st.floats(0.0, 1.0, allow_nan=False)
    weights = st.lists(weight, min_size=num_classes, max_size=num_classes)
    correct_weights = data.draw(weights.filter(lambda row: sum(row) > 0))
    wrong_weights = data.draw(weights.filter(lambda row: min(row) < max(row)))
    correct_row = torch.tensor(correct_weights, dtype=torch.float64)
    correct_row = correct_row / correct_row.sum()
    wrong_row = torch.tensor(wrong_weights, dtype=torch.float64)
    wrong_row = wrong_row / wrong_row.sum()
    correct_target = data.draw(
        st.sampled_from(torch.nonzero(correct_row == correct_row.max()).ravel().tolist())
    )
    wrong_target = data.draw(
        st.sampled_from(torch.nonzero(wrong_row < wrong_row.max()).ravel().tolist())
    )
    return correct_row, correct_target, wrong_row, wrong_target


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    num_classes=st.integers(2, 30),
    rule=st.sampled_from(PENALIZED),
    dtype=st.sampled_from((torch.float32, torch.float64)),
)
def test_every_correct_prediction_beats_every_wrong_one(
    data: st.DataObject, num_classes: int, rule: str, dtype: torch.dtype
) -> None:
    correct_row, correct_target, wrong_row, wrong_target = _correct_and_wrong_rows(
        data, num_classes
    )
    probs = torch.stack([correct_row, wrong_row]).to(dtype)
    target = torch.tensor([correct_target, wrong_target])
    # rounding to float32 keeps the argmax but may tie the wrong row's classes: skip those
    assert not is_wrong(probs[0].tolist(), correct_target)
    assume(is_wrong(probs[1].tolist(), wrong_target))

    correct_score, wrong_score = RULE_FUNCTIONS[rule](probs, target, reduction="none")

    assert correct_score < wrong_score
    # the threshold between them: log(C) for PLL, (C - 1) / C for PBS
    threshold = math.log(num_classes) if rule == "penalized_log_loss" else 1 - 1 / num_classes
    slack = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(correct_score) <= threshold + slack
    assert float(wrong_score) > threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_probability_of_true_class_gives_finite_log_loss(dtype: torch.dtype) -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    target = torch.tensor([1, 1])
    floor_loss = -math.log(torch.finfo(dtype).eps)
    plain = log_loss(probs, target, reduction="none")
    penalized = penalized_log_loss(probs, target, reduction="none")
    torch.testing.assert_close(plain, torch.tensor([floor_loss, 0.0], dtype=dtype))
    torch.testing.assert_close(
        penalized, torch.tensor([floor_loss + math.log(3), 0.0], dtype=dtype)
    )


@pytest.mark.parametrize(
    "target_dtype",
    [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float16, torch.float32],
)
def test_one_hot_targets_of_any_real_dtype(target_dtype: torch.dtype) -> None:
    probs = torch.tensor([[0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    target_index = torch.tensor([1, 2, 0])
    one_hot = F.one_hot(target_index, 3).to(target_dtype)
    for rule, function in RULE_FUNCTIONS.items():
        torch.testing.assert_close(
            function(probs, one_hot), function(probs, target_index), msg=rule
        )


def test_a_tie_with_the_true_class_counts_as_correct() -> None:
    probs = torch.tensor([[0.4, 0.4, 0.2]])
    target = torch.tensor([1])
    torch.testing.assert_close(penalized_log_loss(probs, target), log_loss(probs, target))
    torch.testing.assert_close(penalized_brier_score(probs, target), brier_score(probs, target))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rule", RULES)
def test_low_precision_probabilities_are_scored_in_float32(rule: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(16, 7, generator=generator), dim=1).to(dtype)
    target = torch.randint(0, 7, (16,), generator=generator)
    result = RULE_FUNCTIONS[rule](probs, target, reduction="none")
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, _expected(rule, probs.float(), target, "none"))


@pytest.mark.parametrize("rule", ["log_loss", "brier_score"])
def test_gradcheck(rule: str) -> None:
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(5, 4, generator=generator, dtype=torch.float64), dim=1)
    target = torch.randint(0, 4, (5,), generator=generator)
    function = RULE_FUNCTIONS[rule]
    probs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: function(p, target, validate_args=False), (probs,))


@pytest.mark.parametrize("plain_rule", ["log_loss", "brier_score"])
def test_penalty_adds_no_gradient(plain_rule: str) -> None:
    generator = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(8, 5, generator=generator, dtype=torch.float64), dim=1)
    target = torch.randint(0, 5, (8,), generator=generator)
    plain_grad, penalized_grad = (
        torch.autograd.grad(RULE_FUNCTIONS[rule](probs.requires_grad_(True), target), probs)[0]
        for rule in (plain_rule, f"penalized_{plain_rule}")
    )
    torch.testing.assert_close(penalized_grad, plain_grad)


def test_validate_args_false_skips_value_checks() -> None:
    probs = torch.tensor([[0.2, 0.2, 0.2]])  # sums to 0.6
    target = torch.tensor([0])
    with pytest.raises(ValueError, match="rows that sum to 1"):
        brier_score(probs, target)
    unchecked = brier_score(probs, target, validate_args=False)
    torch.testing.assert_close(unchecked, torch.tensor(0.64 + 0.04 + 0.04))


def test_probabilities_from_logits() -> None:
    logits = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(probabilities_from_logits(logits), torch.softmax(logits, dim=1))
    half = probabilities_from_logits(logits.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, torch.softmax(logits.half().float(), dim=1))
    with pytest.raises(TypeError, match=r"Expected argument `logits` to be a floating point"):
        probabilities_from_logits(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match=r"Expected argument `logits` to be a torch.Tensor"):
        probabilities_from_logits([[1.0, 2.0]])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`logits` to be a tensor of shape \(N, C\), but got shape \(5,\)"
    ):
        probabilities_from_logits(torch.zeros(5))


VALID_PROBS = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
VALID_TARGET = torch.tensor([1, 0])


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    ("probs", "target", "error", "message"),
    [
        (
            VALID_PROBS,
            VALID_TARGET.float(),
            ValueError,
            r"`target` to be class indices of shape \(2,\)",
        ),
        (VALID_PROBS, torch.tensor([1, 0, 1]), ValueError, r"but got a tensor of shape \(3,\)"),
        (VALID_PROBS, torch.ones(2, 3), ValueError, r"one-hot rows of shape \(2, 2\)"),
        (
            VALID_PROBS,
            torch.tensor([True, False]),
            TypeError,
            r"`target` to be integer class indices",
        ),
        (VALID_PROBS, [1, 0], TypeError, r"`target` to be a torch.Tensor"),
        (VALID_PROBS, VALID_TARGET.to(torch.complex64), TypeError, r"`target` to be a real tensor"),
        (
            VALID_PROBS,
            torch.tensor([2, 0]),
            ValueError,
            r"class indices in \[0, 2\), but got the value 2",
        ),
        (
            VALID_PROBS,
            torch.tensor([1, -1]),
            ValueError,
            r"class indices in \[0, 2\), but got the value -1",
        ),
        (
            VALID_PROBS,
            torch.tensor([[1, 1], [1, 0]]),
            ValueError,
            r"one-hot rows .* row 0 equal to \[1, 1\]",
        ),
        (VALID_PROBS, torch.tensor([[0.5, 0.5], [1, 0]]), ValueError, r"one-hot rows .* row 0"),
        (VALID_PROBS, torch.tensor([[0, 1], [0, 0]]), ValueError, r"one-hot rows .* row 1"),
        (torch.tensor([[1, 0]]), torch.tensor([0]), TypeError, r"`probs` to be a floating point"),
        ([[0.5, 0.5]], torch.tensor([0]), TypeError, r"`probs` to be a torch.Tensor"),
        (
            torch.ones(2),
            torch.tensor([0]),
            ValueError,
            r"shape \(N, C\) with C >= 1, but got shape \(2,\)",
        ),
        (torch.ones(2, 2, 1), VALID_TARGET, ValueError, r"but got shape \(2, 2, 1\)"),
        (torch.ones(2, 0), VALID_TARGET, ValueError, r"but got shape \(2, 0\)"),
        (
            torch.tensor([[1.5, -0.5]]),
            torch.tensor([0]),
            ValueError,
            r"probabilities in \[0, 1\], but got the value 1.5",
        ),
        (
            torch.tensor([[0.5, float("nan")]]),
            torch.tensor([0]),
            ValueError,
            r"probabilities in \[0, 1\], but got the value nan",
        ),
        (
            torch.tensor([[0.5, 0.5], [0.5, 0.4]]),
            VALID_TARGET,
            ValueError,
            r"rows that sum to 1 within 0.0001, but got row 1 summing to 0.9",
        ),
    ],
)
def test_invalid_input_raises(
    rule: str, probs: Tensor, target: Tensor, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=rf"^Expected argument .*{message}"):
        RULE_FUNCTIONS[rule](probs, target)


@pytest.mark.parametrize("rule", RULES)
def test_invalid_reduction_raises(rule: str) -> None:
    with pytest.raises(
        ValueError, match=r"`reduction` to be one of \('mean', 'sum', 'none'\), but got 'avg'"
    ):
        RULE_FUNCTIONS[rule](VALID_PROBS, VALID_TARGET, reduction="avg")


def test_row_sum_tolerance_scales_with_dtype() -> None:
    probs = torch.tensor([[0.5, 0.497]], dtype=torch.bfloat16)  # bfloat16 rounding: sums to ~0.997
    torch.testing.assert_close(log_loss(probs, torch.tensor([0])), -torch.tensor(0.5).log())
    with pytest.raises(ValueError, match=r"rows that sum to 1 within 0.0001"):
        log_loss(probs.float(), torch.tensor([0]))
