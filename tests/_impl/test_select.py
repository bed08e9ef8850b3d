"""``fairloss._impl.select``: the one place that picks the implementation of a call."""

from __future__ import annotations

import pytest
import torch

from fairloss import _impl, fair_loss
from fairloss._impl import dense, sparse, sparse_compiled
from fairloss._penalty import fair_loss_composite
from fairloss._validation import resolve_options

CPU, META = torch.device("cpu"), torch.device("meta")
LIMIT = _impl.DENSE_COMPILED_MAX_CLASSES


def _select(
    impl: str, device: torch.device, num_classes: int, compiling: bool, sharded: bool = False
) -> object:
    return _impl.select(
        impl, device=device, num_classes=num_classes, compiling=compiling, sharded=sharded
    )


def test_auto_follows_the_device_the_classes_and_compilation() -> None:
    assert _select("auto", CPU, LIMIT + 1, False) is sparse.IMPLEMENTATION
    assert _select("auto", CPU, 3, False) is sparse.IMPLEMENTATION
    assert _select("auto", CPU, LIMIT, True) is dense.IMPLEMENTATION
    assert _select("auto", CPU, LIMIT + 1, True) is sparse_compiled.IMPLEMENTATION
    assert _select("auto", META, LIMIT + 1, True) is dense.IMPLEMENTATION  # off the CPU
    assert _select("auto", META, 3, False) is dense.IMPLEMENTATION
    assert _select("auto", CPU, 0, False) is None  # no classes: the composite


def test_a_named_implementation_is_taken() -> None:
    assert _select("composite", CPU, 5, True) is None
    assert _select("dense", CPU, 5, False) is dense.IMPLEMENTATION
    assert _select("sparse", CPU, 5, False) is sparse.IMPLEMENTATION
    assert _select("sparse", CPU, 5, True) is sparse_compiled.IMPLEMENTATION
    with pytest.raises(ValueError, match=r"`impl` to be one of \('auto', 'sparse', 'dense'"):
        _select("fast", CPU, 5, False)


def test_sharded_logits_take_the_dense_stages_only() -> None:
    """Logits sharded by class (a DTensor) run the dense stages with collectives between them."""
    for impl in ("auto", "dense"):
        assert _select(impl, CPU, 5, False, sharded=True) is dense.IMPLEMENTATION
    for impl in ("sparse", "composite"):
        with pytest.raises(ValueError, match=rf"'auto' or 'dense' for logits sharded .* '{impl}'"):
            _select(impl, CPU, 5, False, sharded=True)


def test_none_runs_the_composite_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 3, -100, 1, 2, 2])
    options = resolve_options(4, compute_dtype=torch.float64, label_smoothing=0.1)
    element_loss = _impl.element_loss(None, logits, target, None, options)
    assert torch.equal(element_loss, fair_loss_composite(logits, target, None, options))
    torch.testing.assert_close(
        element_loss,
        fair_loss(logits, target, label_smoothing=0.1, reduction="none", impl="composite"),
    )
