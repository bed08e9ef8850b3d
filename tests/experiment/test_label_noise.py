"""Symmetric label noise: exact count, only different classes, uniform among them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairloss.experiment.noise import noisy_label_count, symmetric_label_noise


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.integers(0, 500),
    num_classes=st.integers(2, 13),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_flips_exactly_round_rate_times_n_labels_each_to_another_class(
    num_samples: int, num_classes: int, rate: float, seed: int
) -> None:
    labels = torch.randint(
        0, num_classes, (num_samples,), generator=torch.Generator().manual_seed(seed)
    )
    original = labels.clone()

    noisy = symmetric_label_noise(labels, rate, num_classes, torch.Generator().manual_seed(seed))

    assert torch.equal(labels, original), "the input labels must not be modified"
    assert noisy.shape == labels.shape and noisy.dtype == labels.dtype
    assert int(((noisy < 0) | (noisy >= num_classes)).sum()) == 0
    # A flip always changes the class, so the changed labels are exactly the flipped ones.
    assert int((noisy != labels).sum()) == round(rate * num_samples)


def test_count_rounds_half_to_even() -> None:
    assert noisy_label_count(0.3, 1077) == 323  # 323.1
    assert noisy_label_count(0.5, 5) == 2  # 2.5 rounds to the even 2
    assert noisy_label_count(0.5, 7) == 4  # 3.5 rounds to the even 4
    assert noisy_label_count(0.0, 10) == 0 and noisy_label_count(1.0, 10) == 10


def test_new_class_is_uniform_among_the_other_classes() -> None:
    num_classes, per_class = 4, 6000
    labels = torch.arange(num_classes).repeat_interleave(per_class)

    noisy = symmetric_label_noise(labels, 1.0, num_classes, torch.Generator().manual_seed(0))

    counts = torch.zeros(num_classes, num_classes)
    counts.index_put_((labels, noisy), torch.ones(len(labels)), accumulate=True)
    assert torch.all(counts.diagonal() == 0)
    off_diagonal_share = counts[~torch.eye(num_classes, dtype=torch.bool)] / per_class
    # Each of the 3 other classes gets 1/3; binomial std is sqrt(2/9 / 6000) ~ 0.006.
    torch.testing.assert_close(
        off_diagonal_share, torch.full_like(off_diagonal_share, 1 / 3), atol=0.03, rtol=0
    )


def test_same_generator_seed_gives_same_noise_and_another_seed_differs() -> None:
    labels = torch.arange(10).repeat(50)

    def noisy(seed: int) -> torch.Tensor:
        return symmetric_label_noise(labels, 0.3, 10, torch.Generator().manual_seed(seed))

    assert torch.equal(noisy(3), noisy(3))
    assert not torch.equal(noisy(3), noisy(4))


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_outside_unit_interval_raises(rate: float) -> None:
    with pytest.raises(ValueError, match=r"Expected argument `rate` to be a number in \[0, 1\]"):
        symmetric_label_noise(torch.tensor([0, 1]), rate, 2, torch.Generator())


def test_bad_labels_or_class_count_raise() -> None:
    generator = torch.Generator()
    with pytest.raises(ValueError, match="Expected argument `num_classes` to be an integer of at"):
        symmetric_label_noise(torch.tensor([0, 0]), 0.5, 1, generator)
    with pytest.raises(TypeError, match="Expected argument `labels` to be an integer tensor"):
        symmetric_label_noise(torch.tensor([0.0, 1.0]), 0.5, 2, generator)
    with pytest.raises(
        ValueError, match=r"Expected argument `labels` to be a tensor of shape \(N,\)"
    ):
        symmetric_label_noise(torch.zeros(2, 2, dtype=torch.long), 0.5, 2, generator)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), but got \[0, 3\]"):
        symmetric_label_noise(torch.tensor([0, 3]), 0.5, 3, generator)
