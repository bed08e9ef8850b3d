"""Tensor-parallel training with FairLoss: the output layer sharded by vocabulary.

Run on two processes (CPU and gloo here; on GPUs torchrun picks NCCL and one GPU per rank):

    torchrun --nproc-per-node=2 examples/tensor_parallel.py

``parallelize_module`` gives each rank a slice of the output layer's rows with
``ColwiseParallel(use_local_output=False)``, so the logits stay a ``DTensor`` sharded on the
class dimension. ``fair_loss`` computes FairLoss of the whole vocabulary from the
shards (two small all-reduces; no rank gathers the logits), and the gradient flows back into the
shards. Every rank prints nothing but rank 0, which prints the loss of each step: the same
numbers as the unsharded model trained on one process (``train(None)``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

from fairloss import fair_loss

VOCABULARY = 11  # odd on purpose: two ranks hold 6 and 5 classes
FEATURES = 6
STEPS = 5


def build_model() -> nn.Sequential:
    torch.manual_seed(0)  # every rank, and the unsharded run, start from the same weights
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, VOCABULARY))


def batch(device: torch.device) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)  # the same batch on every rank
    inputs = torch.randn(32, FEATURES, generator=generator)
    targets = torch.randint(0, VOCABULARY, (32,), generator=generator)
    return inputs.to(device), targets.to(device)


def train(mesh: DeviceMesh | None, device: torch.device | None = None) -> list[float]:
    """Losses of ``STEPS`` SGD steps: tensor-parallel over ``mesh``, or unsharded if None."""
    device = device or torch.device("cpu")
    model: nn.Module = build_model().to(device)
    if mesh is not None:
        model = parallelize_module(model, mesh, {"2": ColwiseParallel(use_local_output=False)})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    inputs, targets = batch(device)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        logits = model(inputs)  # a DTensor placed Shard(1) when parallelized
        if mesh is not None:
            loss = fair_loss(logits, targets, smooth_max_beta=10.0, scaling_factor=10.0)
        else:
            loss = fair_loss(logits, targets, smooth_max_beta=10.0, scaling_factor=10.0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> list[float]:
    """Train tensor-parallel on the ranks torchrun started; rank 0 prints each step's loss."""
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        device = torch.device("cpu")
        if use_cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        losses = train(mesh, device)
        if dist.get_rank() == 0:
            for step, loss in enumerate(losses):
                print(f"step {step}: FairLoss {loss:.4f}")
        return losses
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
