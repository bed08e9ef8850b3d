"""``LinearFairLoss``: a linear head and FairLoss in one module, like ``LinearCrossEntropyLoss``."""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import Tensor, nn

from fairloss import _validation as validation
from fairloss.linear import linear_fair_loss

__all__ = ["LinearFairLoss"]


class LinearFairLoss(nn.Module):
    r"""A linear head :math:`z = W x + b` followed by FairLoss, never holding all the logits.

    The FairLoss counterpart of :class:`torch.nn.LinearCrossEntropyLoss`: it owns the head
    (``self.linear``, an :class:`torch.nn.Linear` of ``in_features`` to ``num_classes``) and its
    ``forward(input, target)`` calls :func:`fairloss.linear_fair_loss`, which computes the loss and
    the gradients of ``input``, ``linear.weight`` and ``linear.bias`` in row chunks. Per row with
    target :math:`y`, class weights :math:`w`, :math:`\beta` = ``smooth_max_beta``, :math:`s` =
    ``scaling_factor`` and :math:`\lambda` = ``penalty_scale`` (``1 / C`` when ``None``):

    .. math::
        \ell = \operatorname{CE}(z, y) + w_y\,\lambda\,
               \tanh\!\Big(\tfrac{s}{2}\big(\operatorname{SmoothMax}_\beta(z) - z_y\big)\Big)

    ``"mean"`` divides the sum by the total target weight of the non-ignored rows. Class-index
    targets only, no K-dimensional ``out_features`` and no double backward (see
    :func:`fairloss.linear_fair_loss`).

    Args:
        in_features (int): size of each input row, :math:`H`.
        num_classes (int): number of classes, :math:`C`.
        bias (bool, optional): whether the head adds a learnable bias. Default: ``False``.
        device (torch.device, optional): the head's device. Default: ``None``.
        dtype (torch.dtype, optional): the head's dtype. Default: ``None``.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``. Default: ``"mean"``.
        weight (Tensor, optional): class weights of shape :math:`(C,)`, kept as a buffer.
            Default: ``None``.
        ignore_index (int, optional): a target value that is ignored. Default: ``-100``.
        label_smoothing (float, optional): in :math:`[0, 1]`. Default: ``0.0``.
        smooth_max_beta (float, optional): :math:`\beta > 0`. Default: ``1000.0``.
        scaling_factor (float, optional): :math:`s \ge 0`. Default: ``1000.0``.
        penalty_scale (float, optional): :math:`\lambda \ge 0`; ``None`` means :math:`1/C`.
            Default: ``None``.
        z_loss_scale (float, optional): weight of the z-loss ``logsumexp(z) ** 2`` per
            non-ignored row. Default: ``0.0``.
        softcap (float, optional): caps the logits at ``softcap * tanh(z / softcap)``
            before the loss. Default: ``None`` (no cap).
        chunk_size (int, optional): rows per chunk; ``None`` chooses. Default: ``None``.
        return_accuracy (bool, optional): ``forward`` also returns the accuracy of the
            non-ignored rows, computed in the chunks. Default: ``False``.

    Shape:
        - Input: :math:`(*, H)`.
        - Target: :math:`(*)`, class indices.
        - Output: scalar; with ``reduction="none"``, :math:`(*)`. With ``return_accuracy``,
          ``(output, accuracy)``.

    Raises:
        ValueError: an option out of range, or ``weight`` not of shape :math:`(C,)`.
        TypeError: an option of the wrong type.

    Example:
        >>> import torch
        >>> from fairloss.linear_modules import LinearFairLoss
        >>> criterion = LinearFairLoss(2, 3, reduction="none")
        >>> criterion.linear
        Linear(in_features=2, out_features=3, bias=False)
        >>> head = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> with torch.no_grad():
        ...     _ = criterion.linear.weight.copy_(head)
        >>> criterion(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 2]))
        tensor([0.4076, 2.0136], grad_fn=<...>)
    """

    weight: Optional[Tensor]

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
        reduction: str = "mean",
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        smooth_max_beta: float = 1000.0,
        scaling_factor: float = 1000.0,
        penalty_scale: Optional[float] = None,
        z_loss_scale: float = 0.0,
        softcap: Optional[float] = None,
        chunk_size: Optional[int] = None,
        return_accuracy: bool = False,
    ) -> None:
        super().__init__()
        validation.check_reduction(reduction)
        validation.check_weight(weight, num_classes)
        self.num_classes = num_classes
        self.reduction = reduction
        self.ignore_index = validation.check_ignore_index(ignore_index)
        self.label_smoothing = validation.check_label_smoothing(label_smoothing)
        self.smooth_max_beta = validation.check_positive_finite("smooth_max_beta", smooth_max_beta)
        self.scaling_factor = validation.check_non_negative_finite("scaling_factor", scaling_factor)
        self.penalty_scale = validation.check_optional_non_negative_finite(
            "penalty_scale", penalty_scale
        )
        self.z_loss_scale = validation.check_non_negative_finite("z_loss_scale", z_loss_scale)
        self.softcap = (
            None if softcap is None else validation.check_positive_finite("softcap", softcap)
        )
        self.chunk_size = None if chunk_size is None else validation.check_chunk_size(chunk_size)
        if not isinstance(return_accuracy, bool):
            got = type(return_accuracy).__name__
            raise TypeError(validation.expected("return_accuracy", "a bool", got))
        self.return_accuracy = return_accuracy
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.register_buffer("weight", weight)

    def forward(self, input: Tensor, target: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return linear_fair_loss(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            smooth_max_beta=self.smooth_max_beta,
            scaling_factor=self.scaling_factor,
            penalty_scale=self.penalty_scale,
            z_loss_scale=self.z_loss_scale,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
            return_accuracy=self.return_accuracy,
        )

    def extra_repr(self) -> str:
        settings = [
            f"in_features={self.linear.in_features}",
            f"num_classes={self.num_classes}",
            f"bias={self.linear.bias is not None}",
            f"reduction={self.reduction!r}",
            f"smooth_max_beta={self.smooth_max_beta}",
            f"scaling_factor={self.scaling_factor}",
            f"penalty_scale={self.penalty_scale}",
        ]
        if self.weight is not None:
            settings.append("weight=Tensor" + str(list(self.weight.shape)))
        if self.ignore_index != -100:
            settings.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing != 0.0:
            settings.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss_scale != 0.0:
            settings.append(f"z_loss_scale={self.z_loss_scale}")
        if self.softcap is not None:
            settings.append(f"softcap={self.softcap}")
        if self.chunk_size is not None:
            settings.append(f"chunk_size={self.chunk_size}")
        if self.return_accuracy:
            settings.append("return_accuracy=True")
        return ", ".join(settings)
