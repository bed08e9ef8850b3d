"""The experiments behind ``fairloss compare`` and ``fairloss study``: FairLoss against
cross-entropy and other baselines on real data.

One module per idea, in the order a run uses them:

- :mod:`~fairloss.experiment.datasets`: load a dataset as tensors (scikit-learn's bundled sets, or
  torchvision's when installed).
- :mod:`~fairloss.experiment.splits`: stratified train/validation/test splits, standardized with
  the training split's statistics.
- :mod:`~fairloss.experiment.noise`: symmetric and pair-flip label noise on the training labels.
- :mod:`~fairloss.experiment.losses`: the losses compared, by spec (``NAME:KEY=VALUE,...``),
  with the focal and Poly-1 baselines.
- :mod:`~fairloss.experiment.model`: the small MLP.
- :mod:`~fairloss.experiment.evaluation`: accuracy, NLL, ECE, Brier, PBS and PLL of predictions.
- :mod:`~fairloss.experiment.training`: the training loop, with per-epoch validation and
  checkpoint selection.
- :mod:`~fairloss.experiment.runner`: one run per (loss, noise rate, seed), and the grid of them.
- :mod:`~fairloss.experiment.paired`: paired differences over seeds with a t interval.
- :mod:`~fairloss.experiment.reporting`: the table, the paired table, the CSV and the JSON.
- :mod:`~fairloss.experiment.plotting`: reliability diagrams and training curves.
- :mod:`~fairloss.experiment.study`: the resumable, parallel grid of ``fairloss study``.
- :mod:`~fairloss.experiment.evidence`: the evidence page's tables and figures.

It needs the ``demo`` extra: ``pip install "pytorch-fairloss[demo]"``.
"""
