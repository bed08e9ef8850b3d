"""Argument checks shared by the functional API, the modules and the metrics.

Every user error is raised here, with one message pattern:
``Expected argument `name` to be <what was expected>, but got <what was passed>.``
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch
from torch import Tensor

from fairloss._penalty import FairLossOptions

REDUCTIONS = ("mean", "sum", "none")


def expected(name: str, what: str, got: object) -> str:
    """Format the library's one error-message pattern."""
    return f"Expected argument `{name}` to be {what}, but got {got}."


def check_reduction(reduction: object) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(expected("reduction", f"one of {REDUCTIONS}", repr(reduction)))


def check_implementation(impl: object, names: tuple[str, ...]) -> None:
    if impl not in names:
        raise ValueError(expected("impl", f"one of {names}", repr(impl)))


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


def check_optional_non_negative_finite(name: str, value: object) -> Optional[float]:
    return None if value is None else check_non_negative_finite(name, value)


def check_label_smoothing(value: object) -> float:
    number = _check_real("label_smoothing", value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(expected("label_smoothing", "a number in [0, 1]", repr(value)))
    return number


def check_ignore_index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(expected("ignore_index", "an integer", f"{type(value).__name__} {value!r}"))
    return value


def check_logits(input: Tensor) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(expected("input", "a torch.Tensor", type(input).__name__))
    if not input.is_floating_point():
        raise TypeError(expected("input", "a floating point tensor of logits", input.dtype))
    if input.dim() == 0:
        raise ValueError(
            expected("input", "a tensor of shape (C,), (N, C) or (N, C, d1, ..., dk)", "a scalar")
        )


def check_weight(weight: Optional[Tensor], num_classes: int) -> None:
    if weight is None:
        return
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(expected("weight", "a floating point tensor", got))
    if weight.shape != (num_classes,):
        raise ValueError(
            expected(
                "weight", f"a tensor of shape ({num_classes},)", f"shape {tuple(weight.shape)}"
            )
        )


def is_probability_target(input: Tensor, target: Tensor) -> bool:
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
    if not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool:
        if target.shape == index_shape:
            return False
    raise ValueError(
        expected(
            "target",
            f"class indices of shape {tuple(index_shape)} (an integer tensor) or class "
            f"probabilities of shape {tuple(input.shape)} (a floating tensor, the input's shape)",
            f"a tensor of shape {tuple(target.shape)} and dtype {target.dtype}",
        )
    )


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


def check_weight_needs_no_grad(weight: Optional[Tensor]) -> None:
    """FairLoss has no gradient for class weights; like ``F.cross_entropy``, refuse to pretend."""
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            expected(
                "weight",
                "a tensor that does not require grad (FairLoss, like F.cross_entropy, is not "
                "differentiable with respect to the class weights)",
                "a tensor with requires_grad=True",
            )
        )


def resolve_options(
    num_classes: int,
    target: Tensor,
    weight: Optional[Tensor],
    *,
    compute_dtype: torch.dtype,
    probability_target: bool,
    check_targets: bool,
    ignore_index: object,
    label_smoothing: object,
    smooth_max_beta: object,
    scaling_factor: object,
    penalty_scale: object,
) -> FairLossOptions:
    """Check the options every FairLoss entry point shares and resolve them for ``C`` classes.

    ``penalty_scale=None`` becomes ``1 / C`` (0 without classes). ``smooth_max_beta`` and
    ``scaling_factor`` are capped at the largest finite number of ``compute_dtype``: beyond it
    the loss no longer changes there, and the number itself would overflow to ``inf``.
    ``check_targets`` checks class indices against ``[0, C)`` (on CPU tensors only).
    """
    check_weight(weight, num_classes)
    check_weight_needs_no_grad(weight)
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
    if check_targets and not probability_target:
        check_class_indices(target, num_classes, checked_ignore_index)
    resolved_scale = check_optional_non_negative_finite("penalty_scale", penalty_scale)
    if resolved_scale is None:
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
        probability_target=probability_target,
    )


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


def check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        got = f"{type(chunk_size).__name__} {chunk_size!r}"
        raise TypeError(expected("chunk_size", "None or an integer", got))
    if chunk_size < 1:
        raise ValueError(expected("chunk_size", "None or an integer >= 1", chunk_size))
    return chunk_size
