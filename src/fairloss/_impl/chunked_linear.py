"""The autograd Function behind :func:`fairloss.linear_fair_loss`: a linear head plus FairLoss in
row chunks, so that no ``(rows, classes)`` tensor larger than one chunk ever exists.

Each chunk computes its logits ``x @ W.T + b`` in the compute dtype, runs an
:class:`~fairloss._impl.base.Implementation` on them and turns the logits' gradient into the
gradients of ``x``, ``W`` and ``b`` before the next chunk starts. With an implementation that
synchronises anyway (the CPU's), rows whose target is ``ignore_index`` are dropped before the
matrix product; otherwise every row goes through and the implementation masks the ignored ones.
For a summed loss the gradients are computed during forward (the loss is linear in its upstream
gradient, a scalar) and backward only scales them; for per-row losses (and a second backward)
forward's O(rows) statistics are kept and the logits recomputed.

Three options act on each chunk's logits around the implementation: the softcap
``c * tanh(z / c)`` is applied to the logits in place after the product (and its derivative
``1 - tanh**2`` multiplied into their gradient before it is folded back); the z-loss
(:func:`fairloss._cross_entropy.z_loss_and_slope`) adds to the row losses and, through
``softmax(z)``, to their gradient; and the count of rows whose argmax is the target is taken
from the (capped) logits for ``return_accuracy``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from fairloss._cross_entropy import z_loss_and_slope
from fairloss._impl.base import Implementation, Saved
from fairloss._penalty import FairLossOptions, compute_dtype


@dataclass(frozen=True)
class LinearFairLossSettings:
    """The non-tensor arguments of one chunked call.

    ``summed`` selects the output: the sum of the row losses (a scalar) when True, the ``(M,)``
    row losses (0 on ignored rows) when False. ``chunk_size`` is the number of kept rows per chunk.
    ``grad_enabled`` is the caller's grad mode (forward runs without it, and ``needs_input_grad``
    does not see ``torch.no_grad()``): without it no gradient is precomputed.
    ``drop_ignored_rows`` removes the ignored rows before the matrix products (it synchronises:
    for implementations that do anyway). ``softcap`` (None: none) caps the logits at
    ``c * tanh(z / c)``; ``z_loss_scale`` weighs the z-loss; ``count_correct`` counts the kept
    rows whose (capped) logits' argmax is the target.
    """

    options: FairLossOptions
    implementation: Implementation
    drop_ignored_rows: bool
    summed: bool
    chunk_size: int
    grad_enabled: bool
    softcap: Optional[float] = None
    z_loss_scale: float = 0.0
    count_correct: bool = False


class _Chunk(NamedTuple):
    """One chunk of kept rows: where they sit in the ``(M, H)`` input, and their data."""

    positions: slice
    input_rows: Optional[Tensor]  # row indices into the input, or None when no row is dropped
    hidden: Tensor  # (rows, H) in the compute dtype
    target: Tensor  # (rows,)


class ZLoss(NamedTuple):
    """A chunk's z-loss per row, its slope (both 0 on ignored rows) and ``logsumexp(z)``."""

    value: Tensor
    slope: Tensor
    log_normalizer: Tensor


class _Head:
    """The linear head in the compute dtype, and the row selection shared by all chunks."""

    def __init__(
        self,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        settings: LinearFairLossSettings,
    ) -> None:
        self.dtype = compute_dtype(input.dtype)
        self.input = input
        self.softcap = settings.softcap
        self.z_loss_scale = settings.z_loss_scale
        self.ignore_index = settings.options.ignore_index
        # A bfloat16/float16 weight is cast once, so the products accumulate in float32.
        self.weight = linear_weight.to(self.dtype)
        self.bias = None if linear_bias is None else linear_bias.to(self.dtype)
        self.kept_rows: Optional[Tensor] = None
        self.target = target
        kept = target != settings.options.ignore_index
        if settings.drop_ignored_rows and not bool(kept.all()):
            self.kept_rows = torch.nonzero(kept).squeeze(1)
            self.target = target.index_select(0, self.kept_rows)
        self.num_kept = self.target.shape[0]
        # Whether any row counts: known on the host when ignored rows were dropped.
        self.any_kept: bool | Tensor = self.num_kept > 0
        if not settings.drop_ignored_rows and self.num_kept > 0:
            self.any_kept = kept.any()
        # The chunk's logits and the implementation's workspace: allocated once per call, here.
        buffer_shape = (min(settings.chunk_size, self.num_kept), self.weight.shape[0])
        self._logits_buffer = input.new_empty(buffer_shape, dtype=self.dtype)
        self._workspace: Optional[Tensor] = None
        if settings.implementation.uses_workspace:
            self._workspace = torch.empty_like(self._logits_buffer)

    def chunks(self, chunk_size: int) -> Iterator[_Chunk]:
        for start in range(0, self.num_kept, chunk_size):
            positions = slice(start, min(start + chunk_size, self.num_kept))
            target = self.target[positions]
            if self.kept_rows is None:
                input_rows = None
                hidden = self.input[positions]
            else:
                input_rows = self.kept_rows[positions]
                hidden = self.input.index_select(0, input_rows)
            yield _Chunk(positions, input_rows, hidden.to(self.dtype), target)

    def logits(self, hidden: Tensor) -> Tensor:
        """``hidden @ W.T + b`` (softcapped), written into the buffer every chunk reuses."""
        logits = self._logits_buffer[: hidden.shape[0]]
        if self.bias is None:
            torch.mm(hidden, self.weight.T, out=logits)
        else:
            torch.addmm(self.bias, hidden, self.weight.T, out=logits)
        if self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    def z_loss(self, logits: Tensor, target: Tensor) -> Optional[ZLoss]:
        """The chunk's z-loss per row, 0 on ignored rows (None without a z-loss)."""
        if self.z_loss_scale == 0:
            return None
        log_normalizer = torch.logsumexp(logits, dim=1)
        value, slope = z_loss_and_slope(log_normalizer, self.z_loss_scale)
        valid = target != self.ignore_index
        return ZLoss(torch.where(valid, value, 0.0), torch.where(valid, slope, 0.0), log_normalizer)

    def finish_gradient_(
        self,
        grad_logits: Tensor,
        logits: Tensor,
        z_loss: Optional[ZLoss],
        grad_rows: Optional[Tensor],
    ) -> None:
        """Add the z-loss's gradient, then take the softcap's derivative, in place.

        The z-loss adds ``g * slope * softmax(z)`` (``grad_rows`` is ``g``, None for ones); the
        softcap multiplies by ``1 - (z / c) ** 2``, computed over the logits buffer, which is not
        needed afterwards.
        """
        if z_loss is not None:
            scale = z_loss.slope if grad_rows is None else grad_rows * z_loss.slope
            probs = (logits - z_loss.log_normalizer.unsqueeze(1)).exp_()
            grad_logits.add_(probs.mul_(scale.unsqueeze(1)))
        if self.softcap is not None:
            derivative = logits.div_(self.softcap).square_().neg_().add_(1)
            grad_logits.mul_(derivative)

    def count_correct(self, logits: Tensor, target: Tensor) -> Tensor:
        """How many rows of the chunk have their argmax (first on ties) at the target."""
        hits = (logits.argmax(dim=1) == target) & (target != self.ignore_index)
        return hits.sum()

    def workspace(self, rows: int) -> Optional[Tensor]:
        """The implementation's logits-sized workspace for a chunk of ``rows`` (or None)."""
        return None if self._workspace is None else self._workspace[:rows]


class Gradients:
    """Accumulators for the gradients of ``input``, ``linear_weight`` and ``linear_bias``.

    They are kept in the compute dtype (the input's gradient in the input's dtype) and cast to
    the input's dtype, which the weight and bias share, when handed out.
    """

    def __init__(
        self, head: _Head, needs_input: bool, needs_weight: bool, needs_bias: bool
    ) -> None:
        input = head.input
        self.dtype = input.dtype
        self.any_kept = head.any_kept
        self.input: Optional[Tensor] = None
        if needs_input:
            self.input = (torch.empty_like if head.kept_rows is None else torch.zeros_like)(input)
        self.weight = torch.zeros_like(head.weight) if needs_weight else None
        self.bias = None
        if needs_bias and head.bias is not None:
            self.bias = torch.zeros_like(head.bias)

    def add_chunk(self, head: _Head, chunk: _Chunk, grad_logits: Tensor) -> None:
        """Fold one chunk's logits gradient into the input, weight and bias gradients."""
        if self.input is not None:
            if chunk.input_rows is None and self.input.dtype == grad_logits.dtype:
                torch.mm(grad_logits, head.weight, out=self.input[chunk.positions])
            elif chunk.input_rows is None:
                self.input[chunk.positions] = grad_logits @ head.weight
            else:
                grad_hidden = (grad_logits @ head.weight).to(self.dtype)
                self.input.index_copy_(0, chunk.input_rows, grad_hidden)
        if self.weight is not None:
            self.weight.addmm_(grad_logits.T, chunk.hidden)
        if self.bias is not None:
            self.bias.add_(grad_logits.sum(dim=0))

    def unscaled(self) -> tuple[Optional[Tensor], ...]:
        """The three accumulators as they are: for an upstream gradient of 1, the input's in its
        dtype, the weight's and bias's in the compute dtype."""
        return self.input, self.weight, self.bias

    def scaled_(self, scale: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
        """The three gradients, multiplied in place by ``scale``, in the input's dtype.

        Without kept rows they stay 0: an all-ignored ``"mean"`` scales by ``1 / 0``.
        """
        results = []
        for grad in (self.input, self.weight, self.bias):
            if grad is not None and scale is not None and self.any_kept is not False:
                grad_scale = scale.to(grad.dtype)
                if isinstance(self.any_kept, Tensor):  # no sync: a 0 scale without kept rows
                    grad_scale = torch.where(self.any_kept, grad_scale, 0.0)
                grad.mul_(grad_scale)
            results.append(None if grad is None else grad.to(self.dtype))
        return tuple(results)


class ChunkedForward(NamedTuple):
    """What :func:`chunked_forward` returns: the loss, the correct-row count, the gradients
    computed on the way (summed losses only, else None) and each chunk's statistics."""

    loss: Tensor
    correct: Tensor
    gradients: Optional[Gradients]
    chunk_statistics: list[Saved]


def chunked_forward(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    settings: LinearFairLossSettings,
    needs_grad: tuple[bool, bool, bool],
) -> ChunkedForward:
    """The loss chunk by chunk; for a summed loss, also the gradients ``needs_grad`` asks for.

    ``needs_grad`` says which of ``input``, ``linear_weight`` and ``linear_bias`` want a
    gradient. The loss is the sum of the row losses when ``settings.summed``, else the ``(M,)``
    row losses (0 on ignored rows), in the compute dtype.
    """
    options, implementation = settings.options, settings.implementation
    head = _Head(input, linear_weight, linear_bias, target, settings)
    gradients = None
    if settings.summed and settings.grad_enabled and any(needs_grad):
        gradients = Gradients(head, *needs_grad)
    row_losses = input.new_zeros(head.num_kept, dtype=head.dtype)
    correct = input.new_zeros((), dtype=torch.long)
    chunk_statistics = []
    for chunk in head.chunks(settings.chunk_size):
        logits = head.logits(chunk.hidden)
        if settings.count_correct:
            correct += head.count_correct(logits, chunk.target)
        z_loss = head.z_loss(logits, chunk.target)
        # Compact statistics: kept rows of softmax(beta * z) would add up over chunks.
        if gradients is None:
            loss, statistics = implementation.forward(
                logits, chunk.target, weight, options, True, head.workspace(len(logits))
            )
        else:
            loss, statistics, grad_logits = implementation.forward_backward(
                logits, chunk.target, weight, options, head.workspace(len(logits))
            )
            head.finish_gradient_(grad_logits, logits, z_loss, None)
            gradients.add_chunk(head, chunk, grad_logits)
            del grad_logits  # before the next chunk's temporaries exist
        row_losses[chunk.positions] = loss if z_loss is None else loss + z_loss.value
        chunk_statistics.append(statistics)

    if settings.summed:
        total = row_losses.sum()
    elif head.kept_rows is None:
        total = row_losses
    else:
        total = input.new_zeros(input.shape[0], dtype=head.dtype)
        total.index_copy_(0, head.kept_rows, row_losses)
    return ChunkedForward(total, correct, gradients, chunk_statistics)


def chunked_backward(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Optional[Tensor],
    target: Tensor,
    weight: Optional[Tensor],
    settings: LinearFairLossSettings,
    needs_grad: tuple[bool, bool, bool],
    grad_output: Tensor,
    chunk_statistics: Optional[list[Saved]],
) -> tuple[Optional[Tensor], ...]:
    """The gradients of ``input``, ``linear_weight`` and ``linear_bias``, recomputing the logits.

    ``grad_output`` is the upstream gradient of :func:`chunked_forward`'s loss; each chunk's
    statistics are forward's when given, else recomputed.
    """
    options, implementation = settings.options, settings.implementation
    head = _Head(input, linear_weight, linear_bias, target, settings)
    gradients = Gradients(head, *needs_grad)
    grad_rows = grad_output.to(head.dtype)
    if settings.summed:
        grad_rows = grad_rows.expand(head.num_kept)
    elif head.kept_rows is not None:
        grad_rows = grad_rows.index_select(0, head.kept_rows)
    if head.kept_rows is None:  # ignored rows get none, even from an inf or NaN upstream
        grad_rows = torch.where(head.target != options.ignore_index, grad_rows, 0.0)
    for index, chunk in enumerate(head.chunks(settings.chunk_size)):
        logits = head.logits(chunk.hidden)
        workspace = head.workspace(len(logits))
        if chunk_statistics is None:
            _, statistics = implementation.forward(
                logits, chunk.target, weight, options, True, workspace
            )
        else:
            statistics = chunk_statistics[index]
        z_loss = head.z_loss(logits, chunk.target)
        chunk_grad_rows = grad_rows[chunk.positions]
        grad_logits = implementation.backward(
            logits, chunk.target, weight, options, statistics, chunk_grad_rows, workspace
        )
        head.finish_gradient_(grad_logits, logits, z_loss, chunk_grad_rows)
        gradients.add_chunk(head, chunk, grad_logits)
        del grad_logits
    return gradients.scaled_(None)


class LinearFairLossFunction(torch.autograd.Function):
    """Summed or per-row FairLoss of ``input @ linear_weight.T + linear_bias`` against ``target``,
    and the number of rows whose argmax is the target (0 unless ``settings.count_correct``).

    Inputs: ``input`` ``(M, H)``, ``linear_weight`` ``(V, H)`` of the same dtype,
    ``linear_bias`` ``(V,)`` or None, class indices ``target`` ``(M,)``, class weights ``(V,)``
    or None, and :class:`LinearFairLossSettings`. The output is in the compute dtype (float64 for
    float64 input, float32 otherwise).

    Forward keeps each chunk's O(rows) statistics. With a summed output it also computes the
    gradients, which the first backward scales in place and hands out (so that they become the
    leaves' ``.grad`` without a copy); a further backward through the same graph
    (``retain_graph=True``, ``gradcheck``) and every backward of per-row losses recompute each
    chunk's logits instead. There is no double backward: ``create_graph=True`` raises.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        weight: Optional[Tensor],
        settings: LinearFairLossSettings,
    ) -> tuple[Tensor, Tensor]:
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        result = chunked_forward(
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            settings,
            (needs_input, needs_weight, needs_bias),
        )
        ctx.settings = settings
        ctx.gradients = result.gradients
        ctx.chunk_statistics = result.chunk_statistics
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight)
        ctx.mark_non_differentiable(result.correct)
        return result.loss, result.correct

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor, grad_correct: Optional[Tensor]
    ) -> tuple[Optional[Tensor], ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "linear_fair_loss has no double backward: its backward cannot be differentiated "
                "(create_graph=True). Use fair_loss(F.linear(...)) where higher derivatives are "
                "needed."
            )
        precomputed: Optional[Gradients] = ctx.gradients
        if precomputed is not None:
            ctx.gradients = None  # handed out, scaled in place: a second backward recomputes
            return (*precomputed.scaled_(grad_output), None, None, None)
        input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        gradients = chunked_backward(
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            ctx.settings,
            (needs_input, needs_weight, needs_bias),
            grad_output,
            ctx.chunk_statistics,
        )
        return (*gradients, None, None, None)
