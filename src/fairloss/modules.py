"""``nn.Module`` shells: they hold settings and make one call into :mod:`fairloss.functional`."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from fairloss import _validation as validation
from fairloss.functional import fair_loss

__all__ = ["FairLoss"]


class FairLoss(nn.Module):
    r"""Cross-entropy plus a smooth penalty for predictions whose argmax is wrong.

    A drop-in for :class:`torch.nn.CrossEntropyLoss`. For one element with logits :math:`z`,
    reference class :math:`r` (the target index, or the argmax of a probability target) and
    class weights :math:`w`:

    .. math::
        \ell = \operatorname{CE}(z, y) + w_r\,\lambda\,
               \tanh\!\Big(\tfrac{s}{2}\big(\operatorname{SmoothMax}_\beta(z) - z_r\big)\Big),
        \qquad
        \operatorname{SmoothMax}_\beta(z) = \tfrac{1}{\beta}\log\textstyle\sum_c e^{\beta z_c}

    with :math:`\beta` = ``smooth_max_beta``, :math:`s` = ``scaling_factor`` and :math:`\lambda` =
    ``penalty_scale`` (``1 / C`` when ``None``). ``reduction="mean"`` divides the sum by the total
    target weight of non-ignored elements (class-index targets) or by the element count
    (probability targets), as cross-entropy does. With ``penalty_scale=math.log(C)`` the loss tends
    to the Penalized Log Loss of Ahmadian, Ghatee & Wahlström (2025) as :math:`\beta, s` grow.
    See :func:`fairloss.fair_loss` for the full statement.

    Like ``nn.CrossEntropyLoss(w)``, ``FairLoss(w)`` takes the class weights as its first
    positional argument, and ``criterion.weight = w`` replaces them. The cross-entropy options
    live in the ``cross_entropy`` submodule, as in pytorch-fairloss 0.1.1, whose first positional
    argument was an ``nn.CrossEntropyLoss(reduction="none")``: that form still works. A weighted
    module's ``state_dict`` therefore holds ``cross_entropy.weight``, and ``.to()`` moves the
    weight.

    Args:
        cross_entropy (Tensor or nn.CrossEntropyLoss, optional): the class weights, shape
            :math:`(C,)` (as ``nn.CrossEntropyLoss``'s first argument); or, as in 0.1.1, an
            ``nn.CrossEntropyLoss`` built with ``reduction="none"``, whose ``weight``,
            ``ignore_index`` and ``label_smoothing`` are used. Default: ``None``.
        smooth_max_beta (float, optional): :math:`\beta > 0`. Default: ``1000.0``.
        scaling_factor (float, optional): :math:`s \ge 0`. Default: ``1000.0``.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``. Default: ``"mean"``.
        weight (Tensor, optional): class weights of shape :math:`(C,)`. Default: ``None``.
        ignore_index (int, optional): ignored class-index target value. Default: ``-100``.
        label_smoothing (float, optional): in :math:`[0, 1]`. Default: ``0.0``.
        penalty_scale (float, optional): :math:`\lambda \ge 0`; ``None`` means :math:`1/C`.
            Default: ``None``.
        z_loss_scale (float, optional): weight of the z-loss ``logsumexp(z) ** 2`` added per
            non-ignored element (see :func:`fairloss.fair_loss`). Default: ``0.0``.

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - Target: class indices :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)`, or
          probabilities with the input's shape.
        - Output: scalar; with ``reduction="none"`` the target's shape (index targets) or the
          input's shape without the class dimension.

    Raises:
        TypeError: ``cross_entropy`` is neither a tensor nor an ``nn.CrossEntropyLoss``.
        ValueError: ``cross_entropy.reduction`` is not ``"none"``; ``cross_entropy`` given
            together with a non-default ``weight``, ``ignore_index`` or ``label_smoothing``; any
            option out of range (see :func:`fairloss.fair_loss`).

    Example:
        >>> import torch
        >>> from fairloss import FairLoss
        >>> criterion = FairLoss(reduction="none")
        >>> criterion.scaling_factor, criterion.reduction
        (1000.0, 'none')
        >>> logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
        >>> criterion(logits, torch.tensor([0, 0]))
        tensor([1.0920, 1.3014])
        >>> FairLoss(torch.tensor([1.0, 2.0, 2.0])).weight  # as nn.CrossEntropyLoss(w)
        tensor([1., 2., 2.])
    """

    cross_entropy: nn.CrossEntropyLoss

    def __init__(
        self,
        cross_entropy: Union[Tensor, nn.CrossEntropyLoss, None] = None,
        smooth_max_beta: float = 1000.0,
        scaling_factor: float = 1000.0,
        reduction: str = "mean",
        *,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        penalty_scale: Optional[float] = None,
        z_loss_scale: float = 0.0,
    ) -> None:
        super().__init__()
        validation.check_reduction(reduction)
        self.z_loss_scale = validation.check_non_negative_finite("z_loss_scale", z_loss_scale)
        self.smooth_max_beta = validation.check_positive_finite("smooth_max_beta", smooth_max_beta)
        self.scaling_factor = validation.check_non_negative_finite("scaling_factor", scaling_factor)
        self.penalty_scale = validation.check_optional_non_negative_finite(
            "penalty_scale", penalty_scale
        )
        self.reduction = reduction
        if isinstance(cross_entropy, Tensor):  # FairLoss(w), as nn.CrossEntropyLoss(w)
            if weight is not None:
                raise ValueError(
                    "Expected the class weights once, but got both a positional weight tensor "
                    "and the keyword `weight`."
                )
            cross_entropy, weight = None, cross_entropy
        if cross_entropy is None:
            validation.check_ignore_index(ignore_index)
            cross_entropy = nn.CrossEntropyLoss(
                weight=weight,
                ignore_index=ignore_index,
                reduction="none",
                label_smoothing=validation.check_label_smoothing(label_smoothing),
            )
        else:
            _check_cross_entropy(cross_entropy, weight, ignore_index, label_smoothing)
        if cross_entropy.weight is not None:
            validation.check_weight(cross_entropy.weight, cross_entropy.weight.shape[0])
        self.cross_entropy = cross_entropy

    @property
    def weight(self) -> Optional[Tensor]:
        """The class weights, in ``cross_entropy``; assign a tensor or None to replace them."""
        return self.cross_entropy.weight

    @weight.setter
    def weight(self, value: Optional[Tensor]) -> None:
        if value is not None:
            num_classes = value.shape[0] if isinstance(value, Tensor) and value.dim() == 1 else 0
            validation.check_weight(value, num_classes)
        self.cross_entropy.weight = value

    @property
    def ignore_index(self) -> int:
        return self.cross_entropy.ignore_index

    @property
    def label_smoothing(self) -> float:
        return self.cross_entropy.label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return fair_loss(
            input,
            target,
            self.cross_entropy.weight,
            ignore_index=self.cross_entropy.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.cross_entropy.label_smoothing,
            smooth_max_beta=self.smooth_max_beta,
            scaling_factor=self.scaling_factor,
            penalty_scale=self.penalty_scale,
            z_loss_scale=self.z_loss_scale,
        )

    def extra_repr(self) -> str:
        settings = [
            f"smooth_max_beta={self.smooth_max_beta}",
            f"scaling_factor={self.scaling_factor}",
            f"reduction={self.reduction!r}",
            f"penalty_scale={self.penalty_scale}",
        ]
        if self.z_loss_scale != 0.0:
            settings.append(f"z_loss_scale={self.z_loss_scale}")
        if self.cross_entropy.weight is not None:
            settings.append("weight=Tensor" + str(list(self.cross_entropy.weight.shape)))
        if self.cross_entropy.ignore_index != -100:
            settings.append(f"ignore_index={self.cross_entropy.ignore_index}")
        if self.cross_entropy.label_smoothing != 0.0:
            settings.append(f"label_smoothing={self.cross_entropy.label_smoothing}")
        return ", ".join(settings)


def _check_cross_entropy(
    cross_entropy: object, weight: Optional[Tensor], ignore_index: int, label_smoothing: float
) -> None:
    if not isinstance(cross_entropy, nn.CrossEntropyLoss):
        raise TypeError(
            validation.expected(
                "cross_entropy",
                "a class-weight tensor, an nn.CrossEntropyLoss or None",
                type(cross_entropy).__name__,
            )
        )
    if cross_entropy.reduction != "none":
        raise ValueError(
            validation.expected(
                "cross_entropy",
                'an nn.CrossEntropyLoss with reduction="none" (FairLoss adds the penalty per '
                "element, then reduces)",
                f"reduction={cross_entropy.reduction!r}",
            )
        )
    conflicts = [
        name
        for name, is_set in (
            ("weight", weight is not None),
            ("ignore_index", ignore_index != -100),
            ("label_smoothing", label_smoothing != 0.0),
        )
        if is_set
    ]
    if conflicts:
        raise ValueError(
            f"Expected either argument `cross_entropy` or the keyword(s) {conflicts}, but got "
            "both: set them on the nn.CrossEntropyLoss you pass, or pass only the keywords."
        )
    validation.check_label_smoothing(cross_entropy.label_smoothing)
