"""Smoke test of the benchmarks: ``python -m benchmarks.run`` on its tiny grid, in subprocesses.

The tests read what the runs write (Markdown, CSV, plot) and import nothing from ``benchmarks``.
No timing thresholds: only the shape and the internal consistency of the outputs. Two runs, side
by side: the quick run, where ``--fail`` makes the compiled losses raise (recorded, the run goes
on), and a crash run, where the eager losses and the linear benchmark raise (no measurement at
all, so it takes seconds): the outputs are still written, and the exit code tells of the crash.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import fairloss
from tests.old_release import find_old_release

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
#: A generous limit on each run (they take seconds): a safety net, not a timing test.
SAFETY_TIMEOUT_S = 900

#: The columns of ``benchmarks.csv``, in order.
CSV_COLUMNS = (
    "case",
    "n",
    "classes",
    "spatial",
    "dtype",
    "logits",
    "options",
    "target_wins",
    "library",
    "baseline",
    "time_status",
    "median_ms",
    "iqr_ms",
    "runs",
    "time_ratio",
    "memory_status",
    "peak_mib",
    "memory_ratio",
    "notes",
)
CROSS_ENTROPY = "cross_entropy"
FAIR_LOSS = "fair_loss"
OLD_RELEASE = "fairloss_0_1_1"
CROSS_ENTROPY_COMPILED = "cross_entropy_compiled"
FAIR_LOSS_COMPILED = "fair_loss_compiled"
#: The losses of each case, in the order of the CSV rows.
LIBRARIES = (CROSS_ENTROPY, FAIR_LOSS, OLD_RELEASE, CROSS_ENTROPY_COMPILED, FAIR_LOSS_COMPILED)
COMPILED = (CROSS_ENTROPY_COMPILED, FAIR_LOSS_COMPILED)
BASELINES = {
    FAIR_LOSS: CROSS_ENTROPY,
    OLD_RELEASE: CROSS_ENTROPY,
    FAIR_LOSS_COMPILED: CROSS_ENTROPY_COMPILED,
}
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}

SMOKE_OPTIONS = ("--quick", "--threads", "1", "--min-run-time", "0.01")
#: The linear benchmark reduced to one short process: one method, memory only.
LINEAR_OPTIONS = "--methods linear_fair_loss --no-time --no-accuracy"
#: These raise in place of running: in the quick run, and in the crash run (with 0.1.1 left out).
QUICK_FAILING = COMPILED
CRASH_FAILING = (CROSS_ENTROPY, FAIR_LOSS)


class Run(NamedTuple):
    out_dir: Path
    returncode: int
    output: str

    def text(self, name: str) -> str:
        return (self.out_dir / name).read_text(encoding="utf-8")

    def rows(self) -> list[dict[str, str]]:
        with (self.out_dir / "benchmarks.csv").open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
            return list(reader)

    def by_key(self) -> dict[tuple[str, str], dict[str, str]]:
        return {(row["case"], row["library"]): row for row in self.rows()}


def _start(out_dir: Path, *options: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "benchmarks.run", *SMOKE_OPTIONS, "--out-dir", str(out_dir)]
    return subprocess.Popen(
        [*command, *options],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], out_dir: Path) -> Run:
    try:
        output, _ = process.communicate(timeout=SAFETY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"python -m benchmarks.run ran past {SAFETY_TIMEOUT_S} s:\n{output}")
    return Run(out_dir, process.returncode, output)


def _fail(*names: str) -> list[str]:
    return [f"--fail={name}" for name in names]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The quick run and the crash run, started together."""
    quick_dir, crash_dir = tmp_path_factory.mktemp("quick"), tmp_path_factory.mktemp("crash")
    quick = _start(quick_dir, f"--linear-args={LINEAR_OPTIONS}", *_fail(*QUICK_FAILING))
    crash = _start(crash_dir, "--no-compile", "--no-old", *_fail(*CRASH_FAILING, "linear"))
    return {"quick": _finish(quick, quick_dir), "crash": _finish(crash, crash_dir)}


@pytest.fixture(scope="module")
def quick(runs: dict[str, Run]) -> Run:
    run = runs["quick"]
    assert run.returncode == 0, run.output  # a failing loss does not fail the run
    return run


def _cases(run: Run) -> list[str]:
    return list(dict.fromkeys(row["case"] for row in run.rows()))


def _memory_cases(run: Run) -> list[str]:
    """The cases whose peak memory was measured (cross-entropy's status tells)."""
    rows = run.by_key()
    return [case for case in _cases(run) if rows[(case, CROSS_ENTROPY)]["memory_status"] == "ok"]


def test_quick_run_writes_the_three_outputs(quick: Run) -> None:
    assert (quick.out_dir / "benchmark_ratio.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    markdown = quick.text("benchmarks.md")
    for expected in (
        "| Threads | 1 ",
        f"| torch | {torch.__version__} |",
        f"| fairloss | {fairloss.__version__} |",
        "make bench",
        "python -m benchmarks.run --quick --threads 1 --min-run-time 0.01",
        "![Time ratio against the number of classes](benchmark_ratio.png)",
        "## Peak memory",
    ):
        assert expected in markdown
    for case in _cases(quick):
        assert f"| {case} |" in markdown


def test_csv_has_one_consistent_row_per_case_and_loss(quick: Run) -> None:
    rows = quick.rows()
    cases = _cases(quick)
    assert len(cases) >= 2
    assert [(row["case"], row["library"]) for row in rows] == [
        (case, library) for case in cases for library in LIBRARIES
    ]
    assert any(row["spatial"] for row in rows)  # an (N, C, *spatial) case is in the grid
    by_key = quick.by_key()
    for case in cases:
        for library in LIBRARIES:
            assert by_key[(case, library)]["baseline"] == BASELINES.get(library, "")
        baseline = by_key[(case, CROSS_ENTROPY)]
        fair = by_key[(case, FAIR_LOSS)]
        for row in (baseline, fair):
            assert row["time_status"] == "ok"
            assert float(row["median_ms"]) > 0 and int(row["runs"]) >= 1
            assert 0.0 <= float(row["target_wins"]) <= 1.0
            assert "differs" not in row["notes"]
        expected_ratio = float(fair["median_ms"]) / float(baseline["median_ms"])
        assert math.isclose(float(fair["time_ratio"]), expected_ratio, rel_tol=1e-3)


def test_a_failing_loss_is_recorded_not_raised(quick: Run) -> None:
    markdown = quick.text("benchmarks.md")
    notes = markdown.split("\n## Notes\n", 1)[1].splitlines()
    rows = quick.by_key()
    for case in _cases(quick):
        for library in QUICK_FAILING:
            row = rows[(case, library)]
            assert row["time_status"].startswith("failed: InjectedFailure: ")
            assert f"(--fail {library})" in row["time_status"]
            assert row["median_ms"] == row["time_ratio"] == ""
            assert any(  # listed in the notes
                line.startswith(f"- {case}, ") and line.endswith(row["time_status"])
                for line in notes
            )


def test_target_wins_follow_the_kind_of_logits(quick: Run) -> None:
    # Trained-like logits let the target win most rows; random ones over 100+ classes rarely.
    rows = [row for row in quick.rows() if row["library"] == CROSS_ENTROPY]
    trained = [row for row in rows if row["logits"] == "trained"]
    random = [row for row in rows if row["logits"] == "random" and int(row["classes"]) >= 100]
    assert trained and random
    assert all(float(row["target_wins"]) > 0.9 for row in trained)
    assert all(float(row["target_wins"]) < 0.05 for row in random)


def test_peak_memory_is_at_least_the_gradient(quick: Run) -> None:
    # The gradient of the logits is alive when forward+backward ends, so every loss's peak
    # growth holds at least its size: a zero or garbage measurement fails here.
    rows = quick.by_key()
    measured = _memory_cases(quick)
    assert measured
    for case in measured:
        row = rows[(case, CROSS_ENTROPY)]
        spatial = [int(size) for size in row["spatial"].split("x") if size]
        elements = int(row["n"]) * int(row["classes"]) * math.prod(spatial)
        gradient_mib = elements * DTYPE_BYTES[row["dtype"]] / 2**20
        for library in (CROSS_ENTROPY, FAIR_LOSS):
            assert rows[(case, library)]["memory_status"] == "ok"
            assert float(rows[(case, library)]["peak_mib"]) >= gradient_mib
        fair, baseline = rows[(case, FAIR_LOSS)], rows[(case, CROSS_ENTROPY)]
        expected_ratio = float(fair["peak_mib"]) / float(baseline["peak_mib"])
        assert math.isclose(float(fair["memory_ratio"]), expected_ratio, rel_tol=1e-3)


def test_old_release_rows_follow_its_availability(quick: Run) -> None:
    found = find_old_release() is not None  # the run looks in the same places
    measured = _memory_cases(quick)
    for row in quick.rows():
        if row["library"] != OLD_RELEASE:
            continue
        if not found:
            assert row["time_status"] == "n/a: 0.1.1 not found"
        elif row["spatial"]:
            assert row["time_status"] == "n/a: 0.1.1 takes (N, C) only"
        else:
            assert row["time_status"] == "ok"
            assert "differs" not in row["notes"]  # 0.1.1 computes fair_loss's value
            if row["case"] in measured:
                assert row["memory_status"] == "ok" and float(row["peak_mib"]) > 0


def test_linear_benchmark_runs_and_its_section_is_appended(quick: Run) -> None:
    section = quick.text("linear.md")  # written by benchmarks.linear to the same --out-dir
    assert quick.text("benchmarks.md").endswith("\n\n" + section)
    assert "1 threads" in section  # --threads passed on
    with (quick.out_dir / "linear.csv").open(newline="", encoding="utf-8") as stream:
        linear_rows = list(csv.DictReader(stream))
    # --linear-args passed on: one method, memory only.
    assert [row["method"] for row in linear_rows] == ["linear_fair_loss"]
    assert linear_rows[0]["median_s"] == ""
    assert int(linear_rows[0]["peak_bytes"] or 0) > 0, section  # its row tells what failed


def test_a_crash_still_writes_the_outputs_and_fails_the_run(runs: dict[str, Run]) -> None:
    crash = runs["crash"]
    assert crash.returncode == 1, crash.output  # the crash of benchmarks.linear
    assert "InjectedFailure: benchmarks.linear fails on purpose" in crash.output
    markdown = crash.text("benchmarks.md")
    assert markdown.endswith(
        "\n\n## Linear loss\n\nbenchmarks.linear failed; see the `make bench` output.\n"
    )
    assert not (crash.out_dir / "benchmark_ratio.png").exists()  # no ratio to plot
    cases = _cases(crash)
    assert [(row["case"], row["library"]) for row in crash.rows()] == [
        (case, library) for case in cases for library in LIBRARIES
    ]
    rows = crash.by_key()
    for case in cases:
        assert f"| {case} |" in markdown
        for library in CRASH_FAILING:
            assert rows[(case, library)]["time_status"].startswith("failed: InjectedFailure: ")
        assert rows[(case, OLD_RELEASE)]["time_status"] == "n/a: 0.1.1 not found"
        for compiled in COMPILED:
            assert rows[(case, compiled)]["time_status"] == "skipped: --no-compile"
    for library in CRASH_FAILING:  # the memory of the case measured for it fails as well
        memory = [rows[(case, library)]["memory_status"] for case in cases]
        assert any(status.startswith("failed: InjectedFailure: ") for status in memory)


def test_bad_arguments_are_refused() -> None:
    refusals = {
        ("--threads", "0"): "`--threads` to be at least 1",
        ("--min-run-time", "0"): "positive",
    }
    processes = {  # side by side: each spends its seconds importing torch
        argv: subprocess.Popen(
            [sys.executable, "-m", "benchmarks.run", *argv],
            cwd=REPOSITORY_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in refusals
    }
    for argv, process in processes.items():
        _, stderr = process.communicate(timeout=SAFETY_TIMEOUT_S)
        assert process.returncode == 2, (argv, stderr)
        assert refusals[argv] in stderr
