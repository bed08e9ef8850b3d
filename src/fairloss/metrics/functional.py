r"""Superior scoring rules as functions of predicted probabilities: PLL, PBS and their plain bases.

Ahmadian, Ghatee & Wahlström (2025), "Superior scoring rules for probabilistic evaluation of
single-label multi-class classification tasks", International Journal of Approximate Reasoning,
doi:10.1016/j.ijar.2025.109421, arXiv:2407.17697.

A prediction :math:`q` (a probability row over :math:`C` classes) with true class :math:`y` is
*wrong* when some other class has a strictly larger probability, :math:`\max_{k \ne y} q_k > q_y`;
a tie with the true class counts as correct, as in the authors' code. The penalized rules add a
constant to every wrong prediction, chosen so that every correct prediction scores better (lower)
than every wrong one, while the rules stay strictly proper.

The layout follows torchmetrics: ``_scoring_rule_arg_validation`` checks the inputs,
``_*_elements`` compute one score per row, ``_scoring_rule_update`` returns the sufficient
statistics (sum, count) and ``_scoring_rule_compute`` turns them into the mean;
``_classification_scores_update`` returns those of several scores at once. The stateful metrics in
:mod:`fairloss.metrics.modules` call these same helpers.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

from fairloss._validation import check_reduction, expected

__all__ = [
    "brier_score",
    "log_loss",
    "penalized_brier_score",
    "penalized_log_loss",
    "probabilities_from_logits",
]

ElementScores = Callable[[Tensor, Tensor], Tensor]

BRIER_AVERAGES = ("sum", "mean")
"""How the Brier part adds up the squared errors over classes: ``"sum"`` (the paper) or
``"mean"`` (the authors' TensorFlow code, which divides the sum by :math:`C`)."""


def check_brier(brier: object) -> str:
    """Check the ``brier`` argument of the Brier-based scores; return it."""
    if not isinstance(brier, str) or brier not in BRIER_AVERAGES:
        raise ValueError(expected("brier", f"one of {BRIER_AVERAGES}", repr(brier)))
    return brier


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_sum_tolerance(dtype: torch.dtype) -> float:
    """How far a row of ``probs`` may sum from 1: ``max(1e-4, 2 * eps)`` of its dtype."""
    return max(1e-4, 2.0 * torch.finfo(dtype).eps)


def probabilities_from_logits(logits: Tensor) -> Tensor:
    r"""Turn logits into the probability rows the scoring rules take: a softmax over classes.

    .. math::
        q_{nk} = \frac{e^{z_{nk}}}{\sum_{j} e^{z_{nj}}}

    Equivalent to ``torch.softmax(logits.float(), dim=1)`` (``logits.double()`` for float64).
    The softmax runs in float32 for float16, bfloat16 and float32 logits and in float64 for
    float64 logits, so the rows sum to 1 within the tolerance the scoring rules check.

    Args:
        logits (Tensor): unnormalized scores, one row per sample.

    Shape:
        - logits: :math:`(N, C)`.
        - output: :math:`(N, C)`, float32 (float64 for float64 logits).

    Raises:
        TypeError: ``logits`` not a floating point tensor.
        ValueError: ``logits`` not two-dimensional.

    Example:
        >>> import torch
        >>> from fairloss.metrics import probabilities_from_logits
        >>> probabilities_from_logits(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
        tensor([[0.5000, 0.5000],
                [0.8808, 0.1192]])
    """
    if not isinstance(logits, Tensor):
        raise TypeError(expected("logits", "a torch.Tensor", type(logits).__name__))
    if not logits.is_floating_point():
        raise TypeError(expected("logits", "a floating point tensor", logits.dtype))
    if logits.dim() != 2:
        raise ValueError(
            expected("logits", "a tensor of shape (N, C)", f"shape {tuple(logits.shape)}")
        )
    return torch.softmax(logits.to(_compute_dtype(logits.dtype)), dim=1)


def _scoring_rule_arg_validation(probs: Tensor, target: Tensor, validate_args: bool) -> Tensor:
    """Check ``probs`` and ``target`` and return the target as class indices of shape ``(N,)``.

    Types and shapes are always checked. With ``validate_args`` the values are checked too
    (probabilities in [0, 1], rows summing to 1, class indices in range, one-hot rows); those
    checks read the data, so on an accelerator they wait for it (a device sync).
    """
    if not isinstance(probs, Tensor):
        raise TypeError(expected("probs", "a torch.Tensor", type(probs).__name__))
    if not probs.is_floating_point():
        raise TypeError(expected("probs", "a floating point tensor of probabilities", probs.dtype))
    if probs.dim() != 2 or probs.shape[1] == 0:
        raise ValueError(
            expected("probs", "a tensor of shape (N, C) with C >= 1", f"shape {tuple(probs.shape)}")
        )
    if not isinstance(target, Tensor):
        raise TypeError(expected("target", "a torch.Tensor", type(target).__name__))
    if target.is_complex():
        raise TypeError(expected("target", "a real tensor", target.dtype))

    if validate_args:
        _check_probabilities(probs)

    num_rows, num_classes = probs.shape
    if target.shape == probs.shape:
        if validate_args:
            _check_one_hot(target)
        return (target.to(torch.uint8) if target.dtype == torch.bool else target).argmax(dim=1)
    if target.shape == (num_rows,) and not target.is_floating_point():
        if target.dtype == torch.bool:
            raise TypeError(expected("target", "integer class indices", target.dtype))
        if validate_args:
            _check_class_indices(target, num_classes)
        return target.long()
    raise ValueError(
        expected(
            "target",
            f"class indices of shape ({num_rows},) (an integer tensor) or one-hot rows of "
            f"shape {tuple(probs.shape)} (the shape of `probs`)",
            f"a tensor of shape {tuple(target.shape)} and dtype {target.dtype}",
        )
    )


def _check_probabilities(probs: Tensor) -> None:
    if probs.numel() == 0:
        return
    outside = ~((probs >= 0) & (probs <= 1))  # NaN lands here too
    if bool(outside.any()):
        bad_value = float(probs[outside][0])
        raise ValueError(expected("probs", "probabilities in [0, 1]", f"the value {bad_value}"))
    row_sums = probs.to(_compute_dtype(probs.dtype)).sum(dim=1)
    tolerance = _row_sum_tolerance(probs.dtype)
    off = (row_sums - 1).abs() > tolerance
    if bool(off.any()):
        row = int(off.nonzero()[0, 0])
        raise ValueError(
            expected(
                "probs",
                f"rows that sum to 1 within {tolerance:.3g}",
                f"row {row} summing to {float(row_sums[row]):.6g}",
            )
        )


def _check_class_indices(target: Tensor, num_classes: int) -> None:
    out_of_range = (target < 0) | (target >= num_classes)
    if bool(out_of_range.any()):
        bad_value = int(target[out_of_range][0])
        raise ValueError(
            expected("target", f"class indices in [0, {num_classes})", f"the value {bad_value}")
        )


def _check_one_hot(target: Tensor) -> None:
    if target.numel() == 0:
        return
    is_binary = (target == 0) | (target == 1)
    rows_with_one_one = (target == 1).sum(dim=1) == 1
    not_one_hot = ~(is_binary.all(dim=1) & rows_with_one_one)
    if bool(not_one_hot.any()):
        row = int(not_one_hot.nonzero()[0, 0])
        raise ValueError(
            expected(
                "target",
                "one-hot rows (a single 1, zeros elsewhere)",
                f"row {row} equal to {target[row].tolist()}",
            )
        )


def _true_class_probability(probs: Tensor, target_index: Tensor) -> Tensor:
    return probs.gather(1, target_index.unsqueeze(1)).squeeze(1)


def _is_wrong(probs: Tensor, target_index: Tensor) -> Tensor:
    """True where another class has a strictly larger probability than the true class."""
    true_class_probability = _true_class_probability(probs, target_index)
    return (probs > true_class_probability.unsqueeze(1)).any(dim=1)


def _log_loss_elements(probs: Tensor, target_index: Tensor) -> Tensor:
    """``-log q[y]`` per row, ``q[y]`` clamped below at ``torch.finfo(dtype).eps``."""
    probs = probs.to(_compute_dtype(probs.dtype))
    floor = torch.finfo(probs.dtype).eps
    return -_true_class_probability(probs, target_index).clamp_min(floor).log()


def _brier_score_elements(probs: Tensor, target_index: Tensor, brier: str = "sum") -> Tensor:
    """``sum_k (q[k] - y[k])**2`` per row, ``y`` the one-hot target; divided by ``C`` for
    ``brier="mean"``."""
    probs = probs.to(_compute_dtype(probs.dtype))
    one_hot = torch.zeros_like(probs).scatter_(1, target_index.unsqueeze(1), 1.0)
    squared_error = (probs - one_hot).square()
    return squared_error.sum(dim=1) if brier == "sum" else squared_error.mean(dim=1)


def _penalized_log_loss_elements(probs: Tensor, target_index: Tensor) -> Tensor:
    """Log loss plus ``log(C)`` on wrong rows."""
    log_loss = _log_loss_elements(probs, target_index)
    wrong = _is_wrong(probs, target_index).to(log_loss.dtype)
    return log_loss + math.log(probs.shape[1]) * wrong


def _penalized_brier_score_elements(
    probs: Tensor, target_index: Tensor, brier: str = "sum"
) -> Tensor:
    """Brier score (summed or averaged over classes) plus ``(C - 1) / C`` on wrong rows."""
    num_classes = probs.shape[1]
    brier_scores = _brier_score_elements(probs, target_index, brier)
    wrong = _is_wrong(probs, target_index).to(brier_scores.dtype)
    return brier_scores + (num_classes - 1) / num_classes * wrong


def _scoring_rule_elements(
    element_scores: ElementScores, probs: Tensor, target: Tensor, validate_args: bool
) -> Tensor:
    """Validate, then score each row."""
    target_index = _scoring_rule_arg_validation(probs, target, validate_args)
    return element_scores(probs, target_index)


def _scoring_rule_update(
    element_scores: ElementScores, probs: Tensor, target: Tensor, validate_args: bool
) -> tuple[Tensor, Tensor]:
    """The sufficient statistics of the mean score: the sum of the row scores and their count."""
    scores = _scoring_rule_elements(element_scores, probs, target, validate_args)
    count = torch.tensor(scores.numel(), dtype=torch.long, device=scores.device)
    return scores.sum(), count


def _scoring_rule_compute(score_sum: Tensor, count: Tensor) -> Tensor:
    """The mean score; NaN for zero rows, as ``torch.mean`` of an empty tensor."""
    return score_sum / count


def _classification_scores_update(
    probs: Tensor, target: Tensor, num_classes: int, brier: str, validate_args: bool
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Validate once, then the sufficient statistics of :class:`~fairloss.metrics.modules.
    ClassificationScores`' means: the row sums of the correct predictions (argmax equal to the
    target) and of the log loss, Brier score, PLL and PBS; the row count; and the target as class
    indices, for the calibration error."""
    target_index = _scoring_rule_arg_validation(probs, target, validate_args)
    if probs.shape[1] != num_classes:
        raise ValueError(
            expected(
                "probs",
                f"a tensor of shape (N, {num_classes}), one column per class",
                f"shape {tuple(probs.shape)}",
            )
        )
    sums = {
        "correct": (probs.argmax(dim=1) == target_index).sum(),
        "nll": _log_loss_elements(probs, target_index).sum(),
        "brier": _brier_score_elements(probs, target_index, brier).sum(),
        "pll": _penalized_log_loss_elements(probs, target_index).sum(),
        "pbs": _penalized_brier_score_elements(probs, target_index, brier).sum(),
    }
    count = torch.tensor(target_index.numel(), dtype=torch.long, device=probs.device)
    return sums, count, target_index


def _scoring_rule(
    element_scores: ElementScores,
    probs: Tensor,
    target: Tensor,
    reduction: str,
    validate_args: bool,
) -> Tensor:
    check_reduction(reduction)
    if reduction == "none":
        return _scoring_rule_elements(element_scores, probs, target, validate_args)
    score_sum, count = _scoring_rule_update(element_scores, probs, target, validate_args)
    return score_sum if reduction == "sum" else _scoring_rule_compute(score_sum, count)


def log_loss(
    probs: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Logarithmic loss (negative log-likelihood of the true class) of probability predictions.

    For a probability row :math:`q` and true class :math:`y`:

    .. math::
        \operatorname{LL}(q, y) = -\log \max(q_y, \epsilon),
        \qquad \epsilon = \texttt{torch.finfo(dtype).eps}

    The floor :math:`\epsilon` (1.19e-07 in float32, 2.22e-16 in float64; close to the 1e-7
    Keras clips to in the authors' code) keeps the loss finite at :math:`q_y = 0`. The natural
    logarithm is used. ``"mean"`` averages over rows, ``"sum"`` adds them.

    ``probs``, ``target``, ``reduction``, ``validate_args``, the shapes and the errors: see
    :mod:`fairloss.metrics`. Equivalent to::

        -probs.gather(1, target[:, None]).squeeze(1).clamp_min(eps).log()  # then reduce

    Example:
        >>> import torch
        >>> from fairloss.metrics import log_loss
        >>> probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]])
        >>> log_loss(probs, torch.tensor([1, 1]), reduction="none")
        tensor([1.0788, 0.7133])
    """
    return _scoring_rule(_log_loss_elements, probs, target, reduction, validate_args)


def brier_score(
    probs: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    validate_args: bool = True,
    brier: str = "sum",
) -> Tensor:
    r"""Multi-class Brier score: squared distance between the probabilities and the one-hot target.

    For a probability row :math:`q` and true class :math:`y`:

    .. math::
        \operatorname{BS}(q, y) = \sum_{k=1}^{C} (q_k - [k = y])^2

    It is summed over classes, as in the paper (range :math:`[0, 2]`); ``brier="mean"`` divides
    it by :math:`C`, as some libraries and the authors' code do. ``reduction="mean"`` averages
    over rows, ``"sum"`` adds them.

    ``probs``, ``target``, ``reduction``, ``validate_args``, the shapes and the errors: see
    :mod:`fairloss.metrics`. Equivalent to::

        (probs - F.one_hot(target, C)).square().sum(dim=1)  # then reduce

    Args:
        brier (str, optional): ``"sum"`` the squared errors over classes (the paper) or
            ``"mean"`` them (the authors' code). Default: ``"sum"``.

    Example:
        >>> import torch
        >>> from fairloss.metrics import brier_score
        >>> probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]])
        >>> brier_score(probs, torch.tensor([1, 1]), reduction="none")
        tensor([0.6534, 0.5202])
        >>> brier_score(probs, torch.tensor([1, 1]), reduction="none", brier="mean")
        tensor([0.2178, 0.1734])
    """
    check_brier(brier)
    elements = functools.partial(_brier_score_elements, brier=brier)
    return _scoring_rule(elements, probs, target, reduction, validate_args)


def penalized_log_loss(
    probs: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    validate_args: bool = True,
) -> Tensor:
    r"""Penalized Logarithmic Loss (PLL): log loss plus :math:`\log C` for each wrong prediction.

    From Ahmadian, Ghatee & Wahlström (2025), doi:10.1016/j.ijar.2025.109421. For a probability
    row :math:`q` over :math:`C` classes and true class :math:`y`:

    .. math::
        \operatorname{wrong}(q, y) = \bigl[\max_{k \ne y} q_k > q_y\bigr],

        \operatorname{PLL}(q, y) = -\log \max(q_y, \epsilon) + \log(C)\,\operatorname{wrong}(q, y)

    with :math:`\epsilon` = ``torch.finfo(dtype).eps`` keeping the loss finite at
    :math:`q_y = 0`. A tie between the true class and another counts as correct. A correct row
    has :math:`q_y \ge 1/C`, so a PLL of at most :math:`\log C`; a wrong row scores more than
    :math:`\log C`: every correct prediction scores better (lower) than every wrong one.
    ``"mean"`` averages over rows, ``"sum"`` adds them.

    ``probs``, ``target``, ``reduction``, ``validate_args``, the shapes and the errors: see
    :mod:`fairloss.metrics`. Equivalent to::

        true_probability = probs.gather(1, target[:, None])
        wrong = (probs > true_probability).any(dim=1)
        -true_probability.squeeze(1).clamp_min(eps).log() + math.log(C) * wrong  # then reduce

    Example:
        >>> import torch
        >>> from fairloss.metrics import penalized_log_loss
        >>> probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]])  # correct, wrong
        >>> penalized_log_loss(probs, torch.tensor([1, 1]), reduction="none")
        tensor([1.0788, 1.8120])
    """
    return _scoring_rule(_penalized_log_loss_elements, probs, target, reduction, validate_args)


def penalized_brier_score(
    probs: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    validate_args: bool = True,
    brier: str = "sum",
) -> Tensor:
    r"""Penalized Brier Score (PBS): Brier score plus :math:`(C-1)/C` for each wrong prediction.

    From Ahmadian, Ghatee & Wahlström (2025), doi:10.1016/j.ijar.2025.109421. For a probability
    row :math:`q` over :math:`C` classes and true class :math:`y`:

    .. math::
        \operatorname{wrong}(q, y) = \bigl[\max_{k \ne y} q_k > q_y\bigr],

        \operatorname{PBS}(q, y) = \sum_{k=1}^{C} (q_k - [k = y])^2
            + \tfrac{C - 1}{C}\,\operatorname{wrong}(q, y)

    A tie between the true class and another counts as correct. A correct row has a Brier score
    of at most :math:`1 - q_y \le (C-1)/C`; a wrong row scores more than :math:`(C-1)/C`: every
    correct prediction scores better (lower) than every wrong one. ``"mean"`` averages over
    rows, ``"sum"`` adds them.

    By default this is the paper's formula, with the squared error *summed* over classes. The
    authors' TensorFlow code instead *averages* it over classes (``reduce_mean(..., axis=1)``)
    and adds the same :math:`(C-1)/C`; ``brier="mean"`` computes that variant,
    :math:`\tfrac{1}{C}\sum_k (q_k - [k = y])^2 + \tfrac{C-1}{C}\,\operatorname{wrong}(q, y)`.
    It still scores every correct prediction better than every wrong one (its Brier part is
    below :math:`(C-1)/C` too), but the penalty weighs :math:`C` times more against it.

    ``probs``, ``target``, ``reduction``, ``validate_args``, the shapes and the errors: see
    :mod:`fairloss.metrics`. Equivalent to::

        wrong = (probs > probs.gather(1, target[:, None])).any(dim=1)
        brier = (probs - F.one_hot(target, C)).square().sum(dim=1)
        brier + (C - 1) / C * wrong  # then reduce

    Args:
        brier (str, optional): ``"sum"`` the squared errors over classes (the paper) or
            ``"mean"`` them (the authors' code). Default: ``"sum"``.

    Example:
        >>> import torch
        >>> from fairloss.metrics import penalized_brier_score
        >>> probs = torch.tensor([[0.33, 0.34, 0.33], [0.51, 0.49, 0.00]])  # correct, wrong
        >>> penalized_brier_score(probs, torch.tensor([1, 1]), reduction="none")
        tensor([0.6534, 1.1869])
        >>> penalized_brier_score(probs, torch.tensor([1, 1]), reduction="none", brier="mean")
        tensor([0.2178, 0.8401])
    """
    check_brier(brier)
    elements = functools.partial(_penalized_brier_score_elements, brier=brier)
    return _scoring_rule(elements, probs, target, reduction, validate_args)
