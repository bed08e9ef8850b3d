"""The formula (``fairloss._penalty``) against its published numbers: the README's worked example
and release 0.1.1's penalty, and docs/formulation.md, checked: its tables recomputed with the
library, its claims, its gradient.

Each table of the page that follows a ``<!-- checked: NAME -->`` marker is parsed here; every
number in it is recomputed with :func:`fairloss.fair_loss` (or torch) and must agree to the
digits the page prints. Every decimal number in the page's prose must come from such a table.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fairloss import fair_loss
from tests.reference import seed_penalty

PAGE = Path(__file__).resolve().parents[1] / "docs" / "formulation.md"
DEFAULT = 1000.0
# Parameters the prose names (d_{0.99}); not results, so not looked up in a table.
PROSE_PARAMETERS = {"0.99"}


def page_text() -> str:
    return PAGE.read_text(encoding="utf-8")


def checked_table(name: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table after ``<!-- checked: name -->``."""
    lines = page_text().splitlines()
    start = lines.index(f"<!-- checked: {name} -->") + 1
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, separator, *rows = table
    assert set("".join(separator)) <= set("-: "), separator
    assert rows and all(len(row) == len(header) for row in rows)
    return rows


def assert_shown(shown: str, value: float) -> None:
    """``value`` rounds to ``shown`` (half a unit of the last printed digit)."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    tolerance = 0.5 * 10.0**-decimals + 1e-12
    assert abs(value - float(shown)) <= tolerance, f"page shows {shown}, library gives {value!r}"


def parse_logits(cell: str) -> list[float]:
    return [float(entry) for entry in cell.strip("`[]").split(",")]


def penalty_scale(cell: str, num_classes: int) -> float:
    return {"1/C": 1.0 / num_classes, "log C": math.log(num_classes)}[cell]


def element_loss(
    logits: list[float],
    target: int,
    *,
    scale: Optional[float] = None,
    beta: float = DEFAULT,
    steepness: float = DEFAULT,
) -> float:
    value = fair_loss(
        torch.tensor([logits], dtype=torch.float64),
        torch.tensor([target]),
        reduction="none",
        penalty_scale=scale,
        smooth_max_beta=beta,
        scaling_factor=steepness,
    )
    return float(value.item())


def argmax_kind(logits: list[float], target: int) -> str:
    top = max(logits)
    if logits[target] < top:
        return "wrong"
    return "tie" if logits.count(top) > 1 else "correct"


# ---------------------------------------------------------------- the README's worked example


def test_seed_worked_example() -> None:
    logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
    target = torch.tensor([0, 0])
    loss = fair_loss(logits, target, reduction="none")
    ce = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([1.0920, 1.3014]), rtol=0, atol=5e-5)
    # sample 2 is wrong (class 1 wins) and must now lose to the correct sample 1
    assert ce[1] < ce[0] and loss[1] > loss[0]
    # penalty of the wrong sample: the 0.1.1 formula (2 sigmoid(-s gap) - 1) / C
    gap = 0.49 - torch.logsumexp(1000 * logits[1].double(), 0).item() / 1000
    torch.testing.assert_close((loss - ce)[1].item(), seed_penalty(gap, 3), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the page's tables


def test_losses_table_matches_library_and_prose_claims() -> None:
    cross_entropy, penalty, loss = {}, {}, {}
    for row in checked_table("losses"):
        number, classes, logits_cell, target, kind, scale_cell, beta_cell = row[:7]
        logits, num_classes = parse_logits(logits_cell), int(classes)
        assert len(logits) == num_classes
        assert argmax_kind(logits, int(target)) == kind
        scale = penalty_scale(scale_cell, num_classes)
        beta = float(beta_cell)
        index = int(number)
        cross_entropy[index] = element_loss(logits, int(target), steepness=0.0)
        loss[index] = element_loss(logits, int(target), scale=scale, beta=beta, steepness=beta)
        penalty[index] = loss[index] - cross_entropy[index]
        assert -1e-12 <= penalty[index] <= scale + 1e-12  # up to rounding of loss - CE
        for shown, value in zip(row[7:], (cross_entropy[index], penalty[index], loss[index])):
            assert_shown(shown, value)

    assert cross_entropy[2] < cross_entropy[1]  # cross-entropy prefers the wrong prediction
    assert loss[2] > loss[1]  # the default fixes the README pair ...
    assert loss[3] < loss[1] and loss[5] < loss[4]  # ... but not every pair
    assert loss[7] > loss[6] and loss[9] > loss[8]  # lambda = log C separates them
    assert loss[10] < loss[6]  # not at finite beta, s for a tiny margin
    assert loss[11] > math.log(3) > loss[6]  # larger beta = s resolves it
    assert loss[13] < loss[6]  # a tie can land on the correct side
    assert penalty[12] == pytest.approx((1 / 3) * (2 - 1) / (2 + 1), rel=1e-9)
    assert penalty[13] == pytest.approx(math.log(3) / 3, rel=1e-9)


def switch_points(num_classes: int) -> tuple[float, float]:
    wrong_side = 2 * math.atanh(0.99) / DEFAULT
    correct_side = math.log(DEFAULT * (num_classes - 1) / (2 * DEFAULT * 1e-3)) / DEFAULT
    return wrong_side, correct_side


def test_thresholds_table_matches_library() -> None:
    for classes, wrong_cell, wrong_fraction, correct_cell, correct_fraction in checked_table(
        "thresholds"
    ):
        num_classes = int(classes)
        scale = 1.0 / num_classes
        wrong_side, correct_side = switch_points(num_classes)
        assert_shown(wrong_cell, wrong_side)
        assert_shown(correct_cell, correct_side)

        # Worst cases: other classes at -inf (wrong), all others at the margin (correct).
        trailing = [0.0, wrong_side] + [-math.inf] * (num_classes - 2)
        fraction = (element_loss(trailing, 0) - element_loss(trailing, 0, steepness=0.0)) / scale
        assert fraction >= 0.99
        assert_shown(wrong_fraction, fraction)

        leading = [correct_side] + [0.0] * (num_classes - 1)
        fraction = (element_loss(leading, 0) - element_loss(leading, 0, steepness=0.0)) / scale
        assert fraction <= 1e-3
        assert_shown(correct_fraction, fraction)


def test_tie_gradient_table_matches_autograd() -> None:
    scale = 1.0 / 3.0
    for steepness_cell, loss_norm, cross_entropy_norm in checked_table("tie-gradient"):
        steepness = float(steepness_cell)
        norms = []
        for scaling_factor in (steepness, 0.0):
            logits = torch.tensor([[0.0, 0.0, -math.inf]], dtype=torch.float64, requires_grad=True)
            fair_loss(
                logits,
                torch.tensor([0]),
                smooth_max_beta=steepness,
                scaling_factor=scaling_factor,
                reduction="sum",
            ).backward()
            assert logits.grad is not None
            norms.append(float(logits.grad.norm()))
        assert norms[0] == pytest.approx((1 + 4 * scale * steepness / 9) / math.sqrt(2), rel=1e-9)
        assert_shown(loss_norm, norms[0])
        assert_shown(cross_entropy_norm, norms[1])


def spacing(magnitude: float, dtype: torch.dtype) -> float:
    value = torch.tensor(magnitude, dtype=dtype)
    return float(torch.nextafter(value, torch.tensor(math.inf, dtype=dtype)) - value)


def test_spacing_table_and_half_precision_claims() -> None:
    for magnitude, half, brain in checked_table("spacing"):
        assert_shown(half, spacing(float(magnitude), torch.float16))
        assert_shown(brain, spacing(float(magnitude), torch.bfloat16))
    # "float16 from |z| = 16, bfloat16 from |z| = 2" exceed every switch width for C <= 1000.
    widest = max(max(switch_points(num_classes)) for num_classes in (3, 10, 1000))
    assert spacing(16.0, torch.float16) > widest > spacing(8.0, torch.float16)
    assert spacing(2.0, torch.bfloat16) > widest > spacing(1.0, torch.bfloat16)


def test_every_decimal_in_the_prose_comes_from_a_checked_table() -> None:
    text = page_text().split("\n## Reference")[0]  # DOI and arXiv numbers are not results
    markers = re.findall(r"<!-- checked: ([\w-]+) -->", text)
    assert set(markers) == {"losses", "thresholds", "tie-gradient", "spacing"}
    table_numbers = {cell for name in markers for row in checked_table(name) for cell in row}
    prose_numbers = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or line.startswith("|"):
            continue
        prose_numbers |= set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", line))
    assert prose_numbers, "the prose cites no number: the pattern is broken"
    assert prose_numbers - PROSE_PARAMETERS <= table_numbers


def test_page_cites_the_paper() -> None:
    text = page_text()
    for reference in ("10.1016/j.ijar.2025.109421", "2407.17697", "Ahmadian", "Wahlström"):
        assert reference in text


# ---------------------------------------------------------------- the page's formulas


def derived_gradient(
    logits: torch.Tensor,
    weighted_target: torch.Tensor,
    reference: torch.Tensor,
    reference_weight: torch.Tensor,
    *,
    beta: float,
    steepness: float,
    scale: float,
) -> torch.Tensor:
    """Per-element gradient of the page's boxed formula for rows ``(N, C)``, float64.

    ``weighted_target`` is the page's vector ``a`` per row (zero on ignored rows),
    ``reference_weight`` is ``w_r`` (zero on ignored rows).
    """
    one_hot = F.one_hot(reference, logits.shape[1]).to(logits.dtype)
    probabilities = torch.softmax(logits, dim=1)
    cross_entropy_grad = weighted_target.sum(1, keepdim=True) * probabilities - weighted_target
    smooth_max = torch.logsumexp(beta * logits, dim=1) / beta
    half_scaled = steepness / 2 * (smooth_max - logits.gather(1, reference[:, None]).squeeze(1))
    sech_squared = 1 / torch.cosh(half_scaled) ** 2
    sharpened = torch.softmax(beta * logits, dim=1)
    slope = reference_weight * scale * steepness / 2 * sech_squared
    return cross_entropy_grad + slope[:, None] * (sharpened - one_hot)


def index_target_vector(
    target: torch.Tensor, weight: torch.Tensor, smoothing: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``a = (1 - eps) w_y e_y + eps / C * w``, the reference class and ``w_r``; 0 if ignored."""
    num_classes = weight.shape[0]
    valid = target != ignore_index
    reference = target.masked_fill(~valid, 0)
    one_hot = F.one_hot(reference, num_classes).to(weight.dtype)
    vector = (1 - smoothing) * weight[reference, None] * one_hot + smoothing / num_classes * weight
    return vector * valid[:, None], reference, weight[reference] * valid


def composite_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    ignore_index: int,
    smoothing: float,
    beta: float,
    steepness: float,
    scale: float,
) -> torch.Tensor:
    """The page's definition in plain autograd-friendly PyTorch, ``reduction="none"``."""
    cross_entropy = F.cross_entropy(
        logits,
        target,
        weight,
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction="none",
    )
    valid = target != ignore_index
    reference = target.masked_fill(~valid, 0)
    smooth_max = torch.logsumexp(beta * logits, dim=1) / beta
    gap = logits.gather(1, reference[:, None]).squeeze(1) - smooth_max
    penalty = scale * torch.tanh(-steepness * gap / 2)
    return cross_entropy + weight[reference] * penalty * valid


@settings(max_examples=25, deadline=None)
@given(
    num_classes=st.integers(2, 7),
    batch=st.integers(1, 6),
    smoothing=st.sampled_from([0.0, 0.1, 0.7]),
    beta=st.sampled_from([0.5, 3.0, 20.0]),
    steepness=st.sampled_from([0.5, 4.0, 30.0]),
    scale=st.sampled_from([0.3, 1.0, 2.0]),
    reduction=st.sampled_from(["none", "sum", "mean"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_derived_gradient_matches_autograd(
    num_classes: int,
    batch: int,
    smoothing: float,
    beta: float,
    steepness: float,
    scale: float,
    reduction: str,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, num_classes, (batch,), generator=generator)
    target[torch.rand(batch, generator=generator) < 0.25] = -1  # some ignored elements
    weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.2
    upstream = torch.randn(batch, generator=generator, dtype=torch.float64)

    vector, reference, reference_weight = index_target_vector(target, weight, smoothing, -1)
    per_element = derived_gradient(
        logits, vector, reference, reference_weight, beta=beta, steepness=steepness, scale=scale
    )
    valid = target != -1
    if reduction == "none":
        expected = upstream[:, None] * per_element
    elif reduction == "sum":
        expected = per_element
    else:
        expected = per_element / (weight[target.masked_fill(~valid, 0)] * valid).sum()

    def autograd_of(loss_fn_output: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
        outer = upstream if reduction == "none" else torch.ones((), dtype=torch.float64)
        (grad,) = torch.autograd.grad(loss_fn_output, leaf, outer)
        return grad

    library_logits = logits.clone().requires_grad_()
    library_loss = fair_loss(
        library_logits,
        target,
        weight,
        ignore_index=-1,
        reduction=reduction,
        label_smoothing=smoothing,
        smooth_max_beta=beta,
        scaling_factor=steepness,
        penalty_scale=scale,
    )
    composite_logits = logits.clone().requires_grad_()
    composite = composite_loss(
        composite_logits,
        target,
        weight,
        ignore_index=-1,
        smoothing=smoothing,
        beta=beta,
        steepness=steepness,
        scale=scale,
    )
    if reduction == "sum":
        composite = composite.sum()
    elif reduction == "mean":
        composite = composite.sum() / (weight[target.masked_fill(~valid, 0)] * valid).sum()

    if not valid.any() and reduction == "mean":
        return  # 0 / 0, as in cross-entropy: nothing to compare
    torch.testing.assert_close(autograd_of(composite, composite_logits), expected)
    torch.testing.assert_close(autograd_of(library_loss, library_logits), expected)
    torch.testing.assert_close(per_element.sum(dim=1), torch.zeros(batch, dtype=torch.float64))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_derived_gradient_matches_autograd_for_probability_targets(smoothing: float) -> None:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(9, 5, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.softmax(3 * torch.randn(9, 5, generator=generator, dtype=torch.float64), 1)
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.2
    reference = target.argmax(dim=1)
    vector = weight * ((1 - smoothing) * target + smoothing / 5)
    options = {"beta": 2.0, "steepness": 5.0, "scale": 0.9}
    expected = derived_gradient(logits.detach(), vector, reference, weight[reference], **options)
    loss = fair_loss(
        logits,
        target,
        weight,
        reduction="mean",
        label_smoothing=smoothing,
        smooth_max_beta=options["beta"],
        scaling_factor=options["steepness"],
        penalty_scale=options["scale"],
    )
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, expected / 9)  # "mean" over probability targets: / N


@settings(max_examples=30, deadline=None)
@given(
    num_classes=st.integers(2, 8),
    k_tied=st.integers(2, 5),
    ratio=st.sampled_from([0.25, 1.0, 3.0]),
)
def test_tie_penalty_formula(num_classes: int, k_tied: int, ratio: float) -> None:
    k_tied = min(k_tied, num_classes)
    logits = [0.0] * k_tied + [-math.inf] * (num_classes - k_tied)
    beta, scale = 50.0, 0.7
    penalty = element_loss(
        logits, 0, scale=scale, beta=beta, steepness=ratio * beta
    ) - element_loss(logits, 0, steepness=0.0)
    power = k_tied**ratio
    assert penalty == pytest.approx(scale * (power - 1) / (power + 1), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    logits=st.lists(st.floats(-4.0, 4.0), min_size=2, max_size=8),
    target_seed=st.integers(0, 100),
)
def test_limit_is_penalized_log_loss_without_ties(logits: list[float], target_seed: int) -> None:
    target = target_seed % len(logits)
    ordered = sorted(logits)
    if any(upper - lower < 1e-2 for lower, upper in zip(ordered, ordered[1:])):
        return  # the limit statement is about points without (near-)ties
    num_classes = len(logits)
    large = 1e7
    limit = element_loss(logits, target, scale=math.log(num_classes), beta=large, steepness=large)
    probabilities = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
    wrong = max(logits) > logits[target]
    penalized_log_loss = -math.log(float(probabilities[target])) + math.log(num_classes) * wrong
    assert limit == pytest.approx(penalized_log_loss, abs=1e-9)
    # ... and the superior property of the limit: correct < log C < wrong.
    assert (limit > math.log(num_classes)) == wrong


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 12),
    spread=st.sampled_from([0.003, 0.03, 1.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_penalty_bounds_and_switch_points(num_classes: int, spread: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = spread * torch.randn(32, num_classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, num_classes, (32,), generator=generator)
    scale = 0.8
    penalty = fair_loss(logits, target, reduction="none", penalty_scale=scale) - fair_loss(
        logits, target, reduction="none", scaling_factor=0.0
    )
    assert bool((penalty >= -1e-9).all()) and bool((penalty <= scale + 1e-9).all())

    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], -math.inf)
    wrong_side, correct_side = switch_points(num_classes)
    trailing = logits.amax(dim=1) - target_logit >= wrong_side
    leading = target_logit - others.amax(dim=1) >= correct_side
    assert bool((penalty[trailing] >= 0.99 * scale - 1e-9).all())
    assert bool((penalty[leading] <= 1e-3 * scale + 1e-9).all())
