"""Bad input raises a clear exception naming the argument; never a silent number.

fair_loss, FairLoss and linear_fair_loss (LinearFairLoss's constructor: ``test_modules.py``; the
vocab-parallel entry points: ``distributed/test_arguments.py``), all with ``_validation``'s one
pattern: "Expected argument `name` to be ..., but got ...".
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from fairloss import FairLoss, fair_loss, linear_fair_loss

LOGITS = torch.randn(3, 4)
TARGET = torch.tensor([0, 3, 1])


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"reduction": "avg"},
            ValueError,
            r"`reduction` to be one of \('mean', 'sum', 'none'\), but got 'avg'",
        ),
        ({"reduction": None}, ValueError, r"`reduction`"),
        (
            {"smooth_max_beta": 0.0},
            ValueError,
            r"`smooth_max_beta` to be a finite number larger than 0",
        ),
        ({"smooth_max_beta": -1.0}, ValueError, r"`smooth_max_beta`"),
        ({"smooth_max_beta": math.inf}, ValueError, r"`smooth_max_beta`"),
        ({"smooth_max_beta": math.nan}, ValueError, r"`smooth_max_beta`"),
        ({"smooth_max_beta": "big"}, TypeError, r"`smooth_max_beta` to be a real number"),
        (
            {"scaling_factor": -1.0},
            ValueError,
            r"`scaling_factor` to be a finite number larger than or equal to 0",
        ),
        ({"scaling_factor": math.inf}, ValueError, r"`scaling_factor`"),
        ({"penalty_scale": -0.1}, ValueError, r"`penalty_scale`"),
        ({"penalty_scale": math.nan}, ValueError, r"`penalty_scale`"),
        (
            {"label_smoothing": 1.5},
            ValueError,
            r"`label_smoothing` to be a number in \[0, 1\], but got 1.5",
        ),
        ({"label_smoothing": -0.1}, ValueError, r"`label_smoothing`"),
        ({"ignore_index": 1.5}, TypeError, r"`ignore_index` to be an integer"),
        ({"z_loss_scale": -1.0}, ValueError, r"`z_loss_scale` to be a finite number larger than"),
        ({"z_loss_scale": math.inf}, ValueError, r"`z_loss_scale`"),
    ],
)
def test_bad_options(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fair_loss(LOGITS, TARGET, **options)
    module_options = {k: v for k, v in options.items() if k != "ignore_index"} or options
    with pytest.raises(error, match=message):
        FairLoss(**module_options)(LOGITS, TARGET)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (torch.tensor([0, 1]), r"class indices of shape \(3,\).*but got a tensor of shape \(2,\)"),
        (
            torch.zeros(3, 5),
            r"probabilities of shape \(3, 4\).*shape \(3, 5\) and dtype torch.float32",
        ),
        (torch.zeros(3, 4, dtype=torch.long), r"`target`.*shape \(3, 4\) and dtype torch.int64"),
        (torch.zeros(3, dtype=torch.float32), r"`target`.*dtype torch.float32"),
        (torch.zeros(3, dtype=torch.bool), r"`target`.*dtype torch.bool"),
        (
            torch.tensor([0, 4, 1]),
            r"class indices in \[0, 4\) or ignore_index=-100, but got the value 4",
        ),
        (torch.tensor([0, -1, 1]), r"but got the value -1"),
    ],
)
def test_bad_targets(target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fair_loss(LOGITS, target)


def test_ignore_index_outside_the_class_range_is_allowed() -> None:
    loss = fair_loss(LOGITS, torch.tensor([0, 255, 1]), ignore_index=255)
    assert torch.isfinite(loss)


def test_bad_input_and_weight() -> None:
    with pytest.raises(TypeError, match=r"`input` to be a floating point tensor"):
        fair_loss(torch.ones(3, 4, dtype=torch.long), TARGET)
    with pytest.raises(ValueError, match=r"`input`.*but got a scalar"):
        fair_loss(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(TypeError, match=r"`input` to be a torch.Tensor"):
        fair_loss([[0.0, 1.0]], TARGET)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`weight` to be a tensor of shape \(4,\), but got shape \(3,\)"
    ):
        fair_loss(LOGITS, TARGET, torch.ones(3))
    with pytest.raises(TypeError, match=r"`weight` to be a floating point tensor"):
        fair_loss(LOGITS, TARGET, torch.ones(4, dtype=torch.long))


def test_unknown_implementation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`impl` to be one of \('auto', 'sparse', 'dense'"):
        fair_loss(LOGITS, TARGET, impl="fast")


def test_class_weight_that_requires_grad_raises_like_cross_entropy() -> None:
    weight = torch.rand(4, requires_grad=True)
    with pytest.raises(RuntimeError):  # what F.cross_entropy does with such a weight
        torch.nn.functional.cross_entropy(LOGITS, TARGET, weight)
    with pytest.raises(RuntimeError, match=r"`weight` to be a tensor that does not require grad"):
        fair_loss(LOGITS, TARGET, weight)
    with torch.no_grad():  # evaluation with such a weight is fine, as with cross-entropy
        expected = fair_loss(LOGITS, TARGET, weight.detach())
        assert torch.equal(fair_loss(LOGITS, TARGET, weight), expected)


def test_probability_targets_refuse_an_ignore_index_like_cross_entropy() -> None:
    probabilities = torch.softmax(torch.randn(3, 4), dim=1)
    with pytest.raises(RuntimeError, match="ignore_index"):
        torch.nn.functional.cross_entropy(LOGITS, probabilities, ignore_index=1)
    with pytest.raises(ValueError, match=r"`ignore_index` to be -100 .* but got 1\."):
        fair_loss(LOGITS, probabilities, ignore_index=1)


def test_no_classes_follow_cross_entropy() -> None:
    empty = torch.empty(0, 0)
    no_index = torch.empty(0, dtype=torch.long)
    for reduction in ("none", "mean", "sum"):
        expected = torch.nn.functional.cross_entropy(empty, no_index, reduction=reduction)
        assert_close(fair_loss(empty, no_index, reduction=reduction), expected, equal_nan=True)
    ignored = torch.full((3,), -100)
    expected = torch.nn.functional.cross_entropy(torch.empty(3, 0), ignored, reduction="none")
    assert torch.equal(fair_loss(torch.empty(3, 0), ignored, reduction="none"), expected)
    with pytest.raises(ValueError, match=r"class indices in \[0, 0\)"):
        fair_loss(torch.empty(3, 0), torch.zeros(3, dtype=torch.long))


def _any(value: object) -> Any:
    """A deliberately wrong argument, hidden from the type checker."""
    return value


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, w, t: linear_fair_loss(x.long(), w, t), TypeError, "`input` to be a floating"),
        (
            lambda x, w, t: linear_fair_loss(x[0, 0], w, t),
            ValueError,
            r"`input` .* but got a scalar",
        ),
        (lambda x, w, t: linear_fair_loss(x, w[0], t), ValueError, r"`linear_weight` .*\(V, 3\)"),
        (lambda x, w, t: linear_fair_loss(x, w[:, :2], t), ValueError, r"shape \(5, 2\)"),
        (lambda x, w, t: linear_fair_loss(x, w.double(), t), TypeError, "input's dtype"),
        (lambda x, w, t: linear_fair_loss(x, _any([[1.0]]), t), TypeError, "`linear_weight`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, linear_bias=torch.zeros(4)),
            ValueError,
            r"`linear_bias` .*\(5,\)",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, linear_bias=torch.zeros(5).double()),
            TypeError,
            "`linear_bias`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, torch.rand(4, 5)),
            TypeError,
            "does not take class probabilities",
        ),
        (lambda x, w, t: linear_fair_loss(x, w, t[:3]), ValueError, r"`target` .*\(4,\)"),
        (lambda x, w, t: linear_fair_loss(x, w, t + 5), ValueError, r"class indices in \[0, 5\)"),
        (lambda x, w, t: linear_fair_loss(x, w, t, chunk_size=0), ValueError, "`chunk_size`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, chunk_size=_any(2.0)),
            TypeError,
            "`chunk_size`",
        ),
        (lambda x, w, t: linear_fair_loss(x, w, t, reduction="avg"), ValueError, "`reduction`"),
        (lambda x, w, t: linear_fair_loss(x, w, t, weight=torch.ones(4)), ValueError, "`weight`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, label_smoothing=1.5),
            ValueError,
            "`label_smoothing`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, smooth_max_beta=0.0),
            ValueError,
            "`smooth_max_beta`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, penalty_scale=-1.0),
            ValueError,
            "`penalty_scale`",
        ),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, ignore_index=_any(1.5)),
            TypeError,
            "`ignore_index`",
        ),
        (lambda x, w, t: linear_fair_loss(x, w, t, z_loss_scale=-1.0), ValueError, "`z_loss"),
        (lambda x, w, t: linear_fair_loss(x, w, t, z_loss_scale=math.inf), ValueError, "`z_loss"),
        (lambda x, w, t: linear_fair_loss(x, w, t, softcap=0.0), ValueError, "`softcap`"),
        (lambda x, w, t: linear_fair_loss(x, w, t, softcap=-2.0), ValueError, "`softcap`"),
        (lambda x, w, t: linear_fair_loss(x, w, t, softcap=_any("30")), TypeError, "`softcap`"),
        (
            lambda x, w, t: linear_fair_loss(x, w, t, return_accuracy=_any(1)),
            TypeError,
            "`return_accuracy`",
        ),
        (lambda x, w, t: linear_fair_loss(x, w, t, impl="fast"), ValueError, "`impl`"),
    ],
)
def test_linear_fair_loss_errors(call: Any, error: type, match: str) -> None:
    hidden = torch.randn(4, 3)
    head = torch.randn(5, 3)
    target = torch.tensor([0, 1, 2, 4])
    with pytest.raises(error, match=match):
        call(hidden, head, target)
