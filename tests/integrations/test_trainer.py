"""``Trainer`` with ``use_fair_loss`` and ``fair_loss_metrics``: checkpoints selected by PLL.

A tiny sequence classifier (the example, ``examples/hf_trainer.py``, covers a fused causal LM)
trains on few, noisy examples so that it overfits and its eval PLL rises again; the trainer
must keep the checkpoint of the lowest ``eval_pll`` it logged, and load it at the end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from fairloss.integrations.transformers import fair_loss_metrics, use_fair_loss
from tests.integrations.models import NUM_LABELS, VOCAB_SIZE, sequence_classifier

LENGTH = 8


def _toy_classification(count: int, seed: int, noise: float = 0.3) -> list[dict[str, Any]]:
    """The label is the first token modulo NUM_LABELS, flipped at random on a share of rows."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB_SIZE, (count, LENGTH), generator=generator)
    labels = input_ids[:, 0] % NUM_LABELS
    flipped = torch.rand(count, generator=generator) < noise
    labels[flipped] = torch.randint(0, NUM_LABELS, (int(flipped.sum()),), generator=generator)
    return [{"input_ids": ids, "labels": label} for ids, label in zip(input_ids, labels)]


def test_trainer_keeps_the_checkpoint_with_the_lowest_eval_pll(tmp_path: Path) -> None:
    model = use_fair_loss(
        sequence_classifier(score_scale=1.0), scaling_factor=50.0, smooth_max_beta=50.0
    )
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=5,
        metric_for_best_model="pll",
        greater_is_better=False,
        load_best_model_at_end=True,
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=_toy_classification(24, seed=1),
        eval_dataset=_toy_classification(96, seed=2),
        compute_metrics=fair_loss_metrics(),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()

    evaluations = [entry for entry in trainer.state.log_history if "eval_pll" in entry]
    assert [entry["step"] for entry in evaluations] == list(range(5, 41, 5))
    for entry in evaluations:
        assert {"eval_accuracy", "eval_nll", "eval_pll", "eval_pbs", "eval_ece"} <= entry.keys()
        # PLL = NLL + log(C) * error rate, up to ties, which random logits do not have.
        expected_pll = entry["eval_nll"] + math.log(NUM_LABELS) * (1 - entry["eval_accuracy"])
        assert entry["eval_pll"] == pytest.approx(expected_pll, rel=1e-6)
    plls = [entry["eval_pll"] for entry in evaluations]
    assert len(set(plls)) == len(plls)  # distinct: the minimum is one evaluation
    # With this seed the best is neither the first nor the last evaluation: a real choice.
    assert plls[0] > min(plls) < plls[-1]
    best = min(evaluations, key=lambda entry: entry["eval_pll"])
    assert trainer.state.best_model_checkpoint is not None
    assert Path(trainer.state.best_model_checkpoint).name == f"checkpoint-{best['step']}"
    assert trainer.state.best_metric == pytest.approx(best["eval_pll"])
    # load_best_model_at_end: the model in hand is that checkpoint.
    assert trainer.evaluate()["eval_pll"] == pytest.approx(best["eval_pll"], rel=1e-6)
