"""examples/lightning_model_selection.py with the real ``lightning`` package: the checkpoint that
``ModelCheckpoint(monitor="val_pll")`` keeps is the epoch with the lowest validation PLL."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("torchmetrics")
pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_model_selection.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightning_model_selection", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_kept_checkpoint_is_the_epoch_with_the_lowest_validation_pll(tmp_path: Path) -> None:
    example = _load_example()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = example.train_and_select(tmp_path, max_epochs=12, noise=0.4, seed=0)
    finally:
        torch.set_num_threads(previous_threads)

    assert [entry["epoch"] for entry in outcome.history] == list(range(12))
    scores = [entry["val_pll"] for entry in outcome.history]
    best_epoch = scores.index(min(scores))
    # With noisy training labels the validation PLL turns up before the end, so the kept
    # checkpoint is not simply the last one (this seed: epoch 10 of 0..11).
    assert best_epoch != 11
    checkpoint = torch.load(outcome.best_model_path, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == best_epoch
    assert Path(outcome.best_model_path).name.startswith(f"epoch={best_epoch}-")
    assert outcome.best_model_score == pytest.approx(min(scores), rel=1e-6)

    # The kept weights really are that epoch's: re-scoring the validation split gives its PLL.
    model = example.DigitsClassifier.load_from_checkpoint(outcome.best_model_path)
    validation = example.make_splits(noise=0.4, seed=0).validation
    assert example.score(model, validation)["pll"] == pytest.approx(min(scores), rel=1e-5)
    assert set(outcome.test_scores) == {"accuracy", "pll", "pbs"}
    assert outcome.test_scores["accuracy"] > 0.5
