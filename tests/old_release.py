"""Find and load pytorch-fairloss 0.1.1 (the seed release) under the module name ``fairloss_0_1_1``.

The old package is also called ``fairloss`` and its ``__init__`` imports ``fairloss.loss``
absolutely, which would resolve to the library under test. So the loader reads only the old
``fairloss/loss.py`` (it imports nothing but torch) and registers it as ``fairloss_0_1_1``, from
the wheel that ``make setup`` downloads into ``.venv/old-release`` or from an unpacked copy.

Used by the parity tests and by the benchmarks (``benchmarks.run``, ``benchmarks.suite`` and
``benchmarks.memory`` import it as ``tests.old_release``, from the repository root): the one copy
of the loader, kept beside the tests so that no test imports ``benchmarks``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Optional

__all__ = ["MODULE_NAME", "find_old_release", "load_old_release", "old_release_version"]

MODULE_NAME = "fairloss_0_1_1"
#: A wheel, a folder holding the wheel, or an unpacked ``fairloss`` folder holding ``loss.py``.
PATH_VARIABLE = "FAIRLOSS_OLD_PATH"
#: Overrides the folder ``make setup`` downloads the wheel into (``.venv/old-release``).
WHEEL_FOLDER_VARIABLE = "FAIRLOSS_OLD_RELEASE_DIR"
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
UNPACKED_COPY = Path("/tmp/oldfl/x/fairloss")
WHEEL_PATTERN = "pytorch_fairloss-0.1.1-*.whl"
LOSS_IN_WHEEL = "fairloss/loss.py"


def _default_locations() -> tuple[Path, ...]:
    wheel_folder = os.environ.get(WHEEL_FOLDER_VARIABLE)
    downloaded = Path(wheel_folder) if wheel_folder else REPOSITORY_ROOT / ".venv" / "old-release"
    return downloaded, UNPACKED_COPY


def _source_in(location: Path) -> Optional[Path]:
    if location.is_file() and location.suffix == ".whl":
        return location.resolve()
    if (location / "loss.py").is_file():
        return location.resolve()
    wheels = sorted(location.glob(WHEEL_PATTERN)) if location.is_dir() else []
    return wheels[0].resolve() if wheels else None


def find_old_release(path: Optional[str] = None) -> Optional[Path]:
    """0.1.1's wheel or unpacked package folder, or ``None`` when there is none.

    Looks at ``path``, else ``$FAIRLOSS_OLD_PATH``, else the first of ``.venv/old-release``
    (or ``$FAIRLOSS_OLD_RELEASE_DIR``) and ``/tmp/oldfl/x/fairloss`` that holds a copy.
    """
    explicit = path if path is not None else os.environ.get(PATH_VARIABLE)
    locations = (Path(explicit),) if explicit else _default_locations()
    for location in locations:
        source = _source_in(location)
        if source is not None:
            return source
    return None


def load_old_release(source: Path) -> ModuleType:
    """Import 0.1.1's ``loss.py`` from ``source`` (a :func:`find_old_release` result)."""
    is_wheel = source.suffix == ".whl"
    filename = f"{source}/{LOSS_IN_WHEEL}" if is_wheel else str(source / "loss.py")
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None and loaded.__file__ == filename:
        return loaded
    if is_wheel:
        with zipfile.ZipFile(source) as wheel:
            code = wheel.read(LOSS_IN_WHEEL).decode("utf-8")
        spec = importlib.util.spec_from_loader(MODULE_NAME, loader=None, origin=filename)
    else:
        code = Path(filename).read_text(encoding="utf-8")
        spec = importlib.util.spec_from_file_location(MODULE_NAME, filename)
    if spec is None:
        raise ImportError(f"cannot load {filename}")
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    sys.modules[MODULE_NAME] = module
    exec(compile(code, filename, "exec"), module.__dict__)
    return module


def old_release_version(source: Path) -> str:
    """The ``Version:`` of the wheel's (or the unpacked copy's) metadata, or ``"unknown"``."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            names = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
            texts = [wheel.read(name).decode("utf-8") for name in names]
    else:
        metadata = sorted(source.parent.glob("pytorch_fairloss-*.dist-info/METADATA"))
        texts = [path.read_text(encoding="utf-8") for path in metadata]
    for text in texts:
        for line in text.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"
