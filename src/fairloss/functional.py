"""Functional interface: :func:`fair_loss`, the one statement of FairLoss's semantics."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from fairloss import _native
from fairloss import _validation as validation
from fairloss._autograd import (
    DenseFairLossFunction,
    FairLossFunction,
    NativeFairLossFunction,
    TraceableFairLossFunction,
)
from fairloss._rows import FairLossOptions, compute_dtype

__all__ = ["fair_loss"]


#: Under ``torch.compile``, inputs with at most this many classes run
#: :class:`~fairloss._autograd.DenseFairLossFunction` (one ``exp`` per logit more in each pass, no
#: data-dependent step); larger ones :class:`~fairloss._autograd.TraceableFairLossFunction`
#: (SmoothMax on the few unsaturated elements, through custom operators). Measured on CPU,
#: forward+backward against compiled cross-entropy: dense 1.3x / ops 1.7x at (4096, 200), dense
#: 1.5x / ops 1.2x at (4096, 500), even at (2, 200, 64, 64).
DENSE_COMPILED_MAX_CLASSES = 256


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _autograd_function(num_classes: int) -> type[torch.autograd.Function]:
    """The autograd Function that computes FairLoss under ``torch.compile``."""
    if num_classes <= DENSE_COMPILED_MAX_CLASSES:
        return DenseFairLossFunction
    return TraceableFairLossFunction


def _native_applies(rows: Tensor, weight: Optional[Tensor], options: FairLossOptions) -> bool:
    """Whether :class:`~fairloss._autograd.NativeFairLossFunction` computes these rows.

    ``(M, C, L)`` logits with at least ``_native.MIN_POSITIONS`` positions, float32 or float64 on
    CPU, class-index targets, no class weight, no label smoothing, and the kernel built. The
    kernel compares class indices in the logits' dtype (exact up to ``2**24`` classes in float32)
    and scales by ``scaling_factor`` in it (finite there).
    """
    return (
        rows.dim() == 3
        and rows.shape[2] >= _native.MIN_POSITIONS
        and rows.device.type == "cpu"
        and rows.dtype in (torch.float32, torch.float64)
        and rows.shape[1] <= _native.MAX_CLASSES
        and options.scaling_factor < torch.finfo(rows.dtype).max
        and not options.probability_target
        and weight is None
        and options.label_smoothing == 0.0
        and _native.available()
    )


def fair_loss(
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
) -> Tensor:
    r"""Cross-entropy plus a smooth penalty for predictions whose argmax is wrong.

    For one element with logits :math:`z \in \mathbb{R}^C`, reference class :math:`r` (the target
    index, or the argmax of a probability target), class weights :math:`w` (ones by default),
    :math:`\beta` = ``smooth_max_beta``, :math:`s` = ``scaling_factor`` and
    :math:`\lambda` = ``penalty_scale`` (``1 / C`` when ``None``):

    .. math::
        \operatorname{SmoothMax}(z) = \tfrac{1}{\beta}\log\textstyle\sum_{c} e^{\beta z_c},\qquad
        \operatorname{gap} = z_r - \operatorname{SmoothMax}(z) \le 0,

        \ell = \operatorname{CE}(z, y)
               + w_r\,\lambda\,\tanh\!\left(-\tfrac{s}{2}\,\operatorname{gap}\right)

    where CE is ``F.cross_entropy(..., reduction="none")`` with the same ``weight``,
    ``ignore_index`` and ``label_smoothing``. The penalty lies in :math:`[0, \lambda)`: close to 0
    when :math:`z_r` is the clear maximum, close to :math:`\lambda` when another class wins.
    It equals the seed release's ``(2 * sigmoid(-s * gap) - 1) / C``. An ignored element has loss 0
    and no gradient. With ``penalty_scale=math.log(C)`` the loss tends, as :math:`\beta` and
    :math:`s` grow, to the Penalized Log Loss of Ahmadian, Ghatee & Wahlström (2025) at logits
    without ties; ``scaling_factor=0`` (or ``penalty_scale=0``) gives exactly ``F.cross_entropy``.

    Reductions, as ``F.cross_entropy``: ``"none"`` returns the element losses; ``"sum"`` their
    sum; ``"mean"`` divides the sum by :math:`\sum w_{y}` over non-ignored elements for class-index
    targets, and by the number of elements for probability targets.

    Equivalent to (the composite; the library runs a faster path with the same value)::

        ce = F.cross_entropy(input, target, weight, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction="none")
        smooth_max = torch.logsumexp(smooth_max_beta * input, dim=1) / smooth_max_beta
        gap = input.gather(1, target[:, None]).squeeze(1) - smooth_max
        penalty = penalty_scale * torch.tanh(-scaling_factor * gap / 2)
        loss = ce + weight[target] * penalty  # then reduce

    Computation is in float32 for float16/bfloat16/float32 logits and in float64 for float64; the
    result has ``input``'s dtype, as with ``F.cross_entropy``. Gradients are exact (double backward
    included, in eager mode), memory stays below what cross-entropy needs, and
    ``torch.compile(fullgraph=True)`` traces it without graph breaks: with at most
    ``DENSE_COMPILED_MAX_CLASSES`` (256) classes as dense code, otherwise with its data-dependent
    steps as the custom operators ``torch.ops.fairloss.penalty_statistics`` and
    ``torch.ops.fairloss.add_penalty_gradient_``. On CPU, :math:`(N, C, d_1, ..., d_K)` float32
    or float64 logits with at least 16 positions :math:`d_1 \cdots d_K` per sample, class-index
    targets, no ``weight`` and no ``label_smoothing`` run a native kernel, eager and compiled
    (one fused pass over the logits forward and one backward; ``torch.ops.fairloss.kdim_forward``
    and ``kdim_backward``). It is compiled on first use (about 20 s, then cached by
    ``torch.utils.cpp_extension``); where it cannot be built a warning says so and the PyTorch
    implementation runs, as it does with the environment variable ``FAIRLOSS_NATIVE=0``.

    Args:
        input (Tensor): logits, unnormalized.
        target (Tensor): class indices in :math:`[0, C)` (integer tensor), or class
            probabilities (floating tensor with ``input``'s shape).
        weight (Tensor, optional): a manual rescaling weight per class, shape :math:`(C,)`.
            It weighs the cross-entropy as in ``F.cross_entropy`` and the penalty by
            :math:`w_r`. Default: ``None``.
        ignore_index (int, optional): a class-index target value that is ignored. Default: ``-100``.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``. Default: ``"mean"``.
        label_smoothing (float, optional): in :math:`[0, 1]`, smooths the cross-entropy's target
            (not the penalty's reference class). Default: ``0.0``.
        smooth_max_beta (float, optional): :math:`\beta > 0`, sharpness of SmoothMax; it exceeds
            the max by at most :math:`\log(C)/\beta`. Default: ``1000.0``.
        scaling_factor (float, optional): :math:`s \ge 0`, steepness of the penalty. Default:
            ``1000.0``.
        penalty_scale (float, optional): :math:`\lambda \ge 0`, the penalty's height; ``None``
            means :math:`1/C`. Default: ``None``.

    Shape:
        - input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - target: :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)` for class indices;
          the shape of ``input`` for probabilities.
        - output: a scalar; with ``reduction="none"``, :math:`()`, :math:`(N)` or
          :math:`(N, d_1, ..., d_K)`.

    Raises:
        ValueError: ``reduction`` not one of ``("mean", "sum", "none")``; ``smooth_max_beta`` not
            finite and positive; ``scaling_factor`` or ``penalty_scale`` negative or not finite;
            ``label_smoothing`` outside :math:`[0, 1]`; ``target`` fitting neither form; ``weight``
            not of shape :math:`(C,)`; on CPU, a class index outside :math:`[0, C)` that is not
            ``ignore_index``.
        TypeError: ``input`` not floating point, or an option of the wrong type.

    Example:
        >>> import torch
        >>> from fairloss import fair_loss
        >>> logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
        >>> target = torch.tensor([0, 0])
        >>> fair_loss(logits, target, reduction="none")
        tensor([1.0920, 1.3014])
        >>> fair_loss(logits, target, scaling_factor=0.0, reduction="none")  # cross-entropy
        tensor([1.0920, 0.9681])
    """
    validation.check_reduction(reduction)
    options = _resolve_options(
        input,
        target,
        weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
    )
    rows, target_rows, element_shape = _as_rows(input, target, options.probability_target)

    if _native_applies(rows, weight, options):
        function: type[torch.autograd.Function] = NativeFairLossFunction
    elif _is_compiling():
        function = _autograd_function(rows.shape[1])
    else:
        function = FairLossFunction
    element_loss = function.apply(rows, target_rows, weight, options)

    if reduction == "none":
        return element_loss.reshape(element_shape).to(input.dtype)
    total = element_loss.sum()
    if reduction == "mean":
        total = total / _mean_denominator(rows, target_rows, weight, options)
    return total.to(input.dtype)


def _resolve_options(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    *,
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: Optional[float],
) -> FairLossOptions:
    validation.check_logits(input)
    return _options_for_classes(
        input.shape[0 if input.dim() == 1 else 1],
        target,
        weight,
        probability_target=validation.is_probability_target(input, target),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
    )


def _options_for_classes(
    num_classes: int,
    target: Tensor,
    weight: Optional[Tensor],
    *,
    probability_target: bool,
    ignore_index: int,
    label_smoothing: float,
    smooth_max_beta: float,
    scaling_factor: float,
    penalty_scale: Optional[float],
) -> FairLossOptions:
    """Check the options every FairLoss entry point shares, and resolve lambda for C classes."""
    validation.check_weight(weight, num_classes)
    ignore_index = validation.check_ignore_index(ignore_index)
    if not probability_target and not _is_compiling():
        validation.check_class_indices(target, num_classes, ignore_index)
    resolved_scale = validation.check_optional_non_negative_finite("penalty_scale", penalty_scale)
    return FairLossOptions(
        ignore_index=ignore_index,
        label_smoothing=validation.check_label_smoothing(label_smoothing),
        smooth_max_beta=validation.check_positive_finite("smooth_max_beta", smooth_max_beta),
        scaling_factor=validation.check_non_negative_finite("scaling_factor", scaling_factor),
        penalty_scale=1.0 / num_classes if resolved_scale is None else resolved_scale,
        probability_target=probability_target,
    )


def _as_rows(
    input: Tensor, target: Tensor, probability_target: bool
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """View ``(C)``, ``(N, C)`` or ``(N, C, d...)`` as ``(1, C)``, ``(N, C)`` or ``(N, C, L)``.

    The class dimension stays at 1 (no copy for contiguous inputs); targets alike. Also returns
    the shape of ``reduction="none"``'s output.
    """
    if input.dim() == 1:
        target_rows = target.unsqueeze(0)
        return input.unsqueeze(0), (target_rows if probability_target else target_rows.long()), ()
    batch, num_classes = input.shape[:2]
    element_shape = (batch, *input.shape[2:])
    if input.dim() == 2:
        return input, (target if probability_target else target.long()), element_shape
    positions = math.prod(input.shape[2:])
    rows = input.reshape(batch, num_classes, positions)
    if probability_target:
        return rows, target.reshape(batch, num_classes, positions), element_shape
    return rows, target.reshape(batch, positions).long(), element_shape


def _mean_denominator(
    rows: Tensor, target_rows: Tensor, weight: Optional[Tensor], options: FairLossOptions
) -> Tensor:
    """Cross-entropy's ``"mean"`` divisor: total target weight, or the element count."""
    dtype = compute_dtype(rows.dtype)
    if options.probability_target:
        element_count = rows.numel() // rows.shape[1] if rows.shape[1] else 0
        return torch.tensor(float(element_count), dtype=dtype, device=rows.device)
    valid = target_rows != options.ignore_index
    if weight is None:
        return valid.sum().to(dtype)
    safe_target = target_rows.masked_fill(~valid, 0)
    return (weight.to(dtype)[safe_target] * valid).sum()
