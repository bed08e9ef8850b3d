r"""Vocab-parallel FairLoss on ``torch.distributed``: logits sharded by class over a process group.

Tensor parallelism splits a large output layer by vocabulary: rank :math:`k` of a group holds
the logits of a contiguous slice of the classes, :math:`z_{n, c}` for
:math:`c \in [o_k, o_k + V_k)`, in rank order (slices may differ in size). FairLoss needs, per
row, quantities of the whole vocabulary: the maximum :math:`M`, cross-entropy's normalizer
:math:`\sum_c e^{z_c - M}`, SmoothMax's normalizer :math:`\sum_c e^{\beta (z_c - M)}` and the
target logit. Each is a maximum or a sum over the slices, so two collective rounds give every
rank the loss of the whole problem:

1. ``all_reduce(MAX)`` of the per-row local maxima (it also carries each rank's slice size,
   so uneven slices cost no extra round);
2. one ``all_reduce(SUM)`` of the per-row local sums, stacked into one ``(k, N)`` tensor:
   :math:`\sum e^{z_c - M}`, :math:`\sum e^{\beta (z_c - M)}` (terms floored as on one device),
   :math:`z_y - M` (from the rank that owns :math:`y`, 0 elsewhere), and as options require the
   target's class weight and, for label smoothing, :math:`\sum_c w_c (z_c - M)`.

The gradient of a rank's slice needs nothing more: it is
:math:`g\,\big(a\,\operatorname{softmax}(z)_c - b\,[c = y] - \tfrac{\varepsilon}{V} w_c\big)
+ g\,\sigma\,\big(\operatorname{softmax}(\beta z)_c - [c = y]\big)`, with per-row numbers
:math:`a, b, \sigma` known after round 2, so the logits version communicates nothing in
backward. The linear version (:func:`vocab_parallel_linear_fair_loss`) sums the input's gradient
over the ranks once, at the end of backward.

The penalty's formula comes from :mod:`fairloss._penalty`, the z-loss's from
:mod:`fairloss._cross_entropy`, and the options are checked and resolved by
:mod:`fairloss._validation`, as for :func:`fairloss.fair_loss`; on every rank the result equals
the single-device :func:`fairloss.fair_loss` of the gathered logits up to rounding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from fairloss import _validation as validation
from fairloss._cross_entropy import z_loss_and_slope
from fairloss._impl import IMPLEMENTATION_NAMES
from fairloss._penalty import (
    FairLossOptions,
    compute_dtype,
    dense_smooth_max_terms,
    penalty_and_slope,
    penalty_weight,
    reference_class,
    smooth_max_normalizer,
)
from fairloss.linear import default_chunk_size

__all__ = [
    "fair_loss_on_dtensor",
    "vocab_parallel_fair_loss",
    "vocab_parallel_linear_fair_loss",
]


# --------------------------------------------------------------------------------------------
# Settings and the vocabulary partition
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The non-tensor arguments of one vocab-parallel call.

    ``options.penalty_scale`` holds the user's :math:`\\lambda`, or 1 when ``penalty_scale`` was
    None (``default_penalty_scale``): then the penalty and its slope are divided by :math:`V` as
    a tensor, since :math:`V` arrives with round 1, on the logits' device, and reading it on the
    host would synchronise.
    """

    options: FairLossOptions
    default_penalty_scale: bool
    z_loss_scale: float
    group: Optional[dist.ProcessGroup]
    local_num_classes: int
    chunk_size: int = 0  # the linear version only


class _Vocabulary(NamedTuple):
    """Where this rank's slice lies, as 0-d tensors on the logits' device (from round 1)."""

    offset: Tensor  # the first global class of this rank's slice (long)
    num_classes: Tensor  # V, the whole vocabulary (compute dtype)


class _RowStatistics(NamedTuple):
    """What backward needs per row, for the whole vocabulary (after round 2)."""

    row_max: Tensor
    log_normalizer: Tensor
    softmax_scale: Tensor  # multiplies softmax(z): CE's (1 - eps) w_y + eps W / V, plus z-loss
    reference_scale: Tensor  # subtracted at the target: CE's (1 - eps) w_y
    penalty_slope: Tensor  # w_y * lambda * s / 2 * sech(h)**2 (0 when the penalty is off)
    beta_softmax_scale: Tensor  # penalty_slope / sum exp(beta (z - M))
    smoothing_scale: Tensor  # 0-d: eps / V, times w_c, subtracted from every logit's gradient
    local_reference: Tensor  # the target's index in this rank's slice; -1 where not owned


def _check_group(group: Optional[dist.ProcessGroup]) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            validation.expected(
                "group",
                "a process group of an initialized torch.distributed (call "
                "torch.distributed.init_process_group first, or torchrun)",
                "an uninitialized torch.distributed",
            )
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            validation.expected("group", "None or a ProcessGroup", type(group).__name__)
        )


def _check_class_indices(target: Tensor, name: str, shape: tuple[int, ...]) -> None:
    if (
        not isinstance(target, Tensor)
        or target.is_floating_point()
        or target.is_complex()
        or target.dtype == torch.bool
    ):
        got = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(
            validation.expected(
                name,
                "global class indices, an integer tensor (class probabilities are not "
                "supported by the vocab-parallel loss)",
                got,
            )
        )
    if target.shape != shape:
        raise ValueError(
            validation.expected(name, f"a tensor of shape {shape}", f"shape {tuple(target.shape)}")
        )


def _resolve_settings(
    local_num_classes: int,
    target: Tensor,
    weight: Optional[Tensor],
    dtype: torch.dtype,
    group: Optional[dist.ProcessGroup],
    *,
    ignore_index: object,
    label_smoothing: object,
    smooth_max_beta: object,
    scaling_factor: object,
    penalty_scale: object,
    z_loss_scale: object,
    chunk_size: int = 0,
) -> _Settings:
    """Check every option before any communication, so that a bad one raises on every rank.

    The target's upper bound, which needs the whole vocabulary, is checked after round 1.
    """
    options = validation.resolve_options(
        local_num_classes,
        target,
        weight,
        compute_dtype=dtype,
        probability_target=False,
        check_targets=False,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
    )
    default_penalty_scale = penalty_scale is None
    if default_penalty_scale:
        options = dataclasses.replace(options, penalty_scale=1.0)
    return _Settings(
        options=options,
        default_penalty_scale=default_penalty_scale,
        z_loss_scale=validation.check_non_negative_finite("z_loss_scale", z_loss_scale),
        group=group,
        local_num_classes=local_num_classes,
        chunk_size=chunk_size,
    )


# --------------------------------------------------------------------------------------------
# The two rounds and the per-row algebra shared by both versions
# --------------------------------------------------------------------------------------------


def _local_row_max(logits: Tensor) -> Tensor:
    """The per-row maximum of a ``(rows, V_r)`` slice; ``-inf`` for an empty slice."""
    if logits.shape[1] == 0:
        return logits.new_full((logits.shape[0],), -math.inf)
    return logits.amax(dim=1)


def _exchange_max_and_sizes(
    local_max: Tensor, settings: _Settings, target: Tensor
) -> tuple[Tensor, _Vocabulary]:
    """Round 1: the global per-row maximum, and the vocabulary partition from the slice sizes.

    One ``all_reduce(MAX)`` of ``N + world_size`` numbers: the local maxima, then a vector that
    is 0 except for this rank's slice size at its rank. Class indices on the CPU are then
    checked against the whole vocabulary (on an accelerator that would synchronise).
    """
    group = settings.group
    world_size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    sizes = local_max.new_zeros(world_size)
    sizes[rank] = settings.local_num_classes
    message = torch.cat([local_max, sizes])
    dist.all_reduce(message, op=dist.ReduceOp.MAX, group=group)
    num_rows = local_max.shape[0]
    global_max, sizes = message[:num_rows], message[num_rows:]
    vocabulary = _Vocabulary(offset=sizes[:rank].sum().long(), num_classes=sizes.sum())
    if target.device.type == "cpu" and sizes.device.type == "cpu":
        num_classes = int(vocabulary.num_classes)
        if num_classes == 0:
            raise ValueError(
                validation.expected(
                    "local_logits", "slices of at least one class in all", "0 classes in all"
                )
            )
        validation.check_class_indices(target, num_classes, settings.options.ignore_index)
    return global_max, vocabulary


def _ownership(
    target: Tensor, vocabulary: _Vocabulary, settings: _Settings
) -> tuple[Tensor, Tensor, Tensor]:
    """``(valid, owned, local_reference)``: whether a row counts, whether this rank holds its
    target class, and that class's index in the slice (-1 where not owned)."""
    reference, valid = reference_class(target, settings.options)
    local_index = reference - vocabulary.offset
    owned = valid & (local_index >= 0) & (local_index < settings.local_num_classes)
    return valid, owned, torch.where(owned, local_index, -1)


def _local_sums(
    logits: Tensor,
    row_max: Tensor,
    owned: Tensor,
    local_reference: Tensor,
    weight: Optional[Tensor],
    settings: _Settings,
) -> list[Tensor]:
    """Round 2's per-row contributions of a ``(rows, V_r)`` slice, relative to the global max.

    In order: ``sum exp(z - M)``; ``z_y - M`` where this rank owns ``y`` (else 0); then, as the
    options need them, ``sum exp(beta (z - M))`` (floored as on one device), the target's class
    weight (owner only) and ``sum w_c (z_c - M)`` for label smoothing.
    """
    options = settings.options
    shifted = logits - row_max.unsqueeze(1)
    if logits.shape[1] == 0:  # an empty slice contributes nothing
        zeros = row_max.new_zeros(row_max.shape)
        return [zeros] * _num_statistics(settings, weight is not None)
    safe_reference = local_reference.clamp_min(0).unsqueeze(1)
    target_logit = torch.where(owned, shifted.gather(1, safe_reference).squeeze(1), 0.0)
    sums = [shifted.exp().sum(dim=1), target_logit]
    if not options.penalty_is_off:
        sums.append(smooth_max_normalizer(shifted, options.smooth_max_beta))
    if weight is not None:
        sums.append(penalty_weight(weight, local_reference.clamp_min(0), owned, logits.dtype))
    if options.label_smoothing > 0:
        weighted = shifted if weight is None else shifted * weight.to(logits.dtype)
        sums.append(weighted.sum(dim=1))
    return sums


def _num_statistics(settings: _Settings, weighted: bool) -> int:
    options = settings.options
    return 2 + (not options.penalty_is_off) + weighted + (options.label_smoothing > 0)


def _sum_over_ranks(
    sums: Tensor, weight: Optional[Tensor], settings: _Settings
) -> tuple[Tensor, Optional[Tensor]]:
    """Round 2: one ``all_reduce(SUM)`` of the stacked ``(k, N)`` sums (and ``sum w`` if needed)."""
    total_weight = None
    message = sums.reshape(-1)
    needs_total_weight = weight is not None and settings.options.label_smoothing > 0
    if needs_total_weight:
        assert weight is not None
        local_total = weight.to(sums.dtype).sum().reshape(1)
        message = torch.cat([message, local_total])
    dist.all_reduce(message, op=dist.ReduceOp.SUM, group=settings.group)
    if needs_total_weight:
        total_weight = message[-1]
        message = message[:-1]
    return message.view(sums.shape), total_weight


def _losses_and_statistics(
    row_max: Tensor,
    sums: Tensor,
    total_weight: Optional[Tensor],
    valid: Tensor,
    local_reference: Tensor,
    vocabulary: _Vocabulary,
    settings: _Settings,
    weighted: bool,
) -> tuple[Tensor, Tensor, _RowStatistics]:
    """Element losses, the target weights (the ``"mean"`` divisor's terms) and backward's rows.

    Cross-entropy is ``w_y (log S - (z_y - M))``, with smoothing mixed with
    ``(W log S - sum_c w_c (z_c - M)) / V``; the penalty is :func:`penalty_and_slope`'s, the
    z-loss :func:`z_loss_and_slope`'s of ``lse = M + log S``, as on one device.
    """
    options = settings.options
    columns = iter(sums.unbind(0))
    log_normalizer = next(columns).log()
    max_gap = -next(columns)
    beta_normalizer = None if options.penalty_is_off else next(columns)
    dtype = row_max.dtype
    class_weight = next(columns) if weighted else valid.to(dtype)
    num_classes = vocabulary.num_classes.to(dtype)

    eps = options.label_smoothing
    loss = torch.where(valid, class_weight * (log_normalizer + max_gap), 0.0)
    softmax_scale = (1 - eps) * class_weight
    smoothing_scale = torch.zeros((), dtype=dtype, device=row_max.device)
    if eps > 0:
        weighted_shift_sum = next(columns)
        all_weight = num_classes if total_weight is None else total_weight
        uniform = (all_weight * log_normalizer - weighted_shift_sum) / num_classes
        loss = (1 - eps) * loss + eps * torch.where(valid, uniform, 0.0)
        softmax_scale = softmax_scale + eps * all_weight / num_classes * valid
        smoothing_scale = eps / num_classes
    reference_scale = (1 - eps) * class_weight

    slope = torch.zeros_like(loss)
    beta_softmax_scale = torch.zeros_like(loss)
    if beta_normalizer is not None:
        penalty, slope = penalty_and_slope(
            max_gap, beta_normalizer, class_weight, options.smooth_max_beta,
            options.scaling_factor, options.penalty_scale,
        )  # fmt: skip
        if settings.default_penalty_scale:  # lambda = 1 / V, known on the device only
            penalty, slope = penalty / num_classes, slope / num_classes
        loss = loss + class_weight * penalty
        beta_softmax_scale = slope / beta_normalizer
    if settings.z_loss_scale > 0:
        z_loss, z_slope = z_loss_and_slope(row_max + log_normalizer, settings.z_loss_scale)
        loss = loss + torch.where(valid, z_loss, 0.0)
        softmax_scale = softmax_scale + torch.where(valid, z_slope, 0.0)
    statistics = _RowStatistics(
        row_max=row_max,
        log_normalizer=log_normalizer,
        softmax_scale=softmax_scale,
        reference_scale=reference_scale,
        penalty_slope=slope,
        beta_softmax_scale=beta_softmax_scale,
        smoothing_scale=smoothing_scale,
        local_reference=local_reference,
    )
    return loss, class_weight, statistics


def _local_gradient(
    logits: Tensor,
    statistics: _RowStatistics,
    grad_loss: Tensor,
    weight: Optional[Tensor],
    settings: _Settings,
) -> Tensor:
    """The gradient of ``sum(grad_loss * loss)`` with respect to this rank's ``(rows, V_r)``.

    ``g (a softmax(z) - b onehot(y) - eps / V * w) + g sigma (softmax(beta z) - onehot(y))``:
    every factor is per row and already global, so no communication. ``grad_loss`` is 0 on
    ignored rows (their statistics are 0 as well). The penalty's two coefficients are kept
    finite, as in the dense implementation: with ``s`` near the dtype's largest number the slope
    overflows, and at a clear winner ``inf - inf`` would be NaN instead of 0.
    """
    options = settings.options
    shifted = logits - statistics.row_max.unsqueeze(1)
    rows = grad_loss.unsqueeze(1)
    grad = (shifted - statistics.log_normalizer.unsqueeze(1)).exp_()
    grad.mul_(rows * statistics.softmax_scale.unsqueeze(1))
    if options.label_smoothing > 0:
        per_class = torch.ones_like(grad[:1]) if weight is None else weight.to(grad.dtype)
        grad.sub_(rows * statistics.smoothing_scale * per_class)
    at_reference = torch.arange(
        logits.shape[1], device=logits.device
    ) == statistics.local_reference.unsqueeze(1)
    reference_amount = grad_loss * statistics.reference_scale
    if not options.penalty_is_off:
        largest = torch.finfo(grad.dtype).max
        beta_scale = (grad_loss * statistics.beta_softmax_scale).clamp(-largest, largest)
        grad.add_(dense_smooth_max_terms(shifted, options.smooth_max_beta) * beta_scale[:, None])
        penalty_amount = (grad_loss * statistics.penalty_slope).clamp(-largest, largest)
        grad.sub_(at_reference * penalty_amount.unsqueeze(1))
    return grad.sub_(at_reference * reference_amount.unsqueeze(1))


def _reduce(
    element_loss: Tensor, class_weight: Tensor, reduction: str, output_dtype: torch.dtype
) -> Tensor:
    """``"none"``, ``"sum"``, or ``"mean"``: the sum over the total target weight (as CE)."""
    if reduction == "none":
        return element_loss.to(output_dtype)
    total = element_loss.sum()
    if reduction == "mean":
        total = total / class_weight.sum()
    return total.to(output_dtype)


# --------------------------------------------------------------------------------------------
# The logits version
# --------------------------------------------------------------------------------------------


class _VocabParallelFairLossFunction(torch.autograd.Function):
    """Element losses of ``(N, V_r)`` local logits; round 2 in forward, nothing in backward.

    Outputs the element losses and the target weights (non-differentiable), both in the compute
    dtype. Backward cannot itself be differentiated (the sums came through a collective).
    """

    @staticmethod
    def forward(
        ctx: Any,
        local_logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        row_max: Tensor,
        vocabulary: _Vocabulary,
        settings: _Settings,
    ) -> tuple[Tensor, Tensor]:
        values = local_logits.to(row_max.dtype)
        valid, owned, local_reference = _ownership(target, vocabulary, settings)
        sums = torch.stack(_local_sums(values, row_max, owned, local_reference, weight, settings))
        sums, total_weight = _sum_over_ranks(sums, weight, settings)
        loss, class_weight, statistics = _losses_and_statistics(
            row_max, sums, total_weight, valid, local_reference, vocabulary, settings,
            weight is not None,
        )  # fmt: skip
        ctx.settings = settings
        ctx.save_for_backward(local_logits, weight, valid, *statistics)
        ctx.mark_non_differentiable(class_weight)
        return loss, class_weight

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_loss: Tensor, grad_class_weight: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        local_logits, weight, valid, *saved = ctx.saved_tensors
        statistics = _RowStatistics(*saved)
        settings: _Settings = ctx.settings
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if local_logits.shape[1] == 0:  # a rank without classes
            return torch.zeros_like(local_logits), None, None, None, None, None
        values = local_logits.to(statistics.row_max.dtype)
        kept_grad = torch.where(valid, grad_loss.to(values.dtype), 0.0)
        grad = _local_gradient(values, statistics, kept_grad, weight, settings)
        return grad.to(local_logits.dtype), None, None, None, None, None


def vocab_parallel_fair_loss(
    local_logits: Tensor,
    target: Tensor,
    *,
    group: Optional[dist.ProcessGroup] = None,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    smooth_max_beta: float = 1000.0,
    scaling_factor: float = 1000.0,
    penalty_scale: Optional[float] = None,
    z_loss_scale: float = 0.0,
) -> Tensor:
    r"""FairLoss of logits sharded by class over ``group``: every rank gets the whole loss.

    Rank :math:`k` of ``group`` passes ``local_logits`` :math:`z_{:, o_k : o_k + V_k}`, its
    contiguous slice of the vocabulary, with the slices in rank order (:math:`o_k = \sum_{j<k}
    V_j`; sizes may differ, even be 0). The loss is :func:`fairloss.fair_loss`'s for the whole
    vocabulary of :math:`V = \sum_k V_k` classes,

    .. math::
        \ell_n = \operatorname{CE}(z_n, y_n) + w_{y_n}\,\lambda\,\tanh\!\Big(\tfrac{s}{2}
            \big(\operatorname{SmoothMax}_\beta(z_n) - z_{n, y_n}\big)\Big)
            + \zeta\,\big(\log\textstyle\sum_c e^{z_{n,c}}\big)^2,

    with :math:`\lambda = 1/V` by default, reduced as cross-entropy (``"mean"`` divides by the
    total target weight of the non-ignored rows). Every rank returns the same value, and the
    gradient of ``local_logits`` is its slice of the single-device gradient.

    Communication: forward makes two collective calls on ``group`` (``all_reduce(MAX)`` of
    :math:`N + \text{world size}` numbers, then one ``all_reduce(SUM)`` of :math:`kN` numbers with
    :math:`k` = 3 by default, up to 5 with ``weight`` and ``label_smoothing``); backward makes
    none. Every rank of the group must call it with the same ``target`` and options. Nothing
    synchronises with the host, except the target check on CPU tensors. There is no double
    backward.

    Equivalent to (up to rounding, with the slices gathered in rank order)::

        full_logits = torch.cat(all_gather(local_logits), dim=1)
        fair_loss(full_logits, target, torch.cat(all_gather(weight)), ...)

    Args:
        local_logits (Tensor): this rank's slice of the logits, :math:`(N, V_k)`.
        target (Tensor): global class indices in :math:`[0, V)` or ``ignore_index``, :math:`(N)`,
            the same on every rank.
        group (ProcessGroup, optional): the ranks that hold the slices. Default: ``None``, the
            default (world) group.
        weight (Tensor, optional): this rank's slice of the class weights, :math:`(V_k)`.
            Default: ``None``.
        ignore_index (int, optional): a target value that is ignored. Default: ``-100``.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``. Default: ``"mean"``.
        label_smoothing (float, optional): in :math:`[0, 1]`. Default: ``0.0``.
        smooth_max_beta (float, optional): :math:`\beta > 0`. Default: ``1000.0``.
        scaling_factor (float, optional): :math:`s \ge 0`. Default: ``1000.0``.
        penalty_scale (float, optional): :math:`\lambda \ge 0`; ``None`` means :math:`1/V` of the
            whole vocabulary. Default: ``None``.
        z_loss_scale (float, optional): :math:`\zeta \ge 0`, the z-loss's weight, per non-ignored
            row. Default: ``0.0``.

    Shape:
        - local_logits: :math:`(N, V_k)`.
        - target: :math:`(N)`.
        - output: a scalar; with ``reduction="none"``, :math:`(N)`.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized.
        TypeError: ``local_logits`` not floating point; ``target`` not an integer tensor; an
            option of the wrong type.
        ValueError: ``local_logits`` not 2-dimensional; ``target`` or ``weight`` of the wrong
            shape; an option out of range (see :func:`fairloss.fair_loss`); on CPU, a class index
            outside :math:`[0, V)` that is not ``ignore_index`` (after round 1, on every rank).

    Example:
        One process holding every class (``torchrun`` starts several; see
        ``examples/tensor_parallel.py``) gives :func:`fairloss.fair_loss`'s numbers:

        >>> import torch
        >>> import torch.distributed as dist
        >>> from fairloss.distributed import vocab_parallel_fair_loss
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
        >>> vocab_parallel_fair_loss(logits, torch.tensor([0, 0]), reduction="none")
        tensor([1.0920, 1.3014])
        >>> dist.destroy_process_group()
    """
    validation.check_reduction(reduction)
    if not isinstance(local_logits, Tensor) or not local_logits.is_floating_point():
        got = (
            local_logits.dtype if isinstance(local_logits, Tensor) else type(local_logits).__name__
        )
        raise TypeError(validation.expected("local_logits", "a floating point tensor", got))
    if local_logits.dim() != 2:
        raise ValueError(
            validation.expected(
                "local_logits", "a tensor of shape (N, V_r)", f"shape {tuple(local_logits.shape)}"
            )
        )
    _check_class_indices(target, "target", (local_logits.shape[0],))
    dtype = compute_dtype(local_logits.dtype)
    settings = _resolve_settings(
        local_logits.shape[1],
        target,
        weight,
        dtype,
        group,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        z_loss_scale=z_loss_scale,
    )
    _check_group(group)
    output_dtype = validation.output_dtype(local_logits)
    target = target.long()
    local_max = _local_row_max(local_logits.detach().to(dtype))
    row_max, vocabulary = _exchange_max_and_sizes(local_max, settings, target)
    loss, class_weight = _VocabParallelFairLossFunction.apply(
        local_logits, target, weight, row_max, vocabulary, settings
    )
    return _reduce(loss, class_weight, reduction, output_dtype)


# --------------------------------------------------------------------------------------------
# The linear version
# --------------------------------------------------------------------------------------------


class _LocalHead(NamedTuple):
    """This rank's column slice of the head in the compute dtype."""

    weight: Tensor
    bias: Optional[Tensor]

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight, self.bias)


def _row_chunks(num_rows: int, chunk_size: int) -> list[slice]:
    return [
        slice(start, min(start + chunk_size, num_rows)) for start in range(0, num_rows, chunk_size)
    ]


class _VocabParallelLinearFunction(torch.autograd.Function):
    """Element losses of ``input @ local_weight.T + local_bias``, chunk by chunk.

    Forward computes each chunk's ``(rows, V_r)`` logits and keeps its round-2 sums only; backward
    recomputes them, folds the chunk's gradient into the three gradients and sums the input's
    gradient over the ranks (one ``all_reduce``).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        weight: Optional[Tensor],
        row_max: Tensor,
        vocabulary: _Vocabulary,
        settings: _Settings,
    ) -> tuple[Tensor, Tensor]:
        dtype = row_max.dtype
        head = _LocalHead(
            linear_weight.to(dtype), None if linear_bias is None else linear_bias.to(dtype)
        )
        valid, owned, local_reference = _ownership(target, vocabulary, settings)
        num_sums = _num_statistics(settings, weight is not None)
        sums = input.new_empty((num_sums, input.shape[0]), dtype=dtype)
        for rows in _row_chunks(input.shape[0], settings.chunk_size):
            logits = head.logits(input[rows].to(dtype))
            chunk_sums = _local_sums(
                logits, row_max[rows], owned[rows], local_reference[rows], weight, settings
            )
            for index, values in enumerate(chunk_sums):
                sums[index, rows] = values
        sums, total_weight = _sum_over_ranks(sums, weight, settings)
        loss, class_weight, statistics = _losses_and_statistics(
            row_max, sums, total_weight, valid, local_reference, vocabulary, settings,
            weight is not None,
        )  # fmt: skip
        ctx.settings = settings
        ctx.save_for_backward(input, linear_weight, linear_bias, weight, valid, *statistics)
        ctx.mark_non_differentiable(class_weight)
        return loss, class_weight

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor, grad_class_weight: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "vocab_parallel_linear_fair_loss has no double backward: its backward cannot be "
                "differentiated (create_graph=True)."
            )
        input, linear_weight, linear_bias, weight, valid, *saved = ctx.saved_tensors
        statistics = _RowStatistics(*saved)
        settings: _Settings = ctx.settings
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dtype = statistics.row_max.dtype
        head = _LocalHead(
            linear_weight.to(dtype), None if linear_bias is None else linear_bias.to(dtype)
        )
        kept_grad = torch.where(valid, grad_loss.to(dtype), 0.0)
        grad_input = input.new_zeros(input.shape, dtype=dtype) if needs_input else None
        grad_weight = torch.zeros_like(head.weight) if needs_weight else None
        grad_bias = None
        if needs_bias and head.bias is not None:
            grad_bias = torch.zeros_like(head.bias)
        if head.weight.shape[0] > 0:
            for rows in _row_chunks(input.shape[0], settings.chunk_size):
                hidden = input[rows].to(dtype)
                chunk_statistics = _RowStatistics(
                    *(value if value.dim() == 0 else value[rows] for value in statistics)
                )
                grad_logits = _local_gradient(
                    head.logits(hidden), chunk_statistics, kept_grad[rows], weight, settings
                )
                if grad_input is not None:
                    grad_input[rows] = grad_logits @ head.weight
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.T, hidden)
                if grad_bias is not None:
                    grad_bias.add_(grad_logits.sum(dim=0))
        if grad_input is not None:
            dist.all_reduce(grad_input, op=dist.ReduceOp.SUM, group=settings.group)
            grad_input = grad_input.to(input.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(linear_weight.dtype)
        if grad_bias is not None:
            assert linear_bias is not None
            grad_bias = grad_bias.to(linear_bias.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def vocab_parallel_linear_fair_loss(
    input: Tensor,
    local_linear_weight: Tensor,
    target: Tensor,
    *,
    local_linear_bias: Optional[Tensor] = None,
    group: Optional[dist.ProcessGroup] = None,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    smooth_max_beta: float = 1000.0,
    scaling_factor: float = 1000.0,
    penalty_scale: Optional[float] = None,
    z_loss_scale: float = 0.0,
    chunk_size: Optional[int] = None,
) -> Tensor:
    r"""A column-parallel linear head plus FairLoss, in row chunks: no rank holds its logits whole.

    Rank :math:`k` holds rows :math:`o_k .. o_k + V_k` of the head :math:`W` (and of the bias
    :math:`b`), in rank order; ``input`` :math:`x` is replicated. The loss is
    :func:`vocab_parallel_fair_loss` of the local logits :math:`x W_k^\top + b_k`, equal to
    :func:`fairloss.linear_fair_loss` of the whole head, computed ``chunk_size`` rows at a time.

    Communication: the two rounds of forward, as :func:`vocab_parallel_fair_loss`, and in
    backward one ``all_reduce(SUM)`` of the input's gradient (:math:`N \times H` numbers), which
    every rank then holds whole; the head's gradients are local. Forward computes the chunk logits
    twice (once for the row maximum, once for the sums), backward once more.

    ``ignore_index``, ``reduction``, ``label_smoothing``, ``smooth_max_beta``,
    ``scaling_factor``, ``penalty_scale`` and ``z_loss_scale`` are those of
    :func:`vocab_parallel_fair_loss`.

    Args:
        input (Tensor): hidden states :math:`(*, H)`, the same on every rank.
        local_linear_weight (Tensor): this rank's rows of the head, :math:`(V_k, H)`, ``input``'s
            dtype.
        target (Tensor): global class indices, :math:`(*)`, the same on every rank.
        local_linear_bias (Tensor, optional): this rank's slice of the bias, :math:`(V_k)`.
            Default: ``None``.
        group (ProcessGroup, optional): the ranks that hold the slices. Default: ``None``, the
            world.
        weight (Tensor, optional): this rank's slice of the class weights, :math:`(V_k)`.
            Default: ``None``.
        chunk_size (int, optional): rows per chunk; ``None`` picks
            :func:`fairloss.linear.default_chunk_size` for the local slice. Default: ``None``.

    Shape:
        - input: :math:`(*, H)`.
        - local_linear_weight: :math:`(V_k, H)`.
        - target: :math:`(*)`.
        - output: a scalar; with ``reduction="none"``, :math:`(*)`.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized; in backward, when
            ``create_graph=True`` asks for a double backward.
        TypeError: ``input`` not floating point; the head of another dtype; ``target`` not an
            integer tensor; ``chunk_size`` not an integer.
        ValueError: a shape that does not fit; ``chunk_size`` below 1; an option out of range.

    Example:
        On one process, the numbers of :func:`fairloss.linear_fair_loss`:

        >>> import torch
        >>> import torch.distributed as dist
        >>> from fairloss.distributed import vocab_parallel_linear_fair_loss
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> hidden = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
        >>> head = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> target = torch.tensor([0, 2, -100])
        >>> vocab_parallel_linear_fair_loss(hidden, head, target, reduction="none", chunk_size=2)
        tensor([0.4076, 2.0136, 0.0000])
        >>> dist.destroy_process_group()
    """
    validation.check_reduction(reduction)
    _check_head(input, local_linear_weight, local_linear_bias)
    _check_class_indices(target, "target", tuple(input.shape[:-1]))
    hidden_size = input.shape[-1]
    rows = input.reshape(-1, hidden_size)
    local_num_classes = local_linear_weight.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(rows.shape[0], hidden_size, local_num_classes)
    else:
        chunk_size = validation.check_chunk_size(chunk_size)
    dtype = compute_dtype(input.dtype)
    settings = _resolve_settings(
        local_num_classes,
        target,
        weight,
        dtype,
        group,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        z_loss_scale=z_loss_scale,
        chunk_size=chunk_size,
    )
    _check_group(group)
    target_rows = target.reshape(-1).long()
    with torch.no_grad():
        head = _LocalHead(
            local_linear_weight.to(dtype),
            None if local_linear_bias is None else local_linear_bias.to(dtype),
        )
        local_max = rows.new_empty(rows.shape[0], dtype=dtype)
        for chunk in _row_chunks(rows.shape[0], chunk_size):
            local_max[chunk] = _local_row_max(head.logits(rows[chunk].to(dtype)))
        del head
    row_max, vocabulary = _exchange_max_and_sizes(local_max, settings, target_rows)
    loss, class_weight = _VocabParallelLinearFunction.apply(
        rows, local_linear_weight, local_linear_bias, target_rows, weight, row_max, vocabulary,
        settings,
    )  # fmt: skip
    if reduction == "none":
        return loss.reshape(target.shape).to(input.dtype)
    return _reduce(loss, class_weight, reduction, input.dtype)


def _check_head(input: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor]) -> None:
    if not isinstance(input, Tensor) or not input.is_floating_point():
        got = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise TypeError(validation.expected("input", "a floating point tensor", got))
    if input.dim() == 0:
        raise ValueError(validation.expected("input", "a tensor of shape (*, H)", "a scalar"))
    hidden_size = input.shape[-1]
    if not isinstance(linear_weight, Tensor) or linear_weight.dtype != input.dtype:
        got = (
            linear_weight.dtype
            if isinstance(linear_weight, Tensor)
            else type(linear_weight).__name__
        )
        raise TypeError(
            validation.expected(
                "local_linear_weight", f"a tensor of the input's dtype {input.dtype}", got
            )
        )
    if linear_weight.dim() != 2 or linear_weight.shape[1] != hidden_size:
        raise ValueError(
            validation.expected(
                "local_linear_weight",
                f"a tensor of shape (V_r, {hidden_size}) for input of shape {tuple(input.shape)}",
                f"shape {tuple(linear_weight.shape)}",
            )
        )
    if linear_bias is None:
        return
    if not isinstance(linear_bias, Tensor) or linear_bias.dtype != input.dtype:
        got = linear_bias.dtype if isinstance(linear_bias, Tensor) else type(linear_bias).__name__
        raise TypeError(
            validation.expected(
                "local_linear_bias", f"None or a tensor of the input's dtype {input.dtype}", got
            )
        )
    if linear_bias.shape != (linear_weight.shape[0],):
        raise ValueError(
            validation.expected(
                "local_linear_bias",
                f"None or a tensor of shape ({linear_weight.shape[0]},)",
                f"shape {tuple(linear_bias.shape)}",
            )
        )


# --------------------------------------------------------------------------------------------
# DTensor
# --------------------------------------------------------------------------------------------


def fair_loss_on_dtensor(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    smooth_max_beta: float = 1000.0,
    scaling_factor: float = 1000.0,
    penalty_scale: Optional[float] = None,
    z_loss_scale: float = 0.0,
    impl: str = "auto",
) -> Tensor:
    r""":func:`fairloss.fair_loss` of a ``DTensor`` of logits sharded on the class dimension.

    ``input`` is an :math:`(N, C)` ``DTensor`` placed ``Shard(1)`` on one dimension of its device
    mesh and ``Replicate()`` on any other: the output of a head parallelized with
    ``ColwiseParallel(use_local_output=False)``. The loss is computed by
    :func:`vocab_parallel_fair_loss` on the local shards over that mesh dimension's process group
    and equals :func:`fairloss.fair_loss` of the gathered logits; the gradient flows back to the
    shards (as a ``DTensor`` of the same placements). The result is an ordinary tensor, the same
    on every rank. ``ignore_index``, ``reduction``, ``label_smoothing``, ``smooth_max_beta``,
    ``scaling_factor``, ``penalty_scale`` and ``z_loss_scale`` are those of
    :func:`fairloss.fair_loss`; ``impl`` is checked and otherwise unused (one implementation
    runs on the shards), so that :func:`fairloss.fair_loss` can pass its arguments on.
    Logits of shape ``(batch, sequence, C)``, sharded on the last dimension, are passed as
    ``logits.view(-1, C)`` (a ``DTensor`` placed ``Shard(1)``).

    Args:
        input (DTensor): logits, :math:`(N, C)`, sharded on dimension 1.
        target (Tensor): class indices :math:`(N)`, the same on every rank (a plain tensor, or a
            replicated ``DTensor``).
        weight (Tensor, optional): class weights of the whole vocabulary, :math:`(C)`; each rank
            uses its slice. Default: ``None``.

    Shape:
        - input: :math:`(N, C)` globally; each rank holds :math:`(N, C_r)`.
        - target: :math:`(N)`.
        - output: a scalar; with ``reduction="none"``, :math:`(N)`, the same on every rank.

    Raises:
        TypeError: ``input`` is not a ``DTensor``.
        ValueError: ``input`` not 2-dimensional, or placed otherwise than ``Shard(1)`` on one mesh
            dimension and ``Replicate()`` on the others; ``weight`` not of shape :math:`(C)`;
            ``impl`` unknown; any error of :func:`vocab_parallel_fair_loss`.

    Example:
        On a one-process mesh (``examples/tensor_parallel.py`` trains on two):

        >>> import torch
        >>> import torch.distributed as dist
        >>> from torch.distributed.device_mesh import init_device_mesh
        >>> from torch.distributed.tensor import Shard, distribute_tensor
        >>> from fairloss.distributed import fair_loss_on_dtensor
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
        >>> sharded = distribute_tensor(logits, init_device_mesh("cpu", (1,)), [Shard(1)])
        >>> fair_loss_on_dtensor(sharded, torch.tensor([0, 0]), reduction="none")
        tensor([1.0920, 1.3014])
        >>> dist.destroy_process_group()
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    validation.check_implementation(impl, IMPLEMENTATION_NAMES)
    if not isinstance(input, DTensor):
        raise TypeError(
            validation.expected(
                "input",
                "a DTensor sharded on the class dimension (Shard(1))",
                type(input).__name__,
            )
        )
    if input.dim() != 2:
        raise ValueError(
            validation.expected(
                "input",
                "a DTensor of shape (N, C) (pass (batch, sequence, C) logits as .view(-1, C))",
                f"shape {tuple(input.shape)}",
            )
        )
    placements = tuple(input.placements)
    class_dims = [
        mesh_dim
        for mesh_dim, placement in enumerate(placements)
        if isinstance(placement, Shard) and placement.dim % 2 == 1
    ]
    others_replicated = all(
        isinstance(placement, Replicate)
        for mesh_dim, placement in enumerate(placements)
        if mesh_dim not in class_dims
    )
    if len(class_dims) != 1 or not others_replicated:
        raise ValueError(
            validation.expected(
                "input",
                "a DTensor placed Shard(1) on one mesh dimension and Replicate() on the others",
                f"placements {placements}",
            )
        )
    mesh_dim = class_dims[0]
    mesh = input.device_mesh
    num_classes = input.shape[1]
    local_logits = input.to_local()
    offset, local_num_classes = _shard_slice(
        num_classes, mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
    )
    if local_logits.shape[1] != local_num_classes:
        raise ValueError(
            validation.expected(
                "input",
                f"a DTensor whose shards split its {num_classes} classes as torch.chunk does "
                f"({local_num_classes} on this rank)",
                f"a local shard of {local_logits.shape[1]} classes",
            )
        )
    if isinstance(target, DTensor):
        target = target.full_tensor()
    local_weight = None
    if weight is not None:
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
        validation.check_weight(weight, num_classes)
        local_weight = weight[offset : offset + local_num_classes]
    return vocab_parallel_fair_loss(
        local_logits,
        target,
        group=mesh.get_group(mesh_dim),
        weight=local_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        z_loss_scale=z_loss_scale,
    )


def _shard_slice(size: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Start and length of ``Shard``'s slice ``shard`` of ``num_shards``: ``torch.chunk``'s."""
    chunk = -(-size // num_shards)  # ceil
    start = min(shard * chunk, size)
    return start, min(chunk, size - start)
