"""Linear head + loss at language-model scale: time and peak memory of one forward+backward.

Four ways to train a ``(V, H)`` head on ``N`` hidden states, class-index targets:

* ``fair_loss(F.linear)`` — FairLoss on the full ``(N, V)`` logits (unfused);
* ``cross_entropy(F.linear)`` — ``F.cross_entropy`` on the full logits (unfused);
* ``F.linear_cross_entropy`` — torch's chunked path (``options=nn.LinearCrossEntropyOptions()``);
* ``linear_fair_loss`` — :func:`fairloss.linear_fair_loss`, chunked.

Every (vocabulary, method) pair runs in a fresh Python process, one at a time. The process
builds the inputs, warms the method up on a few rows, resets the peak resident set size to the
current one (``/proc/self/clear_refs``; where Linux refuses, the peak of ``getrusage`` is used
as is), runs forward+backward once at full size and reports the growth of the peak RSS over the
baseline: the gradients of the hidden states and the head, alive at the end, are part of it, as
for every method. Then it times forward+backward with ``torch.utils.benchmark.Timer`` (median of
``blocked_autorange``). glibc's ``MALLOC_MMAP_THRESHOLD_`` is fixed so that large tensors are
mapped and unmapped rather than reused from the heap. A last process per vocabulary compares
``linear_fair_loss`` with the unfused ``fair_loss(F.linear)``: relative error of the loss and
``max |difference| / max |reference|`` of each gradient.

The hidden states are ``randn``; the head is ``randn / sqrt(H)`` (logits of standard deviation
about 1); a fraction ``--correct`` of the rows has the target's head row added to its hidden
state, times 5, so that the target wins those rows: FairLoss's penalty cannot skip them, the
dearer case for it.

Run ``python -m benchmarks.linear [--output docs/linear.md]``; ``benchmarks.run`` calls
:func:`main` and appends the Markdown section it returns to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import benchmark

import fairloss
from benchmarks.memory import (
    MALLOC_MMAP_THRESHOLD,
    _peak_rss_bytes,
    _reset_peak_rss,
    run_json_job,
)
from fairloss.linear import default_chunk_size, linear_fair_loss

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

METHODS = (
    "fair_loss(F.linear)",
    "cross_entropy(F.linear)",
    "F.linear_cross_entropy",
    "linear_fair_loss",
)
CHUNKED_FAIR = "linear_fair_loss"
CHUNKED_TORCH = "F.linear_cross_entropy"
WARM_UP_ROWS = 16
ALIGNMENT = 5.0
FAILURES = ("memory", "time")  # the per-method jobs, in the order they run


def make_inputs(
    rows: int, hidden: int, vocab: int, correct: float, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Hidden states and head (leaves that require grad) and targets, built in place."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.empty(vocab, hidden).normal_(std=hidden**-0.5, generator=generator)
    states = torch.empty(rows, hidden).normal_(generator=generator)
    target = torch.randint(0, vocab, (rows,), generator=generator)
    aligned = round(correct * rows)
    if aligned > 0:
        states[:aligned].add_(head.index_select(0, target[:aligned]), alpha=ALIGNMENT)
    return states.requires_grad_(True), head.requires_grad_(True), target


def loss_function(
    method: str, chunk_size: Optional[int] = None
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The method as ``loss(states, head, target) -> scalar``; ``chunk_size`` for ours only."""
    if method == "fair_loss(F.linear)":
        return lambda states, head, target: fairloss.fair_loss(F.linear(states, head), target)
    if method == "cross_entropy(F.linear)":
        return lambda states, head, target: F.cross_entropy(F.linear(states, head), target)
    if method == CHUNKED_TORCH:
        options = nn.LinearCrossEntropyOptions()
        return lambda states, head, target: F.linear_cross_entropy(
            states, head, target, options=options
        )
    if method == CHUNKED_FAIR:
        return lambda states, head, target: linear_fair_loss(
            states, head, target, chunk_size=chunk_size
        )
    raise ValueError(f"Expected argument `method` to be one of {METHODS}, but got {method!r}.")


def chunk_rows(
    method: str, rows: int, hidden: int, vocab: int, chunk_size: Optional[int] = None
) -> Optional[int]:
    """Rows per chunk of the chunked methods at these sizes; None for the unfused ones."""
    if method == CHUNKED_FAIR:
        return chunk_size or default_chunk_size(rows, hidden, vocab)
    if method == CHUNKED_TORCH:
        adjusted = nn.LinearCrossEntropyOptions()._adjust(
            num_batches=rows,
            in_features=hidden,
            num_classes=vocab,
            dtype=torch.float32,
            device=torch.device("cpu"),
        )
        return int(adjusted.batch_chunk_size)
    return None


def _forward_backward(
    loss: Callable[[Tensor, Tensor, Tensor], Tensor], inputs: Sequence[Tensor]
) -> None:
    states, head, target = inputs
    states.grad = None
    head.grad = None
    loss(states, head, target).backward()


def _warmed_up_inputs(job: dict[str, Any]) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """The job's loss, run once on a few rows (thread pools, libraries), and its full inputs."""
    loss = loss_function(job["method"], job["chunk_size"])
    rows, hidden, vocab = job["rows"], job["hidden"], job["vocab"]
    _forward_backward(loss, make_inputs(min(rows, WARM_UP_ROWS), hidden, vocab, job["correct"]))
    inputs = list(make_inputs(rows, hidden, vocab, job["correct"]))
    gc.collect()
    return loss, inputs


def measure_memory(job: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: growth of the peak RSS over one forward+backward, in bytes."""
    loss, inputs = _warmed_up_inputs(job)
    reset = _reset_peak_rss()
    baseline, source = _peak_rss_bytes()
    _forward_backward(loss, inputs)
    peak, _ = _peak_rss_bytes()
    return {"peak_bytes": peak - baseline, "peak_method": f"{source}{', reset' if reset else ''}"}


def measure_time(job: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: median seconds of one forward+backward, at least ``min_runs``."""
    loss, inputs = _warmed_up_inputs(job)
    timer = benchmark.Timer(
        stmt="step()",
        globals={"step": lambda: _forward_backward(loss, inputs)},
        num_threads=job["threads"],
        label=job["method"],
    )
    times = list(timer.blocked_autorange(min_run_time=job["min_run_time"]).times)
    while len(times) < job["min_runs"]:
        times += timer.timeit(number=1).times
    return {"median_s": statistics.median(times), "runs": len(times)}


def measure_accuracy(job: dict[str, Any]) -> dict[str, Any]:
    """``linear_fair_loss`` against ``fair_loss(F.linear)``: relative errors, float32."""
    states, head, target = make_inputs(job["rows"], job["hidden"], job["vocab"], job["correct"])
    values: list[float] = []
    gradients = []
    for method in ("fair_loss(F.linear)", CHUNKED_FAIR):
        loss = loss_function(method, job["chunk_size"])(states, head, target)
        gradients.append(torch.autograd.grad(loss, [states, head]))
        values.append(float(loss))
        del loss
        gc.collect()
    reference_value, chunked_value = values
    errors = {"loss": abs(chunked_value - reference_value) / abs(reference_value)}
    (reference_input, reference_head), (grad_input, grad_head) = gradients
    for name, grad, reference in (
        ("input", grad_input, reference_input),
        ("linear_weight", grad_head, reference_head),
    ):
        errors[name] = float((grad - reference).abs().max() / reference.abs().max())
    return errors


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "memory": measure_memory,
    "time": measure_time,
    "accuracy": measure_accuracy,
}


def _run_job(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one job in a fresh process; the memory job with glibc's mmap threshold fixed."""
    command = [sys.executable, "-m", "benchmarks.linear", "--job", json.dumps(job)]
    environment = dict(os.environ)
    if job["kind"] == "memory":
        environment["MALLOC_MMAP_THRESHOLD_"] = MALLOC_MMAP_THRESHOLD
    return run_json_job(command, environment, timeout_s)


def _megabytes(size: Optional[float]) -> str:
    return "—" if size is None else f"{size / 2**20:,.0f} MB"


def _seconds(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3g} s"


def _ratio(value: Optional[float], reference: Optional[float]) -> str:
    return "—" if value is None or not reference else f"{value / reference:.2f}x"


def render(
    results: list[dict[str, Any]], accuracy: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    """The Markdown section: one table row per (vocabulary, method), then the accuracy table."""
    machine = platform.processor() or platform.machine()
    lines = [
        "## Linear head + loss at language-model sizes (chunked)",
        "",
        f"Forward+backward of a linear head `(V, H)` and the loss on N={args.rows} hidden states "
        f"of size H={args.hidden}, float32, {args.threads} threads, {machine}, torch "
        f"{torch.__version__}; the target wins {args.correct:.0%} of the rows. Peak memory: growth "
        "of the peak RSS over the inputs in a fresh process (the gradients of the hidden states "
        "and the head included). Time: median of `torch.utils.benchmark.Timer` runs (at least "
        f"{args.min_runs}) in another fresh process. Ratios are against torch's chunked "
        "`F.linear_cross_entropy(..., options=nn.LinearCrossEntropyOptions())` at the same V.",
        "",
        "| V | method | chunk rows | peak memory | time | memory / torch chunked "
        "| time / torch chunked |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(result["vocab"], result["method"]): result for result in results}
    for result in results:
        torch_chunked = by_key.get((result["vocab"], CHUNKED_TORCH), {})
        peak, median = result.get("peak_bytes"), result.get("median_s")
        failure = "; ".join(f"{kind} failed: {result[kind]}" for kind in FAILURES if kind in result)
        lines.append(
            f"| {result['vocab']} | {result['method']} | {result.get('chunk_rows') or 'all'} | "
            f"{_megabytes(peak)} | {_seconds(median)} | "
            f"{_ratio(peak, torch_chunked.get('peak_bytes'))} | "
            f"{_ratio(median, torch_chunked.get('median_s'))} |"
            + (f" {failure}" if failure else "")
        )
    if accuracy:
        lines += [
            "",
            "`linear_fair_loss` against `fair_loss(F.linear(...))`, both float32: relative error "
            "of the loss, `max |difference| / max |reference|` of each gradient.",
            "",
            "| V | loss | gradient of input | gradient of linear_weight |",
            "|---:|---:|---:|---:|",
        ]
        for errors in accuracy:
            if "failed" in errors:
                lines.append(f"| {errors['vocab']} | failed: {errors['failed']} | | |")
                continue
            lines.append(
                f"| {errors['vocab']} | {errors['loss']:.1e} | {errors['input']:.1e} | "
                f"{errors['linear_weight']:.1e} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(results: list[dict[str, Any]], path: Path) -> None:
    columns = ("vocab", "method", "chunk_rows", "peak_bytes", "median_s", "runs")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for result in results:
            writer.writerow([result.get(column, "") for column in columns])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=8192, help="N, hidden states per step")
    parser.add_argument("--hidden", type=int, default=512, help="H, the head's input size")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000], help="V values")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--correct", type=float, default=0.5, help="share of rows the target wins")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=5.0, help="seconds per timing")
    parser.add_argument("--min-runs", type=int, default=3, help="timed runs at least")
    parser.add_argument("--no-time", action="store_true", help="measure memory only")
    parser.add_argument("--chunk-size", type=int, default=None, help="linear_fair_loss's")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy check")
    parser.add_argument("--quick", action="store_true", help="N=512, H=64, V=4000: seconds")
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown here")
    parser.add_argument("--out-dir", type=Path, default=None, help="write linear.md/.csv here")
    parser.add_argument("--no-compile", action="store_true", help="accepted for benchmarks.run")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run every (vocabulary, method) pair in fresh processes; return the Markdown section."""
    args = _parser().parse_args(argv)
    if args.job is not None:
        job = json.loads(args.job)
        torch.set_num_threads(job["threads"])
        print(json.dumps(JOBS[job["kind"]](job)))
        return ""
    if args.quick:
        args.rows, args.hidden, args.vocab = 512, 64, [4000]
        args.min_run_time = min(args.min_run_time, 0.5)
    shared = {
        "chunk_size": args.chunk_size,
        "rows": args.rows,
        "hidden": args.hidden,
        "correct": args.correct,
        "threads": args.threads,
        "min_run_time": args.min_run_time,
        "min_runs": args.min_runs,
    }
    results, accuracy = [], []
    for vocab in args.vocab:
        for method in args.methods:
            result: dict[str, Any] = {
                "vocab": vocab,
                "method": method,
                "chunk_rows": chunk_rows(method, args.rows, args.hidden, vocab, args.chunk_size),
            }
            for kind in FAILURES if not args.no_time else ("memory",):
                print(f"[linear] V={vocab} {method}: {kind}", file=sys.stderr, flush=True)
                job = {**shared, "kind": kind, "method": method, "vocab": vocab}
                measured = _run_job(job, args.timeout)
                if "failed" in measured:
                    result[kind] = measured["failed"]
                else:
                    result.update(measured)
            results.append(result)
        if not args.no_accuracy:
            print(f"[linear] V={vocab}: accuracy", file=sys.stderr, flush=True)
            errors = _run_job({**shared, "kind": "accuracy", "vocab": vocab}, args.timeout)
            accuracy.append({"vocab": vocab, **errors})
    section = render(results, accuracy, args)
    if args.output is not None:
        args.output.write_text(section)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "linear.md").write_text(section)
        write_csv(results, args.out_dir / "linear.csv")
    return section


if __name__ == "__main__":
    print(main(), end="")
