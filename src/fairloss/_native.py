"""The native CPU kernel for ``(N, C, d1, ..., dK)`` inputs, built on first use.

``csrc/kdim_cpu.cpp`` fuses FairLoss's forward and its backward into one pass over the logits
each (see the file's header). :func:`extension` compiles it with
``torch.utils.cpp_extension.load`` the first time it is needed (about 20 s; PyTorch caches the
build under ``TORCH_EXTENSIONS_DIR``, ``~/.cache/torch_extensions`` by default, so later
processes load it at once), for the vector instruction set PyTorch itself uses on this machine.
It needs a C++ compiler with OpenMP and ``ninja``; where the build fails, FairLoss warns once and
keeps its PyTorch implementation, which computes the same values. Set ``FAIRLOSS_NATIVE=0`` to
never build or use it.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

__all__ = ["DISABLE_VARIABLE", "MAX_CLASSES", "MIN_POSITIONS", "available", "extension"]

#: Environment variable; ``0`` keeps FairLoss off the native kernel.
DISABLE_VARIABLE = "FAIRLOSS_NATIVE"

#: The kernel vectorizes over positions ``d1 * ... * dK``; with fewer than this many per sample
#: most vector lanes would idle, and the PyTorch implementation is used instead.
MIN_POSITIONS = 16

#: Backward compares class indices as floating-point numbers, exact up to ``2**24`` in float32;
#: inputs with more classes use the PyTorch implementation.
MAX_CLASSES = 2**24

_SOURCE = Path(__file__).parent / "csrc" / "kdim_cpu.cpp"

# Compiler flags per `torch.backends.cpu.get_cpu_capability()`, as PyTorch builds its own kernels
# (the `CPU_CAPABILITY_*` macros select ATen's vector implementation).
_CAPABILITY_FLAGS = {
    "AVX512": [
        "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
        "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512",
    ],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}  # fmt: skip


@functools.cache
def extension() -> Optional[ModuleType]:
    """The compiled kernel module, or None where it is disabled or cannot be built."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _CAPABILITY_FLAGS.get(capability, [])
    try:
        from torch.utils.cpp_extension import load

        return load(
            name=f"fairloss_kdim_cpu_{capability.lower()}",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, an unsupported platform...
        warnings.warn(
            f"fairloss: could not build the native CPU kernel ({type(error).__name__}: {error}); "
            f"using the PyTorch implementation (same values, slower for (N, C, d1, ...) inputs). "
            f"Set {DISABLE_VARIABLE}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether :func:`extension` gives the kernel (traced by ``torch.compile`` as a constant)."""
    return extension() is not None
