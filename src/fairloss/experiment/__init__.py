"""The experiment behind ``fairloss compare``: cross-entropy against FairLoss on real data.

One module per idea, in the order a run uses them:

- :mod:`~fairloss.experiment.datasets`: load a dataset as tensors (scikit-learn's bundled sets, or
  torchvision's when installed).
- :mod:`~fairloss.experiment.splits`: stratified train/validation/test splits, standardized with
  the training split's statistics.
- :mod:`~fairloss.experiment.noise`: symmetric label noise on the training labels.
- :mod:`~fairloss.experiment.losses`: the losses compared, by name.
- :mod:`~fairloss.experiment.model`: the small MLP.
- :mod:`~fairloss.experiment.evaluation`: accuracy, NLL, ECE, Brier, PBS and PLL of predictions.
- :mod:`~fairloss.experiment.training`: the training loop, with per-epoch validation and
  checkpoint selection.
- :mod:`~fairloss.experiment.runner`: one run per (loss, noise rate, seed), and the grid of them.
- :mod:`~fairloss.experiment.reporting`: the table, the CSV and the JSON.
- :mod:`~fairloss.experiment.plotting`: reliability diagrams and training curves.

It needs the ``demo`` extra: ``pip install "pytorch-fairloss[demo]"``.
"""
