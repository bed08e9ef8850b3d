"""The named losses are the functions they claim to be."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fairloss import fair_loss
from fairloss.experiment.losses import LOSSES, make_loss


def test_names() -> None:
    assert tuple(LOSSES) == ("ce", "fairloss", "fairloss-pll", "ce-label-smoothing")


def test_each_loss_equals_its_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 7, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 7, (32,), generator=generator)
    expected = {
        "ce": F.cross_entropy(logits, target),
        "fairloss": fair_loss(logits, target),
        "fairloss-pll": fair_loss(logits, target, penalty_scale=math.log(7)),
        "ce-label-smoothing": F.cross_entropy(logits, target, label_smoothing=0.1),
    }
    for name, value in expected.items():
        torch.testing.assert_close(make_loss(name, 7)(logits, target), value)
    # The PLL variant's penalty is log(C) on wrong rows: it differs from the default's 1/C.
    assert not torch.allclose(expected["fairloss"], expected["fairloss-pll"])


def test_unknown_loss_raises() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `name` to be one of \('ce',"):
        make_loss("focal", 3)
