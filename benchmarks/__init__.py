"""Benchmarks of pytorch-fairloss: ``make bench`` (``python -m benchmarks.run``) writes docs/.

Modules: ``cases`` (the grid and its inputs), ``libraries`` (the losses measured), ``suite``
(timing with ``torch.utils.benchmark``), ``memory`` (peak RSS in a fresh process), ``report``
(Markdown, CSV, plot), ``run`` (the command line) and ``linear`` (linear head + loss). They load
pytorch-fairloss 0.1.1 as ``fairloss_0_1_1`` with ``tests.old_release``, shared with the parity
tests: run them from the repository root (``python -m benchmarks.run``).
"""
