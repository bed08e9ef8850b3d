"""The devices and implementations that tests run on: CUDA joins wherever a GPU exists."""

from __future__ import annotations

import torch

#: ``make test`` on a machine with a GPU runs the device-parametrized tests there too.
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

#: Every value of ``impl`` that names one implementation (``"auto"`` picks one of them).
IMPLEMENTATIONS = ("sparse", "dense", "composite")
