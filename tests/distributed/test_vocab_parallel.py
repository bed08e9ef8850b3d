"""Vocab-parallel FairLoss on 2 and 3 CPU processes (gloo) equals single-process FairLoss.

One process group per world size runs every case (:mod:`tests.distributed.jobs`, read by
``tests/metrics`` as well; the cases are in :mod:`tests.distributed.workers`); the tests below
read its reports. World size 2 splits the 7 classes 3/4, world size 3 splits them 2/2/3 (the
DTensor cases split them as ``torch.chunk`` does: 4/3 and 3/3/1).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch.distributed as dist

from tests.distributed.harness import Report
from tests.distributed.jobs import SPLITS, reports_of
from tests.distributed.workers import DTENSOR_CASES, LINEAR_CASES, LOGITS_CASES

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available",
)


@pytest.fixture(params=sorted(SPLITS), ids=lambda size: f"world{size}")
def reports(request: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Report]:
    return reports_of(request.param, tmp_path_factory)


@pytest.fixture
def world_two(tmp_path_factory: pytest.TempPathFactory) -> list[Report]:
    return reports_of(2, tmp_path_factory)


def _no_failures(reports: list[Report], section: str) -> None:
    messages = [f"rank {rank}: {m}" for rank, r in enumerate(reports) for m in r[section]]
    assert not messages, "\n".join(messages[:20])


def test_logits_value_and_gradient_equal_single_process(reports: list[Report]) -> None:
    # every option, near-ties between shards, saturated and all-ignored batches, float32
    with_ignore_index = sum("ignore_index" in case for case in LOGITS_CASES)  # not all-ignored
    # three batches, a rank without classes (2 cases), float32, bfloat16
    expected_cases = 3 * len(LOGITS_CASES) - with_ignore_index + 2 + 2
    assert all(r["logits cases"] == expected_cases for r in reports)
    _no_failures(reports, "logits")


def test_random_splits_batches_and_options_equal_single_process(reports: list[Report]) -> None:
    # a property test with one seed shared by the ranks (hypothesis cannot span processes)
    assert all(r["random cases"] == 40 for r in reports)
    _no_failures(reports, "random")


def test_out_of_range_target_raises_on_every_rank(reports: list[Report]) -> None:
    _no_failures(reports, "out of range")


def test_linear_value_and_gradients_equal_single_process(reports: list[Report]) -> None:
    # every option, softcap included: against linear_fair_loss of the whole head
    assert any("softcap" in case for case in LINEAR_CASES)
    assert all(r["linear cases"] == len(LINEAR_CASES) for r in reports)
    _no_failures(reports, "linear")


def test_dtensor_logits_equal_single_process(reports: list[Report]) -> None:
    assert all(r["dtensor cases"] == len(DTENSOR_CASES) for r in reports)
    _no_failures(reports, "dtensor")


def test_tensor_parallel_training_matches_unsharded(reports: list[Report]) -> None:
    _no_failures(reports, "tensor parallel")


def test_fair_loss_dispatches_dtensor(reports: list[Report]) -> None:
    assert all("failures" in r["dispatch"] for r in reports)
    messages = [m for r in reports for m in r["dispatch"]["failures"]]
    assert not messages, "\n".join(messages)


def test_fair_loss_trains_unchanged_under_ddp(world_two: list[Report]) -> None:
    _no_failures(world_two, "ddp")


def test_fair_loss_trains_unchanged_under_fsdp2(world_two: list[Report]) -> None:
    outcomes = [r["fsdp"] for r in world_two]
    if "skip" in outcomes[0]:
        pytest.skip(outcomes[0]["skip"])
    messages = [m for outcome in outcomes for m in outcome["failures"]]
    assert not messages, "\n".join(messages)


def test_tensor_parallel_example_runs_under_two_processes(world_two: list[Report]) -> None:
    _no_failures(world_two, "example")
