"""Benchmarks of pytorch-fairloss: ``make bench`` (``python -m benchmarks.run``) writes docs/.

Modules: ``cases`` (the grid and its inputs), ``libraries`` (the losses measured), ``old_release``
(loading pytorch-fairloss 0.1.1 as ``fairloss_0_1_1``), ``suite`` (timing with
``torch.utils.benchmark``), ``memory`` (peak RSS in a fresh process), ``report`` (Markdown, CSV,
plot) and ``run`` (the command line).
"""
