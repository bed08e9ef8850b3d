"""FairLoss the module: the 0.1.1 API kept unchanged, the new keywords, state and repr."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from fairloss import FairLoss, fair_loss


def test_seed_defaults_and_attributes() -> None:
    criterion = FairLoss()
    assert isinstance(criterion.cross_entropy, nn.CrossEntropyLoss)
    assert criterion.cross_entropy.reduction == "none"
    assert (criterion.smooth_max_beta, criterion.scaling_factor) == (1000.0, 1000.0)
    assert criterion.reduction == "mean" and criterion.penalty_scale is None
    assert criterion.weight is None and criterion.ignore_index == -100
    assert criterion.label_smoothing == 0.0


def test_seed_positional_signature() -> None:
    cross_entropy = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    criterion = FairLoss(cross_entropy, 50.0, 20.0, "sum")
    assert criterion.cross_entropy is cross_entropy
    logits, target = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    expected = fair_loss(
        logits,
        target,
        label_smoothing=0.1,
        smooth_max_beta=50.0,
        scaling_factor=20.0,
        reduction="sum",
    )
    assert_close(criterion(logits, target), expected)


def test_cross_entropy_options_are_used() -> None:
    weight = torch.tensor([1.0, 3.0, 0.5])
    cross_entropy = nn.CrossEntropyLoss(
        weight=weight, ignore_index=2, reduction="none", label_smoothing=0.2
    )
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, 0, 2])
    expected = fair_loss(logits, target, weight, ignore_index=2, label_smoothing=0.2)
    assert_close(FairLoss(cross_entropy)(logits, target), expected)
    assert_close(
        FairLoss(weight=weight, ignore_index=2, label_smoothing=0.2)(logits, target), expected
    )


def test_cross_entropy_argument_errors() -> None:
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
    with pytest.raises(ValueError, match=r"`weight` to be a tensor of shape \(3,\)"):
        FairLoss(weight=torch.ones(3, 1))


def test_weight_lives_in_the_cross_entropy_submodule() -> None:
    weight = torch.tensor([1.0, 2.0, 3.0])
    criterion = FairLoss(weight=weight)
    assert set(criterion.state_dict()) == {"cross_entropy.weight"}
    moved = criterion.to(torch.float64)
    assert moved.weight is not None and moved.weight.dtype == torch.float64
    restored = FairLoss(weight=torch.ones(3))
    restored.load_state_dict(criterion.state_dict())
    assert restored.weight is not None
    assert_close(restored.weight, weight)


def test_repr_shows_the_settings() -> None:
    text = repr(
        FairLoss(penalty_scale=math.log(10), reduction="sum", weight=torch.ones(10), ignore_index=3)
    )
    for part in (
        "smooth_max_beta=1000.0",
        "scaling_factor=1000.0",
        "reduction='sum'",
        "penalty_scale=2.30",
        "weight=Tensor[10]",
        "ignore_index=3",
    ):
        assert part in text


def test_module_is_one_call_to_the_functional() -> None:
    weight = torch.rand(4) + 0.5
    criterion = FairLoss(
        smooth_max_beta=20.0, scaling_factor=7.0, reduction="none", weight=weight, penalty_scale=0.3
    )
    logits = torch.randn(2, 4, 3)
    target = torch.randint(0, 4, (2, 3))
    expected = fair_loss(
        logits,
        target,
        weight,
        reduction="none",
        smooth_max_beta=20.0,
        scaling_factor=7.0,
        penalty_scale=0.3,
    )
    assert_close(criterion(logits, target), expected)


def test_module_trains_a_linear_model_as_well_as_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(512, 8, generator=generator)
    labels = (features @ torch.randn(8, 3, generator=generator)).argmax(1)  # linearly separable

    def train(criterion: nn.Module) -> tuple[float, float]:
        torch.manual_seed(0)
        model = nn.Linear(8, 3)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        first = criterion(model(features), labels).item()
        for _ in range(200):
            optimizer.zero_grad()
            loss = criterion(model(features), labels)
            loss.backward()
            optimizer.step()
        accuracy = (model(features).argmax(1) == labels).float().mean().item()
        return loss.item() / first, accuracy

    fair_ratio, fair_accuracy = train(FairLoss())
    _, ce_accuracy = train(nn.CrossEntropyLoss())
    assert fair_ratio < 0.5
    assert fair_accuracy > 0.9 and fair_accuracy >= ce_accuracy - 0.02


def test_positional_weight_as_cross_entropy_loss() -> None:
    weight = torch.tensor([0.5, 2.0, 1.0])
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, 0, 2])
    criterion = FairLoss(weight, scaling_factor=0.0)
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    assert_close(criterion(logits, target), nn.CrossEntropyLoss(weight)(logits, target))
    assert_close(FairLoss(weight)(logits, target), fair_loss(logits, target, weight))
    with pytest.raises(ValueError, match="class weights once"):
        FairLoss(weight, weight=weight)


def test_weight_can_be_assigned_like_cross_entropy_loss() -> None:
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, 0, 2])
    weight = torch.tensor([3.0, 1.0, 0.5])
    criterion, reference = FairLoss(), nn.CrossEntropyLoss()
    criterion.weight = weight
    reference.weight = weight
    assert criterion.weight is not None and torch.equal(criterion.weight, weight)
    assert "cross_entropy.weight" in criterion.state_dict()
    assert_close(criterion(logits, target), fair_loss(logits, target, weight))
    criterion.weight = None
    assert_close(criterion(logits, target), fair_loss(logits, target))
    with pytest.raises(ValueError, match=r"`weight` to be a tensor of shape"):
        criterion.weight = torch.ones(2, 3)
