"""``python -m experiments study`` on a tiny grid: resumable runs, the evidence page and reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from experiments.cli import main
from experiments.evidence import READING_END, READING_START, loss_label
from experiments.study import (
    CORE_FAIRLOSS_GRID,
    FULL_FAIRLOSS_GRID,
    NoiseSetting,
    StudyConfig,
    epochs_for,
    parse_noise_setting,
    read_records,
    run_study,
)

TINY = [
    "study",
    "--datasets",
    "wine",
    "--losses",
    "ce",
    "fairloss:scaling_factor=10,smooth_max_beta=10",
    "--noise",
    "0",
    "pair:0.2",
    "--seeds",
    "0",
    "1",
    "--steps",
    "4",
    "--workers",
    "1",
    "--quiet",
]


def _paths(tmp_path: Path) -> list[str]:
    return [
        "--out",
        str(tmp_path / "study"),
        "--page",
        str(tmp_path / "docs" / "evidence.md"),
        "--figures",
        str(tmp_path / "docs" / "evidence"),
    ]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_study")
    assert main([*TINY, *_paths(root)]) == 0
    return root


def test_every_run_is_one_json_line(tiny_study: Path) -> None:
    records = read_records(tiny_study / "study" / "runs.jsonl")
    assert len(records) == 2 * 2 * 2  # losses x noise settings x seeds
    keys = {(r["loss"], r["noise_type"], r["noise"], r["seed"]) for r in records}
    assert len(keys) == 8
    for record in records:
        assert record["dataset"] == "wine" and record["num_classes"] == 3
        # 106 training samples in batches of 64: 2 steps an epoch, so 4 steps are 2 epochs.
        assert record["split_sizes"]["train"] == 106 and record["epochs"] == 2
        assert record["noisy_labels"] == (21 if record["noise_type"] == "pair" else 0)
        assert set(record["test"]) == {"accuracy", "nll", "ece", "brier", "pbs", "pll"}
        for selection in ("nll", "pll", "pbs"):
            assert 1 <= record["selected_epochs"][selection] <= 2
            assert set(record["selected_test"][selection]) == set(record["test"])
    config = json.loads((tiny_study / "study" / "study.json").read_text())
    assert config["steps"] == 4 and config["noise"] == ["0", "pair:0.2"]


def test_the_page_has_tables_figures_and_a_reading_block(tiny_study: Path) -> None:
    page = (tiny_study / "docs" / "evidence.md").read_text()
    assert page.startswith("# Evidence: when does FairLoss help?")
    assert page.count(READING_START) == 1 and page.count(READING_END) == 1
    label = loss_label("fairloss:scaling_factor=10,smooth_max_beta=10")
    assert label == "FairLoss λ=1/C, s=10, β=10"
    assert f"| {label} |" in page  # the table of every loss against CE
    assert "**wine, pair 0.2**" in page and "## Checkpoint selection" in page
    figures = sorted(path.name for path in (tiny_study / "docs" / "evidence").iterdir())
    assert figures == [
        "grid_accuracy.png",
        "grid_ece.png",
        "grid_nll.png",
        "grid_pbs.png",
        "grid_pll.png",
        "overview.png",
        "selection.png",
    ]
    for name in figures:
        assert f"](evidence/{name})" in page  # linked relative to the page
        image = imread(tiny_study / "docs" / "evidence" / name)
        assert image[..., :3].std() > 0.02, f"{name} has content"


def test_a_rerun_resumes_and_keeps_the_hand_written_reading(tiny_study: Path) -> None:
    page_path = tiny_study / "docs" / "evidence.md"
    reading = "FairLoss helps here and hurts there; **bold** claims, $\\lambda$ math."
    page = page_path.read_text()
    start, end = page.index(READING_START), page.index(READING_END)
    page_path.write_text(page[: start + len(READING_START)] + "\n" + reading + "\n" + page[end:])
    runs_before = (tiny_study / "study" / "runs.jsonl").read_text()

    assert main([*TINY, *_paths(tiny_study)]) == 0

    assert (tiny_study / "study" / "runs.jsonl").read_text() == runs_before  # nothing rerun
    sessions = (tiny_study / "study" / "sessions.jsonl").read_text().splitlines()
    assert [json.loads(line)["runs"] for line in sessions] == [8, 0]
    rewritten = page_path.read_text()
    assert f"{READING_START}\n{reading}\n{READING_END}" in rewritten


def test_resume_runs_only_the_missing_cells_and_fresh_starts_over(tmp_path: Path) -> None:
    config = StudyConfig(
        datasets=("wine",),
        noise=(NoiseSetting("symmetric", 0.0),),
        losses=("ce", "focal"),
        seeds=(0,),
        steps=2,
    )
    records, _ = run_study(config, tmp_path, workers=1, progress=False)
    assert [r["loss"] for r in records] == ["ce", "focal"]
    # Drop one run and cut the last line short, as an interruption would.
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    (tmp_path / "runs.jsonl").write_text(lines[0] + "\n" + lines[1][:40])
    records, _ = run_study(config, tmp_path, workers=1, progress=False)
    assert [r["loss"] for r in records] == ["ce", "focal"]
    assert json.loads(lines[0]) == records[0], "the run already there was kept, not rerun"

    other = StudyConfig(datasets=("wine",), losses=("ce",), seeds=(0,), steps=3)
    with pytest.raises(ValueError, match=r"a study trained with .*'steps': 2"):
        run_study(other, tmp_path, workers=1, progress=False)
    records, _ = run_study(other, tmp_path, workers=1, progress=False, fresh=True)
    assert len(records) == 4 and {r["epochs"] for r in records} == {2}  # 3 steps, 2 a epoch


def test_two_worker_processes_give_the_same_runs_as_one(tmp_path: Path) -> None:
    config = StudyConfig(
        datasets=("wine",),
        noise=(NoiseSetting("pair", 0.2),),
        losses=("ce", "poly1"),
        seeds=(3,),
        steps=4,
    )
    serial, _ = run_study(config, tmp_path / "serial", workers=1, progress=False)
    parallel, _ = run_study(config, tmp_path / "parallel", workers=2, progress=False)
    for one, other in zip(serial, parallel):
        assert one["test"] == other["test"] and one["selected_test"] == other["selected_test"]


def test_default_grid() -> None:
    config = StudyConfig()
    assert config.datasets == ("digits", "wine", "breast-cancer")
    assert [str(setting) for setting in config.noise] == ["0", "0.2", "0.4", "pair:0.2"]
    assert config.losses[:4] == ("ce", "ce-label-smoothing", "focal:gamma=2", "poly1:epsilon=1")
    assert len(CORE_FAIRLOSS_GRID) == 16 + 4 and len(FULL_FAIRLOSS_GRID) == 32
    assert config.seeds == (0, 1, 2, 3, 4) and len(config.cells()) == 3 * 4 * 36 * 5
    assert set(CORE_FAIRLOSS_GRID) < set(FULL_FAIRLOSS_GRID)
    assert config.losses[4:] == tuple(FULL_FAIRLOSS_GRID)
    # The core of the grid runs first, so a study cut short has it whole.
    core_cells = 3 * 4 * (4 + 20) * 5
    assert all(
        cell.loss in (*config.losses[:4], *CORE_FAIRLOSS_GRID)
        for cell in config.cells()[:core_cells]
    )
    assert all(cell.loss not in CORE_FAIRLOSS_GRID for cell in config.cells()[core_cells:])


def test_noise_settings_and_epochs() -> None:
    assert parse_noise_setting("0.2") == NoiseSetting("symmetric", 0.2)
    assert parse_noise_setting("pair:0.4") == NoiseSetting("pair", 0.4)
    assert str(NoiseSetting("pair", 0.2)) == "pair:0.2" and str(NoiseSetting("symmetric", 0)) == "0"
    with pytest.raises(ValueError, match="TYPE:RATE with TYPE in"):
        parse_noise_setting("flip:0.2")
    with pytest.raises(ValueError, match=r"a rate in \[0, 1\], but got '1.2'"):
        parse_noise_setting("1.2")
    assert epochs_for(1077, 64, 300) == 18  # 17 batches an epoch: 18 * 17 = 306 >= 300
    assert epochs_for(64, 64, 5) == 5 and epochs_for(65, 64, 5) == 3


def test_study_argument_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--noise", "sideways:0.1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --noise: Expected argument `noise`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "--losses", "ce", "focal:alpha=1", "--out", str(tmp_path)])
    assert "a key of 'focal', one of ('gamma',), but got the key 'alpha'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["study", "--datasets", "imagenet", "--out", str(tmp_path)])
    assert "Expected argument `datasets` to be names among" in capsys.readouterr().err
