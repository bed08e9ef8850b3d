"""``python -m experiments study``: the grid of runs behind docs/evidence.md, resumable, parallel.

A study trains one model per (dataset, noise setting, loss, seed), as ``python -m experiments
compare`` does, and appends each run's scores as one JSON line to ``runs.jsonl`` in its output
folder the moment the run ends. A run already in that file is skipped, so an interrupted study
continues where it stopped; ``--fresh`` (or another output folder) starts over. The training
settings are stored beside it in ``study.json``, and a study refuses to resume with other
settings.

Runs go to worker processes (``spawn``), each on one torch thread. The grid's definitions need
only torch; running it needs the ``demo`` extra.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.checks import expected
from experiments.datasets import Dataset, load_dataset
from experiments.losses import parse_loss_spec
from experiments.noise import NOISE_TYPES
from experiments.splits import Splits, split_dataset
from experiments.training import TrainingConfig

__all__ = [
    "BASELINES",
    "CORE_FAIRLOSS_GRID",
    "FULL_FAIRLOSS_GRID",
    "STUDY_DATASETS",
    "STUDY_NOISE",
    "STUDY_SCALES",
    "NoiseSetting",
    "StudyCell",
    "StudyConfig",
    "epochs_for",
    "fairloss_grid",
    "is_core_loss",
    "parse_noise_setting",
    "read_records",
    "run_study",
]

STUDY_DATASETS = ("digits", "wine", "breast-cancer")
STUDY_SCALES = (1.0, 10.0, 100.0, 1000.0)
"""The values of ``scaling_factor`` and ``smooth_max_beta`` the study crosses."""
BASELINES = ("ce", "ce-label-smoothing", "focal:gamma=2", "poly1:epsilon=1")
"""The reference (first) and the other baselines, as loss specs."""
TRAINING_KEYS = ("steps", "batch_size", "learning_rate")
"""The settings that every run of one study shares."""


@dataclass(frozen=True, order=True)
class NoiseSetting:
    """A noise model and its rate, written ``RATE`` (symmetric) or ``TYPE:RATE``."""

    noise_type: str
    rate: float

    def __str__(self) -> str:
        return (
            f"{self.rate:g}"
            if self.noise_type == "symmetric"
            else f"{self.noise_type}:{self.rate:g}"
        )


STUDY_NOISE = (
    NoiseSetting("symmetric", 0.0),
    NoiseSetting("symmetric", 0.2),
    NoiseSetting("symmetric", 0.4),
    NoiseSetting("pair", 0.2),
)


def parse_noise_setting(text: str) -> NoiseSetting:
    """Parse ``RATE`` (symmetric noise) or ``TYPE:RATE``, ``TYPE`` one of ``NOISE_TYPES``.

    Example:
        >>> parse_noise_setting("pair:0.2"), parse_noise_setting("0.4")
        (NoiseSetting(noise_type='pair', rate=0.2), NoiseSetting(noise_type='symmetric', rate=0.4))
    """
    noise_type, separator, rate_text = text.strip().rpartition(":")
    noise_type = noise_type if separator else "symmetric"
    if noise_type not in NOISE_TYPES:
        raise ValueError(
            expected("noise", f"RATE or TYPE:RATE with TYPE in {NOISE_TYPES}", repr(text))
        )
    try:
        rate = float(rate_text)
    except ValueError:
        rate = float("nan")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(expected("noise", "a rate in [0, 1]", repr(text)))
    return NoiseSetting(noise_type, rate)


def is_core_loss(spec_text: str) -> bool:
    """A baseline, or a FairLoss setting at ``penalty_scale=1/C`` or with ``scaling_factor ==
    smooth_max_beta``: the part of the grid a study runs first.

    Example:
        >>> is_core_loss("focal:gamma=2"), is_core_loss("fairloss-pll:scaling_factor=10")
        (True, False)
    """
    spec = parse_loss_spec(spec_text)
    if spec.name not in ("fairloss", "fairloss-pll"):
        return True
    options = spec.resolved_options()
    return options["penalty_scale"] == "1/C" or float(options["scaling_factor"]) == float(
        options["smooth_max_beta"]
    )


def fairloss_grid(
    scales: Sequence[float] = STUDY_SCALES, penalty_scales: Sequence[str] = ("1/C", "logC")
) -> list[str]:
    """FairLoss specs crossing ``scaling_factor`` and ``smooth_max_beta`` over ``scales``, for
    each ``penalty_scale``.

    Example:
        >>> fairloss_grid([1, 10], ["logC"])[:2]
        ['fairloss:penalty_scale=logC,scaling_factor=1,smooth_max_beta=1', \
'fairloss:penalty_scale=logC,scaling_factor=1,smooth_max_beta=10']
    """
    return [
        f"fairloss:penalty_scale={penalty_scale},scaling_factor={scale:g},smooth_max_beta={beta:g}"
        for penalty_scale in penalty_scales
        for scale in scales
        for beta in scales
    ]


FULL_FAIRLOSS_GRID = fairloss_grid()
"""The FairLoss settings of ``make study``: the 4 x 4 grid of ``scaling_factor`` and
``smooth_max_beta`` at both penalty scales, ``1/C`` and ``logC`` (32 settings)."""
CORE_FAIRLOSS_GRID = [spec for spec in FULL_FAIRLOSS_GRID if is_core_loss(spec)]
"""The part of it a study runs first, and all of ``python -m experiments study --core-grid``: the
4 x 4 grid at ``penalty_scale=1/C`` and its diagonal at ``logC`` (20 settings)."""


def epochs_for(train_size: int, batch_size: int, steps: int) -> int:
    """The epochs that give at least ``steps`` optimizer steps on ``train_size`` samples.

    Example:
        >>> epochs_for(1077, 64, 300), epochs_for(106, 64, 300)
        (18, 150)
    """
    batches_per_epoch = -(-train_size // batch_size)
    return -(-steps // batches_per_epoch)


@dataclass(frozen=True)
class StudyConfig:
    """What a study runs.

    Attributes:
        datasets (tuple[str, ...]): dataset names.
        noise (tuple[NoiseSetting, ...]): noise settings of the training labels.
        losses (tuple[str, ...]): loss specs; the first is the reference of the paired
            differences.
        seeds (tuple[int, ...]): one run per seed.
        steps (int): about how many Adam steps each run takes, whatever the dataset's size: a
            run trains for ``ceil(steps / batches_per_epoch)`` epochs (:func:`epochs_for`).
        batch_size (int), learning_rate (float): training, as ``python -m experiments compare``.
    """

    datasets: tuple[str, ...] = STUDY_DATASETS
    noise: tuple[NoiseSetting, ...] = STUDY_NOISE
    losses: tuple[str, ...] = BASELINES + tuple(FULL_FAIRLOSS_GRID)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        canonical = tuple(dict.fromkeys(str(parse_loss_spec(loss)) for loss in self.losses))
        object.__setattr__(self, "losses", canonical)
        TrainingConfig(self.steps, self.batch_size, self.learning_rate)  # checks them

    def training(self) -> dict[str, Any]:
        """The settings that every run of a resumed study must share."""
        return {key: getattr(self, key) for key in TRAINING_KEYS}

    def cells(self) -> list[StudyCell]:
        """Every run, in the order they are run: first the core of the grid (the baselines,
        the FairLoss settings at ``penalty_scale=1/C`` and those with ``scaling_factor ==
        smooth_max_beta``), then the other FairLoss settings; within each, dataset by dataset
        (the slow ones first, as listed) so that a study cut short still has whole datasets."""
        cells = [
            StudyCell(dataset, setting.noise_type, setting.rate, loss, seed)
            for dataset in self.datasets
            for setting in self.noise
            for seed in self.seeds
            for loss in self.losses
        ]
        return [cell for cell in cells if is_core_loss(cell.loss)] + [
            cell for cell in cells if not is_core_loss(cell.loss)
        ]


@dataclass(frozen=True)
class StudyCell:
    """One run of a study."""

    dataset: str
    noise_type: str
    noise: float
    loss: str
    seed: int

    @property
    def key(self) -> tuple[str, str, float, str, int]:
        return (self.dataset, self.noise_type, self.noise, self.loss, self.seed)


def record_key(record: dict[str, Any]) -> tuple[str, str, float, str, int]:
    """The :attr:`StudyCell.key` of a ``runs.jsonl`` record."""
    return (
        record["dataset"],
        record["noise_type"],
        float(record["noise"]),
        record["loss"],
        int(record["seed"]),
    )


@functools.cache
def _dataset(name: str) -> Dataset:
    return load_dataset(name)


@functools.cache
def _splits(name: str, seed: int) -> Splits:
    return split_dataset(_dataset(name), seed)


def _start_worker() -> None:
    torch.set_num_threads(1)


def run_cell(cell: StudyCell, training: dict[str, Any]) -> dict[str, Any]:
    """Train and score one run; return its ``runs.jsonl`` record.

    The record holds what ran, the split sizes, the number of noisy training labels, the test
    scores after the last epoch (``test``), the epochs the best validation NLL, PLL and PBS
    pick (``selected_epochs``), every test score at those epochs (``selected_test``) and the
    run's wall time in seconds.
    """
    from experiments.runner import RunSpec, run_experiment  # needs the demo extra

    dataset = _dataset(cell.dataset)
    splits = _splits(cell.dataset, cell.seed)
    epochs = epochs_for(len(splits.train), training["batch_size"], training["steps"])
    config = TrainingConfig(
        epochs=epochs,
        batch_size=training["batch_size"],
        learning_rate=training["learning_rate"],
    )
    result = run_experiment(
        dataset,
        splits,
        RunSpec(cell.loss, cell.noise, cell.seed, cell.noise_type),
        config,
    )
    return {
        "dataset": cell.dataset,
        "noise_type": cell.noise_type,
        "noise": cell.noise,
        "loss": cell.loss,
        "seed": cell.seed,
        "epochs": epochs,
        "num_classes": dataset.num_classes,
        "split_sizes": result.split_sizes,
        "noisy_labels": result.noisy_labels,
        "test": result.test,
        "selected_epochs": result.selected_epochs,
        "selected_test": result.selected_test,
        "seconds": result.seconds,
    }


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``runs.jsonl``; a last line cut short by an interruption is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _config_document(config: StudyConfig) -> dict[str, Any]:
    document = asdict(config)
    document["noise"] = [str(setting) for setting in config.noise]
    return document


def run_study(
    config: StudyConfig,
    out: Path,
    *,
    workers: int = 2,
    fresh: bool = False,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], float]:
    """Run every cell of ``config`` not yet in ``out/runs.jsonl``; return all its records.

    Args:
        config (StudyConfig): the grid and the training settings.
        out (Path): the study's folder (created): ``runs.jsonl``, ``study.json`` (the config)
            and ``sessions.jsonl`` (one line per call that finished: its wall time, its runs).
        workers (int, optional): worker processes; 1 runs in this process. Default: ``2``.
        fresh (bool, optional): delete earlier results first. Default: ``False``.
        progress (bool, optional): a tqdm bar on stderr. Default: ``True``.

    Returns:
        tuple[list[dict], float]: the records of the study's cells (earlier ones included), and
        the wall time of this call in seconds.

    Raises:
        ValueError: ``out`` holds a study with other training settings (and not ``fresh``).
    """
    from tqdm.auto import tqdm  # needs the demo extra

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    runs_path, config_path = out / "runs.jsonl", out / "study.json"
    if fresh:
        for name in ("runs.jsonl", "study.json", "sessions.jsonl"):
            (out / name).unlink(missing_ok=True)
    if config_path.exists():
        stored = json.loads(config_path.read_text())
        stored_training = {key: stored.get(key) for key in TRAINING_KEYS}
        if stored_training != config.training():
            raise ValueError(
                expected(
                    "out",
                    f"a folder without a study, or one trained with {config.training()} "
                    "(use --fresh or another --out to start over)",
                    f"{str(out)!r} holding a study trained with {stored_training}",
                )
            )
    document = _config_document(config)
    config_path.write_text(json.dumps(document, indent=2) + "\n")

    done = {record_key(record) for record in read_records(runs_path)}
    pending = [cell for cell in config.cells() if cell.key not in done]
    earlier_text = runs_path.read_text() if runs_path.exists() else ""
    if earlier_text and not earlier_text.endswith("\n"):
        with runs_path.open("a") as runs_file:
            runs_file.write("\n")  # after a line cut short by an interruption
    training = config.training()
    with (
        runs_path.open("a") as runs_file,
        tqdm(total=len(pending), disable=not progress, unit="run", smoothing=0.05) as bar,
    ):

        def save(record: dict[str, Any]) -> None:
            runs_file.write(json.dumps(record) + "\n")
            runs_file.flush()
            bar.update()

        if workers == 1 or len(pending) <= 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for cell in pending:
                    save(run_cell(cell, training))
            finally:
                torch.set_num_threads(threads)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker
            ) as pool:
                futures = [pool.submit(run_cell, cell, training) for cell in pending]
                try:
                    for future in as_completed(futures):
                        save(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    wall_seconds = time.perf_counter() - start
    session = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_seconds": wall_seconds,
        "runs": len(pending),
        "workers": workers,
    }
    with (out / "sessions.jsonl").open("a") as sessions_file:
        sessions_file.write(json.dumps(session) + "\n")
    wanted = {cell.key for cell in config.cells()}
    records = [record for record in read_records(runs_path) if record_key(record) in wanted]
    return _ordered(records, config), wall_seconds


def _ordered(records: Iterable[dict[str, Any]], config: StudyConfig) -> list[dict[str, Any]]:
    """The records in the config's cell order, one per cell (the last written wins)."""
    by_key = {record_key(record): record for record in records}
    return [by_key[cell.key] for cell in config.cells() if cell.key in by_key]
