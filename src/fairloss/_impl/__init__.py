"""Which implementation of FairLoss runs a call: :func:`select`, the one place that decides.

=================  ===========================================================================
``"composite"``    :func:`fairloss._penalty.fair_loss_composite`: plain PyTorch, autograd derives
                   the gradient. The reference; never chosen by ``"auto"``.
``"dense"``        :mod:`fairloss._impl.dense`: every step on every logit, no data-dependent
                   shape and no host synchronisation. ``"auto"`` off the CPU, and under
                   ``torch.compile`` with at most :data:`DENSE_COMPILED_MAX_CLASSES` classes.
``"sparse"``       :mod:`fairloss._impl.sparse` eagerly, :mod:`fairloss._impl.sparse_compiled`
                   under ``torch.compile``: SmoothMax only on the unsaturated elements, found with
                   ``nonzero``. ``"auto"`` on the CPU (compiled: above the class threshold).
=================  ===========================================================================

Why two implementations run under ``torch.compile`` on the CPU: on the suite's shapes, each is
faster than the other on its side of :data:`DENSE_COMPILED_MAX_CLASSES` (forward+backward,
float32, 2 threads, compiled FairLoss over compiled ``F.cross_entropy``; medians of interleaved
rounds of ``torch.utils.benchmark`` by ``python -m benchmarks.compiled_split``, which writes
``docs/compiled-split.md``):

==================  =========  =========  ===================
shape               dense      sparse     faster, by
==================  =========  =========  ===================
(4096, 10)          1.43x      4.62x      dense, 3.23x
(16, 21, 64, 64)    1.94x      2.41x      dense, 1.24x
(4096, 1000)        1.41x      0.73x      sparse, 1.93x
(2048, 32000)       1.15x      0.85x      sparse, 1.35x
==================  =========  =========  ===================

Off the CPU only ``"dense"`` runs (``"sparse"`` synchronises), so the split is a CPU matter.
Logits sharded by class (a ``DTensor``) run the dense implementation's stages with collectives
between them (:mod:`fairloss._impl.vocab_parallel`); the other two cannot run there.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fairloss._impl import dense, sparse, sparse_compiled
from fairloss._impl.base import Implementation, autograd_function
from fairloss._penalty import fair_loss_composite
from fairloss._validation import IMPLEMENTATIONS, FairLossOptions, check_choice, expected

__all__ = [
    "DENSE_COMPILED_MAX_CLASSES",
    "Implementation",
    "element_loss",
    "select",
]

#: Under ``torch.compile`` on CPU, ``"auto"`` runs ``"dense"`` up to this many classes and
#: ``"sparse"`` above (the table above).
DENSE_COMPILED_MAX_CLASSES = 256

_FUNCTIONS = {
    implementation.name: autograd_function(implementation)
    for implementation in (
        sparse.IMPLEMENTATION,
        sparse_compiled.IMPLEMENTATION,
        dense.IMPLEMENTATION,
    )
}


def select(
    impl: object, *, device: torch.device, num_classes: int, compiling: bool, sharded: bool = False
) -> Optional[Implementation]:
    """The implementation for logits on ``device`` with ``num_classes``; None: the composite.

    ``impl`` is checked to be one of :data:`fairloss._validation.IMPLEMENTATIONS`. ``"auto"``
    picks ``"dense"`` off the CPU (no host synchronisation there), and on the CPU ``"sparse"``,
    except under ``torch.compile`` for at most :data:`DENSE_COMPILED_MAX_CLASSES` classes;
    without classes (``C = 0``) the composite, which is then cross-entropy alone. ``sharded``
    logits (a ``DTensor`` split by class) take ``"dense"``, and refuse the others.
    """
    check_choice("impl", impl, IMPLEMENTATIONS)
    if sharded:
        if impl not in ("auto", "dense"):
            raise ValueError(
                expected(
                    "impl",
                    "'auto' or 'dense' for logits sharded by class (the vocab-parallel loss runs "
                    "the dense implementation's stages)",
                    repr(impl),
                )
            )
        return dense.IMPLEMENTATION
    if impl == "auto":
        if num_classes == 0:  # no classes: no penalty, cross-entropy's empty terms only
            impl = "composite"
        elif device.type != "cpu":
            impl = "dense"
        elif compiling and num_classes <= DENSE_COMPILED_MAX_CLASSES:
            impl = "dense"
        else:
            impl = "sparse"
    if impl == "composite":
        return None
    if impl == "dense":
        return dense.IMPLEMENTATION
    return sparse_compiled.IMPLEMENTATION if compiling else sparse.IMPLEMENTATION


def element_loss(
    implementation: Optional[Implementation],
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    options: FairLossOptions,
) -> Tensor:
    """The element losses of ``(M, C)`` or ``(M, C, L)`` logits by ``implementation``.

    None runs :func:`fairloss._penalty.fair_loss_composite`, which autograd differentiates; an
    implementation runs through its autograd Function
    (:func:`fairloss._impl.base.autograd_function`).
    """
    if implementation is None:
        return fair_loss_composite(logits, target, weight, options)
    return _FUNCTIONS[implementation.name].apply(logits, target, weight, options)
