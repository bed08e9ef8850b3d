"""What each rank of the world-size-2 job runs for ``fairloss.metrics``: the torchmetrics
classes synced over gloo equal the single-process values (read by
``tests/metrics/test_scoring_rules_distributed.py``). Mismatches are recorded, never raised.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

import fairloss.metrics as metrics

NUM_CLASSES = 5
SHARD_SIZES = (7, 12)  # uneven on purpose: the counts must be synced, not assumed equal
CLASS_NAMES = ("LogLoss", "BrierScore", "PenalizedLogLoss", "PenalizedBrierScore")


def full_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The whole evaluation set: probabilities and targets; rank ``r`` holds shard ``r``."""
    generator = torch.Generator().manual_seed(6)
    num_rows = sum(SHARD_SIZES)
    logits = 2 * torch.randn(num_rows, NUM_CLASSES, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (num_rows,), generator=generator)
    return metrics.probabilities_from_logits(logits), target


def check_synced_metrics(rank: int, world_size: int) -> dict[str, Any]:
    """Each metric updated twice on this rank's shard, computed (synced over the group), against
    the same metric updated with every row in one process; a skip reason without torchmetrics."""
    if importlib.util.find_spec("torchmetrics") is None:
        return {"skip": "the metric classes need torchmetrics"}
    if world_size != len(SHARD_SIZES):
        return {"skip": f"the shards are laid out for {len(SHARD_SIZES)} ranks"}
    probs, target = full_data()
    start = sum(SHARD_SIZES[:rank])
    stop, middle = start + SHARD_SIZES[rank], start + 3
    failures: list[str] = []
    for class_name in (*CLASS_NAMES, "ClassificationScores"):
        arguments = (NUM_CLASSES,) if class_name == "ClassificationScores" else ()
        keywords = {"n_bins": 5} if class_name == "ClassificationScores" else {}
        synced = getattr(metrics, class_name)(*arguments, **keywords)
        # two updates per rank, so the local state is itself an accumulation
        synced.update(probs[start:middle], target[start:middle])
        synced.update(probs[middle:stop], target[middle:stop])
        result = synced.compute()  # syncs the states over both ranks
        single_process = getattr(metrics, class_name)(*arguments, **keywords)
        single_process.update(probs, target)
        try:
            torch.testing.assert_close(result, single_process.compute())
        except AssertionError as error:
            failures.append(f"{class_name}, rank {rank}: {error}")
        if class_name == "PenalizedLogLoss":
            # the local shard alone gives another value: the sync did something
            local = metrics.penalized_log_loss(probs[start:stop], target[start:stop])
            if torch.allclose(local, result):
                failures.append(f"rank {rank}: the synced PLL equals the local shard's")
    return {"failures": failures}
