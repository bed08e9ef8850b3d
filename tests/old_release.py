"""Load pytorch-fairloss 0.1.1 under another name, for parity tests and benchmarks only.

The old release also imports as ``fairloss``; its loss module is loaded from the downloaded
wheel as ``fairloss_0_1_1`` so both can live in one process. ``make setup`` downloads the wheel
into ``.venv/old-release`` (``pip download --no-deps pytorch-fairloss==0.1.1``).
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIRECTORY = Path(os.environ.get("FAIRLOSS_OLD_RELEASE_DIR", ROOT / ".venv" / "old-release"))


def find_wheel() -> Optional[Path]:
    wheels = sorted(WHEEL_DIRECTORY.glob("pytorch_fairloss-0.1.1-*.whl"))
    return wheels[0] if wheels else None


def load_old_release(extract_to: Path) -> ModuleType:
    wheel = find_wheel()
    if wheel is None:
        raise FileNotFoundError(f"no pytorch-fairloss 0.1.1 wheel in {WHEEL_DIRECTORY}")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract("fairloss/loss.py", extract_to)
    spec = importlib.util.spec_from_file_location(
        "fairloss_0_1_1", extract_to / "fairloss" / "loss.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
