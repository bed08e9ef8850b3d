"""``nn.Module`` shells: they hold settings and make one call into :mod:`fairloss.functional`."""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import Tensor, nn

from fairloss import _validation as validation
from fairloss.functional import fair_loss, linear_fair_loss

__all__ = ["FairLoss", "LinearFairLoss"]


class FairLoss(nn.Module):
    r"""Cross-entropy plus a smooth penalty for predictions whose argmax is wrong.

    A drop-in for :class:`torch.nn.CrossEntropyLoss`. For one element with logits
    :math:`z \in \mathbb{R}^C`, reference class :math:`r` (the target index, or the argmax of a
    probability target), class weights :math:`w` (ones by default), :math:`\beta` =
    ``smooth_max_beta``, :math:`s` = ``scaling_factor``, :math:`\lambda` = ``penalty_scale``
    (:math:`1/C` when ``None``) and :math:`\zeta` = ``z_loss_scale``:

    .. math::
        \ell = \operatorname{CE}(z, y)
            + w_r\,\lambda\,\tanh\!\Big(\tfrac{s}{2}\big(\operatorname{SmoothMax}_\beta(z)
            - z_r\big)\Big) + \zeta \Big(\log\textstyle\sum_c e^{z_c}\Big)^2,
        \qquad \operatorname{SmoothMax}_\beta(z) = \tfrac{1}{\beta}\log\textstyle\sum_c
        e^{\beta z_c}

    where CE is ``F.cross_entropy(..., reduction="none")`` with the same ``weight``,
    ``ignore_index`` and ``label_smoothing``. The penalty lies in :math:`[0, \lambda)`: near 0
    when :math:`z_r` is the clear maximum, near :math:`\lambda` when another class wins (the
    release 0.1.1's ``(2 sigmoid(-s gap) - 1) / C``). ``scaling_factor=0`` or
    ``penalty_scale=0`` gives cross-entropy; ``penalty_scale=math.log(C)`` tends, as
    :math:`\beta, s` grow, to the Penalized Log Loss of Ahmadian, Ghatee & Wahlström (2025). The
    z-loss (PaLM) pulls the log-normalizer towards 0. Ignored elements have loss 0. Reductions
    as cross-entropy: ``"mean"`` divides the sum by :math:`\sum w_{y}` over non-ignored elements
    (class indices) or by the element count (probabilities).

    Like ``nn.CrossEntropyLoss(w)``, the first positional argument is the class weights, kept as
    the buffer ``weight`` (``state_dict`` key ``"weight"``; ``.to()`` moves it). As in release
    0.1.1 it may instead be an ``nn.CrossEntropyLoss(reduction="none")``, whose ``weight``,
    ``ignore_index`` and ``label_smoothing`` are taken; 0.1.1's ``"cross_entropy.weight"`` state
    dicts load.

    ``smooth_max_beta``, ``scaling_factor``, ``reduction``, ``ignore_index``,
    ``label_smoothing``, ``penalty_scale`` and ``z_loss_scale`` are :func:`fairloss.fair_loss`'s.

    Args:
        cross_entropy (Tensor or nn.CrossEntropyLoss, optional): the class weights :math:`(C)`,
            or (0.1.1) an ``nn.CrossEntropyLoss`` with ``reduction="none"``. Default: ``None``.
        weight (Tensor, optional): the class weights by keyword. Default: ``None``.

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - Target: class indices :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)`, or
          probabilities of the input's shape.
        - Output: scalar; with ``reduction="none"``, the input's shape without :math:`C`.

    Example:
        >>> import torch
        >>> from fairloss import FairLoss
        >>> criterion = FairLoss(reduction="none")
        >>> logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
        >>> criterion(logits, torch.tensor([0, 0]))  # the wrong prediction costs more
        tensor([1.0920, 1.3014])
        >>> FairLoss(torch.tensor([1.0, 2.0, 2.0])).state_dict()  # as nn.CrossEntropyLoss(w)
        OrderedDict([('weight', tensor([1., 2., 2.]))])
    """

    weight: Optional[Tensor]

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
        if isinstance(cross_entropy, nn.CrossEntropyLoss):  # release 0.1.1's form
            _check_cross_entropy(cross_entropy, weight, ignore_index, label_smoothing)
            weight, ignore_index = cross_entropy.weight, cross_entropy.ignore_index
            label_smoothing = cross_entropy.label_smoothing
        elif isinstance(cross_entropy, Tensor):  # FairLoss(w), as nn.CrossEntropyLoss(w)
            if weight is not None:
                raise ValueError(
                    "Expected the class weights once, but got both a positional weight tensor "
                    "and the keyword `weight`."
                )
            weight = cross_entropy
        elif cross_entropy is not None:
            raise TypeError(
                validation.expected(
                    "cross_entropy",
                    "a class-weight tensor, an nn.CrossEntropyLoss or None",
                    type(cross_entropy).__name__,
                )
            )
        validation.check_reduction(reduction)
        if isinstance(weight, Tensor) and weight.dim() != 1:  # C itself is known at the call
            raise ValueError(
                validation.expected(
                    "weight", "a 1-D tensor of class weights, (C,)", f"shape {tuple(weight.shape)}"
                )
            )
        if weight is not None:
            validation.check_weight(weight, len(weight))
        self.reduction = reduction
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.smooth_max_beta, self.scaling_factor = smooth_max_beta, scaling_factor
        self.penalty_scale, self.z_loss_scale = penalty_scale, z_loss_scale
        validation.resolve_options(None, **_options(self))  # raises on a bad one
        self.register_buffer("weight", weight)
        self._register_load_state_dict_pre_hook(_load_release_0_1_1_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return fair_loss(input, target, self.weight, reduction=self.reduction, **_options(self))

    def extra_repr(self) -> str:
        return _settings_repr(self, ("smooth_max_beta", "scaling_factor", "reduction"))


class LinearFairLoss(nn.Module):
    r"""A linear head :math:`z = W x + b` followed by FairLoss, never holding all the logits.

    The FairLoss counterpart of :class:`torch.nn.LinearCrossEntropyLoss`: it owns the head
    (``self.linear``, an :class:`torch.nn.Linear` of ``in_features`` to ``num_classes``) and its
    ``forward(input, target)`` calls :func:`fairloss.linear_fair_loss`, which computes the loss and
    the gradients in row chunks. Per row with target :math:`y`, the loss is :class:`FairLoss`'s
    element loss of the logits :math:`z = W x + b`, capped first at :math:`c\tanh(z/c)` when
    ``softcap`` :math:`c` is given (Gemma 2's final-logit softcapping; the gradient goes through
    the cap):

    .. math::
        \ell = \operatorname{CE}(z, y) + w_y\,\lambda\,
               \tanh\!\Big(\tfrac{s}{2}\big(\operatorname{SmoothMax}_\beta(z) - z_y\big)\Big)
               + \zeta \Big(\log\textstyle\sum_c e^{z_c}\Big)^2

    Class-index targets only, and no double backward. The class weights are the buffer
    ``weight``; ``device`` and ``dtype`` are the head's, as :class:`torch.nn.Linear`'s; the other
    keyword arguments are :func:`fairloss.linear_fair_loss`'s.

    Args:
        in_features (int): size of each input row, :math:`H`.
        num_classes (int): number of classes, :math:`C`.
        bias (bool, optional): whether the head adds a learnable bias. Default: ``False``.

    Shape:
        - Input: :math:`(*, H)`; Target: :math:`(*)`, class indices.
        - Output: scalar; with ``reduction="none"``, :math:`(*)`. With ``return_accuracy``,
          ``(output, accuracy)``.

    Example:
        >>> import torch
        >>> from fairloss import LinearFairLoss
        >>> criterion = LinearFairLoss(2, 3, reduction="none")
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
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.smooth_max_beta, self.scaling_factor = smooth_max_beta, scaling_factor
        self.penalty_scale, self.z_loss_scale = penalty_scale, z_loss_scale
        self.softcap = softcap
        validation.resolve_options(num_classes, **_options(self, "softcap"))  # raises on a bad one
        self.chunk_size = validation.check_chunk_size(chunk_size)
        self.return_accuracy = validation.check_bool("return_accuracy", return_accuracy)
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
            chunk_size=self.chunk_size,
            return_accuracy=self.return_accuracy,
            **_options(self, "softcap"),
        )

    def extra_repr(self) -> str:
        head = f"in_features={self.linear.in_features}, num_classes={self.num_classes}"
        return head + ", " + _settings_repr(self, ("reduction",))


def _options(module: nn.Module, *more: str) -> dict[str, Any]:
    """The module's math options (and the settings ``more`` names), by keyword."""
    return {name: getattr(module, name) for name in (*validation.OPTION_NAMES, *more)}


#: Settings shown by ``repr`` only where they differ from these defaults.
_DEFAULTS = {
    "smooth_max_beta": 1000.0,
    "scaling_factor": 1000.0,
    "penalty_scale": None,
    "ignore_index": -100,
    "label_smoothing": 0.0,
    "z_loss_scale": 0.0,
    "softcap": None,
    "chunk_size": None,
    "return_accuracy": False,
}


def _settings_repr(module: nn.Module, always: tuple[str, ...]) -> str:
    """``name=value`` of the settings in ``always`` and of the others not at their default."""
    names = [*always, *(name for name in _DEFAULTS if name not in always)]
    shown = [
        f"{name}={getattr(module, name)!r}"
        for name in names
        if hasattr(module, name)
        and (name in always or getattr(module, name) != _DEFAULTS.get(name))
    ]
    return ", ".join(shown)


def _load_release_0_1_1_weight(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Release 0.1.1 kept the class weights at ``cross_entropy.weight``: load them as ``weight``."""
    old_key = prefix + "cross_entropy.weight"
    if old_key in state_dict:
        state_dict[prefix + "weight"] = state_dict.pop(old_key)


def _check_cross_entropy(
    cross_entropy: nn.CrossEntropyLoss,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
) -> None:
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
