"""Communication of vocab-parallel FairLoss: every collective call, counted, on gloo.

Each rank of a CPU process group (gloo) wraps ``torch.distributed.all_reduce`` with a counter
that records the call's phase (forward or backward), its numbers and its bytes, then runs one
forward and backward of:

* ``logits`` — :func:`fairloss.distributed.vocab_parallel_fair_loss`, default options;
* ``logits, weight + smoothing`` — with class weights and label smoothing (two more sums);
* ``logits, cross-entropy only`` — ``scaling_factor=0`` (no SmoothMax normalizer);
* ``logits, z-loss`` — ``z_loss_scale=1e-4`` (no extra communication: the z-loss reads the
  normalizer that cross-entropy already needs);
* ``linear`` — :func:`fairloss.distributed.vocab_parallel_linear_fair_loss` with hidden size H.

The counts are checked against the per-token formula (see ``docs/distributed.md``) and printed
as a Markdown table, followed by the extrapolation to 8-way tensor parallelism at V=128000 with
8192 tokens per rank, next to Megatron-LM's ``vocab_parallel_cross_entropy`` (three all-reduces
of one number per token in forward: the maximum, the predicted logit, the sum of exponentials;
figures from its algorithm).

Run ``python -m benchmarks.distributed_volume [--world-sizes 2 4] [--tokens 1024]``: it takes
a few seconds per world size on CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairloss.distributed import vocab_parallel_fair_loss, vocab_parallel_linear_fair_loss

FLOAT_BYTES = 4  # float32 logits: statistics and gradients in float32


def _count_all_reduce(calls: list[dict[str, Any]], phase: list[str]) -> None:
    """Replace ``torch.distributed.all_reduce`` by a wrapper that records every call."""
    original: Callable[..., Any] = dist.all_reduce

    def counting_all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        op = kwargs.get("op", args[0] if args else dist.ReduceOp.SUM)
        calls.append(
            {
                "phase": phase[0],
                "op": str(op).split(".")[-1],
                "numbers": tensor.numel(),
                "bytes": tensor.numel() * tensor.element_size(),
            }
        )
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce


def _cases(
    rank: int, world_size: int, tokens: int, vocabulary: int, hidden: int
) -> dict[str, Callable[[], torch.Tensor]]:
    sizes = [vocabulary // world_size + (r < vocabulary % world_size) for r in range(world_size)]
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, vocabulary, generator=generator)[:, mine].contiguous()
    target = torch.randint(0, vocabulary, (tokens,), generator=generator)
    class_weight = torch.rand(vocabulary, generator=generator)[mine] + 0.5
    states = torch.randn(tokens, hidden, generator=generator)
    head = (torch.randn(vocabulary, hidden, generator=generator) / hidden**0.5)[mine]

    def logits_loss(**options: Any) -> Callable[[], torch.Tensor]:
        return lambda: vocab_parallel_fair_loss(logits.requires_grad_(), target, **options)

    return {
        "logits": logits_loss(),
        "logits, weight + smoothing": logits_loss(weight=class_weight, label_smoothing=0.1),
        "logits, cross-entropy only": logits_loss(scaling_factor=0.0),
        "logits, z-loss": logits_loss(z_loss_scale=1e-4),
        "linear": lambda: vocab_parallel_linear_fair_loss(
            states.requires_grad_(), head.requires_grad_(), target
        ),
    }


def _worker(
    rank: int, world_size: int, directory: str, tokens: int, vocabulary: int, hidden: int
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/init", rank=rank, world_size=world_size
    )
    try:
        calls: list[dict[str, Any]] = []
        phase = ["forward"]
        _count_all_reduce(calls, phase)
        results = {}
        for name, run in _cases(rank, world_size, tokens, vocabulary, hidden).items():
            calls.clear()
            phase[0] = "forward"
            loss = run()
            phase[0] = "backward"
            loss.backward()
            results[name] = list(calls)
        if rank == 0:
            Path(directory, "calls.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def expected_numbers(case: str, phase: str, tokens: int, world_size: int, hidden: int) -> list[int]:
    """The numbers of each all-reduce call, from the per-token formula."""
    if phase == "backward":
        return [tokens * hidden] if case == "linear" else []
    sums = {"logits, weight + smoothing": 5, "logits, cross-entropy only": 2}.get(case, 3)
    total_weight = 1 if case == "logits, weight + smoothing" else 0  # sum of the class weights
    return [tokens + world_size, sums * tokens + total_weight]


def measure(world_size: int, tokens: int, vocabulary: int, hidden: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        mp.spawn(
            _worker,
            args=(world_size, directory, tokens, vocabulary, hidden),
            nprocs=world_size,
            join=True,
        )
        result: dict[str, Any] = json.loads(Path(directory, "calls.json").read_text())
        return result


def markdown_table(
    measured: dict[int, dict[str, Any]], tokens: int, vocabulary: int, hidden: int
) -> list[str]:
    lines = [
        f"Measured with gloo on CPU: {tokens} tokens, V={vocabulary}, H={hidden} (linear), "
        "float32; every `all_reduce` call of one forward and backward, as rank 0 made it.",
        "",
        "| world size | case | phase | calls (op: numbers) | bytes | bytes per token |",
        "|---:|---|---|---|---:|---:|",
    ]
    for world_size, cases in measured.items():
        for case, calls in cases.items():
            for phase in ("forward", "backward"):
                mine = [call for call in calls if call["phase"] == phase]
                numbers = [call["numbers"] for call in mine]
                expected = expected_numbers(case, phase, tokens, world_size, hidden)
                if numbers != expected:
                    raise AssertionError(f"{case} {phase}: measured {numbers}, formula {expected}")
                described = ", ".join(f"{call['op']}: {call['numbers']}" for call in mine) or "none"
                total = sum(call["bytes"] for call in mine)
                lines.append(
                    f"| {world_size} | {case} | {phase} | {described} | {total} | "
                    f"{total / tokens:.2f} |"
                )
    return lines


def extrapolation(
    tensor_parallel: int = 8, vocabulary: int = 128000, tokens: int = 8192, hidden: int = 8192
) -> list[str]:
    """Payload and ring traffic per rank, per step, from the formula (float32 statistics)."""
    ring = 2 * (tensor_parallel - 1) / tensor_parallel  # bytes a ring all-reduce moves per byte

    def row(name: str, calls: int, numbers: int, note: str) -> str:
        payload = numbers * FLOAT_BYTES
        return (
            f"| {name} | {calls} | {numbers / tokens:.3f} | {payload / 2**10:.1f} KiB | "
            f"{payload * ring / 2**10:.1f} KiB | {note} |"
        )

    gathered = tokens * vocabulary * FLOAT_BYTES * (tensor_parallel - 1) / tensor_parallel
    return [
        f"{tensor_parallel}-way tensor parallelism, V={vocabulary}, {tokens} tokens per rank "
        f"(float32 statistics; ring traffic = payload x 2(p-1)/p = payload x {ring:.2f}):",
        "",
        "| forward of | all-reduces | numbers per token | payload | ring traffic per rank | |",
        "|---|---:|---:|---:|---:|---|",
        row("FairLoss, default", 2, tokens + tensor_parallel + 3 * tokens, "max; 3 sums"),
        row(
            "FairLoss, weight + smoothing",
            2,
            tokens + tensor_parallel + 5 * tokens + 1,
            "max; 5 sums",
        ),
        row("Megatron cross-entropy", 3, 3 * tokens, "max; target logit; sum exp"),
        "",
        f"Gathering the logits instead would receive {gathered / 2**30:.2f} GiB per rank. "
        f"The linear version's backward all-reduce of the input gradient is H numbers per "
        f"token: {tokens * hidden * FLOAT_BYTES / 2**20:.0f} MiB at H={hidden}, the all-reduce "
        "a column-parallel head's backward makes anyway.",
    ]


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocabulary", type=int, default=8001)
    parser.add_argument("--hidden", type=int, default=256)
    arguments = parser.parse_args(argv)
    measured = {
        size: measure(size, arguments.tokens, arguments.vocabulary, arguments.hidden)
        for size in arguments.world_sizes
    }
    lines = markdown_table(measured, arguments.tokens, arguments.vocabulary, arguments.hidden)
    text = "\n".join([*lines, "", *extrapolation()])
    print(text)
    return text


if __name__ == "__main__":
    main()
