"""Smoke test: examples/model_selection.py trains, selects a checkpoint and reports test scores."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchmetrics")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "model_selection.py"


def test_example_runs_and_reports_the_selected_checkpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--rule", "pbs", "--max-epochs", "3"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    output = capsys.readouterr().out
    assert "selecting by validation PBS" in output
    assert "checkpoint of epoch" in output
    assert "calibration error" in output
