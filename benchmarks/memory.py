"""Peak memory of one forward+backward, measured in a fresh process per case and loss.

Run as ``python -m benchmarks.memory --case '<Case JSON>' --library fair_loss``; it prints one
JSON line. The process builds the inputs, warms the loss up on a few rows (so one-time
allocations such as thread pools are not counted, while the high-water mark stays low), then
takes the resident set size as baseline, runs forward+backward once at full size and reports the
growth of the peak RSS (``VmHWM`` in ``/proc/self/status``; ``getrusage(RUSAGE_SELF).ru_maxrss``
elsewhere) over that baseline. The gradient, alive at the end, is part of the peak, as it is for
every loss.

Where Linux allows it (``/proc/self/clear_refs``), the peak is first reset to the current RSS,
so memory freed before the baseline (input construction) cannot hide the op's peak. glibc's
``MALLOC_MMAP_THRESHOLD_`` is fixed so that large tensors are mapped and unmapped, not reused
from the heap.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from tests.old_release import load_old_release

from benchmarks.cases import Case, make_inputs
from benchmarks.libraries import MEMORY_LIBRARIES, NotApplicable, build_loss, forward_backward

__all__ = ["MemoryResult", "measure_in_subprocess", "measure_peak_growth"]

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
MALLOC_MMAP_THRESHOLD = "65536"
WARM_UP_ROWS = 8
PREFERRED_METHOD = "VmHWM, reset"


class MemoryResult(NamedTuple):
    """``status`` is ``"ok"``, ``"n/a: ..."`` or ``"failed: ..."``; bytes only when ok."""

    status: str
    peak_bytes: Optional[int] = None
    method: str = ""


def peak_rss_bytes() -> tuple[int, str]:
    """This process's peak RSS: ``VmHWM`` where Linux has it, else ``ru_maxrss``.

    ``ru_maxrss`` is not used on Linux: after exec it starts at the parent's peak (the kernel
    carries the old address space's high-water mark over), which hides a child's smaller peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"  # kibibytes
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM (and ru_maxrss) to the current RSS
    except OSError:
        return False
    return True


def _warm_up_case(case: Case) -> Case:
    return dataclasses.replace(
        case, n=min(case.n, WARM_UP_ROWS), spatial=tuple(min(size, 2) for size in case.spatial)
    )


def measure_peak_growth(case: Case, library: str, old_path: Optional[str] = None) -> dict[str, Any]:
    """Measure in this process (meant to be a fresh one): peak RSS growth of one step, in bytes."""
    old_release = load_old_release(Path(old_path)) if old_path else None
    warm_up = make_inputs(_warm_up_case(case))
    forward_backward(
        build_loss(library, case, warm_up, old_release), warm_up.logits, warm_up.target
    )
    del warm_up

    inputs = make_inputs(case)
    loss_fn = build_loss(library, case, inputs, old_release)
    gc.collect()
    was_reset = reset_peak_rss()
    baseline, method = peak_rss_bytes()
    grad = forward_backward(loss_fn, inputs.logits, inputs.target)
    peak, _ = peak_rss_bytes()
    del grad
    method += ", reset" if was_reset else ", not reset"
    return {"peak_bytes": peak - baseline, "baseline_bytes": baseline, "method": method}


def run_json_job(
    command: Sequence[str], environment: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """Run a benchmark job in a fresh process whose last stdout line is a JSON report.

    Returns the report, or ``{"failed": reason}`` on a time-out, a crash or no output.
    """
    try:
        completed = subprocess.run(
            list(command),
            cwd=REPOSITORY_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout_s:.0f} s"}
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        error_lines = completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"]
        return {"failed": error_lines[-1]}
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def measure_in_subprocess(
    case: Case,
    library: str,
    *,
    threads: int,
    old_path: Optional[Path] = None,
    timeout_s: float = 600.0,
) -> MemoryResult:
    """Run :func:`measure_peak_growth` in a fresh Python process; failures become a status."""
    if library not in MEMORY_LIBRARIES:
        return MemoryResult(f"n/a: memory is measured for {MEMORY_LIBRARIES} only")
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--case",
        case.to_json(),
        "--library",
        library,
        "--threads",
        str(threads),
    ]
    if old_path is not None:
        command += ["--old-path", str(old_path)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MALLOC_MMAP_THRESHOLD)
    report = run_json_job(command, environment, timeout_s)
    if "failed" in report:
        return MemoryResult(f"failed: {report['failed']}")
    if "not_applicable" in report:
        return MemoryResult(f"n/a: {report['not_applicable']}")
    return MemoryResult("ok", int(report["peak_bytes"]), str(report["method"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--case", required=True, help="a benchmarks.cases.Case as JSON")
    parser.add_argument("--library", required=True, choices=MEMORY_LIBRARIES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--old-path", default=None, help="directory of 0.1.1's loss.py")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        report = measure_peak_growth(Case.from_json(args.case), args.library, args.old_path)
    except NotApplicable as reason:
        report = {"not_applicable": str(reason)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
