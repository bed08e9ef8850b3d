"""examples/hf_trainer.py runs, and keeps the checkpoint of the lowest eval PLL it printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer.py"
EVALUATION = re.compile(r"step +(\d+): eval_pll ([0-9.]+) ")
BEST = re.compile(r"best checkpoint: checkpoint-(\d+) \(eval_pll ([0-9.]+)\)")
LOADED = re.compile(r"loaded at the end: eval_pll ([0-9.]+)")


@pytest.mark.slow
def test_hf_trainer_example_selects_the_lowest_pll() -> None:
    # A model this small runs fastest on one thread, above all on a busy machine.
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=environment,
    )
    evaluations = {int(step): float(pll) for step, pll in EVALUATION.findall(result.stdout)}
    assert sorted(evaluations) == [10, 20, 30, 40, 50, 60]
    best = BEST.search(result.stdout)
    loaded = LOADED.search(result.stdout)
    assert best is not None and loaded is not None, result.stdout
    best_step = min(evaluations, key=evaluations.__getitem__)
    assert int(best.group(1)) == best_step
    assert float(best.group(2)) == evaluations[best_step]
    assert float(loaded.group(1)) == evaluations[best_step]
