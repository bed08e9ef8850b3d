"""Adapters that let the training loops people already use run FairLoss.

Each adapter lives in its own module and imports its host library only there, so ``import
fairloss`` (and ``import fairloss.integrations``) never imports it:

* :mod:`fairloss.integrations.transformers`: Hugging Face Transformers models and ``Trainer``
  (``pip install "pytorch-fairloss[transformers]"``).
"""

__all__: list[str] = []
