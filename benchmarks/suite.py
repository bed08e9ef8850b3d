"""Measure every case of a grid: time with ``torch.utils.benchmark``, memory in fresh processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

import torch
from tests.old_release import load_old_release, old_release_version
from torch.utils.benchmark import Timer

import fairloss
from benchmarks import memory
from benchmarks.cases import Case, CaseInputs, make_inputs, target_win_rate
from benchmarks.libraries import (
    COMPILED,
    CROSS_ENTROPY,
    CROSS_ENTROPY_COMPILED,
    FAIR_LOSS,
    FAIR_LOSS_COMPILED,
    LABELS,
    LIBRARIES,
    MEMORY_LIBRARIES,
    OLD_RELEASE,
    NotApplicable,
    build_loss,
    forward_backward,
)

__all__ = [
    "Environment",
    "InjectedFailure",
    "Result",
    "Settings",
    "describe_environment",
    "keep_freed_heap_memory",
    "run_suite",
]

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
NOT_MEASURED = "not measured"
#: Each loss's value is checked against the loss it must equal, computed earlier in the case.
SAME_LOSS_AS = {
    OLD_RELEASE: FAIR_LOSS,
    FAIR_LOSS_COMPILED: FAIR_LOSS,
    CROSS_ENTROPY_COMPILED: CROSS_ENTROPY,
}


@dataclass(frozen=True)
class Settings:
    """How to measure: threads, the Timer's minimum run time, which losses, where 0.1.1 lies."""

    threads: int = 2
    min_run_time: float = 1.0
    compile: bool = True
    old_path: Optional[Path] = None
    #: Losses that raise :class:`InjectedFailure` in place of running (``--fail``).
    fail: frozenset[str] = frozenset()


class InjectedFailure(RuntimeError):
    """Raised in place of a loss named by ``--fail``: a failure on demand, for the smoke test."""


def _injected_failure(library: str) -> InjectedFailure:
    return InjectedFailure(f"{LABELS[library]} fails on purpose (--fail {library})")


@dataclass
class Result:
    """One loss on one case; a status is ``ok``, ``n/a: ...``, ``failed: ...``, ``skipped: ...``."""

    case: Case
    library: str
    time_status: str = NOT_MEASURED
    median_s: Optional[float] = None
    iqr_s: Optional[float] = None
    runs: Optional[int] = None
    memory_status: str = NOT_MEASURED
    peak_bytes: Optional[int] = None
    target_wins: Optional[float] = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Environment:
    """What the Markdown header records about the machine and the software."""

    cpu_model: str
    logical_cpus: int
    threads: int
    torch_version: str
    python_version: str
    system: str
    fairloss_version: str
    old_release: str
    heap: str
    date: str
    command: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30


def keep_freed_heap_memory() -> str:
    """Stop glibc from handing freed memory back to the OS in this process; describe the result.

    With glibc's defaults a freed block of some MB is unmapped or trimmed from the heap, and the
    next step page-faults it back in. Whether that happens on every step depends on the order of
    a loss's allocations, not on its arithmetic: on this project's machine the same eager step
    of one loss went from 0 to 3,400 page faults per step after an unrelated edit, doubling its
    time. Raising the trim and mmap thresholds (as ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` would) keeps freed blocks for reuse, for every loss alike, so the
    timings compare arithmetic. Timing process only: memory is measured in fresh processes.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return "default allocator (glibc mallopt unavailable)"
    trimmed = mallopt(_M_TRIM_THRESHOLD, _KEEP_BELOW)
    mapped = mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)
    if not (trimmed and mapped):
        return "default allocator (mallopt refused)"
    return "glibc malloc, trim and mmap thresholds raised to 1 GiB in the timing process"


def describe_environment(settings: Settings, command: str, heap: str) -> Environment:
    if settings.old_path is None:
        old_release = "not found (skipped)"
    else:
        version = old_release_version(settings.old_path)
        shown = settings.old_path
        if shown.is_relative_to(REPOSITORY_ROOT):
            shown = shown.relative_to(REPOSITORY_ROOT)
        old_release = f"{version}, loaded from `{shown}` as `fairloss_0_1_1`"
    return Environment(
        cpu_model=_cpu_model(),
        logical_cpus=os.cpu_count() or 0,
        threads=settings.threads,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        fairloss_version=fairloss.__version__,
        old_release=old_release,
        heap=heap,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
    )


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return f"{type(error).__name__}: {lines[0]}"[:160]


def _close(value: float, reference: float, case: Case) -> bool:
    tolerance = 1e-4 if case.dtype in ("float32", "float64") else 2e-2
    return abs(value - reference) <= tolerance * max(1.0, abs(reference))


def _time(
    result: Result,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: CaseInputs,
    settings: Settings,
) -> None:
    timer = Timer(
        stmt="forward_backward(loss_fn, logits, target)",
        globals={
            "forward_backward": forward_backward,
            "loss_fn": loss_fn,
            "logits": inputs.logits,
            "target": inputs.target,
        },
        num_threads=settings.threads,
        label="forward+backward",
        sub_label=result.case.name,
        description=LABELS[result.library],
    )
    measurement = timer.blocked_autorange(min_run_time=settings.min_run_time)
    result.time_status = "ok"
    result.median_s = measurement.median
    result.iqr_s = measurement.iqr
    result.runs = len(measurement.times)


def _time_case(
    case: Case,
    libraries: Sequence[str],
    settings: Settings,
    old_release: Optional[ModuleType],
    values: dict[str, float],
) -> list[Result]:
    """Time ``libraries`` on the case; ``values`` collects each loss's value across calls."""
    results = [Result(case, library) for library in libraries]
    if not case.time:
        return results
    inputs = make_inputs(case)
    win_rate = target_win_rate(inputs)
    for result in results:
        result.target_wins = win_rate
        if result.library in COMPILED and not settings.compile:
            result.time_status = "skipped: --no-compile"
            continue
        try:
            if result.library in settings.fail:
                raise _injected_failure(result.library)
            if result.library in COMPILED:
                # A fresh cache per case: no recompile limit, no dynamic shapes.
                torch._dynamo.reset()
            loss_fn = build_loss(result.library, case, inputs, old_release)
            value = loss_fn(inputs.logits, inputs.target).detach().item()  # compiles here
            forward_backward(loss_fn, inputs.logits, inputs.target)
            values[result.library] = value
            reference = SAME_LOSS_AS.get(result.library)
            if reference in values and not _close(value, values[reference], case):
                result.notes.append(
                    f"loss {value:.6g} differs from {LABELS[reference]}'s {values[reference]:.6g}"
                )
            _time(result, loss_fn, inputs, settings)
        except NotApplicable as reason:
            result.time_status = f"n/a: {reason}"
        except Exception as error:  # a failing loss is a result, not a crash
            result.time_status = f"failed: {_reason(error)}"
    return results


def _measure_memory(results: list[Result], settings: Settings) -> None:
    """Peak memory of the case's eager losses, each in its own fresh process.

    The processes of one case run side by side: each measures its own resident set, so they do
    not disturb each other's numbers, and no timing runs meanwhile.
    """
    pending = []
    for result in results:
        if not result.case.memory or result.library not in MEMORY_LIBRARIES:
            continue
        if result.library in settings.fail:
            result.memory_status = f"failed: {_reason(_injected_failure(result.library))}"
            continue
        if result.library == OLD_RELEASE and settings.old_path is None:
            result.memory_status = "n/a: 0.1.1 not found"
            continue
        pending.append(result)
    with ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool:
        measurements = pool.map(
            lambda result: memory.measure_in_subprocess(
                result.case, result.library, threads=settings.threads, old_path=settings.old_path
            ),
            pending,
        )
        for result, measured in zip(pending, measurements):
            result.memory_status = measured.status
            result.peak_bytes = measured.peak_bytes
            if measured.status == "ok" and measured.method != memory.PREFERRED_METHOD:
                result.notes.append(f"peak memory measured by {measured.method}")


def run_suite(
    grid: Sequence[Case],
    settings: Settings,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[Result]:
    """Measure each case: time of every loss, then peak memory of the eager ones."""
    torch.set_num_threads(settings.threads)
    old_release = load_old_release(settings.old_path) if settings.old_path is not None else None
    # Every eager timing runs before any compiled one: for some seconds after compiled code has
    # run, eager timings in the same process came out up to 2x slower (Inductor's background
    # workers), which would otherwise charge the next case's eager losses.
    eager = [library for library in LIBRARIES if library not in COMPILED]
    compiled = [library for library in LIBRARIES if library in COMPILED]
    values: dict[Case, dict[str, float]] = {case: {} for case in grid}
    by_case: dict[Case, list[Result]] = {}
    for case in grid:
        progress(f"[bench] {case.name}")
        by_case[case] = _time_case(case, eager, settings, old_release, values[case])
        _measure_memory(by_case[case], settings)
    for case in grid:
        progress(f"[bench] {case.name} (compiled)")
        by_case[case] += _time_case(case, compiled, settings, old_release, values[case])
    results: list[Result] = []
    for case in grid:
        for result in by_case[case]:
            progress(f"[bench]   {LABELS[result.library]:<26} {_summary(result)}")
        results += by_case[case]
    return results


def _summary(result: Result) -> str:
    time = f"{result.median_s * 1e3:.3f} ms" if result.median_s is not None else result.time_status
    peak = (
        f"{result.peak_bytes / 2**20:.1f} MiB"
        if result.peak_bytes is not None
        else result.memory_status
    )
    return f"time {time}; peak {peak}" + "".join(f"; {note}" for note in result.notes)
