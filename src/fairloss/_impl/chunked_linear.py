"""A linear head plus FairLoss in row chunks, so that no ``(rows, classes)`` tensor larger than one
chunk ever exists: the head (:class:`Head`), the gradient accumulators (:class:`Gradients`), the
chunk loops and the autograd Function behind :func:`fairloss.linear_fair_loss`.

Each chunk computes its logits ``x @ W.T + b`` in the compute dtype (capped at
``c * tanh(z / c)`` with a ``softcap``), runs an :class:`~fairloss._impl.base.Implementation` on
them and folds the logits' gradient (times the softcap's derivative ``1 - tanh**2``) into the
gradients of ``x``, ``W`` and ``b`` before the next chunk starts. With an implementation that
synchronises anyway (the CPU's), rows whose target is ``ignore_index`` are dropped before the
matrix product; otherwise every row goes through and the implementation masks the ignored ones.
For a summed loss the gradients are computed during forward (the loss is linear in its upstream
gradient, a scalar) and backward only scales them; for per-row losses (and a second backward)
forward's O(rows) statistics are kept and the logits recomputed. The vocab-parallel head
(:mod:`fairloss._impl.vocab_parallel`) runs its stages over the same :class:`Head` and
:class:`Gradients`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from fairloss._impl.base import Implementation, Saved, Scoring
from fairloss._penalty import compute_dtype
from fairloss._validation import FairLossOptions

__all__ = [
    "ChunkedForward",
    "ChunkedSettings",
    "Gradients",
    "Head",
    "LinearFairLossFunction",
    "chunked_backward",
    "chunked_forward",
    "default_chunk_size",
]

#: The numbers in one chunk's logits when ``chunk_size`` is not given; see
#: :func:`default_chunk_size`.
CHUNK_NUMBERS = 2**23


def default_chunk_size(num_rows: int, num_classes: int) -> int:
    """Rows per chunk when ``chunk_size`` is not given.

    A chunk's ``(rows, V)`` logits get about :data:`CHUNK_NUMBERS` (:math:`2^{23}`, 32 MB in
    float32) numbers: that over ``V``, rounded down to a power of two, at least 1 and at most
    ``num_rows``. For an LM head (N = 8192, H = 512) that is 256 rows at V = 32,000 and 64 at
    V = 128,000, where the chunk's temporaries (logits, their gradient, a workspace) stay below
    torch's chunked ``F.linear_cross_entropy``'s peak and the weight gradient's per-chunk
    update ``grad_W += grad_logits.T @ x`` still multiplies enough rows to run at matrix-product
    speed (docs/linear.md measures both).

    Example:
        >>> from fairloss._impl.chunked_linear import default_chunk_size
        >>> default_chunk_size(8192, 32000), default_chunk_size(8192, 128000)
        (256, 64)
        >>> default_chunk_size(100_000, 10)  # a small head: one chunk
        100000
    """
    rows = max(1, CHUNK_NUMBERS // max(num_classes, 1))
    return max(1, min(1 << (rows.bit_length() - 1), num_rows))


@dataclass(frozen=True)
class ChunkedSettings:
    """How one chunked call runs (the math is in :class:`~fairloss._validation.FairLossOptions`).

    ``summed`` selects the output: the sum of the row losses (a scalar) when True, the ``(M,)``
    row losses (0 on ignored rows) when False. ``grad_enabled`` is the caller's grad mode
    (forward runs without it, and ``needs_input_grad`` does not see ``torch.no_grad()``): without
    it no gradient is precomputed. ``count_correct`` counts the kept rows whose (capped) logits'
    argmax is the target. Ignored rows are dropped before the products when the implementation
    synchronises anyway.
    """

    implementation: Implementation
    chunk_size: int
    summed: bool
    grad_enabled: bool
    count_correct: bool = False


class Chunk(NamedTuple):
    """One chunk of kept rows: where they sit among the kept rows and in the input, and data."""

    positions: slice
    input_rows: Optional[Tensor]  # row indices into the input, or None when no row is dropped
    hidden: Tensor  # (rows, H) in the compute dtype
    target: Tensor  # (rows,)


class Head:
    """The linear head in the compute dtype, and the row selection shared by all chunks.

    ``drop_ignored_rows`` removes the rows whose target is ignored (it synchronises);
    ``workspace`` allocates, once per call, a logits-sized buffer an implementation may write
    into.
    """

    def __init__(
        self,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        options: FairLossOptions,
        chunk_size: int,
        *,
        drop_ignored_rows: bool,
        workspace: bool,
    ) -> None:
        self.dtype = compute_dtype(input.dtype)
        self.input = input
        self.chunk_size = chunk_size
        self.softcap = options.softcap
        self.ignore_index = options.ignore_index
        # A bfloat16/float16 weight is cast once, so the products accumulate in float32.
        self.weight = linear_weight.to(self.dtype)
        self.bias = None if linear_bias is None else linear_bias.to(self.dtype)
        self.kept_rows: Optional[Tensor] = None
        self.target = target
        kept = target != options.ignore_index
        if drop_ignored_rows and not bool(kept.all()):
            self.kept_rows = torch.nonzero(kept).squeeze(1)
            self.target = target.index_select(0, self.kept_rows)
        self.num_kept = self.target.shape[0]
        # Whether any row counts: known on the host when ignored rows were dropped.
        self.any_kept: Union[bool, Tensor] = self.num_kept > 0
        if not drop_ignored_rows and self.num_kept > 0:
            self.any_kept = kept.any()
        buffer_shape = (min(chunk_size, self.num_kept), self.weight.shape[0])
        self._logits_buffer = input.new_empty(buffer_shape, dtype=self.dtype)
        self._workspace = torch.empty_like(self._logits_buffer) if workspace else None

    @classmethod
    def for_settings(
        cls,
        tensors: tuple[Tensor, Tensor, Optional[Tensor], Tensor],
        options: FairLossOptions,
        settings: ChunkedSettings,
    ) -> Head:
        """The head of ``(input, linear_weight, linear_bias, target)`` as ``settings`` runs it:
        ignored rows dropped, and a workspace, where the implementation asks for them."""
        implementation = settings.implementation
        return cls(
            *tensors, options, settings.chunk_size,
            drop_ignored_rows=implementation.synchronizes,
            workspace=implementation.uses_workspace,
        )  # fmt: skip

    def chunks(self) -> Iterator[Chunk]:
        for start in range(0, self.num_kept, self.chunk_size):
            positions = slice(start, min(start + self.chunk_size, self.num_kept))
            target = self.target[positions]
            if self.kept_rows is None:
                input_rows = None
                hidden = self.input[positions]
            else:
                input_rows = self.kept_rows[positions]
                hidden = self.input.index_select(0, input_rows)
            yield Chunk(positions, input_rows, hidden.to(self.dtype), target)

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

    def softcap_derivative_(self, grad_logits: Tensor, logits: Tensor) -> Tensor:
        """Multiply the capped logits' gradient by the cap's derivative ``1 - (z / c) ** 2``.

        Computed over the logits buffer, which is not needed afterwards.
        """
        if self.softcap is not None:
            grad_logits.mul_(logits.div_(self.softcap).square_().neg_().add_(1))
        return grad_logits

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

    def __init__(self, head: Head, needs_grad: tuple[bool, bool, bool]) -> None:
        needs_input, needs_weight, needs_bias = needs_grad
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

    def add_chunk(self, head: Head, chunk: Chunk, grad_logits: Tensor) -> None:
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
    head: Head,
    weight: Optional[Tensor],
    options: FairLossOptions,
    settings: ChunkedSettings,
    needs_grad: tuple[bool, bool, bool],
) -> ChunkedForward:
    """The loss chunk by chunk; for a summed loss, also the gradients ``needs_grad`` asks for.

    ``needs_grad`` says which of ``input``, ``linear_weight`` and ``linear_bias`` want a
    gradient. The loss is the sum of the row losses when ``settings.summed``, else the ``(M,)``
    row losses (0 on ignored rows), in the compute dtype.
    """
    implementation = settings.implementation
    gradients = None
    if settings.summed and settings.grad_enabled and any(needs_grad):
        gradients = Gradients(head, needs_grad)
    row_losses = head.input.new_zeros(head.num_kept, dtype=head.dtype)
    correct = head.input.new_zeros((), dtype=torch.long)
    chunk_statistics = []
    for chunk in head.chunks():
        logits = head.logits(chunk.hidden)
        if settings.count_correct:
            correct += head.count_correct(logits, chunk.target)
        workspace = head.workspace(len(logits))
        scoring = Scoring(chunk.target, weight, options)
        # Compact statistics: kept rows of softmax(beta * z) would add up over chunks.
        if gradients is None:
            loss, statistics = implementation.forward(logits, scoring, True, workspace)
        else:
            loss, statistics, grad_logits = implementation.forward_backward(
                logits, scoring, workspace
            )
            gradients.add_chunk(head, chunk, head.softcap_derivative_(grad_logits, logits))
            del grad_logits  # before the next chunk's temporaries exist
        row_losses[chunk.positions] = loss
        chunk_statistics.append(statistics)

    if settings.summed:
        total = row_losses.sum()
    elif head.kept_rows is None:
        total = row_losses
    else:
        total = head.input.new_zeros(head.input.shape[0], dtype=head.dtype)
        total.index_copy_(0, head.kept_rows, row_losses)
    return ChunkedForward(total, correct, gradients, chunk_statistics)


def chunked_backward(
    head: Head,
    weight: Optional[Tensor],
    options: FairLossOptions,
    settings: ChunkedSettings,
    needs_grad: tuple[bool, bool, bool],
    grad_output: Tensor,
    chunk_statistics: Optional[list[Saved]],
) -> tuple[Optional[Tensor], ...]:
    """The gradients of ``input``, ``linear_weight`` and ``linear_bias``, recomputing the logits.

    ``grad_output`` is the upstream gradient of :func:`chunked_forward`'s loss; each chunk's
    statistics are forward's when given, else recomputed.
    """
    implementation = settings.implementation
    gradients = Gradients(head, needs_grad)
    grad_rows = grad_output.to(head.dtype)
    if settings.summed:
        grad_rows = grad_rows.expand(head.num_kept)
    elif head.kept_rows is not None:
        grad_rows = grad_rows.index_select(0, head.kept_rows)
    if head.kept_rows is None:  # ignored rows get none, even from an inf or NaN upstream
        grad_rows = torch.where(head.target != options.ignore_index, grad_rows, 0.0)
    for index, chunk in enumerate(head.chunks()):
        logits = head.logits(chunk.hidden)
        workspace = head.workspace(len(logits))
        scoring = Scoring(chunk.target, weight, options)
        if chunk_statistics is None:
            _, statistics = implementation.forward(logits, scoring, True, workspace)
        else:
            statistics = chunk_statistics[index]
        grad_rows_chunk = grad_rows[chunk.positions]
        grad_logits = implementation.backward(
            logits, scoring, statistics, grad_rows_chunk, workspace
        )
        gradients.add_chunk(head, chunk, head.softcap_derivative_(grad_logits, logits))
        del grad_logits
    return gradients.scaled_(None)


class LinearFairLossFunction(torch.autograd.Function):
    """Summed or per-row FairLoss of ``input @ linear_weight.T + linear_bias`` against ``target``,
    and the number of rows whose argmax is the target (0 unless ``settings.count_correct``).

    Inputs: ``input`` ``(M, H)``, ``linear_weight`` ``(V, H)`` of the same dtype,
    ``linear_bias`` ``(V,)`` or None, class indices ``target`` ``(M,)``, class weights ``(V,)``
    or None, the options and the :class:`ChunkedSettings`. The output is in the compute dtype.

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
        options: FairLossOptions,
        settings: ChunkedSettings,
    ) -> tuple[Tensor, Tensor]:
        head = Head.for_settings((input, linear_weight, linear_bias, target), options, settings)
        needs_grad = tuple(ctx.needs_input_grad[:3])
        result = chunked_forward(head, weight, options, settings, needs_grad)
        ctx.options, ctx.settings = options, settings
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
            return (*precomputed.scaled_(grad_output), None, None, None, None)
        *tensors, weight = ctx.saved_tensors
        head = Head.for_settings(tuple(tensors), ctx.options, ctx.settings)
        gradients = chunked_backward(
            head, weight, ctx.options, ctx.settings, tuple(ctx.needs_input_grad[:3]),
            grad_output, ctx.chunk_statistics,
        )  # fmt: skip
        return (*gradients, None, None, None, None)
