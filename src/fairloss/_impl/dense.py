"""The dense implementation, in stages that the vocab-parallel loss shares.

Every step runs on every logit, with no data-dependent shape and no host synchronisation: it is
what runs off the CPU (and on ``device="meta"``), and under ``torch.compile`` for few classes
(:func:`fairloss._impl.select` says when). The loss goes through four stages, each a function
of this module; sharded by class (:mod:`fairloss._impl.vocab_parallel`) a collective sits
between two of them, and the stages are the same:

1. :func:`local_max`: the row maximum of the (local) logits (``all_reduce(MAX)`` when sharded);
2. :func:`local_sums`: per row, sums over the (local) classes relative to that maximum,
   :class:`LocalSums` (``all_reduce(SUM)`` when sharded);
3. :func:`finish`: per-row algebra, the element losses and the :class:`RowStatistics`
   backward needs (nothing logits-sized is saved);
4. :func:`gradient`: the gradient of the (local) logits from those statistics, recomputing the
   softmax and SmoothMax's terms (no communication).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

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
    along_classes,
    compute_dtype,
    dense_smooth_max_terms,
    finite_max,
    penalty_and_slope,
    penalty_weight,
    reference_class,
    smooth_max_normalizer,
)
from fairloss._validation import FairLossOptions

__all__ = [
    "IMPLEMENTATION",
    "LocalSums",
    "RowStatistics",
    "finish",
    "gradient",
    "local_max",
    "local_sums",
    "single_device_stages",
]

Number = Union[int, float, Tensor]


class LocalSums(NamedTuple):
    """Per-row sums over the classes a tensor holds, relative to the row maximum ``M``.

    ``normalizer`` is ``sum exp(z - M)``; ``reference_shift`` is ``z_r - M`` where the tensor
    holds the reference class ``r`` (else 0); ``class_weight`` its weight ``w_r`` (None without
    class weights); ``beta_normalizer`` SmoothMax's ``sum exp(beta (z - M))`` (None without a
    penalty); ``target_mass`` and ``target_shift`` the probability targets' ``m`` and ``d``, and
    ``smoothing`` label smoothing's ``e`` (see :mod:`fairloss._cross_entropy`; None where not
    needed). Each is a sum over classes: summed over the slices of sharded logits, they are the
    whole vocabulary's.
    """

    normalizer: Tensor
    reference_shift: Tensor
    class_weight: Optional[Tensor] = None
    beta_normalizer: Optional[Tensor] = None
    target_mass: Optional[Tensor] = None
    target_shift: Optional[Tensor] = None
    smoothing: Optional[Tensor] = None

    def stack(self) -> Tensor:
        """The sums present, as one ``(k, *element shape)`` tensor (one collective's message)."""
        return torch.stack([value for value in self if value is not None])

    def like(self, stacked: Tensor) -> LocalSums:
        """The sums of ``stacked`` (as :meth:`stack` made it), in this one's fields."""
        values = iter(stacked.unbind(0))
        return LocalSums._make(None if value is None else next(values) for value in self)


class RowStatistics(NamedTuple):
    """What :func:`gradient` needs per element (element-shaped tensors, nothing logits-sized)."""

    row_max: Tensor
    log_normalizer: Tensor
    valid: Tensor
    reference: Tensor  # the reference class's index in the logits at hand, 0 where not held
    softmax_scale: Tensor  # multiplies softmax(z): cross-entropy's a, plus the z-loss slope
    reference_amount: Tensor  # cross-entropy's (1 - eps) w_r where the reference is held, else 0
    penalty_slope: Tensor  # w_r lambda s / 2 sech(h)**2 where the reference is held, else 0
    beta_softmax_scale: Tensor  # the slope over SmoothMax's normalizer (0 without a penalty)


def local_max(logits: Tensor) -> Tensor:
    """Stage 1: the maximum over dimension 1 (``-inf`` for a slice without classes)."""
    if logits.shape[1] == 0:
        return logits.new_full(logits.shape[:1] + logits.shape[2:], -torch.inf)
    return logits.amax(dim=1)


def local_sums(
    logits: Tensor,
    row_max: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    reference: Tensor,
    held: Tensor,
    options: FairLossOptions,
    *,
    smooth_max: bool = True,
) -> LocalSums:
    """Stage 2: :class:`LocalSums` of ``logits`` (classes along dimension 1).

    ``row_max`` is the finite maximum of the whole row (:func:`fairloss._penalty.finite_max`);
    ``reference`` indexes the reference class within ``logits`` where ``held`` (0 elsewhere);
    ``weight`` is the class weights of these classes. ``smooth_max=False`` leaves SmoothMax's
    normalizer out (and so the penalty, to a caller that computes it otherwise).
    """
    penalty = smooth_max and not options.penalty_is_off
    if logits.shape[1] == 0:  # a slice without classes adds 0 to each sum it takes part in
        zero = row_max.new_zeros(row_max.shape)
        present = (
            weight is not None, penalty, options.probability_target,
            options.probability_target, options.label_smoothing > 0,
        )  # fmt: skip
        return LocalSums(zero, zero, *(zero if needed else None for needed in present))
    shifted = logits - row_max.unsqueeze(1)
    held_shift = shifted.gather(1, reference.unsqueeze(1)).squeeze(1)
    class_weight = None
    if weight is not None:
        class_weight = penalty_weight(weight, reference, held, shifted.dtype)
    sums = LocalSums(
        normalizer=shifted.exp().sum(dim=1),
        reference_shift=torch.where(held, held_shift, 0.0),
        class_weight=class_weight,
    )
    if penalty:
        sums = sums._replace(
            beta_normalizer=smooth_max_normalizer(shifted, options.smooth_max_beta)
        )
    if options.probability_target:
        mass, target_shift = probability_target_sums(shifted, target, weight)
        sums = sums._replace(target_mass=mass, target_shift=target_shift)
    if options.label_smoothing > 0:
        sums = sums._replace(smoothing=smoothing_sum(shifted, weight))
    return sums


def finish(
    sums: LocalSums,
    row_max: Tensor,
    valid: Tensor,
    reference: Tensor,
    held: Tensor,
    options: FairLossOptions,
    *,
    num_classes: Number,
    total_weight: Number,
) -> tuple[Tensor, Tensor, RowStatistics]:
    """Stage 3: element losses, target weights (``"mean"``'s terms) and :class:`RowStatistics`.

    ``sums`` are the whole row's; ``held`` says where the logits at hand hold the reference
    class (``valid`` on one device). Cross-entropy comes from
    :func:`fairloss._cross_entropy.cross_entropy_rows`, the penalty from
    :func:`fairloss._penalty.penalty_and_slope` (``lambda = 1 / C`` on the device when
    ``options.penalty_scale`` is None), the z-loss from ``lse = M + log S``.
    """
    dtype = row_max.dtype
    class_weight = valid.to(dtype) if sums.class_weight is None else sums.class_weight
    # S >= 1 where the maximum is finite; a row of -inf (ignored) gets log S = 0, not -inf.
    log_normalizer = sums.normalizer.clamp_min(1.0).log()
    mass, target_shift = class_weight, class_weight * sums.reference_shift
    if options.probability_target:
        assert sums.target_mass is not None and sums.target_shift is not None
        mass, target_shift = sums.target_mass, sums.target_shift
    cross_entropy: CrossEntropyRows = cross_entropy_rows(
        mass, target_shift, sums.smoothing, log_normalizer, valid, options,
        num_classes=num_classes, total_weight=total_weight,
        log_sum_exp=lambda: row_max + log_normalizer,
    )  # fmt: skip
    loss = cross_entropy.loss
    slope = beta_softmax_scale = torch.zeros_like(loss)
    if sums.beta_normalizer is not None:
        penalty_scale = options.penalty_scale
        beta_normalizer = sums.beta_normalizer.clamp_min(1.0)  # as S
        penalty, slope = penalty_and_slope(
            -sums.reference_shift, beta_normalizer, class_weight, options.smooth_max_beta,
            options.scaling_factor, 1.0 / num_classes if penalty_scale is None else penalty_scale,
        )  # fmt: skip
        loss = loss + class_weight * penalty
        beta_softmax_scale = slope / beta_normalizer
    statistics = RowStatistics(
        row_max=row_max,
        log_normalizer=log_normalizer,
        valid=valid,
        reference=reference,
        softmax_scale=cross_entropy.softmax_scale,
        reference_amount=cross_entropy.reference_amount * held,
        penalty_slope=slope * held,
        beta_softmax_scale=beta_softmax_scale,
    )
    return loss, class_weight, statistics


def gradient(
    logits: Tensor,
    statistics: RowStatistics,
    grad_loss: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
    *,
    num_classes: Number,
    penalty: bool = True,
) -> Tensor:
    """Stage 4: the gradient of ``sum(grad_loss * loss)`` with respect to ``logits``.

    Cross-entropy's part from :func:`fairloss._cross_entropy.cross_entropy_gradient_` over the
    recomputed softmax, the penalty's (unless ``penalty=False``) from
    :func:`fairloss._penalty.add_penalty_gradient_`. The penalty's two coefficients are kept
    finite: with ``s`` near the dtype's largest number the slope overflows, and at a clear
    winner ``inf - inf`` would be NaN instead of 0. At the reference class the terms are
    scattered, or subtracted through a one-hot mask under ``torch.compile``, which fuses a mask
    into its pass over the logits but runs a scatter as a kernel of its own.
    """
    kept_grad = torch.where(statistics.valid, grad_loss.to(logits.dtype), 0.0)
    shifted = logits - statistics.row_max.unsqueeze(1)
    at_reference = None
    if torch.compiler.is_compiling():
        classes = torch.arange(logits.shape[1], device=logits.device)
        at_reference = along_classes(classes, logits.dim()) == statistics.reference.unsqueeze(1)
    beta_terms = None
    if penalty and not options.penalty_is_off:
        beta_terms = dense_smooth_max_terms(shifted, options.smooth_max_beta)
    probs = shifted.sub_(statistics.log_normalizer.unsqueeze(1)).exp_()
    rows = CrossEntropyRows(probs, statistics.softmax_scale, statistics.reference_amount)
    grad = cross_entropy_gradient_(
        probs, rows, kept_grad, statistics.reference, target, weight, options,
        num_classes=num_classes, at_reference=at_reference,
    )  # fmt: skip
    if beta_terms is not None:
        largest = torch.finfo(grad.dtype).max
        term_scale = (kept_grad * statistics.beta_softmax_scale).clamp(-largest, largest)
        amount = (kept_grad * statistics.penalty_slope).clamp(-largest, largest)
        add_penalty_gradient_(
            grad, beta_terms, term_scale, statistics.reference, amount, at_reference
        )
    return grad


def single_device_stages(
    values: Tensor, scoring: Scoring, *, smooth_max: bool = True
) -> tuple[Tensor, Tensor, RowStatistics, LocalSums]:
    """Stages 1 to 3 on logits held whole: element losses, target weights, statistics, sums."""
    target, weight, options = scoring
    reference, valid = reference_class(target, options)
    row_max = finite_max(local_max(values))
    sums = local_sums(
        values, row_max, target, weight, reference, valid, options, smooth_max=smooth_max
    )
    num_classes = values.shape[1]
    total_weight = num_classes if weight is None else weight.to(values.dtype).sum()
    loss, class_weight, statistics = finish(
        sums, row_max, valid, reference, valid, options,
        num_classes=num_classes, total_weight=total_weight,
    )  # fmt: skip
    return loss, class_weight, statistics, sums


def forward(
    logits: Tensor, scoring: Scoring, compact: bool, workspace: Optional[Tensor]
) -> tuple[Tensor, Saved]:
    """Element losses and :class:`RowStatistics` (per element whatever ``compact`` says)."""
    values = logits.to(compute_dtype(logits.dtype))
    loss, _, statistics, _ = single_device_stages(values, scoring)
    return loss, tuple(statistics)


def backward(
    logits: Tensor, scoring: Scoring, saved: Saved, grad_loss: Tensor, workspace: Optional[Tensor]
) -> Tensor:
    """Gradient of ``sum(grad_loss * loss)``: :func:`gradient` on the whole logits."""
    statistics = RowStatistics(*saved)  # type: ignore[arg-type]
    values = logits.to(compute_dtype(logits.dtype))
    return gradient(values, statistics, grad_loss, *scoring, num_classes=values.shape[1])


IMPLEMENTATION = Implementation(
    name="dense", synchronizes=False, forward=forward, backward=backward
)
