"""Functional interface: :func:`fair_loss`, the one statement of FairLoss's semantics."""

from __future__ import annotations

import math
import sys
from typing import Optional

import torch
from torch import Tensor

from fairloss import _impl
from fairloss import _validation as validation
from fairloss._cross_entropy import mean_denominator, z_loss_and_slope
from fairloss._penalty import (
    FairLossOptions,
    compute_dtype,
    fair_loss_composite,
    reference_class,
)

__all__ = ["fair_loss"]


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
    z_loss_scale: float = 0.0,
    impl: str = "auto",
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
               + \zeta \big(\log\textstyle\sum_c e^{z_c}\big)^2

    where CE is ``F.cross_entropy(..., reduction="none")`` with the same ``weight``,
    ``ignore_index`` and ``label_smoothing``, and :math:`\zeta` = ``z_loss_scale`` (0 by
    default) weighs PaLM's z-loss, which pulls the softmax's log-normalizer towards 0 (not
    multiplied by the class weight; ignored elements have none). The penalty lies in
    :math:`[0, \lambda)`: close to 0 when :math:`z_r` is the clear maximum, close to
    :math:`\lambda` when another class wins.
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
    result has ``input``'s dtype, as with ``F.cross_entropy`` (float32 for float16/bfloat16 input
    under ``torch.autocast``, as cross-entropy there). Gradients are exact, double backward
    included (in eager mode); ``torch.compile(fullgraph=True)`` traces it without graph breaks.
    On an accelerator nothing synchronises with the host (no ``.item()``, no data-dependent
    shape), so it runs on ``device="meta"`` too; class indices are checked against
    ``[0, C)`` on the CPU only, as a check there would need a sync.

    A ``DTensor`` sharded on the class dimension (the output of tensor parallelism's
    ``ColwiseParallel(use_local_output=False)``) is computed by
    :func:`fairloss.distributed.fair_loss_on_dtensor`, eagerly (not under ``torch.compile``, and
    without double backward): the value of the gathered logits on every rank, the gradient
    flowing back to the shards.

    Which code computes it is decided in one place, ``fairloss._impl.select``, and ``impl``
    overrides it: ``"sparse"`` computes SmoothMax only on the elements whose penalty is not
    saturated (found with ``nonzero``: the CPU default, fastest there); ``"dense"`` computes
    every step on every logit, with no data-dependent shape (the default off the CPU, and under
    ``torch.compile`` for at most 256 classes); ``"composite"`` is the plain PyTorch statement
    above, differentiated by autograd (the reference). All give the same value up to rounding.

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
        z_loss_scale (float, optional): :math:`\zeta \ge 0`, the weight of the z-loss
            :math:`\zeta \operatorname{logsumexp}(z)^2` added per non-ignored element and
            reduced with the loss (``"mean"`` divides it by the same total target weight).
            Default: ``0.0``.
        impl (str, optional): ``"auto"`` | ``"sparse"`` | ``"dense"`` | ``"composite"``, the
            implementation (see above). Default: ``"auto"``.

    Shape:
        - input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - target: :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)` for class indices;
          the shape of ``input`` for probabilities.
        - output: a scalar; with ``reduction="none"``, :math:`()`, :math:`(N)` or
          :math:`(N, d_1, ..., d_K)`.

    Raises:
        ValueError: ``reduction`` not one of ``("mean", "sum", "none")``; ``smooth_max_beta`` not
            finite and positive; ``scaling_factor``, ``penalty_scale`` or ``z_loss_scale``
            negative or not finite;
            ``label_smoothing`` outside :math:`[0, 1]`; ``target`` fitting neither form; ``weight``
            not of shape :math:`(C,)`; ``ignore_index`` set with probability targets; ``impl``
            unknown; on CPU, a class index outside :math:`[0, C)` that is not ``ignore_index``.
        TypeError: ``input`` not floating point, or an option of the wrong type.
        RuntimeError: ``weight`` requires grad while grad mode is on (as ``F.cross_entropy``:
            FairLoss has no gradient for the class weights).

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
    if _is_dtensor(input):
        if torch.compiler.is_compiling():
            raise TypeError(
                validation.expected(
                    "input",
                    "a plain tensor under torch.compile (DTensor logits run eagerly, through "
                    "fairloss.distributed.fair_loss_on_dtensor)",
                    "a DTensor",
                )
            )
        from fairloss.distributed import fair_loss_on_dtensor  # it imports this module

        return fair_loss_on_dtensor(
            input, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, smooth_max_beta=smooth_max_beta,
            scaling_factor=scaling_factor, penalty_scale=penalty_scale,
            z_loss_scale=z_loss_scale, impl=impl,
        )  # fmt: skip
    validation.check_reduction(reduction)
    validation.check_implementation(impl, _impl.IMPLEMENTATION_NAMES)
    validation.check_logits(input)
    probability_target = validation.is_probability_target(input, target)
    compiling = torch.compiler.is_compiling()
    options = validation.resolve_options(
        input.shape[0 if input.dim() == 1 else 1],
        target,
        weight,
        compute_dtype=compute_dtype(input.dtype),
        probability_target=probability_target,
        check_targets=not compiling,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
    )
    z_loss_scale = validation.check_non_negative_finite("z_loss_scale", z_loss_scale)
    output_dtype = validation.output_dtype(input)
    rows, target_rows, element_shape = _as_rows(input, target, options.probability_target)

    implementation = _impl.select(
        impl, device=rows.device, num_classes=rows.shape[1], compiling=compiling
    )
    if implementation is None:
        element_loss = fair_loss_composite(rows, target_rows, weight, options)
    else:
        function = _impl.autograd_function_for(implementation)
        element_loss = function.apply(rows, target_rows, weight, options)
    if z_loss_scale > 0:
        element_loss = element_loss + _z_loss(rows, target_rows, options, z_loss_scale)

    if reduction == "none":
        return element_loss.reshape(element_shape).to(output_dtype)
    total = element_loss.sum()
    if reduction == "mean":
        total = total / mean_denominator(rows, target_rows, weight, options)
    return total.to(output_dtype)


def _is_dtensor(input: object) -> bool:
    """Whether ``input`` is a ``DTensor`` (none exists before its module is imported)."""
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    return dtensor_module is not None and isinstance(input, dtensor_module.DTensor)


def _z_loss(rows: Tensor, target: Tensor, options: FairLossOptions, z_loss_scale: float) -> Tensor:
    """The z-loss of every element, 0 on ignored ones; autograd derives its gradient."""
    log_normalizer = torch.logsumexp(rows.to(compute_dtype(rows.dtype)), dim=1)
    z_loss, _ = z_loss_and_slope(log_normalizer, z_loss_scale)
    _, valid = reference_class(target, options)
    return torch.where(valid, z_loss, 0.0)


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
