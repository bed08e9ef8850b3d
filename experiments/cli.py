"""The harness's command line, run from the repository root: ``python -m experiments``.

``compare`` trains a small model per (loss, training-label noise rate, seed) and compares accuracy
and calibration on a test split, with paired differences against the first loss. ``study`` runs
the grid behind docs/evidence.md (resumable) and writes that page.

``--help`` after either lists its options; the defaults of ``compare`` are ``make demo``'s run,
those of ``study`` are ``make study``'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import fairloss
from experiments.checks import expected
from experiments.datasets import DATASET_NAMES, DEMO_EXTRA_HINT, MissingDependencyError
from experiments.losses import describe_losses, parse_loss_spec
from experiments.model import HIDDEN_SIZES
from experiments.noise import NOISE_TYPES
from experiments.study import (
    BASELINES,
    CORE_FAIRLOSS_GRID,
    FULL_FAIRLOSS_GRID,
    NoiseSetting,
    StudyConfig,
    parse_noise_setting,
)

__all__ = ["PROG", "build_parser", "main"]

PROG = "python -m experiments"
"""How the command line is started (from the repository root): its name in usage and messages."""

DEFAULT_LOSSES = ("ce", "fairloss", "fairloss-pll", "ce-label-smoothing")
DEFAULT_NOISE = (0.0, 0.3)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_EPOCHS = 100
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 1e-3
DEMO_PACKAGES = ("torchmetrics", "sklearn", "scipy", "matplotlib", "tqdm")
"""Import names of the ``demo`` extra's packages (scipy comes with scikit-learn)."""
OUTPUT_FILES = ("table.txt", "runs.csv", "runs.json", "reliability.png", "training_curves.png")
LOSS_SPEC_HELP = (
    "Each LOSS is NAME or NAME:KEY=VALUE,KEY=VALUE (unset keys keep their defaults, in "
    "brackets), e.g. focal:gamma=2 or fairloss:scaling_factor=10,smooth_max_beta=10; "
    "penalty_scale also takes 1/C or logC. Names: "
)


def _loss_spec(text: str) -> str:
    try:
        return str(parse_loss_spec(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _noise_setting(text: str) -> NoiseSetting:
    try:
        return parse_noise_setting(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _noise_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(expected("noise", "a number in [0, 1]", repr(text)))
    return rate


def _integer_at_least(minimum: int, name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                expected(name, f"an integer of at least {minimum}", repr(text))
            )
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(expected("lr", "a number larger than 0", repr(text)))
    return value


def _device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            expected("device", "a torch device such as 'cpu', 'cuda' or 'cuda:1'", repr(text))
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m experiments``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="The experiment harness of pytorch-fairloss (repository tooling)."
    )
    parser.add_argument(
        "--version", action="version", version=f"pytorch-fairloss {fairloss.__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    compare = commands.add_parser(
        "compare",
        help="train a small model per loss, noise rate and seed; compare accuracy and calibration",
        description=(
            "Train a small MLP per (loss, training-label noise rate, seed) on a stratified "
            "train/validation/test split, and print the test accuracy, NLL, ECE, Brier score, "
            "PBS and PLL (mean ± std over seeds), with the test accuracy of the checkpoints "
            "that the best validation NLL, PLL and PBS pick; then the paired differences of "
            "every other loss against the first one (mean over seeds with a 95 %% t interval, "
            "marked ~ when the interval covers 0). Symmetric noise flips exactly "
            "round(rate * n_train) training labels, each to a uniformly chosen other class; pair "
            "noise flips as many, each from class c to (c + 1) mod C; validation and test labels "
            "stay clean. Writes table.txt, runs.csv, runs.json, reliability.png and "
            "training_curves.png into --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    compare.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default="digits",
        help="digits, wine and breast-cancer ship with scikit-learn; mnist, fashion-mnist and "
        "cifar10 need torchvision and are downloaded into --data-dir",
    )
    compare.add_argument(
        "--losses",
        nargs="+",
        type=_loss_spec,
        default=list(DEFAULT_LOSSES),
        metavar="LOSS",
        help="losses to compare; the first is the reference of the paired differences. "
        + LOSS_SPEC_HELP
        + describe_losses(),
    )
    compare.add_argument(
        "--noise",
        nargs="+",
        type=_noise_rate,
        default=list(DEFAULT_NOISE),
        metavar="RATE",
        help="label-noise rates for the training labels, each in [0, 1]",
    )
    compare.add_argument(
        "--noise-type",
        choices=NOISE_TYPES,
        default="symmetric",
        help="symmetric: a flipped label goes to a uniformly chosen other class; pair: class c "
        "goes to (c + 1) mod C",
    )
    compare.add_argument(
        "--seeds",
        nargs="+",
        type=_integer_at_least(0, "seeds"),
        default=list(DEFAULT_SEEDS),
        metavar="SEED",
        help="one run per seed; a seed fixes the split, the noise, the initial weights and the "
        "batch order",
    )
    compare.add_argument("--epochs", type=_integer_at_least(1, "epochs"), default=DEFAULT_EPOCHS)
    compare.add_argument(
        "--batch-size", type=_integer_at_least(1, "batch-size"), default=DEFAULT_BATCH_SIZE
    )
    compare.add_argument(
        "--lr", type=_positive_float, default=DEFAULT_LEARNING_RATE, help="Adam's learning rate"
    )
    compare.add_argument("--device", type=_device, default="cpu", help="torch device to train on")
    compare.add_argument(
        "--threads",
        type=_integer_at_least(1, "threads"),
        default=1,
        help="torch CPU threads (torch.set_num_threads); the small default model trains "
        "fastest on one",
    )
    compare.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for the table, CSV, JSON, plots"
    )
    compare.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where torchvision datasets are downloaded to and read from",
    )
    compare.add_argument("--quiet", action="store_true", help="no progress bar, no file list")
    _add_study_parser(commands)
    return parser


def _add_study_parser(commands: Any) -> None:
    defaults = StudyConfig()
    study = commands.add_parser(
        "study",
        help="run the grid behind docs/evidence.md (resumable) and write that page",
        description=(
            "Train one small MLP per (dataset, noise setting, loss, seed), as the compare command "
            "does, on worker processes with one torch thread each. Each run is appended to "
            "OUT/runs.jsonl when it ends; runs already there are skipped, so an interrupted "
            "study resumes (--fresh starts over). Then writes the evidence page (tables and "
            "figures: accuracy, NLL, ECE, PBS, PLL, paired differences against the first loss, "
            "and checkpoint selection by validation NLL, PLL and PBS). The hand-written reading "
            "between the page's <!-- reading:start --> and <!-- reading:end --> markers is kept."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    study.add_argument("--datasets", nargs="+", default=list(defaults.datasets), metavar="NAME")
    study.add_argument(
        "--noise",
        nargs="+",
        type=_noise_setting,
        default=[str(setting) for setting in defaults.noise],  # strings: shown by --help
        metavar="NOISE",
        help=f"noise settings: RATE (symmetric) or TYPE:RATE, TYPE one of {NOISE_TYPES}",
    )
    study.add_argument(
        "--losses",
        nargs="+",
        type=_loss_spec,
        default=None,
        metavar="LOSS",
        help="losses; the first is the reference. Default: the baselines ce, "
        "ce-label-smoothing, focal:gamma=2, poly1:epsilon=1, then FairLoss with scaling_factor "
        "and smooth_max_beta each in {1, 10, 100, 1000}, at penalty_scale 1/C and logC. "
        + LOSS_SPEC_HELP
        + describe_losses(),
    )
    study.add_argument(
        "--core-grid",
        action="store_true",
        help="with the default losses, a third fewer runs: at penalty_scale logC only the "
        "settings with scaling_factor = smooth_max_beta (a full study runs these first)",
    )
    study.add_argument(
        "--seeds",
        nargs="+",
        type=_integer_at_least(0, "seeds"),
        default=list(defaults.seeds),
        metavar="SEED",
    )
    study.add_argument(
        "--steps",
        type=_integer_at_least(1, "steps"),
        default=defaults.steps,
        help="about how many Adam steps per run: each dataset trains for ceil(steps / "
        "batches per epoch) epochs",
    )
    study.add_argument(
        "--batch-size", type=_integer_at_least(1, "batch-size"), default=defaults.batch_size
    )
    study.add_argument(
        "--lr", type=_positive_float, default=defaults.learning_rate, help="Adam's learning rate"
    )
    study.add_argument(
        "--workers",
        type=_integer_at_least(1, "workers"),
        default=2,
        help="worker processes (one torch thread each)",
    )
    study.add_argument(
        "--out", type=Path, default=Path("results/study"), help="folder of runs.jsonl"
    )
    study.add_argument(
        "--page", type=Path, default=Path("docs/evidence.md"), help="the evidence page to write"
    )
    study.add_argument(
        "--figures",
        type=Path,
        default=Path("docs/evidence"),
        help="folder of the page's figures (the page links them relative to itself)",
    )
    study.add_argument("--fresh", action="store_true", help="delete OUT's earlier runs first")
    study.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the harness's command line with ``argv`` (``sys.argv[1:]`` when ``None``).

    Returns:
        int: the exit status: 0 on success, 1 when an optional dependency is missing.
        Argument errors exit with status 2 (argparse's ``SystemExit``).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "study":
        try:
            return _study(args, parser, command=" ".join([PROG, *argv]))
        except MissingDependencyError as error:
            print(f"{PROG} study: error: {error}", file=sys.stderr)
            return 1
    device: torch.device = args.device
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # torch asserts on a CPU-only build
        parser.error(expected("device", "a device this machine has", f"{str(device)!r} ({error})"))
    try:
        return _compare(args, command=" ".join([PROG, *argv]))
    except MissingDependencyError as error:
        print(f"{PROG} compare: error: {error}", file=sys.stderr)
        return 1


def _import_experiment() -> Any:
    """Import the experiment's modules, which need the ``demo`` extra's packages."""
    try:
        from experiments import datasets, plotting, reporting, runner, training
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in DEMO_PACKAGES:
            raise
        raise MissingDependencyError(
            f"{PROG} compare needs {package}, which is not installed. "
            f"Install it with: {DEMO_EXTRA_HINT}"
        ) from error
    return datasets, plotting, reporting, runner, training


def _compare(args: argparse.Namespace, command: str) -> int:
    datasets, plotting, reporting, runner, training = _import_experiment()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    losses = list(dict.fromkeys(args.losses))
    noise_rates = list(dict.fromkeys(args.noise))
    seeds = list(dict.fromkeys(args.seeds))
    config = training.TrainingConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, device=args.device
    )
    dataset = datasets.load_dataset(args.dataset, args.data_dir)
    results = runner.run_grid(
        dataset,
        losses,
        noise_rates,
        seeds,
        config,
        progress=not args.quiet,
        noise_type=args.noise_type,
    )

    sizes = results[0].split_sizes
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    model = "MLP " + "-".join(map(str, HIDDEN_SIZES))
    title = (
        f"{PROG} compare on {dataset.name}: train/validation/test {sizes['train']}/"
        f"{sizes['validation']}/{sizes['test']}, {dataset.num_classes} classes; {model}, "
        f"Adam lr {args.lr:g}, batch {args.batch_size}, {epochs}.\n"
        f"Test scores after the last epoch, mean ± std over seeds {' '.join(map(str, seeds))}; "
        f"{args.noise_type} label noise on the training split only."
    )
    table = reporting.format_table(reporting.summarize(results), title)
    if len(losses) > 1:
        comparisons = reporting.paired_differences(results, losses[0])
        table += "\n\n" + reporting.format_paired_table(comparisons)
    print(table)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_config = {
        "command": command,
        "dataset": dataset.name,
        "num_classes": dataset.num_classes,
        "losses": losses,
        "noise": noise_rates,
        "noise_type": args.noise_type,
        "seeds": seeds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "optimizer": "Adam",
        "model": f"MLP, hidden sizes {HIDDEN_SIZES}, ReLU",
        "device": str(args.device),
        "threads": args.threads,
        "fairloss_version": fairloss.__version__,
        "torch_version": torch.__version__,
        "seconds_to_train_and_score": time.perf_counter() - start,
    }
    (out / "table.txt").write_text(table + "\n")
    reporting.write_runs_csv(results, out / "runs.csv")
    reporting.write_runs_json(results, run_config, out / "runs.json")
    plotting.plot_reliability(results, out / "reliability.png")
    plotting.plot_training_curves(results, out / "training_curves.png")
    if not args.quiet:
        files = ", ".join(OUTPUT_FILES)
        print(f"Wrote {files} to {out}/ in {time.perf_counter() - start:.1f} s.", file=sys.stderr)
    return 0


def _study(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    try:
        from experiments import evidence, study
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in DEMO_PACKAGES:
            raise
        raise MissingDependencyError(
            f"{PROG} study needs {package}, which is not installed. "
            f"Install it with: {DEMO_EXTRA_HINT}"
        ) from error
    if args.losses is not None:
        losses = args.losses
    else:
        grid = CORE_FAIRLOSS_GRID if args.core_grid else FULL_FAIRLOSS_GRID
        losses = [*BASELINES, *grid]
    config = StudyConfig(
        datasets=tuple(dict.fromkeys(args.datasets)),
        noise=tuple(
            dict.fromkeys(
                setting if isinstance(setting, NoiseSetting) else parse_noise_setting(setting)
                for setting in args.noise
            )
        ),
        losses=tuple(losses),
        seeds=tuple(dict.fromkeys(args.seeds)),
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
    )
    unknown = [name for name in config.datasets if name not in DATASET_NAMES]
    if unknown:
        parser.error(expected("datasets", f"names among {DATASET_NAMES}", repr(unknown)))
    try:
        records, wall_seconds = study.run_study(
            config, args.out, workers=args.workers, fresh=args.fresh, progress=not args.quiet
        )
    except ValueError as error:
        parser.error(str(error))
    evidence.write_evidence(records, config, args.out, args.page, args.figures, command=command)
    if not args.quiet:
        print(
            f"{len(records)} runs in {args.out}/runs.jsonl ({wall_seconds:.0f} s this time); "
            f"wrote {args.page} and its figures in {args.figures}/.",
            file=sys.stderr,
        )
    return 0
