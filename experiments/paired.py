r"""Paired differences over seeds, with a Student-t confidence interval.

Two losses trained with the same seed share the split, the label noise, the initial weights and
the batch order, so their scores are paired: the difference :math:`d_i = x_i - r_i` of seed
:math:`i` removes what the seed alone decides. Over :math:`n` seeds,

.. math::
    \bar d = \frac{1}{n}\sum_i d_i, \qquad
    s_d = \sqrt{\frac{1}{n-1}\sum_i (d_i - \bar d)^2}, \qquad
    \bar d \pm t_{1 - \alpha/2,\, n-1}\,\frac{s_d}{\sqrt n}

is the mean difference and its :math:`1 - \alpha` interval (95 % by default). A difference is
*within noise* when its interval covers 0 (or when there are fewer than two seeds, so no interval).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

from experiments.checks import expected

__all__ = ["PairedDifference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """The mean of paired differences and its confidence interval.

    Attributes:
        mean (float): :math:`\\bar d`.
        low (float), high (float): the interval's ends; NaN for fewer than two pairs.
        count (int): the number of pairs :math:`n`.
        confidence (float): the interval's level, such as 0.95.
    """

    mean: float
    low: float
    high: float
    count: int
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        """Half the interval's width: :math:`t\\, s_d / \\sqrt n` (NaN without an interval)."""
        return (self.high - self.low) / 2

    @property
    def within_noise(self) -> bool:
        """True when the interval covers 0, or there is no interval (fewer than two pairs)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return True
        return self.low <= 0.0 <= self.high


def paired_difference(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    r"""The mean of ``values[i] - reference[i]`` with a Student-t interval at ``confidence``.

    Args:
        values (Sequence[float]): one score per seed.
        reference (Sequence[float]): the reference's score for the same seeds, in the same order.
        confidence (float, optional): the interval's level, in :math:`(0, 1)`. Default: ``0.95``.

    Returns:
        PairedDifference: the mean, the interval (NaN ends for fewer than two pairs) and the count.

    Raises:
        ValueError: sequences of different lengths or empty; ``confidence`` outside
            :math:`(0, 1)`.

    Example:
        >>> difference = paired_difference([0.91, 0.93, 0.92], [0.90, 0.90, 0.91])
        >>> round(difference.mean, 4), round(difference.low, 4), round(difference.high, 4)
        (0.0167, -0.012, 0.0454)
        >>> difference.within_noise
        True
    """
    if len(values) != len(reference):
        raise ValueError(
            expected(
                "values", "as many scores as `reference`", f"{len(values)} and {len(reference)}"
            )
        )
    if not values:
        raise ValueError(expected("values", "at least one score", "none"))
    if not 0.0 < confidence < 1.0:
        raise ValueError(expected("confidence", "a number in (0, 1)", repr(confidence)))
    differences = [value - base for value, base in zip(values, reference)]
    mean = statistics.fmean(differences)
    count = len(differences)
    if count < 2:
        return PairedDifference(mean, math.nan, math.nan, count, confidence)
    standard_error = statistics.stdev(differences) / math.sqrt(count)
    half_width = float(student_t.ppf(0.5 + confidence / 2, count - 1)) * standard_error
    return PairedDifference(mean, mean - half_width, mean + half_width, count, confidence)
