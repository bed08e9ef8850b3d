"""Cross-entropy can prefer a wrong prediction; FairLoss does not.

Two predictions for true class 0: sample 1 is correct (class 0 has the largest logit), sample 2
is wrong (class 1 edges out class 0), yet cross-entropy gives sample 2 the lower loss because it
puts more probability on class 0. FairLoss adds a penalty for the wrong argmax.

Run: python examples/difference.py
"""

import torch
import torch.nn.functional as F

from fairloss import FairLoss

logits = torch.tensor(
    [
        [0.34, 0.33, 0.33],  # sample 1: correct, near-uniform
        [0.49, 0.51, 0.00],  # sample 2: wrong by a hair
    ]
)
target = torch.tensor([0, 0])

print("Cross-entropy: ", F.cross_entropy(logits, target, reduction="none"))
print("FairLoss:      ", FairLoss(reduction="none")(logits, target))
