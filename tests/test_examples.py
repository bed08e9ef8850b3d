"""The examples run and print what the README says they print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout


def test_difference_prints_the_seed_numbers() -> None:
    lines = _run("difference.py").splitlines()
    assert lines == [
        "Cross-entropy:  tensor([1.0920, 0.9681])",
        "FairLoss:       tensor([1.0920, 1.3014])",
    ]


def test_basic_usage_trains() -> None:
    lines = _run("basic_usage.py").splitlines()
    assert len(lines) == 10
    final_accuracy = float(lines[-1].split()[-1])
    assert final_accuracy > 0.9
