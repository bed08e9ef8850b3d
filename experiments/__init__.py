"""The experiment harness of pytorch-fairloss: FairLoss against cross-entropy and other baselines
on real data, behind ``python -m experiments compare`` (``make demo``) and ``python -m experiments
study`` (``make study``, docs/evidence.md).

Repository tooling, not part of the installed package: run it from the root of a clone, in an
environment with the ``demo`` extra (``make demo`` sets one up; ``pip install -e ".[demo]"`` does
too). It uses only the public API of :mod:`fairloss`.

One module per idea, in the order a run uses them:

- :mod:`~experiments.datasets`: load a dataset as tensors (scikit-learn's bundled sets, or
  torchvision's when installed).
- :mod:`~experiments.splits`: stratified train/validation/test splits, standardized with the
  training split's statistics.
- :mod:`~experiments.noise`: symmetric and pair-flip label noise on the training labels.
- :mod:`~experiments.losses`: the losses compared, by spec (``NAME:KEY=VALUE,...``), with the
  focal and Poly-1 baselines.
- :mod:`~experiments.model`: the small MLP.
- :mod:`~experiments.evaluation`: accuracy, NLL, ECE, Brier, PBS and PLL of predictions.
- :mod:`~experiments.training`: the training loop, with per-epoch validation and checkpoint
  selection.
- :mod:`~experiments.runner`: one run per (loss, noise rate, seed), and the grid of them.
- :mod:`~experiments.paired`: paired differences over seeds with a t interval.
- :mod:`~experiments.reporting`: the table, the paired table, the CSV and the JSON.
- :mod:`~experiments.plotting`: reliability diagrams and training curves.
- :mod:`~experiments.study`: the resumable, parallel grid of ``python -m experiments study``.
- :mod:`~experiments.evidence`: the evidence page's tables and figures.
- :mod:`~experiments.cli`: the command line (``python -m experiments``).
- :mod:`~experiments.checks`: the error-message pattern of the harness's own checks.
"""
