"""Early stopping and checkpoint selection by a superior scoring rule (PLL or PBS).

A plain PyTorch training loop on synthetic, overlapping, partly mislabelled data. After every
epoch the validation set is scored with the Penalized Log Loss (or the Penalized Brier Score),
accumulated over batches with the torchmetrics classes; the best checkpoint is kept, and training
stops when the score has not improved for ``--patience`` epochs. The selected checkpoint is then
evaluated on a held-out test set, with torchmetrics' multiclass calibration error beside it.

Unlike plain log loss or Brier score, PLL and PBS score every correct prediction better than every
wrong one (Ahmadian, Ghatee & Wahlström, 2025, doi:10.1016/j.ijar.2025.109421), so a checkpoint
cannot win by being confidently wrong less often while getting fewer samples right.

Run:  python examples/model_selection.py [--rule pll|pbs] [--patience 8]
Needs the metrics extra:  pip install "pytorch-fairloss[metrics]"
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from fairloss.metrics import LogLoss, PenalizedBrierScore, PenalizedLogLoss

NUM_CLASSES = 4
NUM_FEATURES = 10


def make_data(num_samples: int, generator: torch.Generator) -> TensorDataset:
    """Gaussian clusters around fixed class centres, with 15% of the labels flipped at random."""
    centres = torch.randn(NUM_CLASSES, NUM_FEATURES, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=generator)
    features = centres[labels] + 1.5 * torch.randn(num_samples, NUM_FEATURES, generator=generator)
    flipped = torch.rand(num_samples, generator=generator) < 0.15
    noisy_labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=generator)
    return TensorDataset(features, torch.where(flipped, noisy_labels, labels))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, metrics: dict[str, Metric]) -> dict[str, float]:
    """Score every batch of ``loader``; each metric accumulates sums and counts, then averages."""
    model.eval()
    for metric in metrics.values():
        metric.reset()
    for features, target in loader:
        probs = torch.softmax(model(features), dim=1)
        for metric in metrics.values():
            metric.update(probs, target)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", choices=("pll", "pbs"), default="pll")
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=80)
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    train_loader = DataLoader(make_data(600, generator), batch_size=64, shuffle=True)
    val_loader = DataLoader(make_data(400, generator), batch_size=128)
    test_loader = DataLoader(make_data(2000, generator), batch_size=256)

    model = nn.Sequential(
        nn.Linear(NUM_FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    loss_function = nn.CrossEntropyLoss()

    selection_name = "PLL" if args.rule == "pll" else "PBS"
    val_metrics: dict[str, Metric] = {
        "PLL": PenalizedLogLoss(),
        "PBS": PenalizedBrierScore(),
        "log loss": LogLoss(),
        "accuracy": MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
    }
    best_score = float("inf")
    best_epoch = 0
    best_state: dict[str, Tensor] = copy.deepcopy(model.state_dict())
    best_epoch_by = dict.fromkeys(val_metrics, 0)  # for comparison only: what each would pick
    best_value_by = {name: float("inf") for name in val_metrics}

    print(f"selecting by validation {selection_name} (lower is better), patience {args.patience}")
    print("epoch   PLL     PBS     log loss  accuracy")
    for epoch in range(1, args.max_epochs + 1):
        model.train()
        for features, target in train_loader:
            optimizer.zero_grad()
            loss_function(model(features), target).backward()
            optimizer.step()

        scores = evaluate(model, val_loader, val_metrics)
        for name, value in scores.items():
            loss_like = -value if name == "accuracy" else value  # accuracy: higher is better
            if loss_like < best_value_by[name]:
                best_value_by[name], best_epoch_by[name] = loss_like, epoch
        improved = scores[selection_name] < best_score
        print(
            f"{epoch:5d}  {scores['PLL']:.4f}  {scores['PBS']:.4f}  {scores['log loss']:.4f}"
            f"    {scores['accuracy']:.4f}{'  <- best so far' if improved else ''}"
        )
        if improved:
            best_score, best_epoch = scores[selection_name], epoch
            best_state = copy.deepcopy(model.state_dict())  # the checkpoint
        elif epoch - best_epoch >= args.patience:
            print(f"early stop: no improvement in {args.patience} epochs")
            break

    picks = ", ".join(f"{name} {epoch}" for name, epoch in best_epoch_by.items())
    print(f"best validation epoch by each score so far: {picks}")

    model.load_state_dict(best_state)
    test_metrics: dict[str, Metric] = {
        "PLL": PenalizedLogLoss(),
        "PBS": PenalizedBrierScore(),
        "log loss": LogLoss(),
        "accuracy": MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
        "calibration error": MulticlassCalibrationError(num_classes=NUM_CLASSES, n_bins=10),
    }
    test_scores = evaluate(model, test_loader, test_metrics)
    print(f"checkpoint of epoch {best_epoch} (validation {selection_name} {best_score:.4f}), test:")
    for name, value in test_scores.items():
        print(f"  {name:18s} {value:.4f}")


if __name__ == "__main__":
    main()
