"""Label noise: symmetric (exact count, only different classes, uniform among them) and
pair-flip (exact count, each flip to the next class)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.noise import (
    NOISE_TYPES,
    add_label_noise,
    noisy_label_count,
    pair_flip_label_noise,
    symmetric_label_noise,
)


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


@pytest.mark.parametrize("noise", [symmetric_label_noise, pair_flip_label_noise])
def test_bad_labels_or_class_count_raise(noise: Callable[..., torch.Tensor]) -> None:
    generator = torch.Generator()
    with pytest.raises(ValueError, match="Expected argument `num_classes` to be an integer of at"):
        noise(torch.tensor([0, 0]), 0.5, 1, generator)
    with pytest.raises(TypeError, match="Expected argument `labels` to be an integer tensor"):
        noise(torch.tensor([0.0, 1.0]), 0.5, 2, generator)
    with pytest.raises(
        ValueError, match=r"Expected argument `labels` to be a tensor of shape \(N,\)"
    ):
        noise(torch.zeros(2, 2, dtype=torch.long), 0.5, 2, generator)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), but got \[0, 3\]"):
        noise(torch.tensor([0, 3]), 0.5, 3, generator)


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.integers(0, 500),
    num_classes=st.integers(2, 13),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_pair_flip_changes_round_rate_times_n_labels_each_to_the_next_class(
    num_samples: int, num_classes: int, rate: float, seed: int
) -> None:
    labels = torch.randint(
        0, num_classes, (num_samples,), generator=torch.Generator().manual_seed(seed)
    )
    original = labels.clone()

    noisy = pair_flip_label_noise(labels, rate, num_classes, torch.Generator().manual_seed(seed))

    assert torch.equal(labels, original), "the input labels must not be modified"
    assert noisy.shape == labels.shape and noisy.dtype == labels.dtype
    changed = noisy != labels
    assert int(changed.sum()) == round(rate * num_samples)
    # Every flip goes to the next class, (c + 1) mod C, and nowhere else.
    assert torch.equal(noisy[changed], (labels[changed] + 1) % num_classes)


def test_pair_flip_rate_per_class_and_transition_matrix() -> None:
    """Over many samples each class loses about `rate` of its labels, all to its successor."""
    num_classes, per_class, rate = 5, 4000, 0.2
    labels = torch.arange(num_classes).repeat_interleave(per_class)

    noisy = pair_flip_label_noise(labels, rate, num_classes, torch.Generator().manual_seed(1))

    counts = torch.zeros(num_classes, num_classes)
    counts.index_put_((labels, noisy), torch.ones(len(labels)), accumulate=True)
    shares = counts / per_class
    successor = torch.roll(torch.eye(num_classes), shifts=1, dims=1)  # row c has its 1 at c+1
    # Off the diagonal and the successor nothing; binomial-ish std ~ sqrt(.16 / 4000) ~ 0.006.
    assert torch.all(counts[(torch.eye(num_classes) + successor) == 0] == 0)
    torch.testing.assert_close(
        shares[successor.bool()], torch.full((num_classes,), rate), atol=0.03, rtol=0
    )
    torch.testing.assert_close(
        shares.diagonal(), torch.full((num_classes,), 1 - rate), atol=0.03, rtol=0
    )


def test_add_label_noise_dispatches_and_rejects_unknown_types() -> None:
    labels = torch.arange(6).repeat(20)
    for noise_type, model in zip(NOISE_TYPES, (symmetric_label_noise, pair_flip_label_noise)):
        expected = model(labels, 0.3, 6, torch.Generator().manual_seed(2))
        got = add_label_noise(labels, 0.3, 6, torch.Generator().manual_seed(2), noise_type)
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=r"`noise_type` to be one of \('symmetric', 'pair'\)"):
        add_label_noise(labels, 0.3, 6, torch.Generator(), "asymmetric")
