"""``python -m experiments compare`` end to end on a tiny configuration: table, CSV, JSON, plots."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from experiments.cli import main

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
#: A generous limit on a child process that takes seconds: a safety net, not a timing test.
SAFETY_TIMEOUT_S = 900

TINY_ARGS = [
    "--dataset",
    "digits",
    "--losses",
    "ce",
    "fairloss-pll",
    "--noise",
    "0",
    "0.3",
    "--seeds",
    "0",
    "--epochs",
    "1",
    "--batch-size",
    "256",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Run the tiny configuration once; return the output folder, stdout and stderr.

    (``capsys`` is function-scoped, so the module-scoped run redirects the streams itself.)"""
    out = tmp_path_factory.mktemp("results")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["compare", *TINY_ARGS, "--out", str(out)])
    assert status == 0
    return out, stdout.getvalue(), stderr.getvalue()


def _table_rows(table: str) -> list[list[str]]:
    """The data rows of the printed table, split on runs of two or more spaces."""
    lines = table.splitlines()
    separator = next(index for index, line in enumerate(lines) if line.startswith("----"))
    rows = []
    for line in lines[separator + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_writes_every_output_file(tiny_run: tuple[Path, str, str]) -> None:
    out, _, _ = tiny_run
    names = {"table.txt", "runs.csv", "runs.json", "reliability.png", "training_curves.png"}
    assert {path.name for path in out.iterdir()} == names


def test_prints_the_table_it_saves(tiny_run: tuple[Path, str, str]) -> None:
    out, stdout, _ = tiny_run
    table = (out / "table.txt").read_text()
    assert stdout == table
    header = next(line for line in table.splitlines() if line.startswith("loss"))
    for column in [
        "acc %",
        "NLL",
        "ECE",
        "Brier",
        "PBS",
        "PLL",
        "acc % @val NLL",
        "acc % @val PLL",
        "acc % @val PBS",
    ]:
        assert column in header
    rows = _table_rows(table)
    assert [row[:2] for row in rows] == [
        ["ce", "0"],
        ["fairloss-pll", "0"],
        ["ce", "0.3"],
        ["fairloss-pll", "0.3"],
    ]
    assert all(len(row) == 11 for row in rows)
    # The columns line up: every data line has its cells where the header has its names.
    lines = table.splitlines()
    separator = next(line for line in lines if line.startswith("----"))
    starts = [
        index
        for index in range(len(separator))
        if separator[index] == "-" and (index == 0 or separator[index - 1] == " ")
    ]
    for line in lines[lines.index(separator) + 1 : lines.index(separator) + 5]:
        assert all(line[start] != " " and line[start - 1] == " " for start in starts[1:])


def test_table_csv_and_json_agree(tiny_run: tuple[Path, str, str]) -> None:
    out, stdout, _ = tiny_run
    with (out / "runs.csv").open() as file:
        records = list(csv.DictReader(file))
    document = json.loads((out / "runs.json").read_text())

    assert len(records) == len(document["runs"]) == 4
    assert document["config"]["losses"] == ["ce", "fairloss-pll"]
    assert document["config"]["noise"] == [0.0, 0.3] and document["config"]["seeds"] == [0]
    assert document["config"]["epochs"] == 1
    command = document["config"]["command"]
    assert command.startswith("python -m experiments compare --dataset digits --losses")
    for record, run, row in zip(records, document["runs"], _table_rows(stdout)):
        assert (record["loss"], float(record["noise"]), int(record["seed"])) == (
            run["loss"],
            run["noise"],
            0,
        )
        assert (
            int(record["train_size"]) + int(record["validation_size"]) + int(record["test_size"])
            == 1797
        )
        # Symmetric noise flips exactly round(rate * n_train) training labels.
        assert int(record["noisy_labels"]) == round(run["noise"] * int(record["train_size"]))
        for name in ("accuracy", "nll", "ece", "brier", "pbs", "pll"):
            assert float(record[f"test_{name}"]) == pytest.approx(run[f"test_{name}"], rel=1e-12)
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert run["test_pll"] >= run["test_nll"] and run["test_pbs"] >= run["test_brier"]
        # One seed: the table shows the plain value, accuracy in percent.
        assert row[2] == f"{100 * run['test_accuracy']:.1f}"
        assert row[3] == f"{run['test_nll']:.3f}"
        # One epoch: every validation criterion selects it, so its accuracy is the last model's.
        assert run["selected_epoch_by_validation_nll"] == 1
        assert run["test_accuracy_at_best_validation_pll"] == run["test_accuracy"]
        assert [entry["epoch"] for entry in run["history"]] == [1]
        assert {"train_loss", "validation_accuracy", "validation_nll", "validation_ece"} <= set(
            run["history"][0]
        )
    summary = document["summary"]
    assert [(entry["loss"], entry["noise"]) for entry in summary] == [
        ("ce", 0.0),
        ("fairloss-pll", 0.0),
        ("ce", 0.3),
        ("fairloss-pll", 0.3),
    ]
    assert summary[0]["test"]["accuracy"] == [document["runs"][0]["test_accuracy"], 0.0]


@pytest.mark.parametrize(
    ("name", "size"), [("reliability.png", (660, 660)), ("training_curves.png", (1320, 660))]
)
def test_plots_are_real_images(
    tiny_run: tuple[Path, str, str], name: str, size: tuple[int, int]
) -> None:
    out, _, _ = tiny_run
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(out / name)
    assert (image.shape[1], image.shape[0]) == size
    assert image[..., :3].std() > 0.05, "the image has content, not one flat colour"


def test_progress_bar_on_stderr_unless_quiet(
    tiny_run: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, stderr = tiny_run
    assert "4/4" in stderr and "Wrote table.txt, runs.csv, runs.json" in stderr

    status = main(
        [
            "compare",
            "--losses",
            "ce",
            "--noise",
            "0",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "ce    0" in captured.out


def test_module_entry_point_from_the_repository_root() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "experiments", "compare", "--help"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT_S,
    )
    assert completed.returncode == 0
    help_text = " ".join(completed.stdout.split())  # argparse wraps to the terminal's width
    assert "--noise RATE [RATE ...]" in help_text and "round(rate * n_train)" in help_text
    assert "--noise-type {symmetric,pair}" in help_text


def test_help_imports_none_of_the_heavy_demo_packages() -> None:
    """``--help`` starts fast: torchmetrics, scikit-learn, scipy and matplotlib wait for a run.

    (tqdm is left out of the check: torch itself imports it, for ``torch.hub``.)
    """
    heavy = ("torchmetrics", "sklearn", "scipy", "matplotlib")
    code = (
        "import sys\n"
        "from experiments.cli import main\n"
        "try:\n"
        "    main(['compare', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(name for name in {heavy!r} if name in sys.modules))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "[]"


def test_the_installed_package_has_no_command() -> None:
    """The harness is repository tooling: a base install puts no command on the path."""
    pyproject = (REPOSITORY_ROOT / "pyproject.toml").read_text()
    assert "[project.scripts]" not in pyproject


ACCEPTANCE = [
    "compare",
    "--dataset",
    "wine",
    "--losses",
    "ce",
    "focal",
    "poly1",
    "fairloss:scaling_factor=10",
    "--seeds",
    "0",
    "1",
    "--epochs",
    "5",
]


def test_acceptance_command_prints_paired_differences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's acceptance command: loss specs, baselines and the paired differences."""
    assert main([*ACCEPTANCE, "--out", str(tmp_path), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert (tmp_path / "table.txt").read_text() == stdout
    main_table, paired_table = stdout.split("\n\nPaired differences against ce (same seeds)")
    assert [row[:2] for row in _table_rows(main_table)] == [
        [loss, noise]
        for noise in ("0", "0.3")
        for loss in ("ce", "focal", "poly1", "fairloss:scaling_factor=10")
    ]
    rows = _table_rows(paired_table)
    assert [row[:3] for row in rows] == [
        [loss, noise, "2"]
        for noise in ("0", "0.3")
        for loss in ("focal", "poly1", "fairloss:scaling_factor=10")
    ]
    document = json.loads((tmp_path / "runs.json").read_text())
    by_key = {(run["loss"], run["noise"], run["seed"]): run for run in document["runs"]}
    for row, entry in zip(rows, document["paired"]):
        assert (entry["loss"], entry["reference"], entry["seeds"]) == (row[0], "ce", [0, 1])
        # Each cell is the mean over seeds of (loss - ce), in percentage points for accuracy.
        differences = [
            by_key[(entry["loss"], entry["noise"], seed)]["test_accuracy"]
            - by_key[("ce", entry["noise"], seed)]["test_accuracy"]
            for seed in (0, 1)
        ]
        accuracy = entry["test"]["accuracy"]
        assert accuracy["mean"] == pytest.approx(sum(differences) / 2)
        assert row[3].startswith(f"{100 * accuracy['mean']:+.1f}")
        assert row[3].endswith("~") == accuracy["within_noise"]
        nll = entry["test"]["nll"]
        assert (nll["low"] <= 0 <= nll["high"]) == nll["within_noise"]
