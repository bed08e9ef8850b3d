"""Argument checks for every entry point, and the one resolved options object they pass inward.

Every user error is raised here, with one message pattern:
``Expected argument `name` to be <what was expected>, but got <what was passed>.``
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Optional

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")

#: The values of the ``impl`` argument of :func:`fairloss.fair_loss` (see
#: :func:`fairloss._impl.select`).
IMPLEMENTATIONS = ("auto", "sparse", "dense", "composite")

#: The math options every entry point takes by keyword (:func:`resolve_options`'s), in order.
OPTION_NAMES = (
    "ignore_index",
    "label_smoothing",
    "smooth_max_beta",
    "scaling_factor",
    "penalty_scale",
    "z_loss_scale",
)


@dataclass(frozen=True)
class FairLossOptions:
    """The math options of one FairLoss call, checked and resolved (see :func:`resolve_options`).

    ``penalty_scale`` is None only where the number of classes is known on the device alone (the
    vocab-parallel loss): the penalty is then divided by it there. ``smooth_max_beta`` and
    ``scaling_factor`` are capped at the largest finite number of the compute dtype (a larger one
    gives the same loss there, and would overflow to ``inf``). ``softcap`` applies to the linear
    head's logits only. How the loss is computed (``impl``, ``chunk_size``) is not an option here.
    """

    ignore_index: int = -100
    label_smoothing: float = 0.0
    smooth_max_beta: float = 1000.0
    scaling_factor: float = 1000.0
    penalty_scale: Optional[float] = None
    z_loss_scale: float = 0.0
    softcap: Optional[float] = None
    probability_target: bool = False

    @property
    def penalty_is_off(self) -> bool:
        """``scaling_factor == 0`` or ``penalty_scale == 0``: the loss is cross-entropy."""
        return self.scaling_factor == 0.0 or self.penalty_scale == 0.0


def expected(name: str, what: str, got: object) -> str:
    """Format the library's one error-message pattern."""
    return f"Expected argument `{name}` to be {what}, but got {got}."


def check_option_names(options: Mapping[str, object], allowed: tuple[str, ...], to: str) -> None:
    """Refuse keyword options that ``to`` (a function's name) does not take."""
    for name in options:
        if name not in allowed:
            raise TypeError(
                expected("options", f"keyword arguments of {to}, among {allowed}", repr(name))
            )


def check_reduction(reduction: object) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(expected("reduction", f"one of {REDUCTIONS}", repr(reduction)))


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(expected(name, f"one of {choices}", repr(value)))


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(expected(name, "a bool", f"{type(value).__name__} {value!r}"))
    return value


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(expected(name, "a real number", f"{type(value).__name__} {value!r}"))
    return float(value)


# Comparisons rather than math.isfinite: under torch.compile(dynamic=True) the number may be a
# symbolic float, which comparisons accept.


def check_positive_finite(name: str, value: object) -> float:
    number = _check_real(name, value)
    if not 0 < number < math.inf:
        raise ValueError(expected(name, "a finite number larger than 0", repr(value)))
    return number


def check_non_negative_finite(name: str, value: object) -> float:
    number = _check_real(name, value)
    if not 0 <= number < math.inf:
        raise ValueError(expected(name, "a finite number larger than or equal to 0", repr(value)))
    return number


def check_label_smoothing(value: object) -> float:
    number = _check_real("label_smoothing", value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(expected("label_smoothing", "a number in [0, 1]", repr(value)))
    return number


def check_ignore_index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(expected("ignore_index", "an integer", f"{type(value).__name__} {value!r}"))
    return value


def check_chunk_size(chunk_size: object) -> Optional[int]:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        got = f"{type(chunk_size).__name__} {chunk_size!r}"
        raise TypeError(expected("chunk_size", "None or an integer", got))
    if chunk_size < 1:
        raise ValueError(expected("chunk_size", "None or an integer >= 1", chunk_size))
    return chunk_size


def resolve_options(
    num_classes: Optional[int],
    *,
    compute_dtype: torch.dtype = torch.float32,
    probability_target: bool = False,
    ignore_index: object = -100,
    label_smoothing: object = 0.0,
    smooth_max_beta: object = 1000.0,
    scaling_factor: object = 1000.0,
    penalty_scale: object = None,
    z_loss_scale: object = 0.0,
    softcap: object = None,
) -> FairLossOptions:
    """Check the math options every entry point shares and resolve them for ``C`` classes.

    ``penalty_scale=None`` becomes ``1 / C`` (0 without classes); with ``num_classes=None`` (the
    vocab-parallel loss, where ``C`` is known on the device only) it stays None.
    """
    checked_ignore_index = check_ignore_index(ignore_index)
    if probability_target and checked_ignore_index != -100:
        raise ValueError(
            expected(
                "ignore_index",
                "-100 (the default) with class-probability targets, which have no index to "
                "ignore (as F.cross_entropy)",
                checked_ignore_index,
            )
        )
    resolved_scale = None
    if penalty_scale is not None:
        resolved_scale = check_non_negative_finite("penalty_scale", penalty_scale)
    elif num_classes is not None:
        resolved_scale = 1.0 / num_classes if num_classes else 0.0
    largest = torch.finfo(compute_dtype).max
    beta = check_positive_finite("smooth_max_beta", smooth_max_beta)
    scale = check_non_negative_finite("scaling_factor", scaling_factor)
    return FairLossOptions(
        ignore_index=checked_ignore_index,
        label_smoothing=check_label_smoothing(label_smoothing),
        smooth_max_beta=min(beta, largest),
        scaling_factor=min(scale, largest),
        penalty_scale=resolved_scale,
        z_loss_scale=check_non_negative_finite("z_loss_scale", z_loss_scale),
        softcap=None if softcap is None else check_positive_finite("softcap", softcap),
        probability_target=probability_target,
    )


def check_logits(input: object, name: str = "input") -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(expected(name, "a torch.Tensor", type(input).__name__))
    if not input.is_floating_point():
        raise TypeError(expected(name, "a floating point tensor of logits", input.dtype))
    if input.dim() == 0:
        raise ValueError(
            expected(name, "a tensor of shape (C,), (N, C) or (N, C, d1, ..., dk)", "a scalar")
        )
    return input


def check_weight(weight: Optional[Tensor], num_classes: int, name: str = "weight") -> None:
    """Class weights: None, or a floating ``(C,)`` tensor."""
    if weight is None:
        return
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(expected(name, "a floating point tensor", got))
    if weight.shape != (num_classes,):
        raise ValueError(
            expected(name, f"a tensor of shape ({num_classes},)", f"shape {tuple(weight.shape)}")
        )


def check_weight_needs_no_grad(weight: Optional[Tensor], name: str = "weight") -> None:
    """FairLoss has no gradient for class weights; like ``F.cross_entropy``, refuse to pretend."""
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            expected(
                name,
                "a tensor that does not require grad (FairLoss, like F.cross_entropy, is not "
                "differentiable with respect to the class weights)",
                "a tensor with requires_grad=True",
            )
        )


def is_probability_target(input: Tensor, target: object) -> bool:
    """Tell which of ``F.cross_entropy``'s two target forms ``target`` has, or raise.

    Class indices: an integer tensor shaped like ``input`` without the class dimension.
    Class probabilities: a floating tensor shaped like ``input``.
    """
    if not isinstance(target, Tensor):
        raise TypeError(expected("target", "a torch.Tensor", type(target).__name__))
    class_dim = 0 if input.dim() == 1 else 1
    index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if target.is_floating_point() and target.shape == input.shape:
        return True
    if _is_integer(target) and target.shape == index_shape:
        return False
    raise ValueError(
        expected(
            "target",
            f"class indices of shape {tuple(index_shape)} (an integer tensor) or class "
            f"probabilities of shape {tuple(input.shape)} (a floating tensor, the input's shape)",
            f"a tensor of shape {tuple(target.shape)} and dtype {target.dtype}",
        )
    )


def _is_integer(tensor: Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def check_index_target(
    target: object, shape: tuple[int, ...], why: str, what: str = "class indices"
) -> Tensor:
    """Class indices of ``shape``, for the entry points without probability targets (``why``)."""
    if not isinstance(target, Tensor) or not _is_integer(target):
        got = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(expected("target", f"{what}, an integer tensor ({why})", got))
    if target.shape != shape:
        raise ValueError(
            expected("target", f"a tensor of shape {shape}", f"shape {tuple(target.shape)}")
        )
    return target


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Check that class indices lie in ``[0, num_classes)`` or equal ``ignore_index``.

    Only CPU tensors are checked: on an accelerator the check would force a device sync.
    """
    if target.device.type != "cpu" or target.numel() == 0:
        return
    smallest, largest = (int(bound) for bound in torch.aminmax(target))
    if 0 <= smallest and largest < num_classes:  # one pass in the common case
        return
    out_of_range = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(out_of_range.any()):
        bad_value = int(target[out_of_range][0])
        raise ValueError(
            expected(
                "target",
                f"class indices in [0, {num_classes}) or ignore_index={ignore_index}",
                f"the value {bad_value}",
            )
        )


def check_head(
    input: object, linear_weight: object, linear_bias: object, prefix: str = ""
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """A linear head's input ``(*, H)``, weight ``(V, H)`` and bias ``(V,)``, of one dtype.

    ``prefix`` names the head's arguments (``"local_"`` for a vocab-parallel slice).
    """
    if not isinstance(input, Tensor) or not input.is_floating_point():
        got = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise TypeError(expected("input", "a floating point tensor", got))
    if input.dim() == 0:
        raise ValueError(expected("input", "a tensor of shape (*, H)", "a scalar"))
    weight_name, bias_name = f"{prefix}linear_weight", f"{prefix}linear_bias"
    for name, tensor in ((weight_name, linear_weight), (bias_name, linear_bias)):
        if tensor is None and name == bias_name:
            continue
        if not isinstance(tensor, Tensor) or tensor.dtype != input.dtype:
            got = tensor.dtype if isinstance(tensor, Tensor) else type(tensor).__name__
            raise TypeError(expected(name, f"a tensor of the input's dtype {input.dtype}", got))
    assert isinstance(linear_weight, Tensor)  # checked above
    hidden_size = input.shape[-1]
    if linear_weight.dim() != 2 or linear_weight.shape[1] != hidden_size:
        raise ValueError(
            expected(
                weight_name,
                f"a tensor of shape (V, {hidden_size}) for input of shape {tuple(input.shape)}",
                f"shape {tuple(linear_weight.shape)}",
            )
        )
    if isinstance(linear_bias, Tensor) and linear_bias.shape != (linear_weight.shape[0],):
        raise ValueError(
            expected(
                bias_name,
                f"None or a tensor of shape ({linear_weight.shape[0]},)",
                f"shape {tuple(linear_bias.shape)}",
            )
        )
    return input, linear_weight, linear_bias if isinstance(linear_bias, Tensor) else None


def output_dtype(input: Tensor) -> torch.dtype:
    """The result's dtype: ``input``'s, or float32 for half precision under ``torch.autocast``.

    Autocast runs cross-entropy in float32 and returns float32; FairLoss does the same.
    """
    device_type = input.device.type
    if input.dtype not in (torch.float16, torch.bfloat16):
        return input.dtype
    # Devices without autocast (meta) make is_autocast_enabled raise.
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.float32
    return input.dtype
