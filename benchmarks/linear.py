"""Linear head + loss at language-model scale: time and peak memory of one forward+backward.

Four ways to train a ``(V, H)`` head on ``N`` hidden states, class-index targets:

* ``fair_loss(F.linear)`` — FairLoss on the full ``(N, V)`` logits (unfused);
* ``cross_entropy(F.linear)`` — ``F.cross_entropy`` on the full logits (unfused);
* ``F.linear_cross_entropy`` — torch's chunked path (``options=nn.LinearCrossEntropyOptions()``);
* ``linear_fair_loss`` — :func:`fairloss.linear_fair_loss`, chunked.

Three logit regimes (``--regimes``):

* ``uniform`` — near-uniform logits: hidden states ``randn * 0.5``, head ``randn * 0.05``,
  random targets (logits of standard deviation about 0.6; the target rarely wins);
* ``peaked`` — a trained-like head: hidden states ``randn``, head ``randn / sqrt(H)``, and a
  share ``--correct`` (0.9) of the rows gets the target's head row added to its hidden state,
  times 5, so that the target wins those rows by a wide margin: FairLoss's penalty cannot skip
  them, the dearer case for it;
* ``mixed`` — the ``peaked`` construction with half the rows won, and 15 % of the targets
  (random rows) set to ``-100``, ignored.

Peak memory is measured in fresh Python processes, one at a time, with the environment as it
is (no allocator variable is set: users do not set them). The process builds the inputs, warms
the method up on a few rows, resets the peak resident set size to the current one
(``/proc/self/clear_refs``; where Linux refuses, the peak of ``getrusage`` is used as is), runs
forward+backward once at full size and reports the growth of the peak RSS over the baseline:
the gradients of the hidden states and the head, alive at the end, are part of it, as for every
method. The peak of one process can differ from the next one's (the heap's layout depends on
the order of allocations and on thread timing), so each chunked method runs in ``--repeats``
fresh processes (10) per (vocabulary, regime) and the report gives the worst run and the spread;
the unfused methods, whose peak is the full logits, run once per vocabulary, at the regimes of
``--baseline-regimes`` (``peaked``). Time: ``torch.utils.benchmark.Timer`` (median of
``blocked_autorange``) in one more fresh process per (vocabulary, method), at ``--time-regime``
(``peaked``). A last process per vocabulary and regime of ``--accuracy-regimes`` (``mixed``)
compares ``linear_fair_loss`` with the unfused ``fair_loss(F.linear)``: relative error of the
loss and ``max |difference| / max |reference|`` of each gradient.

Goals, at N=8192, H=512, V=32000 and 128000: the peak memory of ``linear_fair_loss`` within
1.2x of torch's chunked ``F.linear_cross_entropy``, the worst of 10 processes of each, in every
regime; its time at most 1.15x torch's chunked.

Run ``python -m benchmarks.linear [--output docs/linear.md]``; ``benchmarks.run`` calls
:func:`main` and appends the Markdown section it returns to ``docs/benchmarks.md``.
``--quick`` (N=512, H=64, V=4000, one regime, one process per method) runs in seconds.
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
from benchmarks.memory import peak_rss_bytes, reset_peak_rss, run_json_job
from fairloss import linear_fair_loss
from fairloss._impl.chunked_linear import default_chunk_size

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

METHODS = (
    "fair_loss(F.linear)",
    "cross_entropy(F.linear)",
    "F.linear_cross_entropy",
    "linear_fair_loss",
)
CHUNKED_FAIR = "linear_fair_loss"
CHUNKED_TORCH = "F.linear_cross_entropy"
CHUNKED = (CHUNKED_TORCH, CHUNKED_FAIR)
REGIMES = ("uniform", "peaked", "mixed")
WARM_UP_ROWS = 16
ALIGNMENT = 5.0
#: ``uniform``: hidden states ``randn * UNIFORM_STATES``, head ``randn * UNIFORM_HEAD``.
UNIFORM_STATES = 0.5
UNIFORM_HEAD = 0.05
#: ``mixed``: share of the rows the target wins, and share of the targets ignored.
MIXED_CORRECT = 0.5
MIXED_IGNORED = 0.15
IGNORE_INDEX = -100
DEFAULT_REPEATS = 10
#: The goals: worst peak of linear_fair_loss / worst of torch's chunked; median time the same.
MEMORY_GOAL = 1.2
TIME_GOAL = 1.15
GOAL_ROWS, GOAL_HIDDEN, GOAL_VOCABS = 8192, 512, (32000, 128000)


def make_inputs(
    rows: int, hidden: int, vocab: int, regime: str, correct: float, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Hidden states and head (leaves that require grad) and targets of a regime."""
    generator = torch.Generator().manual_seed(seed)
    if regime == "uniform":
        states = torch.empty(rows, hidden).normal_(std=UNIFORM_STATES, generator=generator)
        head = torch.empty(vocab, hidden).normal_(std=UNIFORM_HEAD, generator=generator)
        target = torch.randint(0, vocab, (rows,), generator=generator)
        return states.requires_grad_(True), head.requires_grad_(True), target
    if regime not in ("peaked", "mixed"):
        raise ValueError(f"Expected argument `regime` to be one of {REGIMES}, but got {regime!r}.")
    head = torch.empty(vocab, hidden).normal_(std=hidden**-0.5, generator=generator)
    states = torch.empty(rows, hidden).normal_(generator=generator)
    target = torch.randint(0, vocab, (rows,), generator=generator)
    aligned = round((correct if regime == "peaked" else MIXED_CORRECT) * rows)
    if aligned > 0:
        states[:aligned].add_(head.index_select(0, target[:aligned]), alpha=ALIGNMENT)
    if regime == "mixed":
        ignored = torch.randperm(rows, generator=generator)[: round(MIXED_IGNORED * rows)]
        target[ignored] = IGNORE_INDEX
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
        return chunk_size or default_chunk_size(rows, vocab)
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


def _job_inputs(job: dict[str, Any], rows: int) -> tuple[Tensor, Tensor, Tensor]:
    return make_inputs(rows, job["hidden"], job["vocab"], job["regime"], job["correct"])


def _warmed_up_inputs(job: dict[str, Any]) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """The job's loss, run once on a few rows (thread pools, libraries), and its full inputs."""
    loss = loss_function(job["method"], job["chunk_size"])
    _forward_backward(loss, _job_inputs(job, min(job["rows"], WARM_UP_ROWS)))
    inputs = list(_job_inputs(job, job["rows"]))
    gc.collect()
    return loss, inputs


def measure_memory(job: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: growth of the peak RSS over one forward+backward, in bytes."""
    loss, inputs = _warmed_up_inputs(job)
    reset = reset_peak_rss()
    baseline, source = peak_rss_bytes()
    _forward_backward(loss, inputs)
    peak, _ = peak_rss_bytes()
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
    states, head, target = _job_inputs(job, job["rows"])
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
    """Run one job in a fresh process, with this process's environment unchanged."""
    command = [sys.executable, "-m", "benchmarks.linear", "--job", json.dumps(job)]
    return run_json_job(command, dict(os.environ), timeout_s)


def _megabytes(size: Optional[float]) -> str:
    return "—" if size is None else f"{size / 2**20:,.0f} MB"


def _seconds(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3g} s"


def _quotient(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return None if value is None or not reference else value / reference


def _ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _met(
    value: Optional[float], bound: float, row: dict[str, Any], args: argparse.Namespace
) -> str:
    """The goal's cell of ``linear_fair_loss``'s row: blank elsewhere, n/a off the goal's sizes."""
    if row["method"] != CHUNKED_FAIR:
        return ""
    if (args.rows, args.hidden) != (GOAL_ROWS, GOAL_HIDDEN) or row["vocab"] not in GOAL_VOCABS:
        return "n/a (other sizes)"
    return "?" if value is None else ("yes" if value <= bound else "**no**")


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """Worst (largest), min and median of a row's peaks; the failures counted."""
    peaks = row.get("peaks", [])
    if peaks:
        row["peak_bytes"] = max(peaks)
        row["peak_min_bytes"] = min(peaks)
        row["peak_median_bytes"] = round(statistics.median(peaks))
    return row


def _row_key(row: dict[str, Any]) -> tuple[int, str, str]:
    return row["vocab"], row["regime"], row["method"]


def _torch_row(
    rows: dict[tuple[int, str, str], dict[str, Any]], row: dict[str, Any]
) -> dict[str, Any]:
    return rows.get((row["vocab"], row["regime"], CHUNKED_TORCH), {})


def _failure_note(row: dict[str, Any]) -> str:
    notes = []
    failures = row.get("memory_failures", [])
    if failures:
        runs = len(failures) + len(row.get("peaks", []))
        notes.append(f"memory failed in {len(failures)} of {runs} runs: {failures[-1]}")
    if "time_failure" in row:
        notes.append(f"time failed: {row['time_failure']}")
    return "; ".join(notes)


def render(
    rows: list[dict[str, Any]], accuracy: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    """The Markdown section: goals, memory table, time table, then the accuracy table."""
    machine = platform.processor() or platform.machine()
    by_key = {_row_key(row): row for row in rows}
    memory_goal = f"Goal: <= {MEMORY_GOAL:g}x (worst of {args.repeats} runs)"
    time_goal = f"Goal: <= {TIME_GOAL:g}x (median)"
    lines = [
        "## Linear head + loss at language-model sizes (chunked)",
        "",
        f"Forward+backward of a linear head `(V, H)` and the loss on N={args.rows} hidden states "
        f"of size H={args.hidden}, float32, {args.threads} threads, {machine}, torch "
        f"{torch.__version__}. Ratios are against torch's chunked "
        "`F.linear_cross_entropy(..., options=nn.LinearCrossEntropyOptions())` at the same V "
        "and regime.",
        "",
        "Logit regimes: *uniform*, near-uniform logits (hidden states "
        f"`randn * {UNIFORM_STATES:g}`, head `randn * {UNIFORM_HEAD:g}`, random targets); "
        "*peaked*, a trained-like head (hidden states `randn`, head `randn / sqrt(H)`) where the "
        f"target wins {args.correct:.0%} of the rows by a wide margin (the target's head row "
        f"added to the hidden state, times {ALIGNMENT:g}); *mixed*, the same construction with "
        f"{MIXED_CORRECT:.0%} of the rows won and {MIXED_IGNORED:.0%} of the targets set to "
        f"`{IGNORE_INDEX}` (ignored).",
        "",
        "Goals: the peak memory of `linear_fair_loss` forward+backward within "
        f"{MEMORY_GOAL:g}x of torch's chunked one, the worst of {DEFAULT_REPEATS} fresh processes "
        f"of each, at N={GOAL_ROWS}, H={GOAL_HIDDEN}, V={' and '.join(map(str, GOAL_VOCABS))}, "
        f"in every regime; its time at most {TIME_GOAL:g}x torch's chunked one.",
        "",
        "### Peak memory",
        "",
        "Growth of the peak RSS over the inputs during one forward+backward, in a fresh process "
        "with no allocator setting in its environment (the gradients of the hidden states and "
        f"the head included). The chunked methods run in {args.repeats} fresh processes each "
        "per V and regime: *worst* is the largest peak, and the ratio divides worst by worst; "
        "the unfused methods, whose peak is the full logits, run once "
        f"(regimes: {', '.join(args.baseline_regimes) or 'none'}).",
        "",
        "| V | regime | method | chunk rows | runs | worst peak | min / median / max "
        f"| worst / torch chunked worst | {memory_goal} |",
        "|---:|---|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for row in rows:
        if not row.get("peaks") and not row.get("memory_failures"):
            continue
        peaks = row.get("peaks", [])
        ratio = _quotient(row.get("peak_bytes"), _torch_row(by_key, row).get("peak_bytes"))
        spread = (
            " / ".join(
                f"{row[key] / 2**20:,.0f}"
                for key in ("peak_min_bytes", "peak_median_bytes", "peak_bytes")
            )
            + " MB"
            if peaks
            else "—"
        )
        goal = _met(ratio, MEMORY_GOAL, row, args)
        note = _failure_note(row)
        lines.append(
            f"| {row['vocab']} | {row['regime']} | {row['method']} | "
            f"{row.get('chunk_rows') or 'all'} | {len(peaks)} | "
            f"{_megabytes(row.get('peak_bytes'))} | {spread} | {_ratio(ratio)} | {goal} |"
            + (f" {note}" if note else "")
        )
    timed = [row for row in rows if "median_s" in row or "time_failure" in row]
    if timed:
        lines += [
            "",
            "### Time",
            "",
            f"Median of `torch.utils.benchmark.Timer` runs (at least {args.min_runs}, "
            f"`blocked_autorange(min_run_time={args.min_run_time:g})`), one fresh process per V "
            "and method, in the regime shown.",
            "",
            f"| V | regime | method | chunk rows | time | time / torch chunked | {time_goal} |",
            "|---:|---|---|---:|---:|---:|:-:|",
        ]
        for row in timed:
            ratio = _quotient(row.get("median_s"), _torch_row(by_key, row).get("median_s"))
            goal = _met(ratio, TIME_GOAL, row, args)
            failure = f" time failed: {row['time_failure']}" if "time_failure" in row else ""
            lines.append(
                f"| {row['vocab']} | {row['regime']} | {row['method']} | "
                f"{row.get('chunk_rows') or 'all'} | {_seconds(row.get('median_s'))} | "
                f"{_ratio(ratio)} | {goal} |{failure}"
            )
    if accuracy:
        lines += [
            "",
            "### Accuracy",
            "",
            "`linear_fair_loss` against `fair_loss(F.linear(...))`, both float32: relative error "
            "of the loss, `max |difference| / max |reference|` of each gradient.",
            "",
            "| V | regime | loss | gradient of input | gradient of linear_weight |",
            "|---:|---|---:|---:|---:|",
        ]
        for errors in accuracy:
            if "failed" in errors:
                lines.append(
                    f"| {errors['vocab']} | {errors['regime']} | failed: {errors['failed']} | | |"
                )
                continue
            lines.append(
                f"| {errors['vocab']} | {errors['regime']} | {errors['loss']:.1e} | "
                f"{errors['input']:.1e} | {errors['linear_weight']:.1e} |"
            )
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "vocab",
    "regime",
    "method",
    "chunk_rows",
    "memory_runs",
    "memory_failed_runs",
    "peak_bytes",
    "peak_min_bytes",
    "peak_median_bytes",
    "memory_ratio",
    "peaks_bytes",
    "median_s",
    "runs",
    "time_ratio",
)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per (V, regime, method): ``peak_bytes`` is the worst run, ratios worst / worst."""
    by_key = {_row_key(row): row for row in rows}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            torch_row = _torch_row(by_key, row)
            memory_ratio = _quotient(row.get("peak_bytes"), torch_row.get("peak_bytes"))
            time_ratio = _quotient(row.get("median_s"), torch_row.get("median_s"))
            values = {
                **row,
                "memory_runs": len(row.get("peaks", [])),
                "memory_failed_runs": len(row.get("memory_failures", [])),
                "memory_ratio": "" if memory_ratio is None else f"{memory_ratio:.4f}",
                "time_ratio": "" if time_ratio is None else f"{time_ratio:.4f}",
                "peaks_bytes": " ".join(str(peak) for peak in row.get("peaks", [])),
            }
            writer.writerow([values.get(column, "") for column in CSV_COLUMNS])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=8192, help="N, hidden states per step")
    parser.add_argument("--hidden", type=int, default=512, help="H, the head's input size")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000], help="V values")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--regimes",
        nargs="+",
        default=None,
        choices=REGIMES,
        help="logit regimes of the memory runs (default: all three; peaked with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"fresh processes per chunked method, V and regime (default: {DEFAULT_REPEATS}; "
        "1 with --quick)",
    )
    parser.add_argument(
        "--baseline-regimes",
        nargs="*",
        default=None,
        choices=REGIMES,
        help="regimes at which the unfused methods' memory is measured, once each (default: "
        "peaked; none given: not measured)",
    )
    parser.add_argument(
        "--accuracy-regimes",
        nargs="*",
        default=["mixed"],
        choices=REGIMES,
        help="regimes of the accuracy check, one process per V each (default: mixed)",
    )
    parser.add_argument(
        "--time-regime", default="peaked", choices=REGIMES, help="regime of the timing runs"
    )
    parser.add_argument("--correct", type=float, default=0.9, help="share of rows won, peaked")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=5.0, help="seconds per timing")
    parser.add_argument("--min-runs", type=int, default=3, help="timed runs at least")
    parser.add_argument("--no-time", action="store_true", help="measure memory only")
    parser.add_argument("--chunk-size", type=int, default=None, help="linear_fair_loss's")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy check")
    parser.add_argument(
        "--quick", action="store_true", help="N=512, H=64, V=4000, peaked only: seconds"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown here")
    parser.add_argument("--out-dir", type=Path, default=None, help="write linear.md/.csv here")
    parser.add_argument("--no-compile", action="store_true", help="accepted for benchmarks.run")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    return parser


def _log(message: str) -> None:
    print(f"[linear] {message}", file=sys.stderr, flush=True)


def _memory_runs(args: argparse.Namespace, vocab: int, regime: str) -> list[tuple[str, int]]:
    """(method, repeat) pairs of one V and regime, the methods interleaved within a repeat."""
    chunked = [method for method in args.methods if method in CHUNKED]
    unfused = [method for method in args.methods if method not in CHUNKED]
    runs = [(method, 0) for method in unfused if regime in args.baseline_regimes]
    runs += [(method, repeat) for repeat in range(args.repeats) for method in chunked]
    return runs


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run every measurement in fresh processes; return the Markdown section."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.job is not None:
        job = json.loads(args.job)
        torch.set_num_threads(job["threads"])
        print(json.dumps(JOBS[job["kind"]](job)))
        return ""
    if args.quick:
        args.rows, args.hidden, args.vocab = 512, 64, [4000]
        args.min_run_time = min(args.min_run_time, 0.5)
    if args.regimes is None:
        args.regimes = ["peaked"] if args.quick else list(REGIMES)
    if args.repeats is None:
        args.repeats = 1 if args.quick else DEFAULT_REPEATS
    if args.repeats < 1:
        parser.error(f"Expected argument `--repeats` to be at least 1, but got {args.repeats}.")
    if args.baseline_regimes is None:
        args.baseline_regimes = ["peaked"]
    shared = {
        "chunk_size": args.chunk_size,
        "rows": args.rows,
        "hidden": args.hidden,
        "correct": args.correct,
        "threads": args.threads,
        "min_run_time": args.min_run_time,
        "min_runs": args.min_runs,
    }
    rows: dict[tuple[int, str, str], dict[str, Any]] = {}

    def row_of(vocab: int, regime: str, method: str) -> dict[str, Any]:
        key = (vocab, regime, method)
        if key not in rows:
            chunk = chunk_rows(method, args.rows, args.hidden, vocab, args.chunk_size)
            rows[key] = {"vocab": vocab, "regime": regime, "method": method, "chunk_rows": chunk}
        return rows[key]

    accuracy = []
    for vocab in args.vocab:
        for regime in args.regimes:
            for method in args.methods:  # the table's order, whatever runs first
                if method in CHUNKED or regime in args.baseline_regimes:
                    row_of(vocab, regime, method)
            for method, repeat in _memory_runs(args, vocab, regime):
                _log(f"V={vocab} {regime} {method}: memory, run {repeat + 1}")
                job = {**shared, "kind": "memory", "method": method, "vocab": vocab}
                measured = _run_job({**job, "regime": regime}, args.timeout)
                row = row_of(vocab, regime, method)
                if "failed" in measured:
                    row.setdefault("memory_failures", []).append(measured["failed"])
                else:
                    row.setdefault("peaks", []).append(int(measured["peak_bytes"]))
        for regime in [] if args.no_accuracy else args.accuracy_regimes:
            _log(f"V={vocab} {regime}: accuracy")
            job = {**shared, "kind": "accuracy", "vocab": vocab, "regime": regime}
            errors = _run_job(job, args.timeout)
            accuracy.append({"vocab": vocab, "regime": regime, **errors})
        if not args.no_time:
            for method in args.methods:
                _log(f"V={vocab} {args.time_regime} {method}: time")
                job = {**shared, "kind": "time", "method": method, "vocab": vocab}
                measured = _run_job({**job, "regime": args.time_regime}, args.timeout)
                row = row_of(vocab, args.time_regime, method)
                if "failed" in measured:
                    row["time_failure"] = measured["failed"]
                else:
                    row.update(measured)
    ordered = sorted(
        rows.values(),
        key=lambda row: (
            args.vocab.index(row["vocab"]),
            REGIMES.index(row["regime"]),
            METHODS.index(row["method"]),
        ),
    )
    results = [summarize(row) for row in ordered]
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
