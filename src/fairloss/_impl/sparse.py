"""The sparse implementation: SmoothMax only where the penalty is not saturated (eager, CPU).

Cross-entropy's part is computed densely (``log_softmax`` forward, the softmax gradient
backward). Of the penalty, most elements need nothing beyond per-element numbers: a reference
logit far below the maximum saturates (penalty ``lambda``, no gradient) and a clear winner has
none (:func:`fairloss._penalty.penalty_candidates`). The few others are found with ``nonzero``
and their SmoothMax computed on their rows alone. Forward keeps per-element statistics and, for
the elements with a penalty gradient, their rows of ``softmax(beta * z)``.

``nonzero`` and ``bool(tensor)`` synchronise with the host and give data-dependent shapes, so
this implementation is chosen on CPU only (:func:`fairloss._impl.select`); it is the fastest
there. :mod:`fairloss._impl.sparse_compiled` runs the same data-dependent steps
(:func:`penalty_statistics`, :func:`recompute_penalty_gradient_`) as custom operators under
``torch.compile``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fairloss._cross_entropy import (
    CrossEntropyRows,
    cross_entropy_gradient_,
    cross_entropy_rows,
    probability_target_sums,
    smoothing_sum,
)
from fairloss._impl.base import Implementation, Saved, Scoring
from fairloss._penalty import (
    add_penalty_gradient_,
    beta_softmax_,
    clear_winners,
    compute_dtype,
    finite_max,
    penalty_and_slope,
    penalty_candidates,
    penalty_weight,
    reference_class,
    runner_up_outside_margin,
    smooth_max_terms_,
    winner_margin,
)
from fairloss._validation import FairLossOptions

__all__ = [
    "IMPLEMENTATION",
    "penalty_statistics",
    "recompute_penalty_gradient_",
    "smooth_max_options",
]


class ElementStatistics(NamedTuple):
    """What forward keeps for backward: per-element numbers, and the unsaturated rows.

    ``penalty_slope`` is ``w[r] * lambda * s / 2 * sech(s * negative_gap / 2) ** 2`` on the
    elements whose penalty gradient is not exactly zero in the compute dtype, and 0 elsewhere;
    ``beta_normalizer`` holds ``sum_j exp(beta * (z_j - max))`` (floored terms) on the elements
    whose SmoothMax forward computed (0 elsewhere): ``softmax(beta * z)`` is those terms over it.

    When forward keeps them, ``active_index`` lists the flat positions of the elements with a
    penalty gradient and ``active_beta_softmax`` their rows of ``softmax(beta * z)``, so backward
    reads no logits for the penalty. They hold the unsaturated elements only: nothing in the
    usual case, at worst (every element unsaturated) as much as cross-entropy's saved
    log-softmax. Without them (compact statistics) backward recomputes those rows.

    ``log_probs``, kept for ``(M, C, L)`` logits outside compact statistics, is forward's
    ``log_softmax``: backward's softmax is then one ``exp`` instead of a softmax over a strided
    class dimension (1.1 ms of a 6 ms step at (16, 21, 64, 64) on CPU), at the memory
    cross-entropy itself keeps. ``(M, C)`` rows recompute it instead: there the saved memory is
    the point (a third of cross-entropy's peak at (4096, 32000)).
    """

    reference: Tensor
    valid: Optional[Tensor]  # None: every element counts
    softmax_scale: Tensor  # cross-entropy's coefficient of softmax(z), the z-loss slope included
    reference_amount: Tensor  # cross-entropy's (1 - eps) w_r
    beta_normalizer: Tensor
    penalty_slope: Tensor
    active_index: Optional[Tensor] = None
    active_beta_softmax: Optional[Tensor] = None
    log_probs: Optional[Tensor] = None


def forward(
    logits: Tensor, scoring: Scoring, compact: bool, workspace: Optional[Tensor]
) -> tuple[Tensor, Saved]:
    """Element losses and :class:`ElementStatistics` (without the kept rows when ``compact``)."""
    loss, statistics, log_probs = _forward(
        logits,
        scoring,
        keep_log_probs=not compact and logits.dim() == 3,
        keep_active_rows=not compact,
        workspace=workspace,
    )
    if not compact and logits.dim() == 3:
        statistics = statistics._replace(log_probs=log_probs)
    return loss, tuple(statistics)


def forward_backward(
    logits: Tensor, scoring: Scoring, workspace: Optional[Tensor]
) -> tuple[Tensor, Saved, Tensor]:
    """Element losses, compact statistics, and the gradient for an upstream gradient of ones.

    Forward's log-softmax buffer (``workspace`` when given) becomes backward's softmax in place,
    saving a pass and an allocation; the few rows of ``softmax(beta * z)`` the penalty's
    gradient needs are recomputed a block at a time rather than kept, to allocate little.
    """
    loss, statistics, log_probs = _forward(
        logits, scoring, keep_log_probs=True, keep_active_rows=False, workspace=workspace
    )
    assert log_probs is not None  # kept on request
    grad = _backward(logits, scoring, statistics, torch.ones_like(loss), log_probs.exp_())
    return loss, tuple(statistics), grad


def backward(
    logits: Tensor, scoring: Scoring, saved: Saved, grad_loss: Tensor, workspace: Optional[Tensor]
) -> Tensor:
    """Gradient of ``sum(grad_loss * loss)`` with respect to the logits (in ``workspace``)."""
    statistics = ElementStatistics(*saved)  # type: ignore[arg-type]
    if statistics.log_probs is not None:
        probs = torch.exp(statistics.log_probs, out=workspace)
    else:
        probs = torch.softmax(logits.to(compute_dtype(logits.dtype)), dim=1, out=workspace)
    return _backward(logits, scoring, statistics, grad_loss, probs)


def _forward(
    logits: Tensor,
    scoring: Scoring,
    *,
    keep_log_probs: bool,
    keep_active_rows: bool,
    workspace: Optional[Tensor],
) -> tuple[Tensor, ElementStatistics, Optional[Tensor]]:
    """Element losses, the statistics backward needs, and maybe the log-softmax buffer."""
    target, weight, options = scoring
    logits = logits.to(compute_dtype(logits.dtype))
    log_probs = torch.log_softmax(logits, dim=1, out=workspace)
    reference, valid = reference_class(target, options, clamp=True)
    reference_log_prob = log_probs.gather(1, reference.unsqueeze(1)).squeeze(1)
    class_weight = penalty_weight(weight, reference, valid, logits.dtype)
    kept_valid = None if options.probability_target or bool(valid.all()) else valid
    mass, target_shift = class_weight, class_weight * reference_log_prob
    if options.probability_target:
        mass, target_shift = probability_target_sums(log_probs, target, weight)
    smoothing = smoothing_sum(log_probs, weight) if options.label_smoothing > 0 else None
    reference_logit = logits.gather(1, reference.unsqueeze(1)).squeeze(1)
    num_classes = logits.shape[1]
    cross_entropy = cross_entropy_rows(
        mass, target_shift, smoothing, None, kept_valid, options, num_classes=num_classes,
        total_weight=num_classes if weight is None else weight.to(logits.dtype).sum(),
        log_sum_exp=lambda: reference_logit - reference_log_prob,  # log p_r = z_r - lse
    )  # fmt: skip
    ce = cross_entropy.loss
    kept = log_probs if keep_log_probs else None
    del log_probs
    rows = (reference, kept_valid, cross_entropy.softmax_scale, cross_entropy.reference_amount)
    if options.penalty_is_off or logits.numel() == 0:
        zeros = torch.zeros_like(ce)
        return ce, ElementStatistics(*rows, zeros, zeros), kept
    row_max = finite_max(logits.amax(dim=1))
    max_gap = row_max - reference_logit
    candidates = penalty_candidates(max_gap, valid, reference_log_prob, options)
    penalty, beta_normalizer, penalty_slope, active = penalty_statistics(
        logits,
        reference,
        class_weight,
        row_max,
        max_gap,
        candidates,
        smooth_max_options(options),
        keep_active_rows=keep_active_rows,
    )
    loss = ce.addcmul(class_weight, penalty)
    statistics = ElementStatistics(*rows, beta_normalizer, penalty_slope, *active)
    return loss, statistics, kept


def penalty_statistics(
    logits: Tensor,
    reference: Tensor,
    class_weight: Tensor,
    row_max: Tensor,
    max_gap: Tensor,
    candidates: Tensor,
    smooth_max: tuple[float, float, float],
    *,
    keep_active_rows: bool = False,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """The penalty ``lambda * tanh(h)`` per element, and what its gradient needs.

    Takes the logits with per-element numbers the caller computed alongside cross-entropy: the
    row maximum, ``max_gap = max - z[r]`` and :func:`~fairloss._penalty.penalty_candidates`
    (which a caller may already have narrowed with :func:`~fairloss._penalty.clear_winners`),
    and ``smooth_max``, the options ``(smooth_max_beta, scaling_factor, penalty_scale)``.
    Returns ``(penalty, beta_normalizer, penalty_slope, active)`` as described in
    :class:`ElementStatistics`, with ``active`` = ``(active_index, active_beta_softmax)`` when
    ``keep_active_rows`` (else empty); the penalty is not yet multiplied by the class weight.
    SmoothMax is computed on the candidates only; the other elements get ``lambda`` (saturated)
    or 0 (clear winners).
    """
    beta, scale, lam = smooth_max
    penalty = max_gap.sign().mul_(lam)  # saturated elements: tanh = 1; winners (gap 0): 0
    beta_normalizer = torch.zeros_like(penalty)
    penalty_slope = torch.zeros_like(penalty)
    flat = candidates.reshape(-1).nonzero().squeeze(1)
    if flat.numel() > candidates.numel() // 4:
        # Mostly winners to check (trained logits): read the logits in place rather than
        # gathering most of them, and drop the clear winners.
        narrowed = candidates & ~clear_winners(logits, row_max, max_gap, beta)
        flat = narrowed.reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return penalty, beta_normalizer, penalty_slope, ()

    margin = winner_margin(logits.dtype, beta)
    active_index, active_rows = [], []
    for block in flat.split(_rows_per_block(logits)):
        rows = logits.movedim(1, -1)[_element_index(block, logits)]  # (k, C), a copy
        rows_max = row_max.reshape(-1)[block]
        rows_gap = max_gap.reshape(-1)[block]
        clear = (rows_gap == 0) & runner_up_outside_margin(rows, rows_max, margin)
        terms = smooth_max_terms_(rows, rows_max, beta)
        term_sum = terms.sum(dim=1)
        rows_penalty, slope = penalty_and_slope(
            rows_gap, term_sum, class_weight.reshape(-1)[block], beta, scale, lam
        )
        slope.masked_fill_(clear, 0.0)
        penalty.view(-1).index_copy_(0, block, rows_penalty)
        penalty_slope.view(-1).index_copy_(0, block, slope)
        beta_normalizer.view(-1).index_copy_(0, block, term_sum)
        if keep_active_rows:
            active = (slope != 0).nonzero().squeeze(1)  # clear winners out: no gradient to add
            active_index.append(block[active])
            active_rows.append(beta_softmax_(terms[active], term_sum[active]))
    if not keep_active_rows:
        return penalty, beta_normalizer, penalty_slope, ()
    return (
        penalty,
        beta_normalizer,
        penalty_slope,
        (torch.cat(active_index), torch.cat(active_rows)),
    )


def _rows_per_block(logits: Tensor) -> int:
    """Rows of ``(k, C)`` copies the sparse path makes at a time: :data:`ROW_BLOCK` numbers.

    Copies of every candidate row at once, of a size that changes from call to call, fragmented
    glibc's heap in the chunked linear head: its peak memory varied by up to 30% between runs.
    """
    return max(1, ROW_BLOCK // max(1, logits.shape[1]))


#: Numbers of logits the sparse path copies at a time (1 MB in float32).
ROW_BLOCK = 2**18


def smooth_max_options(options: FairLossOptions) -> tuple[float, float, float]:
    """``(smooth_max_beta, scaling_factor, penalty_scale)``: :func:`penalty_statistics`'s."""
    assert options.penalty_scale is not None  # resolved for single-device logits
    return options.smooth_max_beta, options.scaling_factor, options.penalty_scale


def _backward(
    logits: Tensor,
    scoring: Scoring,
    statistics: ElementStatistics,
    grad_loss: Tensor,
    probs: Tensor,
) -> Tensor:
    """Cross-entropy's gradient plus the penalty's, built in ``probs``, the logits' softmax.

    On the elements with a nonzero penalty slope the penalty adds
    ``grad_loss * penalty_slope * (softmax(beta * z) - onehot(r))``.
    """
    target, weight, options = scoring
    logits = logits.to(compute_dtype(logits.dtype))
    grad_loss = grad_loss.to(logits.dtype)
    if statistics.valid is not None:
        grad_loss = torch.where(statistics.valid, grad_loss, 0.0)
    rows = CrossEntropyRows(probs, statistics.softmax_scale, statistics.reference_amount)
    grad = cross_entropy_gradient_(
        probs, rows, grad_loss, statistics.reference, target, weight, options,
        num_classes=logits.shape[1],
    )  # fmt: skip
    penalty_gradient_scale = grad_loss * statistics.penalty_slope
    if statistics.active_index is None:
        recompute_penalty_gradient_(
            grad,
            logits,
            statistics.reference,
            statistics.beta_normalizer,
            penalty_gradient_scale,
            options.smooth_max_beta,
        )
    else:
        assert statistics.active_beta_softmax is not None  # kept together
        _add_rows_penalty_gradient_(
            grad,
            statistics.reference,
            penalty_gradient_scale,
            statistics.active_index,
            statistics.active_beta_softmax,
        )
    return grad


def recompute_penalty_gradient_(
    grad: Tensor,
    logits: Tensor,
    reference: Tensor,
    beta_normalizer: Tensor,
    penalty_gradient_scale: Tensor,
    smooth_max_beta: float,
) -> None:
    """Add the penalty's gradient ``c * (softmax(beta * z) - onehot(r))`` to ``grad`` in place.

    ``c`` = ``penalty_gradient_scale`` per element; only elements with ``c != 0`` are touched,
    and ``softmax(beta * z)`` is recomputed on those rows only, exactly as forward computed it:
    floored ``exp(beta * (z - max))`` terms over ``beta_normalizer``.
    """
    flat = penalty_gradient_scale.reshape(-1).nonzero().squeeze(1)
    for block in flat.split(_rows_per_block(logits)):
        rows = logits.movedim(1, -1)[_element_index(block, logits)]  # a copy
        terms = smooth_max_terms_(rows, rows.amax(dim=1), smooth_max_beta)
        beta_softmax = beta_softmax_(terms, beta_normalizer.reshape(-1)[block])
        _add_rows_penalty_gradient_(grad, reference, penalty_gradient_scale, block, beta_softmax)


def _element_index(flat: Tensor, logits: Tensor) -> tuple[Tensor, ...]:
    """Index of flat element positions into ``logits.movedim(1, -1)``: ``(row,)``/``(row, l)``."""
    if logits.dim() == 2:
        return (flat,)
    positions = logits.shape[2]
    return (flat // positions, flat % positions)


def _add_rows_penalty_gradient_(
    grad: Tensor,
    reference: Tensor,
    penalty_gradient_scale: Tensor,
    flat: Tensor,
    beta_softmax: Tensor,
) -> None:
    """Add ``c * (softmax(beta * z) - onehot(r))`` at the elements ``flat`` of ``grad``."""
    grad_class_last = grad.movedim(1, -1)
    rows_per_block = _rows_per_block(grad)
    for block, block_beta_softmax in zip(
        flat.split(rows_per_block), beta_softmax.split(rows_per_block)
    ):
        slope = penalty_gradient_scale.reshape(-1)[block]
        # The elements are distinct: gather, add, put back (cheaper than an accumulating put).
        index = _element_index(block, grad)
        rows = grad_class_last[index]
        add_penalty_gradient_(rows, block_beta_softmax, slope, reference.reshape(-1)[block], slope)
        grad_class_last[index] = rows


IMPLEMENTATION = Implementation(
    name="sparse",
    synchronizes=True,
    forward=forward,
    backward=backward,
    fused_forward_backward=forward_backward,
    uses_workspace=True,
)
