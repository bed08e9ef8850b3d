r"""Train Hugging Face Transformers models with FairLoss, and select checkpoints by PLL.

Two entry points, both thin adapters onto the public API (:func:`fairloss.fair_loss`,
:func:`fairloss.linear_fair_loss`, :mod:`fairloss.metrics`) through Transformers' own
hooks:

* :func:`use_fair_loss` sets one model instance's ``loss_function`` (the hook every Transformers
  model calls with its logits and labels) to FairLoss, and with ``fused=True`` makes a causal
  language model compute the training loss from its last hidden states and ``lm_head`` in row
  chunks, without the logits;
* :func:`fair_loss_metrics` builds a ``compute_metrics`` callable for ``Trainer``, so that
  ``metric_for_best_model="pll"`` selects checkpoints by the Penalized Log Loss.

Needs the ``transformers`` extra: ``pip install "pytorch-fairloss[transformers]"`` (Transformers
5). Importing :mod:`fairloss` does not import Transformers; this module does.
"""

from fairloss.integrations.transformers.evaluation import fair_loss_metrics
from fairloss.integrations.transformers.training import (
    FUSED_ARCHITECTURES,
    FairLossCausalLMHook,
    FairLossClassificationHook,
    FusedArchitecture,
    use_fair_loss,
)

__all__ = [
    "FUSED_ARCHITECTURES",
    "FairLossCausalLMHook",
    "FairLossClassificationHook",
    "FusedArchitecture",
    "fair_loss_metrics",
    "use_fair_loss",
]
