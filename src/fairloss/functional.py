"""Functional interface: :func:`fair_loss` and :func:`linear_fair_loss`.

Each validates its arguments into one options object, selects the implementation in one place
(:func:`fairloss._impl.select`), runs it on rows and reduces as ``F.cross_entropy`` does.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from fairloss import _impl
from fairloss import _validation as validation
from fairloss._cross_entropy import mean_denominator, reduce
from fairloss._impl import vocab_parallel
from fairloss._impl.chunked_linear import (
    ChunkedSettings,
    LinearFairLossFunction,
    default_chunk_size,
)
from fairloss._impl.chunked_linear_op import linear_fair_loss_compiled
from fairloss._penalty import compute_dtype

__all__ = ["fair_loss", "linear_fair_loss"]

_NO_PROBABILITIES_IN_HEAD = (
    "linear_fair_loss does not take class probabilities; use fair_loss(F.linear(...)) for those"
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
    z_loss_scale: float = 0.0,
    impl: str = "auto",
) -> Tensor:
    r"""Cross-entropy plus a smooth penalty for predictions whose argmax is wrong.

    See :class:`~fairloss.FairLoss` for the formula; ``scaling_factor=0`` gives exactly
    ``F.cross_entropy``. Computed in float32 (float64 for float64 input), returned in the input's
    dtype (float32 for half precision under ``torch.autocast``, as cross-entropy). Gradients are
    exact, double backward included in eager mode; ``torch.compile(fullgraph=True)`` traces it.
    On an accelerator nothing synchronises with the host (class indices are checked on the CPU
    only). A ``DTensor`` of logits sharded on the class dimension
    (``ColwiseParallel(use_local_output=False)``) is computed by the vocab-parallel loss
    (:func:`fairloss.distributed.vocab_parallel_fair_loss`), eagerly, the same on every rank.

    Args:
        input (Tensor): unnormalized logits; see Shape.
        target (Tensor): class indices in :math:`[0, C)` or class probabilities; see Shape.
        weight (Tensor, optional): a rescaling weight per class, of size :math:`C`, for the
            cross-entropy and (as :math:`w_r`) the penalty. Default: ``None``.
        ignore_index (int, optional): a class-index target that is ignored. Default: ``-100``.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``; ``'mean'`` divides by
            the total target weight, as ``F.cross_entropy``. Default: ``'mean'``.
        label_smoothing (float, optional): in :math:`[0, 1]`, smooths the cross-entropy's target
            (not the penalty's reference class). Default: :math:`0.0`.
        smooth_max_beta (float, optional): :math:`\beta > 0`, SmoothMax's sharpness.
            Default: :math:`1000`.
        scaling_factor (float, optional): :math:`s \ge 0`, the penalty's steepness.
            Default: :math:`1000`.
        penalty_scale (float, optional): :math:`\lambda \ge 0`, the penalty's height; ``None``
            means :math:`1/C`. Default: ``None``.
        z_loss_scale (float, optional): :math:`\zeta \ge 0`, the z-loss's weight. Default: 0.
        impl (str, optional): ``'auto'`` | ``'sparse'`` (SmoothMax only where the penalty is
            not saturated; the CPU default) | ``'dense'`` (no data-dependent shape; the default
            elsewhere) | ``'composite'`` (plain PyTorch, the reference). Default: ``'auto'``.

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - Target: class indices :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)`, or class
          probabilities of the input's shape.
        - Output: a scalar; with ``reduction='none'`` the input's shape without :math:`C`.

    Raises:
        ValueError: an option out of range, a ``target`` of neither form, ``weight`` not of
            size :math:`C`; on the CPU, a class index outside :math:`[0, C)`.
        TypeError: ``input`` not floating point, an option of the wrong type.
        RuntimeError: ``weight`` requires grad (as ``F.cross_entropy``).

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
    validation.check_logits(input)
    compiling = torch.compiler.is_compiling()
    sharded = vocab_parallel.is_dtensor(input)
    if sharded and compiling:
        raise TypeError(
            validation.expected(
                "input",
                "a plain tensor under torch.compile (DTensor logits run eagerly)",
                "a DTensor",
            )
        )
    probability_target = validation.is_probability_target(input, target)
    num_classes = input.shape[0 if input.dim() == 1 else 1]
    options = validation.resolve_options(
        num_classes,
        compute_dtype=compute_dtype(input.dtype),
        probability_target=probability_target,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        z_loss_scale=z_loss_scale,
    )
    implementation = _impl.select(
        impl, device=input.device, num_classes=num_classes, compiling=compiling, sharded=sharded
    )
    if sharded:
        return _fair_loss_of_dtensor(input, target, weight, options, reduction)
    validation.check_weight(weight, num_classes)
    validation.check_weight_needs_no_grad(weight)
    if not compiling and not probability_target:
        validation.check_class_indices(target, num_classes, options.ignore_index)
    rows, target_rows, element_shape = _as_rows(input, target, probability_target)
    element_loss = _impl.element_loss(implementation, rows, target_rows, weight, options)
    return reduce(
        element_loss,
        reduction,
        lambda: mean_denominator(rows, target_rows, weight, options),
        validation.output_dtype(input),
        element_shape,
    )


def _fair_loss_of_dtensor(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: validation.FairLossOptions,
    reduction: str,
) -> Tensor:
    """:func:`fair_loss` of ``(N, C)`` logits sharded by class: the vocab-parallel loss."""
    if options.probability_target:
        raise ValueError(
            validation.expected(
                "target", "class indices with DTensor logits", "class probabilities"
            )
        )
    local_logits, target, local_weight, group = vocab_parallel.dtensor_shards(input, target, weight)
    loss, class_weight = vocab_parallel.VocabParallelFunction.apply(
        local_logits, target.long(), local_weight, options, group,
        compute_dtype(local_logits.dtype),
    )  # fmt: skip
    output_dtype = validation.output_dtype(local_logits)
    return reduce(loss, reduction, class_weight.sum, output_dtype, tuple(target.shape))


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


@overload
def linear_fair_loss(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    return_accuracy: Literal[False] = False,
    **options: Any,
) -> Tensor: ...


@overload
def linear_fair_loss(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    return_accuracy: Literal[True],
    **options: Any,
) -> tuple[Tensor, Tensor]: ...


@overload
def linear_fair_loss(
    input: Tensor, linear_weight: Tensor, target: Tensor, *, return_accuracy: bool, **options: Any
) -> Union[Tensor, tuple[Tensor, Tensor]]: ...


def linear_fair_loss(  # type: ignore[misc]  # the overloads abbreviate the options
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    smooth_max_beta: float = 1000.0,
    scaling_factor: float = 1000.0,
    penalty_scale: Optional[float] = None,
    z_loss_scale: float = 0.0,
    softcap: Optional[float] = None,
    chunk_size: Optional[int] = None,
    return_accuracy: bool = False,
    impl: str = "auto",
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""FairLoss of a linear layer's output, computed in row chunks without the full logits.

    See :class:`~fairloss.LinearFairLoss` for the formula. Equivalent, up to rounding, to::

        logits = F.linear(input, linear_weight, linear_bias)  # softcap * tanh(logits / softcap)
        fair_loss(logits.reshape(-1, V), target.reshape(-1), weight, ...)  # "none": reshaped

    with the classes last, as :func:`torch.nn.functional.linear_cross_entropy` takes them. Each
    chunk of ``chunk_size`` rows builds its logits, turns them into loss and gradient and folds
    that into the gradients of ``input``, ``linear_weight`` and ``linear_bias`` before the next,
    so memory holds one chunk's logits; rows whose target is ignored cost nothing on the CPU.
    Half-precision inputs are multiplied and reduced in float32; results have the input's dtype.
    No double backward (use :func:`fair_loss` on ``F.linear(...)``); ``torch.compile`` traces it
    without graph breaks (the chunk loop runs as two custom operators). ``weight``,
    ``reduction``, ``ignore_index``, ``label_smoothing``, ``smooth_max_beta``,
    ``scaling_factor``, ``penalty_scale``, ``z_loss_scale`` and ``impl`` are :func:`fair_loss`'s
    (``impl='composite'`` computes the full logits).

    Args:
        input (Tensor): the head's input, :math:`(*, H)`.
        linear_weight (Tensor): the head's weight, :math:`(V, H)`, ``input``'s dtype.
        target (Tensor): class indices in :math:`[0, V)` or ``ignore_index``, :math:`(*)`.
        linear_bias (Tensor, optional): the head's bias, :math:`(V)`. Default: ``None``.
        softcap (float, optional): :math:`c > 0` caps the logits at :math:`c\tanh(z/c)` (Gemma
            2); ``None``: no cap. Default: ``None``.
        chunk_size (int, optional): rows per chunk; ``None`` picks about :math:`2^{23}` logits
            per chunk. Default: ``None``.
        return_accuracy (bool, optional): also return the share of non-ignored rows whose argmax
            (first on ties) is the target, without gradient (0 without rows). Default: ``False``.

    Shape:
        - input: :math:`(*, H)`; linear_weight: :math:`(V, H)`; target: :math:`(*)`.
        - output: a scalar; with ``reduction='none'``, :math:`(*)`. With ``return_accuracy``,
          ``(output, accuracy)``.

    Raises:
        TypeError: tensors of other dtypes, ``target`` not integer (class probabilities: use
            :func:`fair_loss` on ``F.linear(...)``), an option of the wrong type.
        ValueError: shapes that do not fit, an option out of range, on the CPU a class index
            outside :math:`[0, V)`.
        RuntimeError: a double backward (``create_graph=True``).

    Example:
        >>> import torch
        >>> from fairloss import linear_fair_loss
        >>> hidden = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
        >>> head = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> target = torch.tensor([0, 2, -100])
        >>> linear_fair_loss(hidden, head, target, reduction="none", chunk_size=2)
        tensor([0.4076, 2.0136, 0.0000])
        >>> linear_fair_loss(hidden, head, target, softcap=1.0, return_accuracy=True)
        (tensor(1.2429), tensor(0.5000))
    """
    validation.check_reduction(reduction)
    validation.check_head(input, linear_weight, linear_bias)
    target = validation.check_index_target(
        target, tuple(input.shape[:-1]), _NO_PROBABILITIES_IN_HEAD
    ).long()
    num_classes = linear_weight.shape[0]
    options = validation.resolve_options(
        num_classes,
        compute_dtype=compute_dtype(input.dtype),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
        z_loss_scale=z_loss_scale,
        softcap=softcap,
    )
    validation.check_weight(weight, num_classes)
    validation.check_weight_needs_no_grad(weight)
    chunk_size = validation.check_chunk_size(chunk_size)
    validation.check_bool("return_accuracy", return_accuracy)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        validation.check_class_indices(target, num_classes, options.ignore_index)
    # Compiled, the chunks still run eagerly, inside a custom operator: select as eagerly.
    implementation = _impl.select(
        impl, device=input.device, num_classes=num_classes, compiling=False
    )
    rows, target_rows = input.reshape(-1, input.shape[-1]), target.reshape(-1)
    valid = target_rows != options.ignore_index
    if implementation is None:  # the composite, the reference: the full logits
        logits = F.linear(rows, linear_weight, linear_bias)
        if options.softcap is not None:
            logits = options.softcap * torch.tanh(logits / options.softcap)
        loss = _impl.element_loss(None, logits, target_rows, weight, options)
        correct = ((logits.detach().argmax(dim=1) == target_rows) & valid).sum()
    else:
        settings = ChunkedSettings(
            implementation=implementation,
            chunk_size=chunk_size or default_chunk_size(rows.shape[0], num_classes),
            summed=reduction != "none",
            grad_enabled=torch.is_grad_enabled(),
            count_correct=return_accuracy,
        )
        run = linear_fair_loss_compiled if compiling else LinearFairLossFunction.apply
        loss, correct = run(
            rows, linear_weight, linear_bias, target_rows, weight, options, settings
        )
    loss = reduce(
        loss,
        reduction,
        lambda: mean_denominator(rows, target_rows, weight, options),
        input.dtype,
        tuple(target.shape),
    )
    if not return_accuracy:
        return loss
    count = valid.sum()
    accuracy = torch.where(count > 0, correct / count.clamp_min(1), 0.0)
    return loss, accuracy.to(torch.promote_types(loss.dtype, torch.float32))
