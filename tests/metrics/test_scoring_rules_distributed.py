"""Two CPU processes on the gloo backend: the synced metric equals the single-process value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fairloss.metrics as metrics

pytest.importorskip("torchmetrics")

WORLD_SIZE = 2
NUM_CLASSES = 5
SHARD_SIZES = (7, 12)  # uneven on purpose: the counts must be synced, not assumed equal
CLASS_NAMES = ("LogLoss", "BrierScore", "PenalizedLogLoss", "PenalizedBrierScore")


def _full_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    num_rows = sum(SHARD_SIZES)
    logits = 2 * torch.randn(num_rows, NUM_CLASSES, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (num_rows,), generator=generator)
    return metrics.probabilities_from_logits(logits), target


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        probs, target = _full_data()
        start = sum(SHARD_SIZES[:rank])
        shard = slice(start, start + SHARD_SIZES[rank])
        results = {}
        for class_name in CLASS_NAMES:
            metric = getattr(metrics, class_name)()
            # two updates per rank, so the local state is itself an accumulation
            middle = shard.start + 3
            metric.update(probs[shard.start : middle], target[shard.start : middle])
            metric.update(probs[middle : shard.stop], target[middle : shard.stop])
            results[class_name] = metric.compute()  # syncs sum and count over both ranks
        # The sums sync as above; the calibration error's inner metric syncs its own rows.
        scores = metrics.ClassificationScores(NUM_CLASSES, n_bins=5)
        scores.update(probs[shard.start : middle], target[shard.start : middle])
        scores.update(probs[middle : shard.stop], target[middle : shard.stop])
        results["ClassificationScores"] = scores.compute()
        torch.save(results, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_sync_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    probs, target = _full_data()
    for rank in range(WORLD_SIZE):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for class_name in CLASS_NAMES:
            single_process = getattr(metrics, class_name)()
            single_process.update(probs, target)
            expected = single_process.compute()
            torch.testing.assert_close(
                results[class_name], expected, msg=f"{class_name}, rank {rank}"
            )
        single_process_scores = metrics.ClassificationScores(NUM_CLASSES, n_bins=5)
        single_process_scores.update(probs, target)
        torch.testing.assert_close(
            results["ClassificationScores"],
            single_process_scores.compute(),
            msg=f"ClassificationScores, rank {rank}",
        )
        # and the local shard alone would give a different value: the sync did something
        local = metrics.penalized_log_loss(probs[: SHARD_SIZES[0]], target[: SHARD_SIZES[0]])
        assert not torch.allclose(local, results["PenalizedLogLoss"])
