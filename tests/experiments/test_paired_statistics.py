"""Paired differences over seeds: against a hand computation, and the paired table."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.paired import PairedDifference, paired_difference
from experiments.reporting import (
    format_difference,
    format_paired_table,
    paired_differences,
)
from experiments.runner import RunResult

# t quantiles from a printed table (Student's t, two-sided 95 %): df 1, 2, 4.
T_975 = {1: 12.706, 2: 4.303, 4: 2.776}


def test_matches_a_hand_computation() -> None:
    values = [0.93, 0.95, 0.90, 0.96, 0.91]
    reference = [0.90, 0.91, 0.90, 0.92, 0.90]
    # differences 0.03, 0.04, 0.00, 0.04, 0.01: mean 0.024, sample variance 0.00033
    mean = 0.024
    standard_error = math.sqrt(0.00033 / 5)
    result = paired_difference(values, reference)
    assert result.mean == pytest.approx(mean, abs=1e-12)
    assert result.count == 5 and result.confidence == 0.95
    assert result.half_width == pytest.approx(T_975[4] * standard_error, rel=1e-3)
    assert result.low == pytest.approx(mean - T_975[4] * standard_error, abs=1e-5)
    assert not result.within_noise  # 0.024 - 2.776 * 0.00812 = 0.0014 > 0


def test_two_seeds_use_one_degree_of_freedom_and_cover_zero() -> None:
    result = paired_difference([1.0, 3.0], [0.0, 0.0])  # differences 1 and 3
    assert result.mean == 2.0
    assert result.half_width == pytest.approx(T_975[1] * math.sqrt(2.0) / math.sqrt(2), rel=1e-3)
    assert result.within_noise


def test_the_interval_depends_on_the_pairing_not_on_the_levels() -> None:
    """A constant offset between the two sides leaves the differences, and the result, alone."""
    base = [0.5, 0.9, 0.2]
    shifted = [value + 0.1 for value in base]
    result = paired_difference(shifted, base)
    assert result.mean == pytest.approx(0.1)
    assert result.half_width == pytest.approx(0.0, abs=1e-12)
    assert not result.within_noise


def test_one_pair_has_no_interval_and_counts_as_within_noise() -> None:
    result = paired_difference([0.7], [0.5])
    assert result.mean == pytest.approx(0.2) and result.count == 1
    assert math.isnan(result.low) and math.isnan(result.high) and result.within_noise


@pytest.mark.parametrize(
    ("values", "reference", "confidence", "message"),
    [
        ([1.0], [1.0, 2.0], 0.95, "as many scores as `reference`, but got 1 and 2"),
        ([], [], 0.95, "at least one score"),
        ([1.0], [1.0], 1.0, r"`confidence` to be a number in \(0, 1\)"),
    ],
)
def test_bad_input_raises(
    values: list[float], reference: list[float], confidence: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        paired_difference(values, reference, confidence)


def _run(loss: str, seed: int, noise: float, accuracy: float, nll: float) -> RunResult:
    return RunResult(
        "wine",
        loss,
        noise,
        seed,
        {},
        0,
        {"accuracy": accuracy, "nll": nll},
        {},
        {},
        [],
        0.0,
        torch.empty(0),
        torch.empty(0),
    )


def test_paired_differences_pair_by_seed_per_noise_setting() -> None:
    runs = [
        _run("ce", 0, 0.0, 0.90, 0.30),
        _run("focal", 0, 0.0, 0.95, 0.20),
        _run("ce", 1, 0.0, 0.80, 0.50),
        _run("focal", 1, 0.0, 0.84, 0.45),
        _run("ce", 2, 0.0, 0.70, 0.60),
        _run("focal", 2, 0.0, 0.76, 0.40),
        _run("focal", 3, 0.0, 0.10, 9.00),  # no ce run with seed 3: left out
        _run("ce", 0, 0.3, 0.50, 1.00),
        _run("focal", 0, 0.3, 0.40, 1.20),
    ]
    clean, noisy = paired_differences(runs, "ce")
    assert (clean.loss, clean.noise, clean.seeds) == ("focal", 0.0, (0, 1, 2))
    expected = paired_difference([0.95, 0.84, 0.76], [0.90, 0.80, 0.70])
    assert clean.test["accuracy"] == expected
    assert clean.test["nll"].mean == pytest.approx((-0.1 - 0.05 - 0.2) / 3)
    assert (noisy.noise, noisy.seeds) == (0.3, (0,))
    assert noisy.test["accuracy"].mean == pytest.approx(-0.1) and noisy.test["nll"].within_noise

    table = format_paired_table([clean, noisy])
    lines = table.splitlines()
    assert lines[0].startswith("Paired differences against ce (same seeds)")
    header = next(line for line in lines if line.startswith("loss"))
    assert header.split() == ["loss", "noise", "seeds", "acc", "%", "NLL"]
    row = next(line for line in lines if line.startswith("focal  0 "))
    assert format_difference(clean.test["accuracy"], percent=True) in row
    assert "~: within noise (the interval covers 0)" in table


def test_format_difference_marks_within_noise() -> None:
    assert format_difference(PairedDifference(0.05, 0.01, 0.09, 5)) == "+0.050 ± 0.040"
    assert format_difference(PairedDifference(0.05, -0.01, 0.11, 5)) == "+0.050 ± 0.060 ~"
    no_interval = PairedDifference(-0.02, math.nan, math.nan, 1)
    assert format_difference(no_interval, percent=True) == "-2.0 ~"
