"""Hypothesis strategies for FairLoss inputs: shapes, target forms, options and dtypes.

:func:`loss_cases` draws logits for :func:`fairloss.fair_loss`, :func:`head_cases` hidden states
and a linear head for :func:`fairloss.linear_fair_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hypothesis import strategies as st
from torch import Tensor

from fairloss import linear_fair_loss


@dataclass
class LossCase:
    input: Tensor
    target: Tensor
    weight: Optional[Tensor]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.input.shape[0 if self.input.dim() == 1 else 1]


@st.composite
def loss_cases(
    draw: st.DrawFn,
    *,
    dtype: torch.dtype = torch.float32,
    allow_probability_targets: bool = True,
    max_scaling_factor: float = 1000.0,
) -> LossCase:
    """Random logits, a target of either form, every cross-entropy option and the z-loss."""
    num_classes = draw(st.sampled_from([1, 2, 3, 5, 7, 13, 31]))
    layout = draw(st.sampled_from(["unbatched", "batched", "kdim"]))
    batch = draw(st.integers(0, 6))
    if layout == "unbatched":
        shape: tuple[int, ...] = (num_classes,)
    elif layout == "batched":
        shape = (batch, num_classes)
    else:
        shape = (batch, num_classes, *draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    logit_scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 8.0, 50.0]))
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * logit_scale
    if draw(st.booleans()):  # exact ties, common after ReLU/quantization
        logits = logits.round(decimals=1)

    probability = allow_probability_targets and draw(st.booleans())
    options: dict[str, Any] = {}
    if probability:
        target = torch.softmax(
            torch.randn(shape, generator=generator, dtype=torch.float64) * 3,
            1 if len(shape) > 1 else 0,
        )
    else:
        index_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
        target = torch.randint(0, num_classes, index_shape, generator=generator)
        if draw(st.booleans()):
            ignore_index = draw(st.sampled_from([-100, 0, num_classes - 1, 255]))
            drop = torch.rand(index_shape, generator=generator) < 0.3
            target = target.masked_fill(drop, ignore_index)
            options["ignore_index"] = ignore_index
    weight = None
    if draw(st.booleans()):
        weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) * 2 + 0.05
    if draw(st.booleans()):
        options["label_smoothing"] = draw(st.sampled_from([0.05, 0.3, 1.0]))
    options["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    options["smooth_max_beta"] = draw(st.sampled_from([0.5, 3.0, 40.0, 1000.0]))
    scales = [s for s in (0.0, 1.0, 20.0, 1000.0) if s <= max_scaling_factor]
    options["scaling_factor"] = draw(st.sampled_from(scales))
    options["penalty_scale"] = draw(
        st.sampled_from([None, 0.0, 0.5, math.log(max(num_classes, 2))])
    )
    options["z_loss_scale"] = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.2]))
    return LossCase(
        logits.to(dtype),
        target.to(dtype) if probability else target,
        None if weight is None else weight.to(dtype),
        options,
    )


@dataclass
class HeadCase:
    """A linear head's call: ``linear_fair_loss(input, linear_weight, target, ...)``."""

    input: Tensor  # (*, H)
    linear_weight: Tensor  # (V, H)
    linear_bias: Optional[Tensor]
    target: Tensor  # (*)
    weight: Optional[Tensor]
    options: dict[str, Any] = field(default_factory=dict)

    def leaves(self) -> list[Tensor]:
        tensors = [self.input, self.linear_weight, self.linear_bias]
        return [tensor for tensor in tensors if tensor is not None]

    def loss(self, **overrides: Any) -> Tensor:
        """``linear_fair_loss`` of the case, its options updated by ``overrides``."""
        options = {**self.options, **overrides}
        return linear_fair_loss(
            self.input,
            self.linear_weight,
            self.target,
            linear_bias=self.linear_bias,
            weight=self.weight,
            **options,
        )


def value_and_grads(loss: Tensor, leaves: list[Tensor], seed: int = 0) -> list[Tensor]:
    """``[loss, *gradients of leaves]`` under a random upstream gradient in ``[0.5, 1.5)``
    (zeros for leaves the loss does not reach)."""
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.rand(loss.shape, generator=generator, dtype=torch.float64) + 0.5
    if loss.numel() == 0 or not loss.requires_grad:
        return [loss.detach()] + [torch.zeros_like(leaf) for leaf in leaves]
    grads = torch.autograd.grad(loss, leaves, upstream.to(loss.dtype), allow_unused=True)
    zeros = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
    return [loss.detach(), *zeros]


@st.composite
def head_cases(
    draw: st.DrawFn, dtype: torch.dtype = torch.float64, max_scaling_factor: float = 1000.0
) -> HeadCase:
    """Random hidden states, head, targets with ignored rows, and every option (``chunk_size``
    included; the leaves require grad)."""
    num_classes = draw(st.sampled_from([1, 2, 3, 7, 31, 64]))
    hidden_size = draw(st.sampled_from([1, 2, 5, 16]))
    layout = draw(st.sampled_from(["unbatched", "rows", "sequence"]))
    if layout == "unbatched":
        leading: tuple[int, ...] = ()
    elif layout == "rows":
        leading = (draw(st.integers(0, 40)),)
    else:
        leading = (draw(st.integers(1, 3)), draw(st.integers(1, 9)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.01, 1.0, 6.0]))
    hidden = torch.randn(*leading, hidden_size, generator=generator, dtype=torch.float64)
    head = torch.randn(num_classes, hidden_size, generator=generator, dtype=torch.float64)
    head = head * scale
    bias = None
    if draw(st.booleans()):
        bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, num_classes, leading, generator=generator)
    options: dict[str, Any] = {}
    pattern = draw(st.sampled_from(["none", "some", "all", "inside-range"]))
    if pattern != "none":
        ignore_index = 0 if pattern == "inside-range" else draw(st.sampled_from([-100, 255]))
        share = 1.0 if pattern == "all" else 0.4
        drop = torch.rand(leading, generator=generator) < share
        target = target.masked_fill(drop, ignore_index)
        options["ignore_index"] = ignore_index
    weight = None
    if draw(st.booleans()):
        weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.5
    if draw(st.booleans()):
        options["label_smoothing"] = draw(st.sampled_from([0.1, 1.0]))
    options["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    options["smooth_max_beta"] = draw(st.sampled_from([2.0, 1000.0]))
    scales = [scale for scale in (0.0, 3.0, 1000.0) if scale <= max_scaling_factor]
    options["scaling_factor"] = draw(st.sampled_from(scales))
    options["penalty_scale"] = draw(st.sampled_from([None, 1.6]))
    options["chunk_size"] = draw(st.sampled_from([None, 1, 2, 3, 7, 64]))

    def leaf(tensor: Optional[Tensor]) -> Optional[Tensor]:
        return None if tensor is None else tensor.to(dtype).requires_grad_()

    return HeadCase(
        leaf(hidden),  # type: ignore[arg-type]
        leaf(head),  # type: ignore[arg-type]
        leaf(bias),
        target,
        None if weight is None else weight.to(dtype),
        options,
    )
