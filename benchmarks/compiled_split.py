"""Why two implementations run under ``torch.compile`` on the CPU: the measurement behind the split.

``fairloss._impl.select`` sends compiled CPU calls with at most ``DENSE_COMPILED_MAX_CLASSES``
classes to ``"dense"`` and larger ones to ``"sparse"``. This times forward+backward of both,
compiled, against compiled ``F.cross_entropy`` on the suite's shapes, in rounds that interleave
the three (medians of ``torch.utils.benchmark``), and writes ``docs/compiled-split.md``.

    python -m benchmarks.compiled_split [--threads 2] [--rounds 3] [--out docs/compiled-split.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.benchmark import Timer

from fairloss import fair_loss

SHAPES: tuple[tuple[int, ...], ...] = ((4096, 10), (16, 21, 64, 64), (4096, 1000), (2048, 32000))
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def _step(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, target: Tensor) -> None:
    logits.grad = None
    loss_fn(logits, target).backward()


def measure(shape: tuple[int, ...], threads: int, rounds: int) -> dict[str, float]:
    """Median seconds of one compiled forward+backward per loss, over ``rounds`` rounds."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=generator).requires_grad_()
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    torch._dynamo.reset()
    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "cross_entropy": torch.compile(lambda z, y: F.cross_entropy(z, y)),
        "dense": torch.compile(lambda z, y: fair_loss(z, y, impl="dense")),
        "sparse": torch.compile(lambda z, y: fair_loss(z, y, impl="sparse")),
    }
    for loss_fn in losses.values():
        for _ in range(3):  # compile and warm up
            _step(loss_fn, logits, target)
    samples: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(rounds):
        for name, loss_fn in losses.items():
            timer = Timer(
                "step(loss_fn, logits, target)",
                globals={"step": _step, "loss_fn": loss_fn, "logits": logits, "target": target},
                num_threads=threads,
            )
            samples[name].append(timer.blocked_autorange(min_run_time=0.5).median)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPOSITORY_ROOT / "docs" / "compiled-split.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for shape in SHAPES:
        times = measure(shape, args.threads, args.rounds)
        base = times["cross_entropy"]
        dense, sparse = times["dense"] / base, times["sparse"] / base
        faster = "dense" if dense < sparse else "sparse"
        by = max(dense, sparse) / min(dense, sparse)
        row = (
            f"| {'x'.join(map(str, shape))} | {shape[1]} | {base * 1e3:.2f} ms | {dense:.2f}x "
            f"| {sparse:.2f}x | {faster}, {by:.2f}x |"
        )
        print(row, flush=True)
        rows.append(row)
    today = datetime.date.today().isoformat()
    page = [
        "# Compiled implementations on the CPU",
        "",
        'Under `torch.compile` on the CPU, `fair_loss` runs `impl="dense"` for at most 256',
        'classes and `impl="sparse"` above (`fairloss._impl.select`). Forward+backward, float32,',
        f"{args.threads} threads, compiled FairLoss over compiled `F.cross_entropy`, medians of",
        f"{args.rounds} interleaved rounds of `torch.utils.benchmark` "
        f"({today}, {platform.processor() or platform.machine()}, torch {torch.__version__}).",
        "Regenerate with `python -m benchmarks.compiled_split`.",
        "",
        "| shape | classes | compiled cross-entropy | dense | sparse | faster, by |",
        "|---|--:|--:|--:|--:|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(page), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
