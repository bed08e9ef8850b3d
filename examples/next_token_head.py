"""Train a tiny next-token model whose output head is LinearFairLoss.

The text ships with the installed packages: docstrings of fairloss and of torch.nn, read as
bytes (a vocabulary of 256 tokens). Lines are padded to one
length with targets set to ignore_index, which LinearFairLoss drops before the head's matrix
product. The head never builds the (tokens, vocabulary) logits: with a real vocabulary of
32k-256k tokens those logits and their gradient are most of a training step's memory.

Run: python examples/next_token_head.py
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

import fairloss
from fairloss import LinearFairLoss

VOCABULARY = 256  # bytes
PADDING = -100  # the target of padding positions: ignored
LINE_LENGTH = 64


def corpus() -> list[bytes]:
    documented = (fairloss.fair_loss, fairloss.FairLoss, nn.CrossEntropyLoss, nn.LSTM)
    text = "\n".join(inspect.getdoc(item) or "" for item in documented)
    lines = (line.strip() for line in text.splitlines())
    return [line.encode()[:LINE_LENGTH] for line in lines if len(line) > 8]


def as_tensors(lines: list[bytes]) -> tuple[Tensor, Tensor]:
    """Tokens ``(lines, length)`` and next-token targets, ``PADDING`` after each line's end."""
    length = max(len(line) for line in lines)
    tokens = torch.zeros(len(lines), length, dtype=torch.long)
    targets = torch.full((len(lines), length), PADDING)
    for row, line in enumerate(lines):
        values = torch.tensor(list(line))
        tokens[row, : len(line)] = values
        targets[row, : len(line) - 1] = values[1:]
    return tokens, targets


class TinyLanguageModel(nn.Module):
    def __init__(self, hidden_size: int = 96) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 32)
        self.recurrent = nn.GRU(32, hidden_size, batch_first=True)
        # The output layer and the loss in one: it owns the head's weight and bias.
        self.head_and_loss = LinearFairLoss(
            hidden_size, VOCABULARY, bias=True, ignore_index=PADDING, chunk_size=512
        )

    def hidden_states(self, tokens: Tensor) -> Tensor:
        states, _ = self.recurrent(self.embedding(tokens))
        return states  # (lines, length, hidden)

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:
        return self.head_and_loss(self.hidden_states(tokens), targets)

    @torch.no_grad()
    def accuracy(self, tokens: Tensor, targets: Tensor) -> float:
        """Share of next bytes predicted right (it builds the logits: fine at this size)."""
        logits = self.head_and_loss.linear(self.hidden_states(tokens))
        counted = targets != PADDING
        return (logits.argmax(dim=-1) == targets)[counted].float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    tokens, targets = as_tensors(corpus())
    model = TinyLanguageModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    print(f"{len(tokens)} lines, {int((targets != PADDING).sum())} next-byte targets")
    for step in range(1, 121):
        batch = torch.randint(0, len(tokens), (32,))
        optimizer.zero_grad()
        loss = model(tokens[batch], targets[batch])
        loss.backward()
        optimizer.step()
        if step % 30 == 0:
            accuracy = model.accuracy(tokens, targets)
            print(f"step {step:3d}  loss {loss.item():.3f}  next-byte accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
