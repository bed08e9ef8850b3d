"""examples/hf_trainer.py runs, and keeps the checkpoint of the lowest eval PLL it printed.

It runs in this process, as ``python examples/hf_trainer.py`` would run it (``runpy``, as
``__main__``), on one thread, without a time limit; torch's random state is restored after.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer.py"
EVALUATION = re.compile(r"step +(\d+): eval_pll ([0-9.]+) ")
BEST = re.compile(r"best checkpoint: checkpoint-(\d+) \(eval_pll ([0-9.]+)\)")
LOADED = re.compile(r"loaded at the end: eval_pll ([0-9.]+)")


def test_hf_trainer_example_selects_the_lowest_pll(capsys: pytest.CaptureFixture[str]) -> None:
    # A model this small runs fastest on one thread, above all on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    capsys.readouterr()
    try:
        with torch.random.fork_rng():
            runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    evaluations = {int(step): float(pll) for step, pll in EVALUATION.findall(stdout)}
    assert sorted(evaluations) == [10, 20, 30, 40, 50, 60]
    best = BEST.search(stdout)
    loaded = LOADED.search(stdout)
    assert best is not None and loaded is not None, stdout
    best_step = min(evaluations, key=evaluations.__getitem__)
    assert int(best.group(1)) == best_step
    assert float(best.group(2)) == evaluations[best_step]
    assert float(loaded.group(1)) == evaluations[best_step]
