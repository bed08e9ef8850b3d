"""Run a worker on several CPU processes (gloo) and collect what each rank reports.

Reports are JSON (strings and numbers). Workers never raise on a mismatch: they record it and
go on, so that every rank makes the same collective calls and none waits forever for a rank
that stopped. The test process asserts.
"""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Report = dict[str, Any]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_gloo(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        # A safety limit on a collective waiting for a rank, not a timing test: ranks share
        # two busy cores.
        timeout=datetime.timedelta(seconds=900),
    )


def _entry(
    rank: int, worker: Callable[..., Report], world_size: int, directory: str, args: tuple
) -> None:
    torch.set_num_threads(1)
    report = worker(rank, world_size, directory, *args)
    (Path(directory) / f"rank{rank}.json").write_text(json.dumps(report))


def run_on_ranks(
    worker: Callable[..., Report], world_size: int, directory: Path, *args: Any
) -> list[Report]:
    """``worker(rank, world_size, directory, *args)`` on ``world_size`` processes; their reports."""
    mp.spawn(_entry, args=(worker, world_size, str(directory), args), nprocs=world_size, join=True)
    return [json.loads((directory / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def slice_bounds(sizes: tuple[int, ...], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])
