r"""The losses that ``python -m experiments compare`` and ``study`` train with, chosen by a spec.

A loss spec is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``, for example ``ce``,
``focal:gamma=2`` or ``fairloss:scaling_factor=10,smooth_max_beta=10``. :func:`parse_loss_spec`
turns the text into a :class:`LossSpec`; :func:`make_loss` turns a spec into a loss function for a
given number of classes. Every key has a default, so ``NAME`` alone is a complete spec.

``penalty_scale`` (of ``fairloss`` and ``fairloss-pll``) takes a number or one of two symbols
resolved with the number of classes :math:`C`: ``1/C`` (FairLoss's default) and ``logC`` (the
Penalized Log Loss's constant, :math:`\log C`).

The two outside baselines live here as plain functions (they are points of comparison, not part of
the library's loss API): :func:`focal_loss` (Lin et al., 2017) and :func:`poly1_loss` (Leng et
al., 2022).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Union

import torch.nn.functional as F
from torch import Tensor

from experiments.checks import expected
from fairloss.functional import fair_loss

__all__ = [
    "LOSSES",
    "PENALTY_SCALE_SYMBOLS",
    "LossDefinition",
    "LossFunction",
    "LossParameter",
    "LossSpec",
    "focal_loss",
    "make_loss",
    "parse_loss_spec",
    "poly1_loss",
]

LossFunction = Callable[[Tensor, Tensor], Tensor]
"""Logits ``(N, C)`` and class indices ``(N,)`` to a scalar mean loss."""

ParameterValue = Union[float, str]
"""A parsed option value: a number, or a symbol such as ``"logC"`` resolved per class count."""

PENALTY_SCALE_SYMBOLS = ("1/C", "logC")
"""Symbolic ``penalty_scale`` values: :math:`1/C` and :math:`\\log C`."""


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    r"""Multi-class focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection").

    .. math::
        \ell = -(1 - p_y)^{\gamma} \log p_y, \qquad p = \operatorname{softmax}(z)

    averaged over the batch. ``gamma=0`` is cross-entropy. Computed from the per-row
    cross-entropy :math:`c = -\log p_y` as ``(-expm1(-c)) ** gamma * c``, so :math:`1 - p_y`
    keeps its precision when :math:`p_y` is close to 1.

    Args:
        logits (Tensor): unnormalized scores, shape :math:`(N, C)`.
        target (Tensor): class indices, shape :math:`(N,)`.
        gamma (float, optional): the focusing exponent :math:`\gamma \ge 0`. Default: ``2.0``.

    Returns:
        Tensor: the mean loss, a scalar.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1])
        >>> print(f"{focal_loss(logits, target, gamma=2.0):.4f}")
        1.7879
    """
    cross_entropy = F.cross_entropy(logits, target, reduction="none")
    wrong_mass = -(-cross_entropy).expm1()
    return (wrong_mass.pow(gamma) * cross_entropy).mean()


def poly1_loss(logits: Tensor, target: Tensor, epsilon: float = 1.0) -> Tensor:
    r"""Poly-1 loss (Leng et al., 2022, "PolyLoss: A Polynomial Expansion Perspective ...").

    .. math::
        \ell = -\log p_y + \epsilon\,(1 - p_y), \qquad p = \operatorname{softmax}(z)

    averaged over the batch. ``epsilon=0`` is cross-entropy.

    Args:
        logits (Tensor): unnormalized scores, shape :math:`(N, C)`.
        target (Tensor): class indices, shape :math:`(N,)`.
        epsilon (float, optional): the weight :math:`\epsilon \ge -1` of the first polynomial
            term. Default: ``1.0``.

    Returns:
        Tensor: the mean loss, a scalar.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1])
        >>> print(f"{poly1_loss(logits, target, epsilon=1.0):.4f}")
        3.1330
    """
    cross_entropy = F.cross_entropy(logits, target, reduction="none")
    return (cross_entropy - epsilon * (-cross_entropy).expm1()).mean()


@dataclass(frozen=True)
class LossParameter:
    """One key a loss spec may set.

    Attributes:
        description (str): what it is, for ``--help``.
        default (ParameterValue): the value when the spec leaves the key out.
        parse (Callable[[str, str], ParameterValue]): the key and its text to a checked value;
            raises ``ValueError`` naming the key for a bad value.
    """

    description: str
    default: ParameterValue
    parse: Callable[[str, str], ParameterValue]


@dataclass(frozen=True)
class LossDefinition:
    """A named loss: a one-line description, its keys, and a factory.

    ``make(num_classes, options)`` receives every key of ``parameters``, defaults filled in.
    """

    description: str
    parameters: Mapping[str, LossParameter]
    make: Callable[[int, Mapping[str, ParameterValue]], LossFunction]


def _number(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(expected(key, "a number", repr(text))) from None


def _non_negative(key: str, text: str) -> ParameterValue:
    value = _number(key, text)
    if not 0 <= value < math.inf:
        raise ValueError(expected(key, "a finite number larger than or equal to 0", repr(value)))
    return value


def _positive(key: str, text: str) -> ParameterValue:
    value = _number(key, text)
    if not 0 < value < math.inf:
        raise ValueError(expected(key, "a finite number larger than 0", repr(value)))
    return value


def _label_smoothing(key: str, text: str) -> ParameterValue:
    value = _number(key, text)
    if not 0 <= value <= 1:
        raise ValueError(expected(key, "a number in [0, 1]", repr(value)))
    return value


def _poly_epsilon(key: str, text: str) -> ParameterValue:
    value = _number(key, text)
    if not -1.0 <= value < math.inf:
        raise ValueError(expected(key, "a finite number of at least -1", repr(text)))
    return value


def _penalty_scale(key: str, text: str) -> ParameterValue:
    symbol = text.replace(" ", "").replace("log(C)", "logC")
    if symbol in PENALTY_SCALE_SYMBOLS:
        return symbol
    try:
        return _non_negative(key, text)
    except ValueError:
        raise ValueError(
            expected(key, f"a finite number >= 0 or one of {PENALTY_SCALE_SYMBOLS}", repr(text))
        ) from None


def resolve_penalty_scale(value: ParameterValue, num_classes: int) -> float:
    """A ``penalty_scale`` option as a number: ``1/C`` and ``logC`` resolved for ``num_classes``.

    Example:
        >>> resolve_penalty_scale("logC", 10), resolve_penalty_scale("1/C", 4)
        (2.302585092994046, 0.25)
    """
    if value == "1/C":
        return 1.0 / num_classes
    if value == "logC":
        return math.log(num_classes)
    return float(value)


def _make_fair_loss(num_classes: int, options: Mapping[str, ParameterValue]) -> LossFunction:
    penalty_scale = resolve_penalty_scale(options["penalty_scale"], num_classes)
    scaling_factor = float(options["scaling_factor"])
    smooth_max_beta = float(options["smooth_max_beta"])
    label_smoothing = float(options["label_smoothing"])

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return fair_loss(
            logits,
            target,
            penalty_scale=penalty_scale,
            scaling_factor=scaling_factor,
            smooth_max_beta=smooth_max_beta,
            label_smoothing=label_smoothing,
        )

    return loss


def _make_cross_entropy(num_classes: int, options: Mapping[str, ParameterValue]) -> LossFunction:
    label_smoothing = float(options["label_smoothing"])
    if label_smoothing == 0.0:
        return F.cross_entropy

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    return loss


def _make_focal(num_classes: int, options: Mapping[str, ParameterValue]) -> LossFunction:
    gamma = float(options["gamma"])
    return lambda logits, target: focal_loss(logits, target, gamma=gamma)


def _make_poly1(num_classes: int, options: Mapping[str, ParameterValue]) -> LossFunction:
    epsilon = float(options["epsilon"])
    return lambda logits, target: poly1_loss(logits, target, epsilon=epsilon)


def _fair_loss_parameters(penalty_scale: str) -> dict[str, LossParameter]:
    return {
        "scaling_factor": LossParameter("s, the tanh's slope (>= 0)", 1000.0, _non_negative),
        "smooth_max_beta": LossParameter("beta, the SmoothMax sharpness (> 0)", 1000.0, _positive),
        "penalty_scale": LossParameter(
            "lambda, the penalty's height: a number >= 0, 1/C or logC",
            penalty_scale,
            _penalty_scale,
        ),
        "label_smoothing": LossParameter("label smoothing in [0, 1]", 0.0, _label_smoothing),
    }


LOSSES: dict[str, LossDefinition] = {
    "ce": LossDefinition(
        "cross-entropy (F.cross_entropy)",
        {"label_smoothing": LossParameter("label smoothing in [0, 1]", 0.0, _label_smoothing)},
        _make_cross_entropy,
    ),
    "fairloss": LossDefinition(
        "FairLoss, by default with its library defaults (penalty_scale = 1/C)",
        _fair_loss_parameters("1/C"),
        _make_fair_loss,
    ),
    "fairloss-pll": LossDefinition(
        "FairLoss with penalty_scale = logC by default: a smooth Penalized Log Loss",
        _fair_loss_parameters("logC"),
        _make_fair_loss,
    ),
    "ce-label-smoothing": LossDefinition(
        "cross-entropy with label_smoothing=0.1 by default",
        {"label_smoothing": LossParameter("label smoothing in [0, 1]", 0.1, _label_smoothing)},
        _make_cross_entropy,
    ),
    "focal": LossDefinition(
        "multi-class focal loss -(1 - p_y)^gamma log p_y (Lin et al. 2017)",
        {"gamma": LossParameter("the focusing exponent (>= 0)", 2.0, _non_negative)},
        _make_focal,
    ),
    "poly1": LossDefinition(
        "Poly-1: cross-entropy + epsilon (1 - p_y) (Leng et al. 2022)",
        {"epsilon": LossParameter("the weight of (1 - p_y) (>= -1)", 1.0, _poly_epsilon)},
        _make_poly1,
    ),
}


def _format_value(value: ParameterValue) -> str:
    return value if isinstance(value, str) else f"{value:g}"


@dataclass(frozen=True)
class LossSpec:
    """A loss by name, with the keys the spec set (in the order given; unset keys default).

    ``str(spec)`` is the spec's canonical text: numbers printed with ``:g``, so
    ``fairloss:scaling_factor=10.0`` and ``fairloss:scaling_factor=10`` are the same spec.

    Example:
        >>> spec = parse_loss_spec("fairloss:scaling_factor=10.0,penalty_scale=logC")
        >>> str(spec), spec.option("smooth_max_beta")
        ('fairloss:scaling_factor=10,penalty_scale=logC', 1000.0)
    """

    name: str
    options: tuple[tuple[str, ParameterValue], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        settings = ",".join(f"{key}={_format_value(value)}" for key, value in self.options)
        return f"{self.name}:{settings}"

    def option(self, key: str) -> ParameterValue:
        """The value of ``key``: the one the spec set, or the loss's default."""
        definition = LOSSES[self.name]
        if key not in definition.parameters:
            raise ValueError(expected("key", f"one of {tuple(definition.parameters)}", repr(key)))
        return dict(self.options).get(key, definition.parameters[key].default)

    def resolved_options(self) -> dict[str, ParameterValue]:
        """Every key of the loss, with its value: set or default."""
        return {key: self.option(key) for key in LOSSES[self.name].parameters}


def _spec_error(text: str, what: str, got: str) -> ValueError:
    return ValueError(expected("losses", what, f"{got} in {text!r}"))


def parse_loss_spec(text: str) -> LossSpec:
    """Parse ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` into a :class:`LossSpec`.

    Args:
        text (str): the spec. ``NAME`` is a key of :data:`LOSSES`; each ``KEY`` one of that
            loss's parameters, at most once; each ``VALUE`` a number (or, for ``penalty_scale``,
            ``1/C`` or ``logC``).

    Raises:
        ValueError: an unknown name or key, a repeated key, a malformed ``KEY=VALUE``, or a value
            out of range; the message names the offending part.

    Example:
        >>> parse_loss_spec("focal:gamma=1.5")
        LossSpec(name='focal', options=(('gamma', 1.5),))
        >>> parse_loss_spec("focal:beta=2")
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `losses` to be a key of 'focal', one of ('gamma',), but \
got the key 'beta' in 'focal:beta=2'.
    """
    name, separator, settings = text.strip().partition(":")
    if name not in LOSSES:
        raise _spec_error(
            text,
            f"a loss spec NAME[:KEY=VALUE,...] with NAME one of {tuple(LOSSES)}",
            f"the name {name!r}",
        )
    parameters = LOSSES[name].parameters
    options: dict[str, ParameterValue] = {}
    if separator:
        for setting in settings.split(","):
            key, equals, value = (part.strip() for part in setting.partition("="))
            if not equals or not key or not value:
                raise _spec_error(
                    text, "KEY=VALUE settings separated by commas", f"the setting {setting!r}"
                )
            if key not in parameters:
                raise _spec_error(
                    text, f"a key of {name!r}, one of {tuple(parameters)}", f"the key {key!r}"
                )
            if key in options:
                raise _spec_error(text, "each key at most once", f"the key {key!r} twice")
            options[key] = parameters[key].parse(key, value)
    return LossSpec(name, tuple(options.items()))


def describe_losses() -> str:
    """Every loss name with its description and keys (defaults in brackets), for ``--help``."""
    entries = []
    for name, definition in LOSSES.items():
        keys = ", ".join(
            f"{key} [{_format_value(parameter.default)}]"
            for key, parameter in definition.parameters.items()
        )
        entries.append(f"{name}: {definition.description}; keys: {keys}")
    return "; ".join(entries)


def make_loss(spec: Union[LossSpec, str], num_classes: int) -> LossFunction:
    """The loss function a spec names, for ``num_classes`` classes.

    Args:
        spec (LossSpec or str): a parsed spec, or its text (see :func:`parse_loss_spec`).
        num_classes (int): the number of classes :math:`C`.

    Raises:
        ValueError: an unknown name or key, or a bad value.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([1])
        >>> print(f"{make_loss('ce', 3)(logits, target):.4f}")
        2.2395
        >>> print(f"{make_loss('fairloss-pll', 3)(logits, target):.4f}")
        3.3382
        >>> print(f"{make_loss('fairloss:penalty_scale=logC', 3)(logits, target):.4f}")
        3.3382
    """
    parsed = parse_loss_spec(spec) if isinstance(spec, str) else spec
    return LOSSES[parsed.name].make(num_classes, parsed.resolved_options())
