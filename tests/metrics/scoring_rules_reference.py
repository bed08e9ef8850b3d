"""An independent float64 reference of the scoring rules, written from the paper's formulas.

Plain Python floats and loops, no torch arithmetic: for a probability row q over C classes and
true class y,

    wrong = some k != y has q[k] > q[y]            (a tie counts as correct)
    log loss         = -ln(max(q[y], floor))
    Brier score      = sum_k (q[k] - [k == y])**2
    PLL              = log loss    + ln(C)       * wrong
    PBS              = Brier score + (C - 1) / C * wrong
"""

from __future__ import annotations

import math

RULES = ("log_loss", "brier_score", "penalized_log_loss", "penalized_brier_score")


def is_wrong(row: list[float], true_class: int) -> bool:
    return any(
        probability > row[true_class]
        for other_class, probability in enumerate(row)
        if other_class != true_class
    )


def row_score(rule: str, row: list[float], true_class: int, log_floor: float) -> float:
    num_classes = len(row)
    log_loss = -math.log(max(row[true_class], log_floor))
    brier = sum(
        (probability - (1.0 if k == true_class else 0.0)) ** 2 for k, probability in enumerate(row)
    )
    wrong = is_wrong(row, true_class)
    if rule == "log_loss":
        return log_loss
    if rule == "brier_score":
        return brier
    if rule == "penalized_log_loss":
        return log_loss + (math.log(num_classes) if wrong else 0.0)
    if rule == "penalized_brier_score":
        return brier + ((num_classes - 1) / num_classes if wrong else 0.0)
    raise ValueError(f"unknown rule {rule!r}")


def scores(rule: str, rows: list[list[float]], targets: list[int], log_floor: float) -> list[float]:
    return [row_score(rule, row, target, log_floor) for row, target in zip(rows, targets)]


def reduce(values: list[float], reduction: str) -> float | list[float]:
    if reduction == "none":
        return values
    total = math.fsum(values)
    if reduction == "sum":
        return total
    return total / len(values) if values else math.nan
