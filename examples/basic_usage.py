"""A short training loop with FairLoss as a drop-in for nn.CrossEntropyLoss.

Run: python examples/basic_usage.py
"""

import torch
from torch import nn

from fairloss import FairLoss


def main() -> None:
    torch.manual_seed(0)
    num_classes, features = 10, 32
    inputs = torch.randn(2048, features)
    labels = (inputs @ torch.randn(features, num_classes)).argmax(dim=1)

    model = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, num_classes))
    criterion = (
        FairLoss()
    )  # every nn.CrossEntropyLoss option works: FairLoss(weight=..., label_smoothing=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    for epoch in range(1, 11):
        for batch in torch.randperm(len(inputs)).split(128):
            optimizer.zero_grad()
            loss = criterion(model(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(inputs)
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
            print(
                f"epoch {epoch:2d}  loss {criterion(logits, labels):.4f}  accuracy {accuracy:.3f}"
            )


if __name__ == "__main__":
    main()
