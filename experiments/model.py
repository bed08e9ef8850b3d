"""The small model that ``python -m experiments compare`` trains."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["HIDDEN_SIZES", "make_mlp"]

HIDDEN_SIZES = (128, 128)
"""The default hidden layer widths."""


def make_mlp(
    in_features: int, num_classes: int, hidden_sizes: Sequence[int] = HIDDEN_SIZES
) -> nn.Sequential:
    """A multilayer perceptron: ``Linear -> ReLU`` per hidden size, then a ``Linear`` to logits.

    Its initial weights come from torch's global generator (``torch.manual_seed`` fixes them).

    Args:
        in_features (int): the number of input features.
        num_classes (int): the number of output logits.
        hidden_sizes (Sequence[int], optional): the widths of the hidden layers.
            Default: ``(128, 128)``.

    Example:
        >>> model = make_mlp(64, 10)
        >>> sum(parameter.numel() for parameter in model.parameters())
        26122
    """
    layers: list[nn.Module] = []
    width = in_features
    for hidden_size in hidden_sizes:
        layers += [nn.Linear(width, hidden_size), nn.ReLU()]
        width = hidden_size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
