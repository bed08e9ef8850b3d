"""The benchmark grid: one :class:`Case` per input shape, dtype, logit kind and option set."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "OPTIONS",
    "Case",
    "CaseInputs",
    "default_grid",
    "loss_options",
    "make_inputs",
    "quick_grid",
    "target_win_rate",
]

#: Option sets; each maps to the keyword arguments shared by ``F.cross_entropy`` and ``fair_loss``.
OPTIONS = ("default", "weight", "ignore_index", "label_smoothing")

IGNORE_INDEX = -100
IGNORED_FRACTION = 0.1
LABEL_SMOOTHING = 0.1
#: Logit margin of the target class in "trained-like" logits: ``randn + margin * onehot(target)``.
TRAINED_MARGIN = 5.0


@dataclass(frozen=True)
class Case:
    """One benchmark input: logits of shape ``(n, classes, *spatial)`` and class-index targets.

    ``logits`` is ``"random"`` (``randn * scale``: the target is rarely the argmax) or
    ``"trained"`` (``randn + 5 * onehot(target)``: the target wins most rows by a clear margin,
    95% of them at C = 1000; the dear case for a penalty that skips the rows it saturates).
    """

    n: int
    classes: int
    spatial: tuple[int, ...] = ()
    dtype: str = "float32"
    logits: str = "random"
    options: str = "default"
    scale: float = 1.0
    time: bool = True
    memory: bool = True

    @property
    def name(self) -> str:
        """A short unique label such as ``4096x1000 bfloat16`` or ``16x21x64x64``."""
        parts = ["x".join(str(size) for size in (self.n, self.classes, *self.spatial))]
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.logits != "random":
            parts.append(f"{self.logits}-like")
        if self.options != "default":
            parts.append(self.options)
        return " ".join(parts)

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"Expected argument `dtype` to be a floating torch dtype name, "
                f"but got {self.dtype!r}."
            )
        return dtype

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Case:
        fields: dict[str, Any] = json.loads(text)
        fields["spatial"] = tuple(fields.get("spatial", ()))
        return cls(**fields)


class CaseInputs(NamedTuple):
    """Logits (a leaf that requires grad), targets and the optional class weight of a case."""

    logits: Tensor
    target: Tensor
    weight: Optional[Tensor]


def make_inputs(case: Case, seed: int = 0) -> CaseInputs:
    """Build the case's inputs deterministically from ``seed``."""
    if case.options not in OPTIONS:
        raise ValueError(
            f"Expected argument `options` to be one of {OPTIONS}, but got {case.options!r}."
        )
    generator = torch.Generator().manual_seed(seed)
    logit_shape = (case.n, case.classes, *case.spatial)
    target_shape = (case.n, *case.spatial)
    target = torch.randint(0, case.classes, target_shape, generator=generator)
    logits = torch.randn(logit_shape, generator=generator)
    if case.logits == "random":
        logits.mul_(case.scale)
    elif case.logits == "trained":
        margin = torch.full(target.unsqueeze(1).shape, TRAINED_MARGIN)
        logits.scatter_add_(1, target.unsqueeze(1), margin)
    else:
        raise ValueError(
            "Expected argument `logits` to be one of ('random', 'trained'), "
            f"but got {case.logits!r}."
        )
    weight = None
    if case.options == "weight":
        weight = torch.rand(case.classes, generator=generator).add_(0.5).to(case.torch_dtype)
    elif case.options == "ignore_index":
        ignored = torch.rand(target_shape, generator=generator) < IGNORED_FRACTION
        target.masked_fill_(ignored, IGNORE_INDEX)
    logits = logits.to(case.torch_dtype).requires_grad_(True)
    return CaseInputs(logits, target, weight)


def target_win_rate(inputs: CaseInputs) -> float:
    """The fraction of non-ignored elements whose target class has the largest logit."""
    counted = inputs.target != IGNORE_INDEX
    wins = (inputs.logits.detach().argmax(dim=1) == inputs.target) & counted
    return float(wins.sum()) / max(1, int(counted.sum()))


def loss_options(case: Case, inputs: CaseInputs) -> dict[str, Any]:
    """Keyword arguments shared by ``F.cross_entropy`` and ``fairloss.fair_loss`` for the case."""
    options: dict[str, Any] = {}
    if inputs.weight is not None:
        options["weight"] = inputs.weight
    if case.options == "ignore_index":
        options["ignore_index"] = IGNORE_INDEX
    if case.options == "label_smoothing":
        options["label_smoothing"] = LABEL_SMOOTHING
    return options


def default_grid() -> list[Case]:
    """The grid of ``make bench``; (4096, 32000) is measured for memory only."""
    return [
        Case(4096, 10),
        Case(4096, 1000),
        Case(2048, 32000),
        Case(4096, 32000, time=False),
        Case(4096, 1000, dtype="bfloat16"),
        Case(4096, 1000, dtype="float16"),
        Case(4096, 1000, options="weight"),
        Case(4096, 1000, options="ignore_index"),
        Case(4096, 1000, options="label_smoothing"),
        Case(4096, 1000, logits="trained"),
        Case(16, 21, spatial=(64, 64)),
    ]


def quick_grid() -> list[Case]:
    """A tiny grid for the smoke test: seconds, not minutes; memory on one case only."""
    return [
        Case(1024, 256),
        Case(128, 100, logits="trained", options="label_smoothing", memory=False),
        Case(2, 5, spatial=(4, 4), memory=False),
    ]
