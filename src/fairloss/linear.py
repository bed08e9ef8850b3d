"""Functional interface for a linear head followed by FairLoss: :func:`linear_fair_loss`."""

from __future__ import annotations

from typing import Literal, Optional, Union, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from fairloss import _impl
from fairloss import _validation as validation
from fairloss._cross_entropy import mean_denominator
from fairloss._impl.chunked_linear import LinearFairLossFunction, LinearFairLossSettings
from fairloss._impl.chunked_linear_op import linear_fair_loss_compiled
from fairloss._penalty import compute_dtype
from fairloss.functional import fair_loss

__all__ = ["linear_fair_loss"]

# Bounds on the numbers in one chunk's logits; see `default_chunk_size`.
_MIN_CHUNK_NUMBERS = 2**20
_MAX_CHUNK_NUMBERS = 2**24


@overload
def linear_fair_loss(
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
    return_accuracy: Literal[False] = False,
    impl: str = "auto",
) -> Tensor: ...


@overload
def linear_fair_loss(
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
    return_accuracy: Literal[True],
    impl: str = "auto",
) -> tuple[Tensor, Tensor]: ...


@overload
def linear_fair_loss(
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
) -> Union[Tensor, tuple[Tensor, Tensor]]: ...


def linear_fair_loss(
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

    For rows :math:`x_n \in \mathbb{R}^H` of ``input``, a head
    :math:`W \in \mathbb{R}^{V \times H}` (``linear_weight``) and bias :math:`b`
    (``linear_bias``), the logits of row :math:`n` are :math:`z_n = W x_n + b` and its loss is
    FairLoss's element loss (see :func:`fairloss.fair_loss`), with target :math:`y_n`:

    .. math::
        \ell_n = \operatorname{CE}(z_n, y_n) + w_{y_n}\,\lambda\,
            \tanh\!\Big(\tfrac{s}{2}\big(\operatorname{SmoothMax}_\beta(z_n) - z_{n,y_n}\big)\Big)
            + \zeta \big(\log\textstyle\sum_c e^{z_{n,c}}\big)^2

    With ``softcap`` :math:`c`, the logits are capped first, :math:`z_n = c\tanh((W x_n + b)/c)`
    (Gemma 2's final-logit softcapping), and everything, gradient included, is computed on the
    capped logits. :math:`\zeta` = ``z_loss_scale`` weighs PaLM's z-loss (0 by default).
    ``return_accuracy=True`` also returns the share of non-ignored rows whose logits' argmax
    (first on ties) is the target, counted in the chunks (0 when every row is ignored).

    The rows are processed ``chunk_size`` at a time: a chunk's logits are built, turned into
    loss and logits gradient, and folded into the gradients of ``input``, ``linear_weight`` and
    ``linear_bias`` before the next chunk, so memory holds one chunk's logits instead of the
    ``(rows, V)`` tensor that dominates a language-model head's training memory. Rows whose target
    is ``ignore_index`` are dropped before the matrix product and cost nothing. For ``"mean"``
    and ``"sum"`` the gradients are computed during forward and scaled in backward; for
    ``"none"`` backward recomputes each chunk's logits.

    Equivalent to (up to floating-point rounding)::

        logits = F.linear(input, linear_weight, linear_bias)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        fair_loss(logits.reshape(-1, V), target.reshape(-1), weight, ...)  # "none": reshaped back

    with the class dimension last, as :func:`torch.nn.functional.linear_cross_entropy` takes it.

    bfloat16 and float16 inputs are multiplied and reduced in float32 (the weight is cast to
    float32 once per call); float64 stays float64. The result and the gradients have the input's
    dtype. Double backward is not supported: a backward with ``create_graph=True`` raises
    ``RuntimeError`` (use :func:`fairloss.fair_loss` on ``F.linear(...)`` for higher derivatives,
    and for probability targets). A second backward through one result (``retain_graph=True``)
    works and recomputes the logits. ``torch.compile(linear_fair_loss, fullgraph=True)`` traces
    it without graph breaks: the chunk loop runs as two custom operators the compiler does not
    look into (so compiling does not grow with the number of chunks) and gives the eager result.

    Args:
        input (Tensor): hidden states, the linear layer's input.
        linear_weight (Tensor): the linear layer's weight, :math:`(V, H)`, ``input``'s dtype.
        target (Tensor): class indices in :math:`[0, V)` (integer tensor) or ``ignore_index``.
        linear_bias (Tensor, optional): the linear layer's bias, :math:`(V,)`, ``input``'s
            dtype. Default: ``None``.
        weight (Tensor, optional): a manual rescaling weight per class, shape :math:`(V,)`, as in
            :func:`fairloss.fair_loss`. Default: ``None``.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` divides by the
            total target weight of the non-ignored rows, as cross-entropy. Default: ``"mean"``.
        ignore_index (int, optional): a target value that is ignored. Default: ``-100``.
        label_smoothing (float, optional): in :math:`[0, 1]`, smooths the cross-entropy's
            target. Default: ``0.0``.
        smooth_max_beta (float, optional): :math:`\beta > 0`. Default: ``1000.0``.
        scaling_factor (float, optional): :math:`s \ge 0`. Default: ``1000.0``.
        penalty_scale (float, optional): :math:`\lambda \ge 0`; ``None`` means :math:`1/V`.
            Default: ``None``.
        z_loss_scale (float, optional): :math:`\zeta \ge 0`, weight of the z-loss
            :math:`\zeta \operatorname{logsumexp}(z_n)^2` added to each non-ignored row's loss
            (``"mean"`` divides it by the same total target weight). Default: ``0.0``.
        softcap (float, optional): :math:`c > 0` caps the logits at :math:`c\tanh(z/c)`;
            ``None``: no cap. Default: ``None``.
        chunk_size (int, optional): rows per chunk; ``None`` picks
            :func:`default_chunk_size` (chunk logits about a quarter of the head's size, between
            4 and 64 MB). Smaller chunks use less memory and more, smaller matrix products.
            Default: ``None``.
        return_accuracy (bool, optional): also return the accuracy of the non-ignored rows, a
            scalar tensor without gradient. Default: ``False``.
        impl (str, optional): the implementation of the loss on each chunk, as in
            :func:`fairloss.fair_loss`: ``"auto"`` (``"sparse"`` on the CPU, ``"dense"``
            elsewhere, where nothing synchronises with the host), ``"sparse"``, ``"dense"``, or
            ``"composite"``: ``fair_loss(F.linear(...), impl="composite")``, the reference, which
            holds the full logits. Default: ``"auto"``.

    Shape:
        - input: :math:`(*, H)`, any number of leading dimensions (none included).
        - linear_weight: :math:`(V, H)`.
        - target: :math:`(*)`, the leading dimensions of ``input``.
        - output: a scalar; with ``reduction="none"``, :math:`(*)`. With ``return_accuracy``,
          ``(output, accuracy)``, the accuracy a scalar.

    Raises:
        TypeError: ``input`` not a floating point tensor; ``linear_weight`` or ``linear_bias`` of
            another dtype; ``target`` not an integer tensor (probability targets are not
            supported here); ``chunk_size`` not an integer; an option of the wrong type.
        ValueError: a shape that does not fit ``input``; ``chunk_size`` smaller than 1; on CPU,
            a class index outside :math:`[0, V)` that is not ``ignore_index``; any option out of
            range (see :func:`fairloss.fair_loss`).
        RuntimeError: in backward, when ``create_graph=True`` asks for a double backward.

    Example:
        >>> import torch
        >>> from fairloss.linear import linear_fair_loss
        >>> hidden = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
        >>> head = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> target = torch.tensor([0, 2, -100])
        >>> linear_fair_loss(hidden, head, target, reduction="none", chunk_size=2)
        tensor([0.4076, 2.0136, 0.0000])
        >>> linear_fair_loss(hidden, head, target)
        tensor(1.2106)
        >>> linear_fair_loss(hidden, head, target, softcap=1.0, return_accuracy=True)
        (tensor(1.2429), tensor(0.5000))
    """
    validation.check_reduction(reduction)
    validation.check_implementation(impl, _impl.IMPLEMENTATION_NAMES)
    num_classes = _check_shapes(input, linear_weight, linear_bias, target)
    z_loss_scale = validation.check_non_negative_finite("z_loss_scale", z_loss_scale)
    if softcap is not None:
        softcap = validation.check_positive_finite("softcap", softcap)
    if not isinstance(return_accuracy, bool):
        raise TypeError(
            validation.expected("return_accuracy", "a bool", type(return_accuracy).__name__)
        )
    if chunk_size is not None:
        chunk_size = validation.check_chunk_size(chunk_size)
    target = target.long()
    compiling = torch.compiler.is_compiling()
    # Compiled, the chunks still run eagerly, inside a custom operator: select as eagerly.
    implementation = _impl.select(
        impl, device=input.device, num_classes=num_classes, compiling=False
    )
    if implementation is None:  # the composite: fair_loss on the full logits
        logits = F.linear(input, linear_weight, linear_bias)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        loss = fair_loss(
            logits.reshape(-1, num_classes),
            target.reshape(-1),
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            smooth_max_beta=smooth_max_beta,
            scaling_factor=scaling_factor,
            penalty_scale=penalty_scale,
            z_loss_scale=z_loss_scale,
            impl="composite",
        ).reshape(target.shape if reduction == "none" else ())
        if not return_accuracy:
            return loss
        with torch.no_grad():
            valid = target != ignore_index
            correct = ((logits.argmax(dim=-1) == target) & valid).sum()
        return loss, _accuracy(correct, valid, compute_dtype(input.dtype))
    options = validation.resolve_options(
        num_classes,
        target,
        weight,
        compute_dtype=compute_dtype(input.dtype),
        probability_target=False,
        check_targets=not compiling,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        smooth_max_beta=smooth_max_beta,
        scaling_factor=scaling_factor,
        penalty_scale=penalty_scale,
    )
    hidden_size = input.shape[-1]
    rows = input.reshape(-1, hidden_size)
    target_rows = target.reshape(-1)
    if chunk_size is None:
        chunk_size = default_chunk_size(rows.shape[0], hidden_size, num_classes)
    settings = LinearFairLossSettings(
        options=options,
        implementation=implementation,
        drop_ignored_rows=implementation.synchronizes,
        summed=reduction != "none",
        chunk_size=chunk_size,
        grad_enabled=torch.is_grad_enabled(),
        softcap=softcap,
        z_loss_scale=z_loss_scale,
        count_correct=return_accuracy,
    )
    run = linear_fair_loss_compiled if compiling else LinearFairLossFunction.apply
    loss, correct = run(rows, linear_weight, linear_bias, target_rows, weight, settings)
    if reduction == "none":
        loss = loss.reshape(target.shape)
    elif reduction == "mean":
        loss = loss / mean_denominator(rows, target_rows, weight, options)
    loss = loss.to(input.dtype)
    if not return_accuracy:
        return loss
    return loss, _accuracy(correct, target_rows != options.ignore_index, loss.dtype)


def _accuracy(correct: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """``correct`` over the number of valid rows, in ``dtype`` (at least float32); 0 without any."""
    dtype = torch.promote_types(dtype, torch.float32)
    count = valid.sum()
    return torch.where(count > 0, correct / count.clamp_min(1), 0.0).to(dtype)


def default_chunk_size(num_rows: int, hidden_size: int, num_classes: int) -> int:
    """Rows per chunk when ``chunk_size`` is not given.

    A chunk's ``(rows, V)`` logits get about a quarter as many numbers as the ``(V, H)`` head,
    ``V * H / 4``, kept between :math:`2^{20}` and :math:`2^{24}` numbers (4 and 64 MB in
    float32); the rows are that over ``V``, rounded down to a power of two, at least 1 and at most
    ``num_rows``. For an LM head that is ``H / 4`` rows: the chunk's temporaries stay below the
    weight gradient every method holds, and the weight gradient's per-chunk update
    ``grad_W += grad_logits.T @ x`` still multiplies enough rows to run at matrix-product speed.

    Example:
        >>> from fairloss.linear import default_chunk_size
        >>> default_chunk_size(8192, 512, 32000), default_chunk_size(8192, 512, 128000)
        (128, 128)
        >>> default_chunk_size(100_000, 512, 10)  # a small head: large chunks
        65536
    """
    numbers = min(max(num_classes * hidden_size // 4, _MIN_CHUNK_NUMBERS), _MAX_CHUNK_NUMBERS)
    rows = max(1, numbers // max(num_classes, 1))
    power_of_two = 1 << (rows.bit_length() - 1)
    return max(1, min(power_of_two, num_rows))


def _check_shapes(
    input: Tensor, linear_weight: Tensor, linear_bias: Optional[Tensor], target: Tensor
) -> int:
    """Check the tensors' types and shapes; return the number of classes ``V``."""
    if not isinstance(input, Tensor) or not input.is_floating_point():
        got = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise TypeError(validation.expected("input", "a floating point tensor", got))
    if input.dim() == 0:
        raise ValueError(validation.expected("input", "a tensor of shape (*, H)", "a scalar"))
    hidden_size = input.shape[-1]
    if not isinstance(linear_weight, Tensor):
        got_type = type(linear_weight).__name__
        raise TypeError(validation.expected("linear_weight", "a torch.Tensor", got_type))
    if linear_weight.dim() != 2 or linear_weight.shape[1] != hidden_size:
        raise ValueError(
            validation.expected(
                "linear_weight",
                f"a tensor of shape (V, {hidden_size}) for input of shape {tuple(input.shape)}",
                f"shape {tuple(linear_weight.shape)}",
            )
        )
    if linear_weight.dtype != input.dtype:
        raise TypeError(
            validation.expected(
                "linear_weight", f"a tensor of the input's dtype {input.dtype}", linear_weight.dtype
            )
        )
    num_classes = linear_weight.shape[0]
    if linear_bias is not None:
        if not isinstance(linear_bias, Tensor) or linear_bias.dtype != input.dtype:
            got = (
                linear_bias.dtype if isinstance(linear_bias, Tensor) else type(linear_bias).__name__
            )
            raise TypeError(
                validation.expected("linear_bias", f"None or a tensor of dtype {input.dtype}", got)
            )
        if linear_bias.shape != (num_classes,):
            raise ValueError(
                validation.expected(
                    "linear_bias",
                    f"None or a tensor of shape ({num_classes},) for linear_weight of shape "
                    f"{tuple(linear_weight.shape)}",
                    f"shape {tuple(linear_bias.shape)}",
                )
            )
    if (
        not isinstance(target, Tensor)
        or target.is_floating_point()
        or target.is_complex()
        or (target.dtype == torch.bool)
    ):
        got = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(
            validation.expected(
                "target",
                "class indices, an integer tensor (linear_fair_loss does not take class "
                "probabilities; use fair_loss(F.linear(...)) for those)",
                got,
            )
        )
    if target.shape != input.shape[:-1]:
        raise ValueError(
            validation.expected(
                "target",
                f"a tensor of shape {tuple(input.shape[:-1])} for input of shape "
                f"{tuple(input.shape)}",
                f"shape {tuple(target.shape)}",
            )
        )
    return num_classes
