"""The examples run and print what the README says they print.

Each runs in this process, as ``python examples/NAME.py`` would run it (``runpy``, as
``__main__``), without a time limit; the random state is restored after. The release test
(``test_release.py``) runs ``difference.py`` as a script against the installed wheel, and
``tests/distributed`` runs ``tensor_parallel.py`` on two processes; the integration examples are
tested in ``tests/integrations`` and ``tests/metrics``.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    with torch.random.fork_rng():
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out.splitlines()


def test_difference_prints_the_seed_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("difference.py", capsys) == [
        "Cross-entropy:  tensor([1.0920, 0.9681])",
        "FairLoss:       tensor([1.0920, 1.3014])",
    ]


def test_basic_usage_trains(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run("basic_usage.py", capsys)
    assert len(lines) == 10
    final_accuracy = float(lines[-1].split()[-1])
    assert final_accuracy > 0.9


def test_next_token_example_learns(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run("next_token_head.py", capsys)
    accuracies = [float(line.split()[-1]) for line in lines[1:]]
    assert len(accuracies) == 4
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.3
