"""The spawned jobs the distributed tests read: one process group per world size and session.

World size 2 splits the 7 classes 3/4, world size 3 splits them 2/2/3 (the DTensor cases split
them as ``torch.chunk`` does: 4/3 and 3/3/1); each runs every check of
:func:`tests.distributed.workers.vocab_parallel_worker`. World size 2 also runs DDP, FSDP2, the
tensor-parallel example and the synced metrics, which ``tests/metrics`` reads: one spawn serves
them all, since starting processes is most of the cost.
"""

from __future__ import annotations

import pytest

from tests.distributed.harness import Report, free_port, run_on_ranks
from tests.distributed.workers import vocab_parallel_worker

SPLITS = {2: (3, 4), 3: (2, 2, 3)}

_REPORTS: dict[int, list[Report]] = {}


def reports_of(world_size: int, tmp_path_factory: pytest.TempPathFactory) -> list[Report]:
    """Every rank's report of the job for ``world_size``, spawned on first use in the session."""
    if world_size not in _REPORTS:
        directory = tmp_path_factory.mktemp(f"world{world_size}")
        port = free_port() if world_size == 2 else None
        _REPORTS[world_size] = run_on_ranks(
            vocab_parallel_worker, world_size, directory, SPLITS[world_size], port
        )
    return _REPORTS[world_size]
