"""pytorch-fairloss: accuracy-aware classification losses and superior scoring rules.

``FairLoss`` / ``fair_loss``: cross-entropy plus a smooth penalty for wrong argmax predictions.
"""

from fairloss.functional import fair_loss
from fairloss.modules import FairLoss

__all__ = ["FairLoss", "__version__", "fair_loss"]

__version__ = "0.2.0"
