"""``make gpu-check``: the device tests, then fairloss against torch's losses on a CUDA device.

Usage::

    python -m benchmarks.gpu_check                # needs CUDA; writes docs/benchmarks-gpu.md

Without a CUDA device it prints why and exits with status 2. With one it runs
``tests/_impl/test_devices.py`` (its result is recorded; a failure makes the exit status 1 at the
end, after the benchmarks), then times forward+backward and measures the peak memory of

* ``fairloss.fair_loss`` against ``F.cross_entropy``, eager and ``torch.compile``d, float32 and
  bfloat16, at (4096, 1000), (8192, 32000) and (16, 21, 512, 512);
* ``fairloss.linear_fair_loss`` against torch's chunked ``F.linear_cross_entropy`` at N=8192,
  H=4096, V=128000, bfloat16;

prints both tables and writes them to ``docs/benchmarks-gpu.md``. A case that fails (out of
memory, say) is recorded in its table instead of stopping the run. It takes a few minutes on an
H200, most of them compiling.

The hidden ``--smoke-cpu`` flag runs the benchmark part on the CPU with tiny shapes (no device
tests, no peak memory) and writes to ``--output``: a check of the code paths, not a benchmark.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import benchmark

import fairloss

__all__ = ["Measurement", "main", "measure", "peak_memory_bytes"]

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPOSITORY_ROOT / "docs" / "benchmarks-gpu.md"
DEVICE_TESTS = "tests/_impl/test_devices.py"
DEVICE_TESTS_TIMEOUT_S = 180.0
NO_CUDA_STATUS = 2
TESTS_FAILED_STATUS = 1

MIN_RUN_TIME = 0.5
WARM_UP_CALLS = 3
DTYPES = (torch.float32, torch.bfloat16)
#: Logit shapes, classes in dim 1. Six (shape, dtype) pairs: each compiled function recompiles
#: once per pair (``dynamic=False``), within dynamo's default recompile limit of 8.
SHAPES: tuple[tuple[int, ...], ...] = ((4096, 1000), (8192, 32000), (16, 21, 512, 512))
SMOKE_SHAPES: tuple[tuple[int, ...], ...] = ((64, 10), (32, 300), (2, 5, 8, 8))
LINEAR_DTYPE = torch.bfloat16
LINEAR_SIZES = (8192, 4096, 128000)  # N, H, V
SMOKE_LINEAR_SIZES = (256, 32, 1000)
LINEAR_WEIGHT_SCALE = 0.02
MAX_ERROR_CHARS = 200

Step = Callable[[], object]
LossFn = Callable[[Tensor, Tensor], Tensor]
LinearFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class Measurement:
    """Median milliseconds and peak bytes of one forward+backward, or why they are missing."""

    median_ms: Optional[float] = None
    peak_bytes: Optional[int] = None
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)


class DeviceTests(NamedTuple):
    """Whether ``tests/_impl/test_devices.py`` passed, and its last summary line."""

    passed: bool
    summary: str


def _short(text: str) -> str:
    """One line of at most ``MAX_ERROR_CHARS`` characters, safe inside a Markdown table."""
    line = " ".join(text.split())
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 1] + "…"
    return line.replace("|", "\\|")


def _error(error: Exception) -> str:
    return _short(f"{type(error).__name__}: {error}")


def _free_memory(device: torch.device) -> None:
    """Collect garbage and give cached CUDA blocks back, so one case's peak cannot hide another's.

    A sticky CUDA error (an illegal access, say) can make ``empty_cache`` raise; the next case
    records it, so it is ignored here.
    """
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError:
            pass


def peak_memory_bytes(step: Step, device: torch.device) -> Optional[int]:
    """Peak CUDA memory of one ``step()`` above what was allocated before it; None off CUDA.

    Whatever ``step`` returns (the gradients) is alive at the peak, as it is in training.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak


def measure(step: Step, device: torch.device, min_run_time: float) -> Measurement:
    """Warm ``step`` up (compiling it, if compiled), then its peak memory and median time.

    An exception (out of memory, a failed compile) is recorded, not raised; so are the distinct
    warnings the warm-up raised (a fallback of ``F.linear_cross_entropy``, say).
    """
    measurement = Measurement()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(WARM_UP_CALLS):
                step()
        for warning in caught:
            text = _short(f"{warning.category.__name__}: {warning.message}")
            if text not in measurement.warnings:
                measurement.warnings.append(text)
        measurement.peak_bytes = peak_memory_bytes(step, device)
        # The Timer's default of one thread would change a global state that torch.compile
        # guards on, and recompile every compiled function on its first timed call.
        threads = torch.get_num_threads()
        timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
        median_s = timer.blocked_autorange(min_run_time=min_run_time).median
        measurement.median_ms = median_s * 1e3
    except Exception as error:  # recorded in the table: OOM, compile errors, ...
        measurement.error = _error(error)
    _free_memory(device)
    return measurement


def _loss_step(loss_fn: LossFn, logits: Tensor, target: Tensor) -> Step:
    """Forward+backward: the loss and a fresh gradient w.r.t. the logits (no accumulation)."""

    def step() -> tuple[Tensor, ...]:
        return torch.autograd.grad(loss_fn(logits, target), logits)

    return step


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target)


def _fair_loss(logits: Tensor, target: Tensor) -> Tensor:
    return fairloss.fair_loss(logits, target)


class LossRow(NamedTuple):
    """One (shape, dtype, mode) of the fair_loss table."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    mode: str
    fair: Measurement
    baseline: Measurement


def benchmark_losses(
    shapes: Sequence[tuple[int, ...]], device: torch.device, min_run_time: float
) -> list[LossRow]:
    """``fair_loss`` against ``F.cross_entropy`` per shape and dtype, eager and compiled.

    Each function is compiled once (``fullgraph=True, dynamic=False``); every case warms it up
    before timing, which compiles it for that shape and dtype.
    """
    modes: dict[str, tuple[LossFn, LossFn]] = {
        "eager": (_fair_loss, _cross_entropy),
        "compiled": (
            torch.compile(_fair_loss, fullgraph=True, dynamic=False),
            torch.compile(_cross_entropy, fullgraph=True, dynamic=False),
        ),
    }
    rows = []
    for shape in shapes:
        for dtype in DTYPES:
            try:
                logits, target = _loss_inputs(shape, dtype, device)
            except Exception as error:  # out of memory, a sticky CUDA error: recorded
                failed = Measurement(error=f"making the inputs: {_error(error)}")
                rows += [LossRow(shape, dtype, mode, failed, failed) for mode in modes]
                _free_memory(device)
                continue
            for mode, (fair_fn, baseline_fn) in modes.items():
                _progress(f"fair_loss {_shape(shape)} {_dtype(dtype)} {mode}")
                baseline = measure(_loss_step(baseline_fn, logits, target), device, min_run_time)
                fair = measure(_loss_step(fair_fn, logits, target), device, min_run_time)
                rows.append(LossRow(shape, dtype, mode, fair, baseline))
            del logits, target
            _free_memory(device)
    return rows


def _loss_inputs(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``randn`` logits (a leaf that requires grad) and random class-index targets."""
    torch.manual_seed(0)
    logits = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device)
    return logits, target


def benchmark_linear(
    sizes: tuple[int, int, int], device: torch.device, min_run_time: float
) -> dict[str, Measurement]:
    """``linear_fair_loss`` and torch's chunked ``F.linear_cross_entropy`` at ``(N, H, V)``."""
    options = nn.LinearCrossEntropyOptions()
    methods: dict[str, LinearFn] = {
        "F.linear_cross_entropy": lambda x, w, t: F.linear_cross_entropy(x, w, t, options=options),
        "linear_fair_loss": lambda x, w, t: fairloss.linear_fair_loss(x, w, t),
    }
    try:
        states, head, target = _linear_inputs(sizes, device)
    except Exception as error:  # out of memory, a sticky CUDA error: recorded
        failed = Measurement(error=f"making the inputs: {_error(error)}")
        _free_memory(device)
        return dict.fromkeys(methods, failed)
    results = {}
    for name, loss_fn in methods.items():
        _progress(f"{name} N={sizes[0]} H={sizes[1]} V={sizes[2]}")
        step = _linear_step(loss_fn, states, head, target)
        results[name] = measure(step, device, min_run_time)
    return results


def _linear_inputs(sizes: tuple[int, int, int], device: torch.device) -> tuple[Tensor, ...]:
    """Hidden states ``randn`` and head ``0.02 * randn`` (leaves that require grad), targets."""
    rows, hidden, vocab = sizes
    torch.manual_seed(0)
    states = torch.randn(rows, hidden, device=device, dtype=LINEAR_DTYPE, requires_grad=True)
    head = torch.randn(vocab, hidden, device=device, dtype=LINEAR_DTYPE)
    head = head.mul_(LINEAR_WEIGHT_SCALE).requires_grad_(True)
    target = torch.randint(0, vocab, (rows,), device=device)
    return states, head, target


def _linear_step(loss_fn: LinearFn, states: Tensor, head: Tensor, target: Tensor) -> Step:
    """Forward+backward: the loss and fresh gradients w.r.t. the hidden states and the head."""

    def step() -> tuple[Tensor, ...]:
        return torch.autograd.grad(loss_fn(states, head, target), (states, head))

    return step


def _progress(message: str) -> None:
    print(f"[gpu-check] {message}", file=sys.stderr, flush=True)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(size) for size in shape)


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ms(measurement: Measurement) -> str:
    return "—" if measurement.median_ms is None else f"{measurement.median_ms:.3f}"


def _mib(measurement: Measurement) -> str:
    return "—" if measurement.peak_bytes is None else f"{measurement.peak_bytes / 2**20:,.1f}"


def _ratio(value: Optional[float], reference: Optional[float]) -> str:
    return "—" if value is None or not reference else f"{value / reference:.2f}x"


def _notes(named: Sequence[tuple[str, Measurement]]) -> str:
    notes = []
    for name, measurement in named:
        if measurement.error is not None:
            notes.append(f"{name} failed: {measurement.error}")
        notes += [f"{name} warned: {text}" for text in measurement.warnings]
    return "; ".join(notes)


def render_losses(rows: Sequence[LossRow]) -> list[str]:
    """The fair_loss table: one row per (shape, dtype, mode), ratios to cross-entropy."""
    lines = [
        "| shape | dtype | mode | fair_loss ms | cross_entropy ms | time ratio "
        "| fair_loss peak MiB | cross_entropy peak MiB | memory ratio | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        fair, baseline = row.fair, row.baseline
        notes = _notes([("fair_loss", fair), ("cross_entropy", baseline)])
        lines.append(
            f"| {_shape(row.shape)} | {_dtype(row.dtype)} | {row.mode} | {_ms(fair)} | "
            f"{_ms(baseline)} | {_ratio(fair.median_ms, baseline.median_ms)} | {_mib(fair)} | "
            f"{_mib(baseline)} | {_ratio(fair.peak_bytes, baseline.peak_bytes)} | {notes} |"
        )
    return lines


def render_linear(results: dict[str, Measurement]) -> list[str]:
    """The linear table: one row per method, ratios to torch's chunked path."""
    reference = results["F.linear_cross_entropy"]
    lines = [
        "| method | ms | time ratio | peak MiB | memory ratio | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, measurement in results.items():
        lines.append(
            f"| {name} | {_ms(measurement)} | "
            f"{_ratio(measurement.median_ms, reference.median_ms)} | {_mib(measurement)} | "
            f"{_ratio(measurement.peak_bytes, reference.peak_bytes)} | "
            f"{_notes([(name, measurement)])} |"
        )
    return lines


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}; --smoke-cpu run, not a benchmark)"


def render(
    device: torch.device,
    tests: Optional[DeviceTests],
    loss_rows: Sequence[LossRow],
    linear: dict[str, Measurement],
    linear_sizes: tuple[int, int, int],
    min_run_time: float,
) -> str:
    """The whole Markdown page."""
    rows, hidden, vocab = linear_sizes
    if tests is None:
        test_line = "not run (--smoke-cpu)"
    else:
        test_line = f"{'passed' if tests.passed else 'FAILED'}: `{tests.summary}`"
    lines = [
        "# GPU benchmarks",
        "",
        "Written by `make gpu-check` (`python -m benchmarks.gpu_check`).",
        "",
        f"- GPU: {_device_name(device)}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- device tests (`{DEVICE_TESTS}`): {test_line}",
        "",
        "Time: median of `torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time="
        f"{min_run_time})` over forward+backward (`torch.autograd.grad` of the loss w.r.t. its "
        "inputs), after warm-up. Peak memory: `torch.cuda.max_memory_allocated()` over one "
        "forward+backward after `torch.cuda.reset_peak_memory_stats()`, minus the memory "
        "allocated before it (the inputs); the gradients are part of it. Compiled: "
        "`torch.compile(fn, fullgraph=True, dynamic=False)`, one per function, warmed up on each "
        "case. Ratios: fairloss / torch.",
        "",
        "## fair_loss vs F.cross_entropy",
        "",
        "Random normal logits, classes in dim 1, random class-index targets, default options.",
        "",
        *render_losses(loss_rows),
        "",
        "## linear_fair_loss vs chunked F.linear_cross_entropy",
        "",
        f"N={rows}, H={hidden}, V={vocab}, {_dtype(LINEAR_DTYPE)}; hidden states `randn`, head "
        f"`{LINEAR_WEIGHT_SCALE} * randn`, both requiring grad; random targets. torch's "
        "chunked path: `F.linear_cross_entropy(x, w, t, options=nn.LinearCrossEntropyOptions())`; "
        "`fairloss.linear_fair_loss(x, w, t)` with its default chunk size.",
        "",
        *render_linear(linear),
    ]
    return "\n".join(lines) + "\n"


def run_device_tests() -> DeviceTests:
    """Run ``tests/_impl/test_devices.py`` in a subprocess; its output goes to stdout as is."""
    command = [sys.executable, "-m", "pytest", "-q", DEVICE_TESTS, "-p", "no:cacheprovider"]
    _progress(" ".join(command[1:]))
    try:
        completed = subprocess.run(
            command,
            cwd=REPOSITORY_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=DEVICE_TESTS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout if isinstance(error.stdout, str) else ""
        print(output, flush=True)
        return DeviceTests(False, f"timed out after {DEVICE_TESTS_TIMEOUT_S:.0f} s")
    print(completed.stdout, end="", flush=True)
    lines = [line.strip() for line in completed.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    if completed.returncode != 0:
        summary = f"{summary} (exit status {completed.returncode})"
    return DeviceTests(completed.returncode == 0, summary.replace("`", "'"))


def no_cuda_message() -> str:
    """Why ``make gpu-check`` cannot run here."""
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
    return (
        "make gpu-check needs a CUDA device; torch.cuda.is_available() is False on this machine "
        f"(torch {torch.__version__}, {built})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="Device tests, then fairloss against torch's losses on a CUDA device.",
    )
    parser.add_argument("--smoke-cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="default: docs/benchmarks-gpu.md"
    )
    parser.add_argument("--min-run-time", type=float, default=MIN_RUN_TIME, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the check; the exit status: 0, 1 (device tests failed) or 2 (no CUDA device)."""
    args = _parser().parse_args(argv)
    if not args.smoke_cpu and not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return NO_CUDA_STATUS
    # As `make pytest` does: torch.utils.cpp_extension runs `ninja` (from the venv) by name.
    os.environ["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    )
    started = time.perf_counter()
    if args.smoke_cpu:
        device, tests = torch.device("cpu"), None
        shapes, linear_sizes = SMOKE_SHAPES, SMOKE_LINEAR_SIZES
    else:
        device, tests = torch.device("cuda"), run_device_tests()
        shapes, linear_sizes = SHAPES, LINEAR_SIZES
    loss_rows = benchmark_losses(shapes, device, args.min_run_time)
    linear = benchmark_linear(linear_sizes, device, args.min_run_time)
    page = render(device, tests, loss_rows, linear, linear_sizes, args.min_run_time)
    print(page, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page)
    _progress(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")
    if tests is not None and not tests.passed:
        _progress(f"device tests failed: {tests.summary}")
        return TESTS_FAILED_STATUS
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
