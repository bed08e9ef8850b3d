r"""Vocab-parallel FairLoss: the dense implementation's stages with two collectives between them.

Rank :math:`k` of a process group holds the logits of a contiguous slice of the classes, in rank
order (slices may differ in size, even be empty). The stages of :mod:`fairloss._impl.dense` run
on each slice, and two ``all_reduce`` rounds make their per-row numbers the whole vocabulary's:

1. :func:`~fairloss._impl.dense.local_max`, then ``all_reduce(MAX)`` of the local maxima (it also
   carries each rank's slice size, so uneven slices cost no extra round);
2. :func:`~fairloss._impl.dense.local_sums`, then one ``all_reduce(SUM)`` of the stacked sums
   (3 numbers per row by default, up to 5 with class weights and label smoothing);
3. :func:`~fairloss._impl.dense.finish`, the same on every rank;
4. :func:`~fairloss._impl.dense.gradient` of the local slice, which needs no communication.

The linear version runs the stages over the chunks of :class:`fairloss._impl.chunked_linear.Head`
and folds the gradients with its :class:`~fairloss._impl.chunked_linear.Gradients`; backward sums
the input's gradient over the ranks, once, at the end.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from fairloss._impl import dense
from fairloss._impl.chunked_linear import Gradients, Head
from fairloss._penalty import finite_max, reference_class
from fairloss._validation import FairLossOptions, check_class_indices, check_weight, expected

__all__ = [
    "VocabParallelFunction",
    "VocabParallelLinearFunction",
    "check_group",
    "dtensor_shards",
    "is_dtensor",
]


def is_dtensor(input: object) -> bool:
    """Whether ``input`` is a ``DTensor`` (none exists before its module is imported)."""
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(dtensor_module, "DTensor", None)  # absent before torch 2.5 imports it
    return dtensor is not None and isinstance(input, dtensor)


class Vocabulary(NamedTuple):
    """Where this rank's slice lies, as 0-d tensors on the logits' device (from round 1)."""

    offset: Tensor  # the first global class of this rank's slice (long)
    num_classes: Tensor  # V, the whole vocabulary (compute dtype)
    local_num_classes: int


def check_group(group: Optional[dist.ProcessGroup]) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            expected(
                "group",
                "a process group of an initialized torch.distributed (call "
                "torch.distributed.init_process_group first, or torchrun)",
                "an uninitialized torch.distributed",
            )
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(expected("group", "None or a ProcessGroup", type(group).__name__))


def _exchange_max(
    local_max: Tensor,
    local_num_classes: int,
    target: Tensor,
    options: FairLossOptions,
    group: Optional[dist.ProcessGroup],
) -> tuple[Tensor, Vocabulary]:
    """Round 1: the per-row maximum of the whole row (finite), and the vocabulary partition.

    One ``all_reduce(MAX)`` of ``N + world_size`` numbers: the local maxima, then a vector that
    is 0 except for this rank's slice size at its rank. Class indices on the CPU are then
    checked against the whole vocabulary (on an accelerator that would synchronise).
    """
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    sizes = local_max.new_zeros(world_size)
    sizes[rank] = local_num_classes
    message = torch.cat([local_max, sizes])
    dist.all_reduce(message, op=dist.ReduceOp.MAX, group=group)
    global_max, sizes = message[: local_max.shape[0]], message[local_max.shape[0] :]
    vocabulary = Vocabulary(sizes[:rank].sum().long(), sizes.sum(), local_num_classes)
    if target.device.type == "cpu" and sizes.device.type == "cpu":
        num_classes = int(vocabulary.num_classes)
        if num_classes == 0:
            raise ValueError(
                expected("local_logits", "slices of at least one class in all", "0 classes")
            )
        check_class_indices(target, num_classes, options.ignore_index)
    return finite_max(global_max), vocabulary


def _held_reference(
    target: Tensor, vocabulary: Vocabulary, options: FairLossOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """``(reference, valid, held)``: the target's index within this rank's slice (0 where not
    held), whether a row counts, and whether this rank holds its target class."""
    reference, valid = reference_class(target, options)
    local = reference - vocabulary.offset
    held = valid & (local >= 0) & (local < vocabulary.local_num_classes)
    return torch.where(held, local, 0), valid, held


def _sum_over_ranks(
    sums: dense.LocalSums,
    weight: Optional[Tensor],
    options: FairLossOptions,
    vocabulary: Vocabulary,
    group: Optional[dist.ProcessGroup],
) -> tuple[dense.LocalSums, Tensor]:
    """Round 2: one ``all_reduce(SUM)`` of the stacked sums, and of ``sum w`` when needed.

    Returns the whole rows' sums and the total class weight :math:`W` (``V`` without weights).
    """
    stacked = sums.stack()
    message = stacked.reshape(-1)
    needs_total_weight = weight is not None and options.label_smoothing > 0
    if needs_total_weight:
        assert weight is not None
        message = torch.cat([message, weight.to(message.dtype).sum().reshape(1)])
    dist.all_reduce(message, op=dist.ReduceOp.SUM, group=group)
    total_weight = message[-1] if needs_total_weight else vocabulary.num_classes
    return sums.like(message[: stacked.numel()].view(stacked.shape)), total_weight


def _finish(
    sums: dense.LocalSums,
    row_max: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    vocabulary: Vocabulary,
    options: FairLossOptions,
    group: Optional[dist.ProcessGroup],
) -> tuple[Tensor, Tensor, dense.RowStatistics]:
    reference, valid, held = _held_reference(target, vocabulary, options)
    sums, total_weight = _sum_over_ranks(sums, weight, options, vocabulary, group)
    return dense.finish(
        sums, row_max, valid, reference, held, options,
        num_classes=vocabulary.num_classes.to(row_max.dtype), total_weight=total_weight,
    )  # fmt: skip


class VocabParallelFunction(torch.autograd.Function):
    """Element losses of the whole vocabulary from ``(N, V_k)`` local logits, and the target
    weights (``"mean"``'s terms); nothing is sent in backward.

    ``apply(local_logits, target, weight, options, group, compute_dtype)``; backward cannot
    itself be differentiated (the sums came through a collective).
    """

    @staticmethod
    def forward(
        ctx: Any,
        local_logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        options: FairLossOptions,
        group: Optional[dist.ProcessGroup],
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        values = local_logits.to(dtype)
        local_max = dense.local_max(values)
        row_max, vocabulary = _exchange_max(local_max, values.shape[1], target, options, group)
        reference, _, held = _held_reference(target, vocabulary, options)
        sums = dense.local_sums(values, row_max, target, weight, reference, held, options)
        loss, class_weight, statistics = _finish(
            sums, row_max, target, weight, vocabulary, options, group
        )
        ctx.options = options
        ctx.save_for_backward(local_logits, target, weight, vocabulary.num_classes, *statistics)
        ctx.mark_non_differentiable(class_weight)
        return loss, class_weight

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_loss: Tensor, grad_class_weight: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        local_logits, target, weight, num_classes, *saved = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0] and local_logits.shape[1] == 0:  # a rank without classes
            grad = torch.zeros_like(local_logits)
        elif ctx.needs_input_grad[0]:
            statistics = dense.RowStatistics(*saved)
            values = local_logits.to(statistics.row_max.dtype)
            grad = dense.gradient(
                values, statistics, grad_loss, target, weight, ctx.options,
                num_classes=num_classes.to(values.dtype),
            ).to(local_logits.dtype)  # fmt: skip
        return grad, None, None, None, None, None


class VocabParallelLinearFunction(torch.autograd.Function):
    """Row losses of ``input @ local_weight.T + local_bias``, chunk by chunk, and the target
    weights: ``apply(input, linear_weight, linear_bias, target, weight, options, group,
    chunk_size)``.

    Forward computes each chunk's ``(rows, V_k)`` logits twice (the maxima, then the sums) and
    keeps per-row statistics only; backward recomputes them, folds each chunk's gradient into the
    three gradients and sums the input's gradient over the ranks (one ``all_reduce``).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        weight: Optional[Tensor],
        options: FairLossOptions,
        group: Optional[dist.ProcessGroup],
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        head = Head(
            input, linear_weight, linear_bias, target, options, chunk_size,
            drop_ignored_rows=False, workspace=False,
        )  # fmt: skip
        local_num_classes = linear_weight.shape[0]
        local_max = input.new_empty(input.shape[0], dtype=head.dtype)
        for chunk in head.chunks():
            local_max[chunk.positions] = dense.local_max(head.logits(chunk.hidden))
        row_max, vocabulary = _exchange_max(local_max, local_num_classes, target, options, group)
        reference, _, held = _held_reference(target, vocabulary, options)
        empty = head.weight.new_empty(0, local_num_classes)  # which sums the options take
        template = dense.local_sums(
            empty, row_max[:0], target[:0], weight, reference[:0], held[:0], options
        )
        stacked = template.stack().new_empty(len(template.stack()), input.shape[0])
        for chunk in head.chunks():
            rows = chunk.positions
            sums = dense.local_sums(
                head.logits(chunk.hidden), row_max[rows], chunk.target, weight, reference[rows],
                held[rows], options,
            )  # fmt: skip
            stacked[:, rows] = sums.stack()
        loss, class_weight, statistics = _finish(
            template.like(stacked), row_max, target, weight, vocabulary, options, group
        )
        ctx.options, ctx.group, ctx.chunk_size = options, group, chunk_size
        ctx.save_for_backward(
            input, linear_weight, linear_bias, target, weight, vocabulary.num_classes, *statistics
        )
        ctx.mark_non_differentiable(class_weight)
        return loss, class_weight

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor, grad_class_weight: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "vocab_parallel_linear_fair_loss has no double backward: its backward cannot be "
                "differentiated (create_graph=True)."
            )
        input, linear_weight, linear_bias, target, weight, num_classes, *saved = ctx.saved_tensors
        statistics = dense.RowStatistics(*saved)
        head = Head(
            input, linear_weight, linear_bias, target, ctx.options, ctx.chunk_size,
            drop_ignored_rows=False, workspace=False,
        )  # fmt: skip
        gradients = Gradients(head, tuple(ctx.needs_input_grad[:3]))
        num_classes = num_classes.to(head.dtype)
        for chunk in head.chunks():
            rows = chunk.positions
            logits = head.logits(chunk.hidden)
            grad_logits = logits  # a rank without classes: an empty gradient
            if logits.shape[1] > 0:
                chunk_statistics = dense.RowStatistics(*(value[rows] for value in statistics))
                grad_logits = dense.gradient(
                    logits, chunk_statistics, grad_loss[rows], chunk.target, weight, ctx.options,
                    num_classes=num_classes,
                )  # fmt: skip
                head.softcap_derivative_(grad_logits, logits)
            gradients.add_chunk(head, chunk, grad_logits)
        grad_input, grad_weight, grad_bias = gradients.scaled_(None)
        if grad_input is not None:
            dist.all_reduce(grad_input, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def dtensor_shards(
    input: Any, target: Tensor, weight: Optional[Tensor]
) -> tuple[Tensor, Tensor, Optional[Tensor], dist.ProcessGroup]:
    """Local logits, target, local class weights and group of a class-sharded ``DTensor``.

    ``input`` must be an ``(N, C)`` ``DTensor`` placed ``Shard(1)`` on one mesh dimension and
    ``Replicate()`` on the others (``ColwiseParallel(use_local_output=False)``'s output), its
    shards split as ``torch.chunk`` splits; a ``DTensor`` target or weight is gathered.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if input.dim() != 2:
        raise ValueError(
            expected(
                "input",
                "a DTensor of shape (N, C) (pass (batch, sequence, C) logits as .view(-1, C))",
                f"shape {tuple(input.shape)}",
            )
        )
    placements = tuple(input.placements)
    class_dims = [
        mesh_dim
        for mesh_dim, placement in enumerate(placements)
        if isinstance(placement, Shard) and placement.dim % 2 == 1
    ]
    others_replicated = all(
        isinstance(placement, Replicate)
        for mesh_dim, placement in enumerate(placements)
        if mesh_dim not in class_dims
    )
    if len(class_dims) != 1 or not others_replicated:
        raise ValueError(
            expected(
                "input",
                "a DTensor placed Shard(1) on one mesh dimension and Replicate() on the others",
                f"placements {placements}",
            )
        )
    mesh, mesh_dim = input.device_mesh, class_dims[0]
    num_classes = input.shape[1]
    local_logits = input.to_local()
    chunk = -(-num_classes // mesh.size(mesh_dim))  # torch.chunk's slices
    offset = min(mesh.get_local_rank(mesh_dim) * chunk, num_classes)
    local_num_classes = min(chunk, num_classes - offset)
    if local_logits.shape[1] != local_num_classes:
        raise ValueError(
            expected(
                "input",
                f"a DTensor whose shards split its {num_classes} classes as torch.chunk does "
                f"({local_num_classes} on this rank)",
                f"a local shard of {local_logits.shape[1]} classes",
            )
        )
    if isinstance(target, DTensor):
        target = target.full_tensor()
    local_weight = None
    if weight is not None:
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
        check_weight(weight, num_classes)
        local_weight = weight[offset : offset + local_num_classes]
    return local_logits, target, local_weight, mesh.get_group(mesh_dim)
