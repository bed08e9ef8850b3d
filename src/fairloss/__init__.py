"""pytorch-fairloss: accuracy-aware classification losses and superior scoring rules.

``FairLoss`` / ``fair_loss``: cross-entropy plus a smooth penalty for wrong argmax predictions.
``LinearFairLoss`` / ``linear_fair_loss``: the same after a linear head, in row chunks that never
hold the full logits. ``fairloss.metrics``: the Penalized Log Loss and Penalized Brier Score.
``fairloss.distributed``: FairLoss of logits sharded by class (tensor parallelism).
"""

from fairloss.functional import fair_loss, linear_fair_loss
from fairloss.modules import FairLoss, LinearFairLoss

__all__ = ["FairLoss", "LinearFairLoss", "__version__", "fair_loss", "linear_fair_loss"]

__version__ = "0.2.0"
