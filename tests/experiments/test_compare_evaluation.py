"""The scores against a float64 reference written from the definitions."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from experiments.evaluation import METRIC_NAMES, predict_probabilities, score_predictions


def _reference_scores(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    num_rows, num_classes = probs.shape
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    true_probability = probs[torch.arange(num_rows), labels]
    wrong = (probs > true_probability[:, None]).any(dim=1).double()
    # fairloss.metrics.log_loss floors q_y at the dtype's epsilon, as documented.
    log_loss = -true_probability.clamp_min(torch.finfo(probs.dtype).eps).log()
    brier = ((probs - torch.eye(num_classes, dtype=probs.dtype)[labels]) ** 2).sum(dim=1)
    # torchmetrics bins float32 confidences into [b_i, b_i+1) over linspace(0, 1, 16), with
    # exactly 1.0 in a bin of its own: follow that convention at the boundaries.
    confidence32 = confidence.float()
    boundaries = torch.linspace(0, 1, 16, dtype=torch.float32)
    bin_of_row = torch.bucketize(confidence32, boundaries, right=True) - 1
    confidence = confidence32.double()
    ece = 0.0
    for bin_index in range(16):
        in_bin = bin_of_row == bin_index
        if in_bin.any():
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += float(gap) * int(in_bin.sum()) / num_rows
    return {
        "accuracy": float(correct.mean()),
        "nll": float(log_loss.mean()),
        "ece": ece,
        "brier": float(brier.mean()),
        "pbs": float((brier + wrong * (num_classes - 1) / num_classes).mean()),
        "pll": float((log_loss + wrong * math.log(num_classes)).mean()),
    }


@settings(max_examples=30, deadline=None)
@given(
    num_rows=st.integers(1, 200),
    num_classes=st.integers(2, 11),
    temperature=st.sampled_from([0.1, 1.0, 5.0]),
    seed=st.integers(0, 2**31),
)
def test_scores_match_the_reference(
    num_rows: int, num_classes: int, temperature: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits / temperature, dim=1)
    labels = torch.randint(0, num_classes, (num_rows,), generator=generator)

    scores = score_predictions(probs, labels)
    expected = _reference_scores(probs, labels)

    assert tuple(scores) == METRIC_NAMES
    for name in METRIC_NAMES:
        # torchmetrics' ECE is computed in float32.
        tolerance = 1e-5 if name == "ece" else 1e-9
        assert math.isclose(scores[name], expected[name], rel_tol=tolerance, abs_tol=tolerance), (
            name
        )


def test_predict_probabilities_is_a_float64_softmax_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9), nn.Linear(8, 3))
    model.train()
    features = torch.randn(10, 4)

    probs = predict_probabilities(model, features, batch_size=3)

    assert model.training, "the model's mode is restored"
    assert probs.dtype == torch.float64 and probs.shape == (10, 3)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(features).double(), dim=1)
    torch.testing.assert_close(probs, expected)
