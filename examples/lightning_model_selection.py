"""Checkpoint selection by validation PLL with PyTorch Lightning, FairLoss and torchmetrics.

A small MLP learns scikit-learn's bundled digits (no download) with FairLoss, from training labels
of which ``--noise`` are flipped to another class at random. Every epoch, the validation split is
scored with the Penalized Log Loss and the Penalized Brier Score: the torchmetrics classes of
``fairloss.metrics``, updated batch by batch in ``validation_step`` and logged as ``val_pll`` and
``val_pbs`` (Lightning computes and resets them at the end of the epoch). Lightning's own
``ModelCheckpoint(monitor="val_pll", mode="min")`` keeps the best epoch, which is then scored on
the test split.

PLL and PBS score every correct prediction better than every wrong one (Ahmadian, Ghatee &
Wahlström, 2025, doi:10.1016/j.ijar.2025.109421), so the checkpoint they pick cannot win by being
confidently wrong less often while getting fewer samples right.

Run:    python examples/lightning_model_selection.py [--max-epochs 12] [--noise 0.4]
Needs:  pip install "pytorch-fairloss[lightning]" scikit-learn
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fairloss import FairLoss
from fairloss.metrics import PenalizedBrierScore, PenalizedLogLoss, probabilities_from_logits


class DigitsClassifier(L.LightningModule):
    """An MLP trained with FairLoss, validated with the PLL and PBS metric classes."""

    def __init__(self, num_features: int, num_classes: int, learning_rate: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(
            nn.Linear(num_features, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )  # fmt: skip
        self.loss = FairLoss()
        self.val_pll = PenalizedLogLoss()
        self.val_pbs = PenalizedBrierScore()

    def forward(self, features: Tensor) -> Tensor:
        return self.model(features)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        features, target = batch
        loss = self.loss(self(features), target)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        features, target = batch
        probs = probabilities_from_logits(self(features))
        self.val_pll.update(probs, target)
        self.val_pbs.update(probs, target)
        # Logging the Metric objects: Lightning calls compute() at the epoch's end, then reset().
        self.log("val_pll", self.val_pll, on_step=False, on_epoch=True)
        self.log("val_pbs", self.val_pbs, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["learning_rate"])


class ValidationHistory(Callback):
    """Records each epoch's validation scores (after sanity checks), for printing and tests."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "val_pll": float(metrics["val_pll"]),
                "val_pbs": float(metrics["val_pbs"]),
            }
        )


@dataclass
class Splits:
    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset
    num_features: int
    num_classes: int


def make_splits(noise: float, seed: int) -> Splits:
    """Digits split 60/20/20 at random, standardized by the training split; ``noise`` of the
    training labels flipped to a uniformly chosen other class."""
    features_array, labels_array = load_digits(return_X_y=True)
    features = torch.as_tensor(features_array, dtype=torch.float32)
    labels = torch.as_tensor(labels_array, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    train, validation, test = order.tensor_split([int(0.6 * len(order)), int(0.8 * len(order))])
    mean, std = features[train].mean(dim=0), features[train].std(dim=0).clamp_min(1e-6)
    features = (features - mean) / std

    train_labels = labels[train].clone()
    flipped = torch.rand(len(train), generator=generator) < noise
    offsets = torch.randint(1, num_classes, (len(train),), generator=generator)
    train_labels[flipped] = (train_labels[flipped] + offsets[flipped]) % num_classes
    return Splits(
        TensorDataset(features[train], train_labels),
        TensorDataset(features[validation], labels[validation]),
        TensorDataset(features[test], labels[test]),
        features.shape[1],
        num_classes,
    )


@dataclass
class Outcome:
    history: list[dict[str, float]]
    best_model_path: str
    best_model_score: float
    test_scores: dict[str, float]


@torch.no_grad()
def score(model: DigitsClassifier, data: TensorDataset) -> dict[str, float]:
    """Accuracy, PLL and PBS of ``model`` on ``data``, with fresh metric objects."""
    model.eval()
    features, target = data.tensors
    probs = probabilities_from_logits(model(features))
    pll, pbs = PenalizedLogLoss(), PenalizedBrierScore()
    pll.update(probs, target)
    pbs.update(probs, target)
    accuracy = (probs.argmax(dim=1) == target).float().mean()
    return {"accuracy": float(accuracy), "pll": float(pll.compute()), "pbs": float(pbs.compute())}


def train_and_select(
    directory: Path, max_epochs: int = 12, noise: float = 0.4, seed: int = 0
) -> Outcome:
    """Train on CPU, keep the checkpoint with the lowest validation PLL, score it on the test
    split."""
    L.seed_everything(seed, workers=True, verbose=False)
    splits = make_splits(noise, seed)
    model = DigitsClassifier(splits.num_features, splits.num_classes)
    checkpoint = ModelCheckpoint(
        dirpath=directory, monitor="val_pll", mode="min", filename="{epoch}-{val_pll:.4f}"
    )
    history = ValidationHistory()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[checkpoint, history],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
        default_root_dir=directory,
    )
    trainer.fit(
        model,
        DataLoader(splits.train, batch_size=64, shuffle=True),
        DataLoader(splits.validation, batch_size=128),
    )
    best = DigitsClassifier.load_from_checkpoint(checkpoint.best_model_path)
    return Outcome(
        history.epochs,
        checkpoint.best_model_path,
        float(checkpoint.best_model_score),  # type: ignore[arg-type]
        score(best, splits.test),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=12)
    parser.add_argument("--noise", type=float, default=0.4, help="share of noisy train labels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        outcome = train_and_select(Path(directory), args.max_epochs, args.noise)
        print("epoch  val_pll  val_pbs")
        for entry in outcome.history:
            print(f"{entry['epoch']:5d}  {entry['val_pll']:.4f}   {entry['val_pbs']:.4f}")
        print(
            f"best checkpoint: {Path(outcome.best_model_path).name} "
            f"(validation PLL {outcome.best_model_score:.4f})"
        )
        scores = ", ".join(f"{name} {value:.4f}" for name, value in outcome.test_scores.items())
        print(f"its test scores: {scores}")


if __name__ == "__main__":
    main()
