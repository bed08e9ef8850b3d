"""How linear_fair_loss computes (``fairloss._impl.chunked_linear``): in row chunks of
:func:`default_chunk_size` rows, never holding the full logits, allocating its large buffers once
per call, dropping ignored rows before the product on the CPU, precomputing gradients only when
they are wanted. What it computes is in ``test_linear_fair_loss.py``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from fairloss import fair_loss, linear_fair_loss
from fairloss._impl import chunked_linear
from fairloss._impl.chunked_linear import default_chunk_size
from tests.strategies import HeadCase, head_cases, value_and_grads

#: A generous safety limit on a child process (it takes seconds); not a timing assertion.
SAFETY_TIMEOUT_S = 900


def test_default_chunk_size() -> None:
    assert default_chunk_size(8192, 32000) == 256  # 2**23 numbers per chunk, a power of two
    assert default_chunk_size(8192, 128000) == 64
    for rows, num_classes in [(8192, 32000), (8192, 128000), (7, 5), (3, 10**8), (300, 1000)]:
        chunk = default_chunk_size(rows, num_classes)
        assert 1 <= chunk <= rows
        assert chunk & (chunk - 1) == 0 or chunk == rows  # a power of two, or every row
        assert chunk * num_classes <= max(2**23, num_classes)
        assert chunk == rows or 2 * chunk * num_classes > 2**23  # the largest such power
    assert default_chunk_size(10**6, 10) == 2**19  # a small head: large chunks
    assert default_chunk_size(0, 8) == 1 and default_chunk_size(5, 0) == 5  # no classes: one


@given(head_cases(), st.sampled_from([1, 2, 5]))
def test_result_does_not_depend_on_chunk_size(case: HeadCase, chunk_size: int) -> None:
    whole = value_and_grads(case.loss(chunk_size=10**6), case.leaves())
    chunked = value_and_grads(case.loss(chunk_size=chunk_size), case.leaves())
    for ours, theirs in zip(chunked, whole):
        assert_close(ours, theirs, rtol=1e-12, atol=1e-13, equal_nan=True)


class _LargestOutput(TorchDispatchMode):
    """Records the operators called and the largest number of elements of any tensor returned."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.operators: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.operators.add(str(func.overloadpacket))
        result = func(*args, **(kwargs or {}))
        for output in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(output, Tensor):
                self.largest = max(self.largest, output.numel())
        return result


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_materializes_the_full_logits(reduction: str) -> None:
    rows, hidden_size, num_classes, chunk_size = 64, 4, 97, 8
    hidden = torch.randn(rows, hidden_size, requires_grad=True)
    head = torch.randn(num_classes, hidden_size, requires_grad=True)
    target = torch.randint(0, num_classes, (rows,))
    with _LargestOutput() as recorder:
        loss = linear_fair_loss(hidden, head, target, reduction=reduction, chunk_size=chunk_size)
        loss.sum().backward()
    assert chunk_size * num_classes <= recorder.largest < 2 * chunk_size * num_classes
    with _LargestOutput() as unfused_recorder:
        fair_loss(F.linear(hidden, head), target, reduction=reduction).sum().backward()
    assert unfused_recorder.largest == rows * num_classes


def test_without_chunk_size_the_chunks_follow_default_chunk_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``chunk_size=None`` runs :func:`default_chunk_size` rows at a time (its budget made small
    here: 1024 numbers, 8 rows of 100 classes)."""
    monkeypatch.setattr(chunked_linear, "CHUNK_NUMBERS", 1024)
    rows, num_classes = 64, 100
    assert default_chunk_size(rows, num_classes) == 8
    hidden = torch.randn(rows, 4, requires_grad=True)
    head = torch.randn(num_classes, 4, requires_grad=True)
    target = torch.randint(0, num_classes, (rows,))
    with _LargestOutput() as recorder:
        linear_fair_loss(hidden, head, target).backward()
    assert 8 * num_classes <= recorder.largest < 2 * 8 * num_classes


def test_no_gradient_is_precomputed_without_grad_mode() -> None:
    hidden = torch.randn(6, 3)
    head = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad(), _LargestOutput() as recorder:
        assert not linear_fair_loss(hidden, head, target).requires_grad
    assert "aten.addmm_" not in recorder.operators  # no weight gradient precomputed
    with _LargestOutput() as recorder:
        linear_fair_loss(hidden, head, target)
    assert "aten.addmm_" in recorder.operators


def test_ignored_rows_never_reach_the_head() -> None:
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    head = torch.randn(6, 4, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.tensor([1, -100, 2, 5, -100, -100, 0, 3, -100])
    poisoned = hidden.clone()
    poisoned[target == -100] = float("nan")  # a NaN row that entered the product would show
    poisoned.requires_grad_()
    kept = target != -100
    loss = linear_fair_loss(poisoned, head, target, chunk_size=2)
    grad_hidden, grad_head = torch.autograd.grad(loss, [poisoned, head])
    expected = linear_fair_loss(hidden[kept], head, target[kept])
    assert_close(loss, expected)
    assert_close(grad_head, torch.autograd.grad(expected, head)[0])
    assert torch.equal(grad_hidden[~kept], torch.zeros_like(grad_hidden[~kept]))
    assert grad_hidden[kept].isfinite().all()


class _LargeAllocations(TorchDispatchMode):
    """Counts the operator outputs of at least ``threshold`` elements that are new memory.

    Outputs of mutating (``out=``, in-place) and aliasing (view) operators reuse memory and
    are not counted.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        schema = func._schema
        if schema.is_mutable or any(output.alias_info for output in schema.returns):
            return result
        for output in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(output, Tensor) and output.numel() >= self.threshold:
                self.count += 1
        return result


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_large_buffers_are_allocated_once_per_call_not_per_chunk(reduction: str) -> None:
    rows, hidden_size, num_classes = 256, 16, 300
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, (rows,), generator=generator)
    target[::7] = -100
    counts = []
    for chunk_size in (8, 64):  # 32 and 4 chunks
        hidden = torch.randn(rows, hidden_size, generator=generator, requires_grad=True)
        head = torch.randn(num_classes, hidden_size, generator=generator, requires_grad=True)
        with _LargeAllocations(threshold=8 * num_classes) as recorder:
            loss = linear_fair_loss(
                hidden, head, target, reduction=reduction, chunk_size=chunk_size
            )
            loss.sum().backward()
        counts.append(recorder.count)
    assert counts[0] == counts[1] <= 6


# Each run is a fresh process: the resident-size growth of one forward+backward at an LM head's
# rows and vocabulary (N = 8192, V = 32000: the logits would be 1000 MiB in float32), with a
# narrow hidden size (H = 64) so that the products take little time. The chunks' temporaries
# (256 rows at this V, about 100 MiB in all) and the gradients stay far below a quarter of the
# full logits; unfused, the logits and their gradient alone would be 2000 MiB.
_PEAK_MEMORY_SCRIPT = """
import resource, torch
from fairloss import linear_fair_loss
torch.set_num_threads(1)
N, V, H = 8192, 32000, 64
g = torch.Generator().manual_seed({seed})
x = (torch.randn(N, H, generator=g) * 0.5).requires_grad_()
w = (torch.randn(V, H, generator=g) * 0.15).requires_grad_()
t = torch.randint(0, V, (N,), generator=g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
linear_fair_loss(x, w, t).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_peak_memory_stays_far_below_the_full_logits_in_every_run() -> None:
    full_logits_mib = 8192 * 32000 * 4 / 2**20
    runs = [  # side by side, one thread each
        subprocess.Popen(
            [sys.executable, "-c", _PEAK_MEMORY_SCRIPT.format(seed=seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(2)
    ]
    growths = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=SAFETY_TIMEOUT_S)
        assert run.returncode == 0, stderr
        growths.append(float(stdout.strip().splitlines()[-1]))
    assert max(growths) < full_logits_mib / 4, growths
