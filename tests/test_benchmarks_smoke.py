"""Smoke test of the benchmark suite: a tiny grid runs and writes well-formed outputs.

No timing thresholds: only the shape and the internal consistency of what is written.
"""

from __future__ import annotations

import csv
import importlib.machinery
import math
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from benchmarks import libraries, report, run, suite
from benchmarks.cases import (
    IGNORE_INDEX,
    Case,
    default_grid,
    loss_options,
    make_inputs,
    quick_grid,
    target_win_rate,
)
from benchmarks.old_release import MODULE_NAME, find_old_release, load_old_release

import fairloss

LINEAR_SECTION = "## Linear loss\n\nA section from the linear benchmark.\n"


class FakeLinear:
    """Stands in for ``benchmarks.linear`` (its real run takes minutes)."""

    def __init__(self, section: str | None = LINEAR_SECTION, error: Exception | None = None):
        self.section = section
        self.error = error
        self.calls: list[list[str]] = []

    def module(self) -> types.ModuleType:
        module = types.ModuleType("benchmarks.linear")
        module.__spec__ = importlib.machinery.ModuleSpec("benchmarks.linear", None)
        module.main = self.main  # type: ignore[attr-defined]
        return module

    def main(self, argv: list[str]) -> str | None:
        self.calls.append(list(argv))
        if self.error is not None:
            raise self.error
        return self.section


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # the suite sets them for the whole process
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, FakeLinear]]:
    out_dir = tmp_path_factory.mktemp("bench")
    fake = FakeLinear()
    argv = ["--quick", "--no-compile", "--threads", "1", "--min-run-time", "0.01"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "benchmarks.linear", fake.module())
        exit_code = run.main([*argv, "--out-dir", str(out_dir)])
    yield out_dir, exit_code, fake


def _rows(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "benchmarks.csv").open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames or ()) == report.CSV_COLUMNS
        return list(reader)


def test_quick_run_writes_the_three_outputs(quick_run: tuple[Path, int, FakeLinear]) -> None:
    out_dir, exit_code, _ = quick_run
    assert exit_code == 0
    assert (out_dir / "benchmark_ratio.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    markdown = (out_dir / "benchmarks.md").read_text(encoding="utf-8")
    for expected in (
        "| Threads | 1 ",
        f"| torch | {torch.__version__} |",
        f"| fairloss | {fairloss.__version__} |",
        "make bench",
        "--quick --no-compile",
        "![Time ratio against the number of classes](benchmark_ratio.png)",
        "## Peak memory",
    ):
        assert expected in markdown
    for case in quick_grid():
        assert f"| {case.name} |" in markdown


def test_csv_has_one_consistent_row_per_case_and_loss(
    quick_run: tuple[Path, int, FakeLinear],
) -> None:
    out_dir, _, _ = quick_run
    rows = _rows(out_dir)
    grid = quick_grid()
    assert [(row["case"], row["library"]) for row in rows] == [
        (case.name, library) for case in grid for library in libraries.LIBRARIES
    ]
    by_key = {(row["case"], row["library"]): row for row in rows}
    for case in grid:
        baseline = by_key[(case.name, libraries.CROSS_ENTROPY)]
        fair = by_key[(case.name, libraries.FAIR_LOSS)]
        for row in (baseline, fair):
            assert row["time_status"] == "ok"
            assert float(row["median_ms"]) > 0 and int(row["runs"]) >= 1
            assert 0.0 <= float(row["target_wins"]) <= 1.0
        expected_ratio = float(fair["median_ms"]) / float(baseline["median_ms"])
        assert math.isclose(float(fair["time_ratio"]), expected_ratio, rel_tol=1e-3)
        for compiled in libraries.COMPILED:
            assert by_key[(case.name, compiled)]["time_status"] == "skipped: --no-compile"


def test_peak_memory_is_at_least_the_gradient(quick_run: tuple[Path, int, FakeLinear]) -> None:
    # The gradient of the logits is alive when forward+backward ends, so every loss's peak
    # growth holds at least its size: a zero or garbage measurement fails here.
    out_dir, _, _ = quick_run
    rows = {(row["case"], row["library"]): row for row in _rows(out_dir)}
    measured = [case for case in quick_grid() if case.memory]
    assert measured
    for case in measured:
        gradient_mib = case.n * case.classes * math.prod(case.spatial) * 4 / 2**20
        for library in (libraries.CROSS_ENTROPY, libraries.FAIR_LOSS):
            row = rows[(case.name, library)]
            assert row["memory_status"] == "ok"
            assert float(row["peak_mib"]) >= gradient_mib
        fair = rows[(case.name, libraries.FAIR_LOSS)]
        baseline = rows[(case.name, libraries.CROSS_ENTROPY)]
        expected_ratio = float(fair["peak_mib"]) / float(baseline["peak_mib"])
        assert math.isclose(float(fair["memory_ratio"]), expected_ratio, rel_tol=1e-3)


def test_old_release_rows_follow_its_availability(quick_run: tuple[Path, int, FakeLinear]) -> None:
    out_dir, _, _ = quick_run
    found = find_old_release() is not None
    for row in _rows(out_dir):
        if row["library"] != libraries.OLD_RELEASE:
            continue
        if not found:
            assert row["time_status"] == "n/a: 0.1.1 not found"
        elif row["spatial"]:
            assert row["time_status"] == "n/a: 0.1.1 takes (N, C) only"
        else:
            assert row["time_status"] == "ok"
            assert "differs" not in row["notes"]
            if row["case"] == quick_grid()[0].name:  # the case whose memory is measured
                assert row["memory_status"] == "ok" and float(row["peak_mib"]) > 0


def test_linear_benchmark_is_called_and_its_section_appended(
    quick_run: tuple[Path, int, FakeLinear],
) -> None:
    out_dir, _, fake = quick_run
    expected_argv = ["--threads", "1", "--out-dir", str(out_dir), "--min-run-time", "0.01"]
    assert fake.calls == [[*expected_argv, "--quick", "--no-compile"]]
    markdown = (out_dir / "benchmarks.md").read_text(encoding="utf-8")
    assert markdown.endswith(LINEAR_SECTION)


def test_a_crashing_linear_benchmark_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeLinear(error=RuntimeError("boom"))
    monkeypatch.setitem(sys.modules, "benchmarks.linear", fake.module())
    section, crashed = run._linear_section(run.parse_args(["--out-dir", str(tmp_path)]))
    assert crashed and section is not None and "failed" in section
    assert run._linear_section(run.parse_args(["--no-linear"])) == (None, False)


def test_a_failing_loss_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build_loss(library: str, *args: object, **kwargs: object) -> object:
        if library in libraries.COMPILED:
            raise RuntimeError("compiler exploded\nsecond line")
        return libraries.build_loss(library, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(suite, "build_loss", broken_build_loss)
    settings = suite.Settings(threads=1, min_run_time=0.01, compile=True, old_path=None)
    results = suite.run_suite([Case(8, 3, memory=False)], settings, progress=lambda line: None)
    status = {result.library: result.time_status for result in results}
    assert status[libraries.CROSS_ENTROPY] == "ok"
    for compiled in libraries.COMPILED:
        assert status[compiled] == "failed: RuntimeError: compiler exploded"


@pytest.mark.parametrize(
    "argv, message",
    [(["--threads", "0"], "`--threads` to be at least 1"), (["--min-run-time", "0"], "positive")],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(argv)
    assert message in capsys.readouterr().err


def test_default_grid_names_are_unique_and_cover_every_goal() -> None:
    names = [case.name for case in default_grid()]
    assert len(set(names)) == len(names)
    assert {goal.case for goal in report.GOALS} <= set(names)
    for case in default_grid():
        assert Case.from_json(case.to_json()) == case


def test_inputs_match_the_case() -> None:
    ignored = make_inputs(Case(2000, 7, spatial=(3,), options="ignore_index"))
    assert ignored.logits.shape == (2000, 7, 3) and ignored.logits.requires_grad
    assert ignored.target.shape == (2000, 3)
    assert 0.08 < float((ignored.target == IGNORE_INDEX).float().mean()) < 0.12

    trained = make_inputs(Case(1024, 1000, logits="trained"))
    random = make_inputs(Case(1024, 1000))
    assert target_win_rate(trained) > 0.9 > 0.01 > target_win_rate(random)

    half = make_inputs(Case(4, 5, dtype="bfloat16", options="weight"))
    assert half.logits.dtype == torch.bfloat16
    assert half.weight is not None and half.weight.shape == (5,)
    assert torch.equal(make_inputs(Case(4, 5)).logits, make_inputs(Case(4, 5)).logits)


def test_bad_case_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="Expected argument `options` to be one of"):
        make_inputs(Case(2, 3, options="focal"))
    with pytest.raises(ValueError, match="Expected argument `logits` to be one of"):
        make_inputs(Case(2, 3, logits="uniform"))
    with pytest.raises(ValueError, match="Expected argument `dtype` to be a floating"):
        make_inputs(Case(2, 3, dtype="int64"))


@pytest.fixture(scope="module")
def old_release_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """0.1.1 as a wheel and as an unpacked folder, made from whichever copy this machine has."""
    source = find_old_release()
    if source is None:
        pytest.skip("pytorch-fairloss 0.1.1 is not on this machine (`make setup` downloads it)")
    folder = tmp_path_factory.mktemp("old_release")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            wheel.extract("fairloss/loss.py", folder)
        return {"wheel": source, "folder": folder / "fairloss"}
    wheel_path = folder / "pytorch_fairloss-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.write(source / "loss.py", "fairloss/loss.py")
    return {"wheel": wheel_path, "folder": source}


@pytest.mark.parametrize("form", ["wheel", "folder"])
def test_old_release_loads_beside_the_new_package_and_computes_the_same_loss(
    old_release_sources: dict[str, Path], form: str
) -> None:
    source = old_release_sources[form]
    assert find_old_release(str(source)) == source.resolve()
    if form == "wheel":
        assert find_old_release(str(source.parent)) == source.resolve()  # the folder holding it
    old_release = load_old_release(source)
    assert old_release.__name__ == MODULE_NAME
    assert sys.modules["fairloss"] is fairloss
    case = Case(64, 11, options="label_smoothing")
    inputs = make_inputs(case)
    old_loss = libraries.build_loss(libraries.OLD_RELEASE, case, inputs, old_release)
    expected = fairloss.fair_loss(inputs.logits, inputs.target, **loss_options(case, inputs))
    torch.testing.assert_close(old_loss(inputs.logits, inputs.target), expected)
    cross_entropy = F.cross_entropy(inputs.logits, inputs.target, label_smoothing=0.1)
    assert not math.isclose(expected.item(), cross_entropy.item())  # the penalty is there
    with pytest.raises(libraries.NotApplicable, match="takes \\(N, C\\) only"):
        libraries.build_loss(libraries.OLD_RELEASE, Case(2, 3, spatial=(2,)), inputs, old_release)


def test_missing_old_release_is_skipped(tmp_path: Path) -> None:
    assert find_old_release(str(tmp_path / "nowhere")) is None
    assert find_old_release(str(tmp_path)) is None
