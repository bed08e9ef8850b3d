"""Agreement with pytorch-fairloss 0.1.1 where its semantics are defined, and its known bugs.

0.1.1 comes from ``tests.old_release``, which the benchmarks use too; its loader is tested last.
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import fairloss
from fairloss import FairLoss
from tests.old_release import LOSS_IN_WHEEL, MODULE_NAME, find_old_release, load_old_release
from tests.reference import fair_loss_reference


def _old_release_source() -> Path:
    source = find_old_release()
    if source is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the parity tests: `make setup` downloads the 0.1.1 wheel")
        pytest.skip("pytorch-fairloss 0.1.1 not downloaded (run `make setup`)")
    return source


@pytest.fixture(scope="module")
def old() -> ModuleType:
    return load_old_release(_old_release_source())


@pytest.mark.parametrize(("batch", "num_classes"), [(1, 2), (7, 3), (64, 10), (33, 101)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("logit_scale", [0.01, 0.3, 1.0])
def test_defaults_agree_with_0_1_1(
    old: ModuleType, batch: int, num_classes: int, reduction: str, logit_scale: float
) -> None:
    generator = torch.Generator().manual_seed(batch * num_classes)
    logits = torch.randn(batch, num_classes, generator=generator) * logit_scale
    target = torch.randint(0, num_classes, (batch,), generator=generator)
    new_logits = logits.clone().requires_grad_()
    old_logits = logits.clone().requires_grad_()
    exact_logits = logits.double().requires_grad_()
    new_loss = FairLoss(reduction=reduction)(new_logits, target)
    old_loss = old.FairLoss(reduction=reduction)(old_logits, target)
    exact_loss = fair_loss_reference(exact_logits, target, reduction=reduction)
    # Agreement to 1e-5, except where 0.1.1 itself is further than that from the float64 formula
    # (it rounds beta * z in float32): there the disagreement is bounded by its own error.
    old_error = (old_loss.double() - exact_loss).abs()
    assert torch.all(
        (new_loss.double() - old_loss.double()).abs() <= 1e-5 + 1e-5 * old_loss.abs() + old_error
    )
    for loss, z in ((new_loss, new_logits), (old_loss, old_logits), (exact_loss, exact_logits)):
        loss.sum().backward()
        assert z.grad is not None
    new_grad, old_grad, exact_grad = new_logits.grad, old_logits.grad, exact_logits.grad
    assert new_grad is not None and old_grad is not None and exact_grad is not None
    old_grad_error = (old_grad.double() - exact_grad).abs()
    grad_difference = (new_grad - old_grad).double().abs()
    assert torch.all(grad_difference <= 5e-5 + old_grad_error * 1.01)


def test_where_they_differ_the_new_values_are_the_accurate_ones(old: ModuleType) -> None:
    # 0.1.1 rounds beta * z (thousands) in float32 before logsumexp; at logit scale 5 its
    # values drift from the float64 formula by ~1e-4, ours by ~1e-6.
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(256, 10, generator=generator) * 5
    target = torch.randint(0, 10, (256,), generator=generator)
    exact = fair_loss_reference(logits.double(), target, reduction="none")
    new_error = (FairLoss(reduction="none")(logits, target).double() - exact).abs().max()
    old_error = (old.FairLoss(reduction="none")(logits, target).double() - exact).abs().max()
    assert new_error < 1e-5 < old_error
    assert new_error < old_error / 10


def test_seed_signature_agrees(old: ModuleType) -> None:
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    options: dict[str, Any] = {"smooth_max_beta": 30.0, "scaling_factor": 40.0, "reduction": "sum"}
    ce = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    assert_close(
        FairLoss(ce, **options)(logits, target),
        old.FairLoss(ce, **options)(logits, target),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_bugs_0_1_1_had_are_fixed(old: ModuleType) -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 16
    target = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(0))
    # float16 at logit scale 16: 0.1.1 overflows beta * z; we stay finite.
    half = logits.half()
    assert torch.isfinite(FairLoss()(half, target))
    # unknown reduction: 0.1.1 silently returns per-sample losses; we raise.
    assert old.FairLoss(reduction="avg")(logits, target).shape == (8,)
    with pytest.raises(ValueError, match="reduction"):
        FairLoss(reduction="avg")
    # masked classes: finite here.
    masked = logits.clone()
    masked[:, 0] = float("-inf")
    masked_target = target.clamp_min(1)
    assert torch.isfinite(FairLoss()(masked, masked_target))


def test_a_0_1_1_state_dict_loads_strictly(old: ModuleType) -> None:
    """0.1.1 kept the class weights at ``cross_entropy.weight``; they load into ``weight``."""
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.5])
    old_criterion = old.FairLoss(nn.CrossEntropyLoss(weight, reduction="none"))
    state = old_criterion.state_dict()
    assert set(state) == {"cross_entropy.weight"}
    criterion = FairLoss(torch.ones(5))
    criterion.load_state_dict(state, strict=True)
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    # (0.1.1's weighted loss is not ours: its penalty ignored the weights, its mean divided by N.)
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(3))
    target = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(4))
    assert_close(criterion(logits, target), FairLoss(weight)(logits, target))


@pytest.fixture(scope="module")
def old_release_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """0.1.1 as a wheel and as an unpacked folder, made from whichever copy this machine has."""
    source = _old_release_source()
    folder = tmp_path_factory.mktemp("old_release")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            wheel.extract(LOSS_IN_WHEEL, folder)
        return {"wheel": source, "folder": folder / "fairloss"}
    wheel_path = folder / "pytorch_fairloss-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.write(source / "loss.py", LOSS_IN_WHEEL)
    return {"wheel": wheel_path, "folder": source}


@pytest.mark.parametrize("form", ["wheel", "folder"])
def test_old_release_loads_beside_the_new_package_and_computes_the_same_loss(
    old_release_sources: dict[str, Path], form: str
) -> None:
    source = old_release_sources[form]
    assert find_old_release(str(source)) == source.resolve()
    if form == "wheel":
        assert find_old_release(str(source.parent)) == source.resolve()  # the folder holding it
    old_release = load_old_release(source)
    assert old_release.__name__ == MODULE_NAME
    assert sys.modules["fairloss"] is fairloss
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 11, generator=generator)
    target = torch.randint(0, 11, (64,), generator=generator)
    # Label smoothing goes through 0.1.1's `cross_entropy` module, as in `fair_loss`.
    smoothed = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    expected = fairloss.fair_loss(logits, target, label_smoothing=0.1)
    assert_close(old_release.FairLoss(cross_entropy=smoothed)(logits, target), expected)
    cross_entropy = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert not math.isclose(expected.item(), cross_entropy.item())  # the penalty is there


def test_no_old_release_is_found_where_there_is_none(tmp_path: Path) -> None:
    assert find_old_release(str(tmp_path / "nowhere")) is None
    assert find_old_release(str(tmp_path)) is None
