"""FairLoss and LinearFairLoss, the modules: settings, the class-weight buffer and its state dict,
the 0.1.1 constructor, repr, one call into the functional, and training."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from fairloss import FairLoss, LinearFairLoss, fair_loss, linear_fair_loss

LOGITS = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
TARGET = torch.tensor([0, 1, 2, 1, 0, 2])

# --- FairLoss: settings and the 0.1.1 constructor -------------------------------------------------


def test_defaults_are_plain_attributes() -> None:
    criterion = FairLoss()
    assert (criterion.smooth_max_beta, criterion.scaling_factor) == (1000.0, 1000.0)
    assert criterion.reduction == "mean" and criterion.penalty_scale is None
    assert criterion.weight is None and criterion.ignore_index == -100
    assert criterion.label_smoothing == 0.0 and criterion.z_loss_scale == 0.0
    assert not hasattr(criterion, "cross_entropy") and list(criterion.children()) == []
    assert criterion.state_dict() == nn.CrossEntropyLoss().state_dict() == {}


def test_seed_positional_signature() -> None:
    """Release 0.1.1's form: FairLoss(nn.CrossEntropyLoss(reduction="none"), beta, s, reduction)."""
    cross_entropy = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    criterion = FairLoss(cross_entropy, 50.0, 20.0, "sum")
    assert list(criterion.children()) == []  # its settings are taken, not the module
    assert criterion.label_smoothing == 0.1 and criterion.reduction == "sum"
    expected = fair_loss(
        LOGITS, TARGET, label_smoothing=0.1, smooth_max_beta=50.0, scaling_factor=20.0,
        reduction="sum",
    )  # fmt: skip
    assert_close(criterion(LOGITS, TARGET), expected)


def test_cross_entropy_options_are_taken() -> None:
    weight = torch.tensor([1.0, 3.0, 0.5])
    cross_entropy = nn.CrossEntropyLoss(
        weight=weight, ignore_index=2, reduction="none", label_smoothing=0.2
    )
    criterion = FairLoss(cross_entropy)
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    assert (criterion.ignore_index, criterion.label_smoothing) == (2, 0.2)
    assert set(criterion.state_dict()) == {"weight"}
    expected = fair_loss(LOGITS, TARGET, weight, ignore_index=2, label_smoothing=0.2)
    assert_close(criterion(LOGITS, TARGET), expected)
    keywords = FairLoss(weight=weight, ignore_index=2, label_smoothing=0.2)
    assert_close(keywords(LOGITS, TARGET), expected)


def test_constructor_errors() -> None:
    with pytest.raises(
        TypeError,
        match=r"`cross_entropy` to be a class-weight tensor, an nn.CrossEntropyLoss or None, "
        r"but got NLLLoss",
    ):
        FairLoss(nn.NLLLoss())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reduction=\"none\".*but got reduction='mean'"):
        FairLoss(nn.CrossEntropyLoss())
    none_ce = nn.CrossEntropyLoss(reduction="none")
    for keywords in ({"weight": torch.ones(3)}, {"ignore_index": 0}, {"label_smoothing": 0.1}):
        with pytest.raises(ValueError, match=r"either argument `cross_entropy` or the keyword"):
            FairLoss(none_ce, **keywords)
    with pytest.raises(
        ValueError, match=r"`label_smoothing` to be a number in \[0, 1\], but got 1.5"
    ):
        FairLoss(nn.CrossEntropyLoss(reduction="none", label_smoothing=1.5))
    with pytest.raises(
        ValueError,
        match=r"`weight` to be a 1-D tensor of class weights, \(C,\), but got shape \(3, 1\)",
    ):
        FairLoss(weight=torch.ones(3, 1))
    with pytest.raises(TypeError, match=r"`weight` to be a floating point tensor"):
        FairLoss(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class weights once"):
        FairLoss(torch.ones(3), weight=torch.ones(3))


def test_repr_shows_the_settings_not_a_child_module() -> None:
    assert repr(FairLoss()) == (
        "FairLoss(smooth_max_beta=1000.0, scaling_factor=1000.0, reduction='mean')"
    )
    text = repr(
        FairLoss(
            torch.ones(10), penalty_scale=math.log(10), reduction="sum", ignore_index=3,
            z_loss_scale=0.1, label_smoothing=0.05,
        )
    )  # fmt: skip
    for part in (
        "smooth_max_beta=1000.0",
        "scaling_factor=1000.0",
        "reduction='sum'",
        "penalty_scale=2.30",
        "ignore_index=3",
        "z_loss_scale=0.1",
        "label_smoothing=0.05",
    ):
        assert part in text
    assert "\n" not in text and "CrossEntropyLoss" not in text
    assert "smooth_max_beta=50.0" in repr(FairLoss(smooth_max_beta=50.0))


# --- FairLoss: the class weights, a buffer --------------------------------------------------------


def test_weight_is_a_buffer_like_cross_entropy_loss() -> None:
    weight = torch.tensor([1.0, 2.0, 3.0])
    criterion = FairLoss(weight)
    assert set(criterion.state_dict()) == set(nn.CrossEntropyLoss(weight).state_dict())
    assert dict(criterion.named_buffers()) == {"weight": criterion.weight}
    moved = criterion.to(torch.float64)
    assert moved.weight is not None and moved.weight.dtype == torch.float64
    restored = FairLoss(torch.ones(3))
    restored.load_state_dict(criterion.state_dict())
    assert restored.weight is not None
    assert_close(restored.weight, weight)  # copied into its float32 buffer


def test_loads_a_cross_entropy_loss_state_dict_strictly() -> None:
    weight = torch.tensor([0.5, 2.0, 1.0])
    criterion = FairLoss(torch.ones(3), scaling_factor=0.0)
    criterion.load_state_dict(nn.CrossEntropyLoss(weight).state_dict(), strict=True)
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    assert_close(criterion(LOGITS, TARGET), nn.CrossEntropyLoss(weight)(LOGITS, TARGET))
    # and the other way round: FairLoss's state dict is nn.CrossEntropyLoss's
    cross_entropy = nn.CrossEntropyLoss(torch.ones(3))
    cross_entropy.load_state_dict(FairLoss(weight).state_dict(), strict=True)
    assert cross_entropy.weight is not None and torch.equal(cross_entropy.weight, weight)


def test_loads_a_release_0_1_1_state_dict() -> None:
    """0.1.1 kept the weights in its ``cross_entropy`` submodule: ``"cross_entropy.weight"``."""
    weight = torch.tensor([3.0, 1.0, 0.5])
    criterion = FairLoss(torch.ones(3))
    criterion.load_state_dict({"cross_entropy.weight": weight.clone()}, strict=True)
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    assert set(criterion.state_dict()) == {"weight"}
    assert_close(criterion(LOGITS, TARGET), fair_loss(LOGITS, TARGET, weight))
    # nested, as in a model that holds the loss
    model, nested = nn.Module(), FairLoss(torch.ones(3))
    model.criterion = nested
    model.load_state_dict({"criterion.cross_entropy.weight": weight.clone()}, strict=True)
    assert nested.weight is not None and torch.equal(nested.weight, weight)


def test_weight_can_be_assigned_like_cross_entropy_loss() -> None:
    weight = torch.tensor([3.0, 1.0, 0.5])
    criterion = FairLoss()
    criterion.weight = weight
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    assert set(criterion.state_dict()) == {"weight"}
    assert_close(criterion(LOGITS, TARGET), fair_loss(LOGITS, TARGET, weight))
    criterion.weight = None
    assert_close(criterion(LOGITS, TARGET), fair_loss(LOGITS, TARGET))
    # A buffer takes any tensor, as nn.CrossEntropyLoss's does; the call checks it.
    criterion.weight = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"`weight` to be a tensor of shape \(3,\)"):
        criterion(LOGITS, TARGET)


# --- FairLoss: one call into the functional, and training -----------------------------------------


def test_module_is_one_call_to_the_functional() -> None:
    weight = torch.rand(4) + 0.5
    options: dict[str, Any] = {
        "smooth_max_beta": 20.0, "scaling_factor": 7.0, "penalty_scale": 0.3,
        "label_smoothing": 0.1, "ignore_index": 2, "z_loss_scale": 0.1,
    }  # fmt: skip
    criterion = FairLoss(weight, reduction="none", **options)
    logits = torch.randn(2, 4, 3)
    target = torch.randint(0, 4, (2, 3))
    expected = fair_loss(logits, target, weight, reduction="none", **options)
    assert_close(criterion(logits, target), expected)
    # settings are read at each call
    criterion.z_loss_scale = 0.0
    options["z_loss_scale"] = 0.0
    expected = fair_loss(logits, target, weight, reduction="none", **options)
    assert_close(criterion(logits, target), expected)


def test_module_trains_a_linear_model_as_well_as_cross_entropy() -> None:
    """FairLoss trains a linear classifier on separable data to within 1.5 points of
    cross-entropy's accuracy, averaged over three seeds (the seed-to-seed spread of either is
    about one point), in float64 so that rounding does not steer the runs; each run also
    learns (accuracy above 95 %, loss below half its start)."""

    def train(criterion: nn.Module, seed: int) -> tuple[float, float]:
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(512, 8, generator=generator, dtype=torch.float64)
        labels = (features @ torch.randn(8, 3, generator=generator, dtype=torch.float64)).argmax(1)
        torch.manual_seed(seed)
        model = nn.Linear(8, 3).double()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        first = criterion(model(features), labels).item()
        for _ in range(200):
            optimizer.zero_grad()
            loss = criterion(model(features), labels)
            loss.backward()
            optimizer.step()
        accuracy = (model(features).argmax(1) == labels).double().mean().item()
        return loss.item() / first, accuracy

    seeds = (0, 1, 2)
    with torch.random.fork_rng():
        fair = [train(FairLoss(), seed) for seed in seeds]
        cross_entropy = [train(nn.CrossEntropyLoss(), seed) for seed in seeds]
    for ratio, accuracy in fair:
        assert ratio < 0.5 and accuracy > 0.95, fair
    fair_mean = sum(accuracy for _, accuracy in fair) / len(seeds)
    cross_entropy_mean = sum(accuracy for _, accuracy in cross_entropy) / len(seeds)
    assert fair_mean >= cross_entropy_mean - 0.015, (fair, cross_entropy)


# --- LinearFairLoss -------------------------------------------------------------------------------


def test_linear_module_mirrors_the_functional() -> None:
    torch.manual_seed(0)
    weight = torch.rand(11) + 0.5
    criterion = LinearFairLoss(
        6, 11, bias=True, weight=weight, ignore_index=3, label_smoothing=0.1, chunk_size=4
    )
    assert torch.equal(criterion.state_dict()["weight"], weight)
    assert set(criterion.state_dict()) == {"weight", "linear.weight", "linear.bias"}
    hidden = torch.randn(2, 9, 6)
    target = torch.randint(0, 11, (2, 9))
    loss = criterion(hidden, target)
    expected = linear_fair_loss(
        hidden, criterion.linear.weight, target, linear_bias=criterion.linear.bias,
        weight=weight, ignore_index=3, label_smoothing=0.1,
    )  # fmt: skip
    assert_close(loss, expected)
    loss.backward()
    assert criterion.linear.weight.grad is not None and criterion.linear.bias.grad is not None
    doubled = criterion.to(torch.float64)
    assert doubled.weight is not None and doubled.weight.dtype == torch.float64
    assert doubled(hidden.double(), target).dtype == torch.float64
    assert "num_classes=11" in repr(criterion) and "chunk_size=4" in repr(criterion)


def test_linear_module_passes_every_option() -> None:
    torch.manual_seed(6)
    options: dict[str, Any] = {
        "z_loss_scale": 0.1, "softcap": 2.0, "penalty_scale": 0.5, "smooth_max_beta": 20.0,
        "scaling_factor": 30.0,
    }  # fmt: skip
    criterion = LinearFairLoss(
        4, 7, bias=True, dtype=torch.float64, return_accuracy=True, reduction="sum", **options
    )
    text = repr(criterion)
    for part in ("z_loss_scale=0.1", "softcap=2.0", "return_accuracy=True", "reduction='sum'"):
        assert part in text
    input, target = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 7, (5,))
    loss, accuracy = criterion(input, target)
    expected_loss, expected_accuracy = linear_fair_loss(
        input, criterion.linear.weight, target, linear_bias=criterion.linear.bias,
        return_accuracy=True, reduction="sum", **options,
    )  # fmt: skip
    assert_close(loss, expected_loss)
    assert_close(accuracy, expected_accuracy)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "avg"}, ValueError, "`reduction`"),
        ({"weight": torch.ones(3)}, ValueError, r"`weight` .*\(5,\)"),
        ({"chunk_size": -1}, ValueError, "`chunk_size`"),
        ({"scaling_factor": math.inf}, ValueError, "`scaling_factor`"),
        ({"ignore_index": None}, TypeError, "`ignore_index`"),
        ({"label_smoothing": "0.1"}, TypeError, "`label_smoothing`"),
        ({"z_loss_scale": -1.0}, ValueError, "`z_loss_scale`"),
        ({"softcap": 0.0}, ValueError, "`softcap`"),
        ({"softcap": "30"}, TypeError, "`softcap`"),
        ({"return_accuracy": 1}, TypeError, "`return_accuracy`"),
    ],
)
def test_linear_module_errors(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LinearFairLoss(3, 5, **kwargs)
