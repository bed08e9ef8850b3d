"""Bad arguments raise before any communication, naming the argument (no process group needed).

The keyword options are :func:`fairloss.fair_loss`'s (and ``softcap`` for the linear head): an
unknown name raises TypeError naming it.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist

from fairloss.distributed import vocab_parallel_fair_loss, vocab_parallel_linear_fair_loss

LOGITS = torch.zeros(4, 3)
TARGET = torch.tensor([0, 1, 2, -100])


def _logits_call(**changes: Any) -> Callable[[], Any]:
    arguments: dict[str, Any] = {"local_logits": LOGITS, "target": TARGET, **changes}
    return lambda: vocab_parallel_fair_loss(**arguments)


def _linear_call(**changes: Any) -> Callable[[], Any]:
    arguments: dict[str, Any] = {
        "input": torch.zeros(4, 5),
        "local_linear_weight": torch.zeros(3, 5),
        "target": TARGET,
        **changes,
    }
    return lambda: vocab_parallel_linear_fair_loss(**arguments)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (_logits_call(reduction="avg"), ValueError, "`reduction` to be one of"),
        (_logits_call(local_logits=torch.zeros(4, 3, 2)), ValueError, "`local_logits`.*(N, V_r)"),
        (
            _logits_call(local_logits=torch.zeros(4, 3, dtype=torch.long)),
            TypeError,
            "`local_logits`",
        ),
        (_logits_call(target=torch.zeros(4)), TypeError, "`target` to be global class indices"),
        (_logits_call(target=torch.zeros(5, dtype=torch.long)), ValueError, r"`target`.*\(4,\)"),
        (_logits_call(weight=torch.ones(4)), ValueError, r"`weight`.*\(3,\)"),
        (_logits_call(weight=torch.ones(3, requires_grad=True)), RuntimeError, "`weight`"),
        (_logits_call(z_loss_scale=-1.0), ValueError, "`z_loss_scale`"),
        (_logits_call(smooth_max_beta=0.0), ValueError, "`smooth_max_beta`"),
        (_logits_call(penalty_scale=float("nan")), ValueError, "`penalty_scale`"),
        (_logits_call(label_smoothing=1.5), ValueError, "`label_smoothing`"),
        (_logits_call(ignore_index=1.0), TypeError, "`ignore_index`"),
        (_linear_call(reduction="avg"), ValueError, "`reduction`"),
        (_linear_call(local_linear_weight=torch.zeros(3, 4)), ValueError, "`local_linear_weight`"),
        (
            _linear_call(local_linear_weight=torch.zeros(3, 5, dtype=torch.float64)),
            TypeError,
            "`local_linear_weight`",
        ),
        (_linear_call(local_linear_bias=torch.zeros(4)), ValueError, "`local_linear_bias`"),
        (_linear_call(target=torch.zeros(3, dtype=torch.long)), ValueError, "`target`"),
        (_linear_call(chunk_size=0), ValueError, "`chunk_size`"),
        (_linear_call(scaling_factor=-1.0), ValueError, "`scaling_factor`"),
        (_linear_call(softcap=0.0), ValueError, "`softcap`"),
        # keyword options: fair_loss's, by name (and softcap for the linear head); others raise
        (_logits_call(scaling_facter=1.0), TypeError, r"`options` .* but got 'scaling_facter'"),
        (_logits_call(softcap=30.0), TypeError, r"vocab_parallel_fair_loss, .* but got 'softcap'"),
        (_logits_call(impl="dense"), TypeError, r"but got 'impl'"),
        (_linear_call(impl="dense"), TypeError, r"vocab_parallel_linear_fair_loss, .*'impl'"),
        (_linear_call(return_accuracy=True), TypeError, r"but got 'return_accuracy'"),
        (_linear_call(linear_bias=torch.zeros(3)), TypeError, r"but got 'linear_bias'"),
    ],
)
def test_bad_arguments_raise_before_communication(
    call: Callable[[], Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.skipif(dist.is_available() and dist.is_initialized(), reason="a group exists")
@pytest.mark.parametrize("call", [_logits_call(), _linear_call()])
def test_uninitialized_torch_distributed_is_named(call: Callable[[], Any]) -> None:
    with pytest.raises(RuntimeError, match=r"`group`.*init_process_group"):
        call()
