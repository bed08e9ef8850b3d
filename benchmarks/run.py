"""``make bench``: time and peak memory of FairLoss against cross-entropy, written to ``docs/``.

Usage::

    python -m benchmarks.run                       # the full grid, 2 threads, about an hour
                                                   # (mostly the linear head's memory runs)
    python -m benchmarks.run --quick --no-compile  # a tiny grid in seconds

It writes ``benchmarks.md``, ``benchmarks.csv`` and ``benchmark_ratio.png`` to ``--out-dir``
(``docs/`` by default), then runs ``benchmarks.linear`` when that module exists, and
``benchmarks.transformers_step`` (not with ``--quick``; ``--no-transformers`` skips it).

``tests/repository/test_benchmarks_smoke.py`` runs this module in a subprocess with ``--quick``
and reads what it writes. Two options serve it: ``--linear-args`` hands more options to
``benchmarks.linear`` (there: one method, memory only, so one short process), and ``--fail LOSS``
makes a loss, or ``linear`` (the linear benchmark), raise in place of running, to show that a
failure is recorded in the outputs instead of ending the run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from tests.old_release import find_old_release

from benchmarks import report
from benchmarks.cases import Case, default_grid, quick_grid
from benchmarks.libraries import LIBRARIES
from benchmarks.suite import (
    InjectedFailure,
    Settings,
    describe_environment,
    keep_freed_heap_memory,
    run_suite,
)

__all__ = ["check_grid", "main", "parse_args"]

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
QUICK_MIN_RUN_TIME = 0.05
#: ``--fail linear`` makes the linear benchmark raise.
LINEAR = "linear"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark fairloss.fair_loss against F.cross_entropy (and fairloss 0.1.1).",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid, for the smoke test")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile losses")
    parser.add_argument(
        "--out-dir", type=Path, default=REPOSITORY_ROOT / "docs", help="default: docs/"
    )
    parser.add_argument("--markdown", type=Path, help="default: <out-dir>/benchmarks.md")
    parser.add_argument("--csv", type=Path, help="default: <out-dir>/benchmarks.csv")
    parser.add_argument("--plot", type=Path, help="default: <out-dir>/benchmark_ratio.png")
    parser.add_argument(
        "--old-path",
        help="pytorch-fairloss 0.1.1: its wheel, a folder holding it, or its unpacked package "
        "folder (default: $FAIRLOSS_OLD_PATH, else .venv/old-release, where `make setup` puts "
        "the wheel, else /tmp/oldfl/x/fairloss)",
    )
    parser.add_argument("--no-old", action="store_true", help="do not measure 0.1.1")
    parser.add_argument(
        "--min-run-time",
        type=float,
        help="seconds per Timer.blocked_autorange (default: 1.0, or 0.05 with --quick)",
    )
    parser.add_argument("--no-linear", action="store_true", help="skip benchmarks.linear")
    parser.add_argument(
        "--no-transformers",
        action="store_true",
        help="skip benchmarks.transformers_step (it runs with the full grid only, not --quick)",
    )
    parser.add_argument(
        "--linear-args",
        default="",
        metavar="OPTIONS",
        help="more options for benchmarks.linear, in one string, after those this command "
        "passes on (e.g. --linear-args='--vocab 32000 --no-accuracy')",
    )
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        choices=(*LIBRARIES, LINEAR),
        metavar="LOSS",
        help="make LOSS raise in place of running, to check that a failure is recorded, not "
        f"raised (repeatable): one of {', '.join(LIBRARIES)}, or {LINEAR} (benchmarks.linear)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"Expected argument `--threads` to be at least 1, but got {args.threads}.")
    if args.min_run_time is None:
        args.min_run_time = QUICK_MIN_RUN_TIME if args.quick else 1.0
    if args.min_run_time <= 0:
        parser.error(
            f"Expected argument `--min-run-time` to be positive, but got {args.min_run_time}."
        )
    args.markdown = args.markdown or args.out_dir / "benchmarks.md"
    args.csv = args.csv or args.out_dir / "benchmarks.csv"
    args.plot = args.plot or args.out_dir / "benchmark_ratio.png"
    try:
        args.linear_args = shlex.split(args.linear_args)
    except ValueError as error:
        parser.error(f"Expected argument `--linear-args` to split as a shell line: {error}.")
    return args


def _linear_section(args: argparse.Namespace) -> tuple[Optional[str], bool]:
    """Run ``benchmarks.linear.main`` if it exists: (its Markdown section, whether it crashed)."""
    if args.no_linear or importlib.util.find_spec("benchmarks.linear") is None:
        return None, False
    linear_argv = ["--threads", str(args.threads), "--out-dir", str(args.out_dir)]
    linear_argv += ["--min-run-time", f"{args.min_run_time:g}"]
    linear_argv += ["--quick"] * args.quick + ["--no-compile"] * args.no_compile
    linear_argv += args.linear_args
    try:
        if LINEAR in args.fail:
            raise InjectedFailure(f"benchmarks.linear fails on purpose (--fail {LINEAR})")
        linear = importlib.import_module("benchmarks.linear")
        section = linear.main(linear_argv)
    except Exception:  # its failure must not lose the results above
        traceback.print_exc()
        return "## Linear loss\n\nbenchmarks.linear failed; see the `make bench` output.\n", True
    return (section if isinstance(section, str) else None), False


def _transformers_section(args: argparse.Namespace) -> tuple[Optional[str], bool]:
    """Run ``benchmarks.transformers_step.main``, not with --quick: (its section, crashed?)."""
    if args.quick or args.no_transformers:
        return None, False
    argv = ["--threads", str(args.threads), "--out-dir", str(args.out_dir)]
    try:
        section = importlib.import_module("benchmarks.transformers_step").main(argv)
    except Exception:  # its failure must not lose the results above
        traceback.print_exc()
        return "## Transformers training step\n\nbenchmarks.transformers_step failed.\n", True
    return section, False


def check_grid(grid: Sequence[Case], *, goals: bool) -> None:
    """Refuse a grid before measuring it: repeated case names, or a goal's case missing.

    Repeated names would merge rows of the report; with ``goals``, a goal's case
    missing from the grid would drop the goal's line from the report without a word.
    """
    names = [case.name for case in grid]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"Expected the grid's case names to be unique, but {repeated} repeat.")
    missing = sorted({goal.case for goal in report.GOALS} - set(names)) if goals else []
    if missing:
        raise ValueError(f"Expected the grid to hold every goal's case, but {missing} are missing.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    grid = quick_grid() if args.quick else default_grid()
    check_grid(grid, goals=not args.quick)
    old_path = None if args.no_old else find_old_release(args.old_path)
    if old_path is None and not args.no_old:
        print("[bench] pytorch-fairloss 0.1.1 not found: its rows are skipped", file=sys.stderr)
    settings = Settings(
        threads=args.threads,
        min_run_time=args.min_run_time,
        compile=not args.no_compile,
        old_path=old_path,
        fail=frozenset(args.fail) - {LINEAR},
    )
    command = shlex.join(
        ["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
    )
    environment = describe_environment(settings, command, heap=keep_freed_heap_memory())
    results = run_suite(grid, settings)

    report.write_csv(results, args.csv)
    plot = None
    if report.write_plot(results, args.plot):
        plot = Path(os.path.relpath(args.plot, args.markdown.parent)).as_posix()
    markdown = report.render_markdown(results, environment, settings, plot)
    section, crashed = _linear_section(args)
    if section:
        markdown = markdown.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"
    transformers_section, transformers_crashed = _transformers_section(args)
    if transformers_section:
        markdown = markdown.rstrip("\n") + "\n\n" + transformers_section.strip("\n") + "\n"
    crashed = crashed or transformers_crashed
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown, encoding="utf-8")
    for path in (args.markdown, args.csv, args.plot if plot else None):
        if path is not None:
            print(f"[bench] wrote {path}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
