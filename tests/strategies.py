"""Hypothesis strategies for FairLoss inputs: shapes, target forms, options and dtypes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hypothesis import strategies as st
from torch import Tensor


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
    """Random logits, a target of either form, and every cross-entropy option."""
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
    return LossCase(
        logits.to(dtype),
        target.to(dtype) if probability else target,
        None if weight is None else weight.to(dtype),
        options,
    )
