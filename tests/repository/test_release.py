"""Release readiness: the built package installs and runs on its own, and the docs hold together.

The first test builds the sdist and the wheel exactly as ``python -m build`` does for a release,
checks them with ``twine check --strict``, installs the wheel into a fresh virtual environment
and runs ``examples/difference.py`` against it from a directory outside the repository.
"""

from __future__ import annotations

import doctest
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # PyYAML comes with mkdocs (the docs extra)
from packaging.requirements import Requirement
from packaging.version import Version

import fairloss

ROOT = Path(__file__).resolve().parents[2]
#: A generous limit on each command (build, pip, the example): a safety net, not a timing test.
SAFETY_TIMEOUT_S = 900
EXAMPLE = ROOT / "examples" / "difference.py"
EXPECTED_LINES = (
    "Cross-entropy:  tensor([1.0920, 0.9681])",
    "FairLoss:       tensor([1.0920, 1.3014])",
)


def _clean_environment() -> dict[str, str]:
    """The current environment without anything that steers Python or pip elsewhere."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))
    }
    environment["PIP_CONFIG_FILE"] = os.devnull  # no /etc/pip.conf indexes or find-links
    environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return environment


def _run(command: list[str], cwd: Path, *, isolated: bool = True) -> str:
    """Run ``command``; ``isolated=False`` keeps this machine's pip settings (package mirrors)."""
    environment = _clean_environment() if isolated else dict(os.environ)
    result = subprocess.run(
        command,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _requirement_closure(name: str) -> list[importlib.metadata.Distribution]:
    """``name``'s installed distribution and, recursively, those its (non-extra) needs name."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = [name]
    while pending:
        distribution = importlib.metadata.distribution(pending.pop())
        key = distribution.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = distribution
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(seen.values())


def _torch_only_site(destination: Path) -> Path:
    """A directory of links to torch and its runtime requirements, and to nothing else."""
    destination.mkdir()
    for distribution in _requirement_closure("torch"):
        site = Path(str(distribution.locate_file("")))
        top_level = {
            path.parts[0]
            for path in distribution.files or []
            if not path.parts[0].startswith("..") and path.parts[0] != "__pycache__"
        }
        for entry in top_level:
            if (site / entry).exists() and not (destination / entry).exists():
                (destination / entry).symlink_to(site / entry)
    return destination


def test_built_wheel_installs_in_a_clean_environment_and_runs_the_example(
    tmp_path: Path,
) -> None:
    """Build, check, install the wheel into a new virtual environment, run the example there.

    The environment: a venv made by the base interpreter behind this one (which has neither
    torch nor fairloss), without system site-packages. torch is a multi-gigabyte download, so
    instead of installing it the test makes the torch already installed here visible through a
    ``.pth`` file that points at a directory of links to torch and its own runtime
    requirements only (computed from their metadata), not at this environment's site-packages:
    the venv sees the wheel, torch and torch's dependencies, and nothing else (no torchmetrics,
    no editable checkout; the test asserts both). pip installs the wheel with ``--no-index``
    from the build directory alone and resolves its ``torch`` requirement against the linked
    torch, and ``pip check`` must pass. The example runs from a directory outside the
    repository, so ``import fairloss`` can only find the installed wheel.
    """
    if not EXAMPLE.exists():
        pytest.fail(f"{EXAMPLE} is missing: the release runs it against the installed wheel")
    dist = tmp_path / "dist"
    # The build's own isolated environment fetches hatchling as configured on this machine.
    build = [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)]
    _run(build, cwd=tmp_path, isolated=False)
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
    assert f"-{fairloss.__version__}-" in wheels[0].name
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)], tmp_path)

    base_python = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "venv"
    _run([base_python, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_packages = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    torch_site = _torch_only_site(tmp_path / "torch-only")
    (site_packages / "torch_only.pth").write_text(f"{torch_site}\n", encoding="utf-8")

    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run([*pip, "install", "--no-index", "--find-links", str(dist), "pytorch-fairloss"], tmp_path)
    _run([*pip, "check"], tmp_path)

    probe = (
        "import importlib.metadata, importlib.util, fairloss; "
        "print(fairloss.__file__); "
        "print(importlib.metadata.version('pytorch-fairloss')); "
        "print(importlib.util.find_spec('torchmetrics') is None)"
    )
    location, version, no_torchmetrics = _run([str(python), "-c", probe], tmp_path).split()
    assert Path(location).is_relative_to(site_packages), location
    assert version == fairloss.__version__
    assert no_torchmetrics == "True", "the clean environment sees the development packages"

    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(EXAMPLE, workdir / EXAMPLE.name)
    lines = _run([str(python), EXAMPLE.name], workdir).splitlines()
    for expected in EXPECTED_LINES:
        assert expected in lines, lines


def _doc_pages() -> list[Path]:
    return sorted((ROOT / "docs").glob("**/*.md"))


@pytest.mark.parametrize("page", _doc_pages(), ids=lambda page: page.name)
def test_doc_page_examples_run(page: Path) -> None:
    """Every ``>>>`` example in a fenced block of the docs prints what the page shows."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:python|pycon)\n(.*?)```", text, flags=re.S)
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    for number, block in enumerate(block for block in blocks if ">>>" in block):
        test = parser.get_doctest(block, {}, f"{page.name}[{number}]", str(page), 0)
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} doc example(s) in {page} failed"


def test_changelog_leads_with_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, re.M)
    assert releases, "CHANGELOG.md lists no release"
    (latest, date), *older = releases
    assert latest == fairloss.__version__ and date, releases
    assert Version(latest) > Version("0.1.1")
    assert ("0.1.1", "") in older


def test_mkdocs_nav_pages_exist() -> None:
    class _Loader(yaml.SafeLoader):
        """Safe loading that tolerates mkdocs' own tags (``!relative`` and the like)."""

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)

    def pages(entries: list[object]) -> list[str]:
        found: list[str] = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += pages(value) if isinstance(value, list) else [str(value)]
        return found

    for page in pages(config["nav"]):
        assert (ROOT / "docs" / page).is_file(), page
