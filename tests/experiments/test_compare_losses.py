"""The losses by spec: the parser, and each loss against its formula (float64 references)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.losses import (
    LOSSES,
    LossSpec,
    focal_loss,
    make_loss,
    parse_loss_spec,
    poly1_loss,
)
from fairloss import fair_loss


def _reference_rows(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """p_y per row from the softmax's definition, in plain Python floats."""
    rows = []
    for row, label in zip(logits.tolist(), target.tolist()):
        largest = max(row)
        exponentials = [math.exp(value - largest) for value in row]
        rows.append(exponentials[label] / math.fsum(exponentials))
    return rows


def focal_reference(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> float:
    """mean of -(1 - p_y)^gamma log p_y (Lin et al. 2017)."""
    terms = [-((1 - p) ** gamma) * math.log(p) for p in _reference_rows(logits, target)]
    return math.fsum(terms) / len(terms)


def poly1_reference(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> float:
    """mean of -log p_y + epsilon (1 - p_y) (Leng et al. 2022)."""
    terms = [-math.log(p) + epsilon * (1 - p) for p in _reference_rows(logits, target)]
    return math.fsum(terms) / len(terms)


def _batch(seed: int, rows: int, classes: int, spread: float = 3.0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    logits = spread * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, classes, (rows,), generator=generator)
    return logits, target


def test_names() -> None:
    assert tuple(LOSSES) == (
        "ce",
        "fairloss",
        "fairloss-pll",
        "ce-label-smoothing",
        "focal",
        "poly1",
    )


def test_each_loss_equals_its_definition() -> None:
    logits, target = _batch(0, 32, 7)
    expected = {
        "ce": F.cross_entropy(logits, target),
        "fairloss": fair_loss(logits, target),
        "fairloss-pll": fair_loss(logits, target, penalty_scale=math.log(7)),
        "ce-label-smoothing": F.cross_entropy(logits, target, label_smoothing=0.1),
        "focal": focal_loss(logits, target, gamma=2.0),
        "poly1": poly1_loss(logits, target, epsilon=1.0),
        "fairloss:scaling_factor=10,smooth_max_beta=100": fair_loss(
            logits, target, scaling_factor=10.0, smooth_max_beta=100.0
        ),
        "fairloss:penalty_scale=logC": fair_loss(logits, target, penalty_scale=math.log(7)),
        "fairloss-pll:penalty_scale=1/C": fair_loss(logits, target),
        "fairloss:penalty_scale=0.5,label_smoothing=0.2": fair_loss(
            logits, target, penalty_scale=0.5, label_smoothing=0.2
        ),
        "ce:label_smoothing=0.3": F.cross_entropy(logits, target, label_smoothing=0.3),
        "focal:gamma=0.5": focal_loss(logits, target, gamma=0.5),
        "poly1:epsilon=-0.5": poly1_loss(logits, target, epsilon=-0.5),
    }
    for spec, value in expected.items():
        torch.testing.assert_close(make_loss(spec, 7)(logits, target), value, msg=spec)
    # The PLL variant's penalty is log(C) on wrong rows: it differs from the default's 1/C.
    assert not torch.allclose(expected["fairloss"], expected["fairloss-pll"])


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    classes=st.integers(2, 13),
    gamma=st.sampled_from([0.0, 1.0, 1.5, 2.0, 5.0]),
    epsilon=st.floats(-1.0, 10.0),
    spread=st.sampled_from([0.1, 3.0, 20.0]),
    seed=st.integers(0, 2**16),
)
def test_focal_and_poly1_match_float64_references(
    rows: int, classes: int, gamma: float, epsilon: float, spread: float, seed: int
) -> None:
    logits, target = _batch(seed, rows, classes, spread)
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=gamma).item(),
        focal_reference(logits, target, gamma),
        rtol=1e-10,
        atol=1e-12,
    )
    torch.testing.assert_close(
        poly1_loss(logits, target, epsilon=epsilon).item(),
        poly1_reference(logits, target, epsilon),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("loss", "dtype", "tolerance"),
    [
        (lambda z, y: focal_loss(z, y, gamma=0.0), torch.float64, 1e-12),
        (lambda z, y: poly1_loss(z, y, epsilon=0.0), torch.float64, 1e-12),
        (lambda z, y: focal_loss(z, y, gamma=0.0), torch.float32, 1e-5),
        (lambda z, y: poly1_loss(z, y, epsilon=0.0), torch.float32, 1e-5),
    ],
)
def test_with_the_extra_term_off_they_equal_cross_entropy_value_and_gradient(
    loss: object, dtype: torch.dtype, tolerance: float
) -> None:
    for seed, (rows, classes) in enumerate([(1, 2), (17, 5), (64, 10), (3, 97)]):
        logits, target = _batch(seed, rows, classes)
        logits = logits.to(dtype)
        mine = logits.clone().requires_grad_()
        theirs = logits.clone().requires_grad_()
        value = loss(mine, target)  # type: ignore[operator]
        expected = F.cross_entropy(theirs, target)
        upstream = torch.tensor(1.7, dtype=dtype)  # an upstream gradient other than 1
        (value * upstream).backward()
        (expected * upstream).backward()
        torch.testing.assert_close(value, expected, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=tolerance, atol=tolerance)


def test_focal_and_poly1_gradcheck() -> None:
    logits, target = _batch(3, 6, 4)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, target, gamma=2.0), (logits,))
    assert torch.autograd.gradcheck(lambda z: poly1_loss(z, target, epsilon=1.0), (logits,))


def test_focal_down_weights_confident_correct_rows() -> None:
    """The property the focal loss exists for: a well-classified row weighs little."""
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 0])
    confident = focal_loss(logits[:1], target[:1]) / F.cross_entropy(logits[:1], target[:1])
    unsure = focal_loss(logits[1:], target[1:]) / F.cross_entropy(logits[1:], target[1:])
    assert confident < 1e-4 and unsure == pytest.approx((2 / 3) ** 2)


def test_spec_parser_canonical_text_and_defaults() -> None:
    spec = parse_loss_spec(" fairloss:smooth_max_beta=10.0, scaling_factor=1e1 ")
    assert spec == LossSpec("fairloss", (("smooth_max_beta", 10.0), ("scaling_factor", 10.0)))
    assert str(spec) == "fairloss:smooth_max_beta=10,scaling_factor=10"
    assert spec.resolved_options() == {
        "scaling_factor": 10.0,
        "smooth_max_beta": 10.0,
        "penalty_scale": "1/C",
        "label_smoothing": 0.0,
    }
    assert str(parse_loss_spec("ce")) == "ce" and parse_loss_spec("ce").options == ()
    assert parse_loss_spec("fairloss-pll").option("penalty_scale") == "logC"
    assert parse_loss_spec("fairloss:penalty_scale=log(C)").option("penalty_scale") == "logC"
    assert parse_loss_spec("fairloss:penalty_scale=0.25").option("penalty_scale") == 0.25
    assert parse_loss_spec("focal").option("gamma") == 2.0
    assert parse_loss_spec("poly1").option("epsilon") == 1.0
    # Parsing the canonical text again gives the same spec.
    assert parse_loss_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hinge", r"NAME one of \('ce', 'fairloss', .*'poly1'\), but got the name 'hinge'"),
        ("focal:beta=2", r"a key of 'focal', one of \('gamma',\), but got the key 'beta'"),
        ("fairloss:gamma=2", r"one of \('scaling_factor', 'smooth_max_beta', 'penalty_scale'"),
        ("focal:gamma=1,gamma=2", r"each key at most once, but got the key 'gamma' twice"),
        ("focal:gamma", r"KEY=VALUE settings separated by commas, but got the setting 'gamma'"),
        ("focal:", r"KEY=VALUE settings separated by commas, but got the setting ''"),
        ("focal:gamma=lots", r"Expected argument `gamma` to be a number, but got 'lots'"),
        ("focal:gamma=-1", r"Expected argument `gamma` to be a finite number larger than or"),
        ("fairloss:smooth_max_beta=0", r"`smooth_max_beta` to be a finite number larger than 0"),
        ("fairloss:penalty_scale=huge", r"`penalty_scale` to be a finite number >= 0 or one of"),
        ("poly1:epsilon=-2", r"`epsilon` to be a finite number of at least -1, but got '-2'"),
        ("ce:label_smoothing=1.5", r"`label_smoothing` to be a number in \[0, 1\]"),
    ],
)
def test_spec_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_loss_spec(text)
    with pytest.raises(ValueError, match=message):
        make_loss(text, 3)


def test_option_of_an_unknown_key_raises() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `key` to be one of \('gamma',\)"):
        parse_loss_spec("focal").option("epsilon")
