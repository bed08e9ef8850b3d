r"""Vocab-parallel FairLoss on ``torch.distributed``: logits sharded by class over a process group.

Tensor parallelism splits a large output layer by vocabulary: rank :math:`k` of a group holds
the logits of a contiguous slice of the classes, :math:`z_{n, c}` for
:math:`c \in [o_k, o_k + V_k)`, in rank order (slices may differ in size, even be empty). Every
rank gets the loss of the whole vocabulary, equal to :func:`fairloss.fair_loss` of the gathered
logits up to rounding, and each slice its part of the gradient. Forward makes two collective
calls on the group (``all_reduce(MAX)`` of :math:`N` + world-size numbers, one
``all_reduce(SUM)`` of :math:`kN` numbers, :math:`k` = 3 by default, up to 5 with ``weight`` and
``label_smoothing``); the logits version's backward makes none, the linear version's one
``all_reduce`` of the input's gradient. Nothing synchronises with the host but the class-index
check on CPU tensors. Every rank must call with the same ``target`` and options; there is no
double backward. ``DTensor`` logits placed ``Shard(1)`` need none of this: pass them to
:func:`fairloss.fair_loss`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch.distributed as dist
from torch import Tensor

from fairloss import _validation as validation
from fairloss._cross_entropy import reduce
from fairloss._impl import vocab_parallel
from fairloss._impl.chunked_linear import default_chunk_size
from fairloss._penalty import compute_dtype

__all__ = ["vocab_parallel_fair_loss", "vocab_parallel_linear_fair_loss"]

_NO_PROBABILITIES = "the vocab-parallel loss does not take class probabilities"


def vocab_parallel_fair_loss(
    local_logits: Tensor,
    target: Tensor,
    *,
    group: Optional[dist.ProcessGroup] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    **options: Any,
) -> Tensor:
    r"""FairLoss of logits sharded by class over ``group``: every rank gets the whole loss.

    Rank :math:`k` passes its slice :math:`z_{:, o_k : o_k + V_k}` of the logits, and of the
    class weights; the loss is that of :class:`fairloss.FairLoss` over :math:`V = \sum_k V_k`
    classes (:math:`\lambda = 1/V` by default). Equivalent to (up to rounding)::

        fair_loss(torch.cat(all_gather(local_logits), dim=1), target,
                  torch.cat(all_gather(weight)), ...)

    Args:
        local_logits (Tensor): this rank's slice of the logits, :math:`(N, V_k)`.
        target (Tensor): global class indices in :math:`[0, V)` or ``ignore_index``,
            :math:`(N)`, the same on every rank.
        group (ProcessGroup, optional): the ranks holding the slices. Default: the world.
        weight (Tensor, optional): this rank's slice of the class weights, :math:`(V_k)`.
        reduction (str, optional): as :func:`fairloss.fair_loss`. Default: ``'mean'``.
        **options: ``ignore_index``, ``label_smoothing``, ``smooth_max_beta``,
            ``scaling_factor``, ``penalty_scale``, ``z_loss_scale``: as
            :func:`fairloss.fair_loss`.

    Raises:
        RuntimeError: ``torch.distributed`` not initialized.
        TypeError, ValueError: as :func:`fairloss.fair_loss`; a class index out of range is
            found after the first round, on every rank.

    Example:
        One process holding every class gives :func:`fairloss.fair_loss`'s numbers
        (``examples/tensor_parallel.py`` trains on two):

        >>> import torch
        >>> import torch.distributed as dist
        >>> from fairloss.distributed import vocab_parallel_fair_loss
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> logits = torch.tensor([[0.34, 0.33, 0.33], [0.49, 0.51, 0.00]])
        >>> vocab_parallel_fair_loss(logits, torch.tensor([0, 0]), reduction="none")
        tensor([1.0920, 1.3014])
        >>> dist.destroy_process_group()
    """
    validation.check_reduction(reduction)
    validation.check_logits(local_logits, "local_logits")
    if local_logits.dim() != 2:
        raise ValueError(
            validation.expected(
                "local_logits", "a tensor of shape (N, V_r)", f"shape {tuple(local_logits.shape)}"
            )
        )
    target = validation.check_index_target(
        target, (local_logits.shape[0],), _NO_PROBABILITIES, "global class indices"
    )
    validation.check_option_names(options, validation.OPTION_NAMES, "vocab_parallel_fair_loss")
    dtype = compute_dtype(local_logits.dtype)
    resolved = validation.resolve_options(None, compute_dtype=dtype, **options)
    validation.check_weight(weight, local_logits.shape[1])
    validation.check_weight_needs_no_grad(weight)
    vocab_parallel.check_group(group)
    loss, class_weight = vocab_parallel.VocabParallelFunction.apply(
        local_logits, target.long(), weight, resolved, group, dtype
    )
    output_dtype = validation.output_dtype(local_logits)
    return reduce(loss, reduction, class_weight.sum, output_dtype, tuple(target.shape))


def vocab_parallel_linear_fair_loss(
    input: Tensor,
    local_linear_weight: Tensor,
    target: Tensor,
    *,
    local_linear_bias: Optional[Tensor] = None,
    group: Optional[dist.ProcessGroup] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
    **options: Any,
) -> Tensor:
    r"""A column-parallel linear head plus FairLoss, in row chunks: no rank holds its logits whole.

    Rank :math:`k` holds rows :math:`o_k .. o_k + V_k` of the head :math:`W` (and of the bias);
    ``input`` is replicated. The loss is :func:`fairloss.linear_fair_loss` of the whole head,
    computed ``chunk_size`` rows at a time; backward sums the input's gradient over the ranks
    (one ``all_reduce`` of :math:`N \times H` numbers), the head's gradients stay local.

    Args:
        input (Tensor): hidden states :math:`(*, H)`, the same on every rank.
        local_linear_weight (Tensor): this rank's rows of the head, :math:`(V_k, H)`.
        target (Tensor): global class indices :math:`(*)`, the same on every rank.
        local_linear_bias (Tensor, optional): this rank's slice of the bias. Default: ``None``.
        group (ProcessGroup, optional): the ranks holding the slices. Default: the world.
        weight (Tensor, optional): this rank's slice of the class weights, :math:`(V_k)`.
        reduction (str, optional): as :func:`fairloss.fair_loss`. Default: ``'mean'``.
        chunk_size (int, optional): rows per chunk, as :func:`fairloss.linear_fair_loss`'s for
            the local slice. Default: ``None``.
        **options: those of :func:`vocab_parallel_fair_loss`, and ``softcap`` (as
            :func:`fairloss.linear_fair_loss`).

    Raises:
        RuntimeError: ``torch.distributed`` not initialized; a double backward.
        TypeError, ValueError: as :func:`fairloss.linear_fair_loss`.

    Example:
        >>> import torch
        >>> import torch.distributed as dist
        >>> from fairloss.distributed import vocab_parallel_linear_fair_loss
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> hidden = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
        >>> head = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> target = torch.tensor([0, 2, -100])
        >>> vocab_parallel_linear_fair_loss(hidden, head, target, reduction="none", chunk_size=2)
        tensor([0.4076, 2.0136, 0.0000])
        >>> dist.destroy_process_group()
    """
    validation.check_reduction(reduction)
    validation.check_head(input, local_linear_weight, local_linear_bias, prefix="local_")
    target = validation.check_index_target(
        target, tuple(input.shape[:-1]), _NO_PROBABILITIES, "global class indices"
    )
    allowed = (*validation.OPTION_NAMES, "softcap")
    validation.check_option_names(options, allowed, "vocab_parallel_linear_fair_loss")
    dtype = compute_dtype(input.dtype)
    resolved = validation.resolve_options(None, compute_dtype=dtype, **options)
    local_num_classes = local_linear_weight.shape[0]
    validation.check_weight(weight, local_num_classes)
    validation.check_weight_needs_no_grad(weight)
    rows = input.reshape(-1, input.shape[-1])
    chunk_size = validation.check_chunk_size(chunk_size) or default_chunk_size(
        rows.shape[0], local_num_classes
    )
    vocab_parallel.check_group(group)
    loss, class_weight = vocab_parallel.VocabParallelLinearFunction.apply(
        rows, local_linear_weight, local_linear_bias, target.reshape(-1).long(), weight, resolved,
        group, chunk_size,
    )  # fmt: skip
    return reduce(loss, reduction, class_weight.sum, input.dtype, tuple(target.shape))
