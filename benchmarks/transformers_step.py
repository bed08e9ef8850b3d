"""One training step of a tiny Llama, several ways to compute its loss: peak memory and time.

The model: ``LlamaForCausalLM`` with hidden size 512, vocabulary 32000, 2 layers, 8 attention
heads of 64 (no grouping), MLP size 1408 (2.75 x hidden, TinyLlama's ratio), untied head,
float32, randomly initialised (no download); a batch of 8 sequences of 512 random tokens with
the tokens as labels. A step is forward + backward (no optimizer; the gradients are set to
``None`` before each step, as ``zero_grad()`` does, so every step allocates them). Methods:

* ``transformers`` — the model as it is: logits, then Transformers' ``ForCausalLMLoss``;
* ``use_fair_loss(fused=True)`` — :func:`fairloss.integrations.transformers.use_fair_loss`:
  FairLoss from the last hidden states and ``lm_head`` in row chunks, no logits (the default
  chunks of :func:`fairloss.linear.linear_fair_loss`, 128 rows here), and the same with
  ``chunk_size`` 256 and 512;
* ``F.linear_cross_entropy`` — the decoder, then torch's chunked
  ``F.linear_cross_entropy(hidden, lm_head.weight, shifted labels,
  options=nn.LinearCrossEntropyOptions())``;
* ``use_fair_loss(fused=False)`` — FairLoss on the logits through the model's loss hook;
* ``decoder only`` (memory only) — the decoder and ``hidden_states.sum()``, for scale.

Memory: each method in fresh processes (``--repeats``, 3), one at a time, with the helpers of
:mod:`benchmarks.memory` (peak RSS, its reset, ``MALLOC_MMAP_THRESHOLD_``): a warm-up step on
one short sequence, then one step in three parts, the peak reset before each: the decoder's
forward, the *loss part* (head and loss, forward and backward, on the decoder's output detached,
the decoder's activations held as in a step), the decoder's backward. The loss part's growth of
the peak RSS is the memory the head and loss add; the step's peak is the largest of the three.
Time: one more process holds every method's model (the same weights) and times one step of
each in interleaved rounds (``--rounds``, 5, after a warm-up round; the order rotates each
round), ``torch.utils.benchmark.Timer.timeit(1)`` per step, through the model's own forward
with ``labels`` for the Transformers and ``use_fair_loss`` methods; the median per method.

Goals (issue 14): the loss part of ``use_fair_loss(fused=True)`` at most 1.2x that of torch's
chunked ``F.linear_cross_entropy`` and far below the default's; its step time at most 1.1x the
default's.

``python -m benchmarks.transformers_step`` measures (half an hour on a busy 2-CPU machine),
writes ``docs/benchmarks-transformers.json`` and puts the section rendered from it in
``docs/benchmarks.md`` (in place of the section there); ``--render-only`` re-renders the
section from the JSON without measuring; ``--quick`` (a small model, a minute or two) writes
neither. ``benchmarks.run`` calls :func:`main` after the suite (not with ``--quick``) and
appends the section it returns.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import benchmark

import fairloss
from benchmarks.memory import MALLOC_MMAP_THRESHOLD, peak_rss_bytes, reset_peak_rss, run_json_job

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPOSITORY_ROOT / "docs" / "benchmarks-transformers.json"
DEFAULT_PAGE = REPOSITORY_ROOT / "docs" / "benchmarks.md"
SECTION_TITLE = "## Transformers training step (tiny Llama)"

TRANSFORMERS = "transformers"
FUSED = "use_fair_loss(fused=True)"
#: The fused path with larger chunks than the default (128 rows here): fewer, larger matrix
#: products, more memory.
LARGER_CHUNKS = (256, 512)
FUSED_LARGER_CHUNKS = {
    f"use_fair_loss(fused=True, chunk_size={rows})": rows for rows in LARGER_CHUNKS
}
TORCH_CHUNKED = "F.linear_cross_entropy"
UNFUSED = "use_fair_loss(fused=False)"
DECODER_ONLY = "decoder only"
METHODS = (TRANSFORMERS, FUSED, *FUSED_LARGER_CHUNKS, TORCH_CHUNKED, UNFUSED)
#: The methods whose model computes the loss itself, called with ``labels``.
MODEL_LOSS_METHODS = (TRANSFORMERS, FUSED, *FUSED_LARGER_CHUNKS, UNFUSED)
MEMORY_METHODS = (*METHODS, DECODER_ONLY)

MODEL: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}
BATCH, LENGTH = 8, 512
QUICK_MODEL: dict[str, Any] = {**MODEL, "vocab_size": 2000, "hidden_size": 64}
QUICK_MODEL.update(intermediate_size=176, num_attention_heads=2, num_key_value_heads=2)
QUICK_BATCH, QUICK_LENGTH = 2, 64
MEMORY_GOAL = 1.2
TIME_GOAL = 1.1

Step = Callable[[], Tensor]


def build_model(sizes: dict[str, Any], seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **sizes, max_position_embeddings=4096, use_cache=False, tie_word_embeddings=False
    )
    return LlamaForCausalLM(config).train()


def make_batch(sizes: dict[str, Any], batch: int, length: int, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, sizes["vocab_size"], (batch, length), generator=generator)


def prepare(method: str, model: Any) -> Any:
    """The model as the method trains it (``use_fair_loss`` applied where the method says)."""
    from fairloss.integrations.transformers import use_fair_loss

    if method == FUSED:
        return use_fair_loss(model, fused=True)
    if method in FUSED_LARGER_CHUNKS:
        return use_fair_loss(model, fused=True, chunk_size=FUSED_LARGER_CHUNKS[method])
    if method == UNFUSED:
        return use_fair_loss(model)
    if method not in (TRANSFORMERS, TORCH_CHUNKED, DECODER_ONLY):
        raise ValueError(
            f"Expected argument `method` to be one of {MEMORY_METHODS}, got {method!r}"
        )
    return model


def head_loss(method: str, model: Any, hidden_states: Tensor, input_ids: Tensor) -> Tensor:
    """The method's head and loss on the decoder's last hidden states, labels ``input_ids``.

    The code the model's own forward runs after its decoder: ``model.loss_function`` on
    ``lm_head``'s logits, or the fused hook's :meth:`fused_loss`; torch's chunked loss on the
    shifted labels; ``hidden_states.sum()`` for the decoder alone.
    """
    if method == DECODER_ONLY:
        return hidden_states.sum()
    if method == FUSED or method in FUSED_LARGER_CHUNKS:
        return model.loss_function.fused_loss(hidden_states, model.lm_head, input_ids)
    if method in (TRANSFORMERS, UNFUSED):
        logits = model.lm_head(hidden_states)
        return model.loss_function(
            logits=logits, labels=input_ids, vocab_size=model.config.vocab_size
        )
    shifted = F.pad(input_ids, (0, 1), value=-100)[:, 1:]
    return F.linear_cross_entropy(
        hidden_states.reshape(-1, hidden_states.shape[-1]),
        model.lm_head.weight,
        shifted.reshape(-1),
        ignore_index=-100,
        options=nn.LinearCrossEntropyOptions(),
    )


def make_step(method: str, model: Any) -> Callable[[Tensor], Tensor]:
    """``step(input_ids) -> loss``: one training step as the method runs it, gradients reset.

    The Transformers and ``use_fair_loss`` methods call the model with ``labels``, as a
    training loop does; the others run the decoder and :func:`head_loss`.
    """
    model = prepare(method, model)

    def step(input_ids: Tensor) -> Tensor:
        model.zero_grad(set_to_none=True)
        if method in MODEL_LOSS_METHODS:
            loss = model(input_ids=input_ids, labels=input_ids).loss
        else:
            hidden_states = model.base_model(input_ids=input_ids).last_hidden_state
            loss = head_loss(method, model, hidden_states, input_ids)
        loss.backward()
        return loss.detach()

    return step


def _peak_since_reset() -> int:
    peak, _ = peak_rss_bytes()
    return peak


def measure_memory(job: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: peak RSS growth of one step, and of its head and loss alone.

    The step runs in three parts: the decoder's forward; the head and loss, forward and
    backward, on the decoder's output detached (the *loss part*: the peak is reset to the
    current RSS just before it, and its growth over that is the loss part's memory, with the
    decoder's activations held as in the step); the decoder's backward from the gradient of its
    output. The step's peak is the largest of the three parts' peaks, over the RSS before it.
    """
    sizes = job["model"]
    method = job["method"]
    model = prepare(method, build_model(sizes))

    def split_step(input_ids: Tensor) -> tuple[int, int, int]:
        model.zero_grad(set_to_none=True)
        reset_peak_rss()
        baseline, _ = peak_rss_bytes()
        hidden_states = model.base_model(input_ids=input_ids).last_hidden_state
        decoder_forward_peak = _peak_since_reset()
        detached = hidden_states.detach().requires_grad_(True)
        reset_peak_rss()
        head_baseline, _ = peak_rss_bytes()
        head_loss(method, model, detached, input_ids).backward()
        head_peak = _peak_since_reset()
        reset_peak_rss()
        hidden_states.backward(detached.grad)
        decoder_backward_peak = _peak_since_reset()
        step_peak = max(decoder_forward_peak, head_peak, decoder_backward_peak)
        return baseline, step_peak, head_peak - head_baseline

    split_step(make_batch(sizes, 1, 16))  # warm-up: thread pools, one-time allocations
    input_ids = make_batch(sizes, job["batch"], job["length"])
    gc.collect()
    baseline, step_peak, loss_part = split_step(input_ids)
    _, source = peak_rss_bytes()
    reset = reset_peak_rss()
    return {
        "peak_bytes": step_peak - baseline,
        "loss_part_bytes": loss_part,
        "peak_method": f"{source}{', reset' if reset else ', not reset (numbers unreliable)'}",
    }


def measure_time(job: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: every method's step time, in interleaved rounds; the losses."""
    sizes = job["model"]
    plain = build_model(sizes)
    steps = {method: make_step(method, copy.deepcopy(plain)) for method in job["methods"]}
    del plain
    input_ids = make_batch(sizes, job["batch"], job["length"])
    losses = {method: float(step(input_ids)) for method, step in steps.items()}  # warm-up
    times: dict[str, list[float]] = {method: [] for method in steps}
    order = list(steps)
    for round_index in range(job["rounds"]):
        shift = round_index % len(order)
        for method in order[shift:] + order[:shift]:
            timer = benchmark.Timer(
                stmt="step(input_ids)",
                globals={"step": steps[method], "input_ids": input_ids},
                num_threads=job["threads"],
                label=method,
            )
            times[method].append(timer.timeit(number=1).median)
            gc.collect()
    return {"times_s": times, "losses": losses}


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "memory": measure_memory,
    "time": measure_time,
}


def _run_job(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.transformers_step", "--job", json.dumps(job)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MALLOC_MMAP_THRESHOLD)
    return run_json_job(command, environment, timeout_s)


def _log(message: str) -> None:
    print(f"[transformers_step] {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every job in fresh processes; the results as one JSON-ready dict."""
    import transformers

    sizes = QUICK_MODEL if args.quick else MODEL
    batch, length = (QUICK_BATCH, QUICK_LENGTH) if args.quick else (BATCH, LENGTH)
    shared = {"model": sizes, "batch": batch, "length": length, "threads": args.threads}
    peaks: dict[str, list[int]] = {method: [] for method in MEMORY_METHODS}
    loss_parts: dict[str, list[int]] = {method: [] for method in MEMORY_METHODS}
    failures: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for method in MEMORY_METHODS:
            _log(f"{method}: memory, run {repeat + 1} of {args.repeats}")
            measured = _run_job({**shared, "kind": "memory", "method": method}, args.timeout)
            if "failed" in measured:
                failures.setdefault(method, []).append(f"memory: {measured['failed']}")
            else:
                peaks[method].append(int(measured["peak_bytes"]))
                loss_parts[method].append(int(measured["loss_part_bytes"]))
    _log(f"time: {args.rounds} interleaved rounds")
    timed = _run_job(
        {**shared, "kind": "time", "methods": list(METHODS), "rounds": args.rounds},
        args.timeout,
    )
    if "failed" in timed:
        failures.setdefault("time", []).append(str(timed["failed"]))
        timed = {"times_s": {}, "losses": {}}
    return {
        "model": sizes,
        "batch": batch,
        "length": length,
        "threads": args.threads,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "peak_bytes": peaks,
        "loss_part_bytes": loss_parts,
        "times_s": timed["times_s"],
        "losses": timed["losses"],
        "failures": failures,
        "machine": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fairloss": fairloss.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(args.quick),
    }


def _median(values: Optional[Sequence[float]]) -> Optional[float]:
    return statistics.median(values) if values else None


def _quotient(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return None if value is None or not reference else value / reference


def _megabytes(size: Optional[float]) -> str:
    return "n/a" if size is None else f"{size / 1e6:,.0f} MB"


def _ratio(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _met(value: Optional[float], bound: float) -> str:
    if value is None:
        return "n/a"
    return "yes" if value <= bound else "**no**"


def _worst(values: Optional[Sequence[float]]) -> Optional[float]:
    return max(values) if values else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Worst peaks and loss parts over the processes, median times, and the goals' ratios."""
    peaks = {method: _worst(values) for method, values in results["peak_bytes"].items()}
    loss_parts = {method: _worst(values) for method, values in results["loss_part_bytes"].items()}
    times = {method: _median(values) for method, values in results["times_s"].items()}
    fastest = {method: min(values) for method, values in results["times_s"].items() if values}
    # Each round times every method once, close together: a round's ratio shares its load.
    default_times = results["times_s"].get(TRANSFORMERS) or []
    paired_ratios = {
        method: _median([time / default for time, default in zip(values, default_times)])
        for method, values in results["times_s"].items()
    }
    return {
        "peaks": peaks,
        "loss_parts": loss_parts,
        "times": times,
        "fastest": fastest,
        "paired_ratios": paired_ratios,
        "memory_ratio": _quotient(loss_parts.get(FUSED), loss_parts.get(TORCH_CHUNKED)),
        "memory_against_default": _quotient(loss_parts.get(FUSED), loss_parts.get(TRANSFORMERS)),
        "time_ratio": paired_ratios.get(FUSED),
        "fastest_ratio": _quotient(fastest.get(FUSED), fastest.get(TRANSFORMERS)),
    }


def _range(values: Sequence[float], scale: float, unit: str, digits: int) -> str:
    if not values:
        return ""
    return f"{min(values) / scale:,.{digits}f} - {max(values) / scale:,.{digits}f} {unit}"


def render(results: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``, from the JSON results."""
    summary = summarize(results)
    sizes = results["model"]
    load = results.get("load_average")
    load_text = "" if not load else f" (load average {load[0]:.1f} when it ended)"
    repeats = results["repeats"]
    lines = [
        SECTION_TITLE,
        "",
        "One training step (forward + backward, no optimizer; gradients set to `None` before "
        "each step) of a randomly initialised `LlamaForCausalLM`: hidden size "
        f"{sizes['hidden_size']}, vocabulary {sizes['vocab_size']}, "
        f"{sizes['num_hidden_layers']} layers, {sizes['num_attention_heads']} attention heads "
        f"({sizes['num_key_value_heads']} key-value heads), MLP size "
        f"{sizes['intermediate_size']}, untied head, float32; a batch of {results['batch']} x "
        f"{results['length']} random tokens, the tokens as labels. {results['threads']} threads, "
        f"{results['machine']}, {results['logical_cpus']} logical CPUs, torch {results['torch']}, "
        f"transformers {results['transformers']}, fairloss {results['fairloss']}, "
        f"{results['date']}. Written by `python -m benchmarks.transformers_step` (and "
        "`make bench`) into `docs/benchmarks-transformers.json`, rendered from there.",
        "",
        f"Timing is noisy on a small machine{load_text}: other work, when there is any, moves "
        "one step's time by up to 3x (seen on a shared run of this benchmark), so each of the "
        f"{results['rounds']} interleaved rounds times one step of every method (in a rotating "
        "order), a method's ratio to `transformers` is the median of its per-round ratios (a "
        "round's steps share its load), and the fastest step of each method is shown too.",
        "",
        f"Methods: `{TRANSFORMERS}` is the model's own loss (the logits, then "
        "`ForCausalLMLoss`); the `use_fair_loss` rows are "
        "`fairloss.integrations.transformers.use_fair_loss` with the default FairLoss options "
        f"(`{FUSED}` with `linear_fair_loss`'s default chunks); `{TORCH_CHUNKED}` runs the "
        "decoder and torch's chunked `F.linear_cross_entropy(hidden, lm_head.weight, shifted "
        "labels, options=nn.LinearCrossEntropyOptions())` (cross-entropy); "
        f"`{DECODER_ONLY}` runs the decoder and `hidden_states.sum()`, for scale.",
        "",
        "Memory, in fresh processes (each method in "
        f"{repeats}, one at a time), as `benchmarks.memory` measures it: a warm-up step on one "
        "short sequence, then one step in three parts, the peak RSS reset to the current RSS "
        "before each (`MALLOC_MMAP_THRESHOLD_` set so that large tensors go back to the system "
        "when freed): the decoder's forward; the *loss part*, the head and loss forward and "
        "backward on the decoder's output (detached; the decoder's activations stay held, as in "
        "a step), whose growth of the peak RSS is the memory the head and loss add, the head's "
        "weight gradient included; the decoder's backward. *Step peak*: the largest peak of "
        "the three over the RSS before the step. The numbers are the worst of the processes.",
        "",
        f"Goals: the loss part of `{FUSED}` at most {MEMORY_GOAL:g}x that of "
        f"`{TORCH_CHUNKED}` and far below `{TRANSFORMERS}`'s; its step time at most "
        f"{TIME_GOAL:g}x `{TRANSFORMERS}`'s.",
        "",
        "| Goal | value | met |",
        "|---|---:|:-:|",
        f"| loss part: {FUSED} / {TORCH_CHUNKED} <= {MEMORY_GOAL:g}x | "
        f"{_ratio(summary['memory_ratio'])} | {_met(summary['memory_ratio'], MEMORY_GOAL)} |",
        f"| loss part: {FUSED} / {TRANSFORMERS} | {_ratio(summary['memory_against_default'])} | |",
        f"| step time: {FUSED} / {TRANSFORMERS} <= {TIME_GOAL:g}x (median of per-round ratios) | "
        f"{_ratio(summary['time_ratio'])} | {_met(summary['time_ratio'], TIME_GOAL)} |",
        f"| step time: {FUSED} / {TRANSFORMERS}, fastest steps | "
        f"{_ratio(summary['fastest_ratio'])} | |",
        "",
        "| method | loss part | range | / torch chunked | step peak | range | step time "
        "(median) | fastest | range | / transformers | loss (first step) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    torch_part = summary["loss_parts"].get(TORCH_CHUNKED)
    for method in MEMORY_METHODS:
        parts = results["loss_part_bytes"].get(method) or []
        peaks = results["peak_bytes"].get(method) or []
        times = results["times_s"].get(method) or []
        median_time = summary["times"].get(method)
        loss_part = summary["loss_parts"].get(method)
        loss = results["losses"].get(method)
        cells = [
            method,
            _megabytes(loss_part),
            _range(parts, 1e6, "MB", 0),
            _ratio(_quotient(loss_part, torch_part)),
            _megabytes(summary["peaks"].get(method)),
            _range(peaks, 1e6, "MB", 0),
            "" if median_time is None else f"{median_time:.2f} s",
            "" if not times else f"{min(times):.2f} s",
            _range(times, 1.0, "s", 2),
            "" if median_time is None else _ratio(summary["paired_ratios"].get(method)),
            "" if loss is None else f"{loss:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "The losses of the first step (one batch, the same weights) check the methods against "
        "each other: the cross-entropies agree, and the FairLoss paths agree; FairLoss exceeds "
        "cross-entropy by its penalty, at most 1/V per token by default.",
    ]
    failures = results.get("failures") or {}
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {name}: {'; '.join(messages)}" for name, messages in failures.items()]
    return "\n".join(lines) + "\n"


def splice_section(page: Path, section: str) -> None:
    """Put ``section`` in ``page`` in place of the one with its title, or at the end."""
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    start = text.find(SECTION_TITLE)
    if start < 0:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        rest = "" if end < 0 else text[end + 1 :]
        text = text[:start] + section + ("\n" + rest if rest else "")
    page.write_text(text, encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per method")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--quick", action="store_true", help="a small model, for a smoke run")
    parser.add_argument("--out-dir", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--json", type=Path, default=None, help=f"default: {DEFAULT_JSON}")
    parser.add_argument(
        "--render-only", action="store_true", help="render the section from the JSON only"
    )
    parser.add_argument("--min-run-time", default=None, help="accepted for benchmarks.run")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None, *, page: Optional[Path] = None) -> str:
    """Measure (unless ``--render-only``), write the JSON; return the Markdown section.

    With ``page`` (and without ``--quick``), also put the section in that page.
    """
    args = _parser().parse_args(argv)
    if args.job is not None:
        job = json.loads(args.job)
        torch.set_num_threads(job["threads"])
        print(json.dumps(JOBS[job["kind"]](job)))
        return ""
    json_path = args.json or (
        args.out_dir / DEFAULT_JSON.name if args.out_dir is not None else DEFAULT_JSON
    )
    if args.render_only:
        results = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        results = measure(args)
        if not args.quick:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            _log(f"wrote {json_path}")
    section = render(results)
    if page is not None and not args.quick:
        splice_section(page, section)
        _log(f"wrote the section of {page}")
    return section


if __name__ == "__main__":
    print(main(page=DEFAULT_PAGE), end="")
