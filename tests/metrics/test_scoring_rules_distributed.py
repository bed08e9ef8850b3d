"""Two CPU processes on the gloo backend: the synced metrics equal the single-process values.

The ranks run :func:`tests.distributed.metric_workers.check_synced_metrics` inside the
distributed tests' world-size-2 job (:mod:`tests.distributed.jobs`), which spawns once per session
for every distributed check; each rank compares with the single-process value itself.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist
from tests.distributed.jobs import reports_of


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available",
)
def test_two_process_gloo_sync_equals_single_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outcomes = [report["metrics"] for report in reports_of(2, tmp_path_factory)]
    if "skip" in outcomes[0]:
        pytest.skip(outcomes[0]["skip"])
    messages = [message for outcome in outcomes for message in outcome["failures"]]
    assert not messages, "\n".join(messages)
