"""The results of ``python -m experiments compare``: the summary table, each run as CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.evaluation import METRIC_NAMES
from experiments.paired import PairedDifference, paired_difference
from experiments.runner import RunResult
from experiments.training import SELECTION_METRICS

__all__ = [
    "PairedComparison",
    "Summary",
    "format_difference",
    "format_paired_table",
    "format_table",
    "noise_label",
    "paired_differences",
    "summarize",
    "write_runs_csv",
    "write_runs_json",
]

_METRIC_HEADERS = {
    "accuracy": "acc %",
    "nll": "NLL",
    "ece": "ECE",
    "brier": "Brier",
    "pbs": "PBS",
    "pll": "PLL",
}
_SELECTION_HEADERS = {name: f"acc % @val {_METRIC_HEADERS[name]}" for name in SELECTION_METRICS}


@dataclass(frozen=True)
class Summary:
    """The runs of one (loss, noise) pair, over seeds: per value, the mean and the sample
    standard deviation (0 for a single seed)."""

    loss: str
    noise: float
    seeds: tuple[int, ...]
    test: dict[str, tuple[float, float]]
    selected_test_accuracy: dict[str, tuple[float, float]]
    noise_type: str = "symmetric"


def noise_label(noise: float, noise_type: str) -> str:
    """The noise column's text: the rate, followed by ``pair`` for pair-flip noise.

    Example:
        >>> noise_label(0.3, "symmetric"), noise_label(0.2, "pair")
        ('0.3', '0.2 pair')
    """
    return f"{noise:g}" if noise_type == "symmetric" else f"{noise:g} {noise_type}"


def _mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[RunResult]) -> list[Summary]:
    """Group runs by (loss, noise type and rate), in the order they first appear, and average
    over seeds.

    Example:
        >>> import torch
        >>> def run(seed, accuracy):
        ...     return RunResult("digits", "ce", 0.0, seed, {}, 0, {"accuracy": accuracy}, {},
        ...                      {"nll": accuracy}, [], 0.0, torch.empty(0), torch.empty(0))
        >>> summary = summarize([run(0, 0.9), run(1, 0.8)])[0]
        >>> mean, std = summary.test["accuracy"]
        >>> summary.loss, summary.seeds, round(mean, 4), round(std, 4)
        ('ce', (0, 1), 0.85, 0.0707)
    """
    groups: dict[tuple[str, str, float], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.loss, result.noise_type, result.noise), []).append(result)
    return [
        Summary(
            loss=loss,
            noise=noise,
            noise_type=noise_type,
            seeds=tuple(run.seed for run in runs),
            test={name: _mean_and_std([run.test[name] for run in runs]) for name in runs[0].test},
            selected_test_accuracy={
                name: _mean_and_std([run.selected_test_accuracy[name] for run in runs])
                for name in runs[0].selected_test_accuracy
            },
        )
        for (loss, noise_type, noise), runs in groups.items()
    ]


def _format_value(mean_and_std: tuple[float, float], percent: bool, with_std: bool) -> str:
    mean, std = mean_and_std
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f}" if with_std else text


def format_table(summaries: Sequence[Summary], title: str) -> str:
    """Format summaries as an aligned plain-text table, with a title line and a legend.

    Columns: the loss, the noise rate, the test scores of the last model (accuracy in percent;
    NLL, ECE, Brier, PBS and PLL, lower is better), then the test accuracy of the checkpoints
    that the best validation NLL, PLL and PBS pick. Cells read "mean ± std" over seeds (just
    the mean for one seed).

    Example:
        >>> summary = Summary("ce", 0.3, (0,), {"accuracy": (0.9, 0.0), "nll": (0.25, 0.0)},
        ...                   {"nll": (0.95, 0.0)})
        >>> print(format_table([summary], "demo"))  # doctest: +NORMALIZE_WHITESPACE
        demo
        loss  noise  acc %  NLL    acc % @val NLL
        ----  -----  -----  -----  --------------
        ce    0.3    90.0   0.250  95.0
        <BLANKLINE>
        acc % @val X: test accuracy of the epoch with the lowest validation X (NLL, PLL or
        PBS). Lower is better for NLL, ECE, Brier, PBS and PLL.
    """
    with_std = any(len(summary.seeds) > 1 for summary in summaries)
    metric_names = [name for name in METRIC_NAMES if summaries and name in summaries[0].test]
    selection_names = [
        name
        for name in SELECTION_METRICS
        if summaries and name in summaries[0].selected_test_accuracy
    ]
    header = (
        ["loss", "noise"]
        + [_METRIC_HEADERS[name] for name in metric_names]
        + [_SELECTION_HEADERS[name] for name in selection_names]
    )
    rows = [
        [summary.loss, noise_label(summary.noise, summary.noise_type)]
        + [_format_value(summary.test[name], name == "accuracy", with_std) for name in metric_names]
        + [
            _format_value(summary.selected_test_accuracy[name], True, with_std)
            for name in selection_names
        ]
        for summary in summaries
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    legend = (
        "acc % @val X: test accuracy of the epoch with the lowest validation X (NLL, PLL or\n"
        "PBS). Lower is better for NLL, ECE, Brier, PBS and PLL."
    )
    table = [title, line(header), line(["-" * width for width in widths])]
    table += [line(row) for row in rows]
    return "\n".join([*table, "", legend])


@dataclass(frozen=True)
class PairedComparison:
    """One loss against the reference loss at one noise setting, paired by seed.

    Attributes:
        loss (str), reference (str): the compared loss and the reference (both spec texts).
        noise (float), noise_type (str): the noise setting.
        seeds (tuple[int, ...]): the seeds both ran with.
        test (dict[str, PairedDifference]): per test metric, ``loss - reference``.
    """

    loss: str
    reference: str
    noise: float
    noise_type: str
    seeds: tuple[int, ...]
    test: dict[str, PairedDifference]


def paired_differences(
    results: Sequence[RunResult], reference: str, confidence: float = 0.95
) -> list[PairedComparison]:
    """Compare every other loss with ``reference``, per noise setting, paired by seed.

    Only seeds that both losses ran are used. Losses and noise settings keep the order in which
    they first appear.

    Example:
        >>> import torch
        >>> def run(loss, seed, accuracy):
        ...     return RunResult("wine", loss, 0.0, seed, {}, 0, {"accuracy": accuracy}, {}, {},
        ...                      [], 0.0, torch.empty(0), torch.empty(0))
        >>> runs = [run("ce", 0, 0.90), run("focal", 0, 0.92), run("ce", 1, 0.80),
        ...         run("focal", 1, 0.83)]
        >>> comparison = paired_differences(runs, "ce")[0]
        >>> comparison.loss, comparison.seeds, round(comparison.test["accuracy"].mean, 4)
        ('focal', (0, 1), 0.025)
    """
    by_key = {(r.loss, r.noise_type, r.noise, r.seed): r for r in results}
    settings = list(dict.fromkeys((r.noise_type, r.noise) for r in results))
    losses = [loss for loss in dict.fromkeys(r.loss for r in results) if loss != reference]
    comparisons = []
    for noise_type, noise in settings:
        for loss in losses:
            seeds = tuple(
                r.seed
                for r in results
                if (r.loss, r.noise_type, r.noise) == (loss, noise_type, noise)
                and (reference, noise_type, noise, r.seed) in by_key
            )
            if not seeds:
                continue
            runs = [by_key[(loss, noise_type, noise, seed)] for seed in seeds]
            bases = [by_key[(reference, noise_type, noise, seed)] for seed in seeds]
            test = {
                name: paired_difference(
                    [run.test[name] for run in runs],
                    [base.test[name] for base in bases],
                    confidence,
                )
                for name in runs[0].test
            }
            comparisons.append(PairedComparison(loss, reference, noise, noise_type, seeds, test))
    return comparisons


def format_difference(difference: PairedDifference, percent: bool = False) -> str:
    """``+mean ± half-width`` (the interval's half width), with ``~`` when within noise.

    Example:
        >>> format_difference(PairedDifference(0.0123, 0.002, 0.0226, 5), percent=True)
        '+1.2 ± 1.0'
        >>> format_difference(PairedDifference(-0.01, -0.03, 0.01, 5))
        '-0.010 ± 0.020 ~'
        >>> format_difference(PairedDifference(-2e-5, -3e-5, -1e-5, 2))
        '-2.0e-05 ± 1.0e-05'
    """
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    style = f".{digits}f"
    if difference.mean != 0 and round(difference.mean * scale, digits) == 0:
        style = ".1e"  # too small for fixed digits: "+0.000 ± 0.000" would hide it
    text = f"{difference.mean * scale:+{style}}"
    if math.isfinite(difference.half_width):
        text += f" ± {difference.half_width * scale:{style}}"
    return text + (" ~" if difference.within_noise else "")


def format_paired_table(comparisons: Sequence[PairedComparison]) -> str:
    """The paired differences as an aligned plain-text table with a legend.

    Example:
        >>> difference = PairedDifference(0.02, 0.01, 0.03, 3)
        >>> comparison = PairedComparison("focal", "ce", 0.0, "symmetric", (0, 1, 2),
        ...                               {"accuracy": difference})
        >>> print(format_paired_table([comparison]))  # doctest: +NORMALIZE_WHITESPACE
        Paired differences against ce (same seeds): mean over seeds ± half width of the 95 %
        t interval.
        loss   noise  seeds  acc %
        -----  -----  -----  ----------
        focal  0      3      +2.0 ± 1.0
        <BLANKLINE>
        ~: within noise (the interval covers 0). Accuracy in percentage points, higher is
        better; lower is better for the others.
    """
    if not comparisons:
        return "No paired differences: no other loss shares a seed with the reference."
    reference = comparisons[0].reference
    level = round(100 * next(iter(comparisons[0].test.values())).confidence)
    metric_names = [name for name in METRIC_NAMES if name in comparisons[0].test]
    header = ["loss", "noise", "seeds"] + [_METRIC_HEADERS[name] for name in metric_names]
    rows = [
        [
            comparison.loss,
            noise_label(comparison.noise, comparison.noise_type),
            str(len(comparison.seeds)),
        ]
        + [
            format_difference(comparison.test[name], percent=name == "accuracy")
            for name in metric_names
        ]
        for comparison in comparisons
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    title = (
        f"Paired differences against {reference} (same seeds): mean over seeds ± half width of "
        f"the {level} %\nt interval."
    )
    legend = (
        "~: within noise (the interval covers 0). Accuracy in percentage points, higher is\n"
        "better; lower is better for the others."
    )
    table = [title, line(header), line(["-" * width for width in widths])]
    table += [line(row) for row in rows]
    return "\n".join([*table, "", legend])


def _run_record(result: RunResult) -> dict[str, Any]:
    """The flat, serializable fields of a run (everything but the history and the tensors)."""
    record: dict[str, Any] = {
        "dataset": result.dataset,
        "loss": result.loss,
        "noise": result.noise,
        "seed": result.seed,
    }
    record |= {f"{split}_size": size for split, size in result.split_sizes.items()}
    record["noisy_labels"] = result.noisy_labels
    record |= {f"test_{name}": value for name, value in result.test.items()}
    for name in SELECTION_METRICS:
        record[f"selected_epoch_by_validation_{name}"] = result.selected_epochs[name]
        record[f"test_accuracy_at_best_validation_{name}"] = result.selected_test_accuracy[name]
    record["seconds"] = result.seconds
    record["noise_type"] = result.noise_type  # last: the older columns keep their places
    return record


def write_runs_csv(results: Sequence[RunResult], path: Path) -> None:
    """Write one CSV row per run: what ran, the test scores and the selected checkpoints."""
    records = [_run_record(result) for result in results]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]) if records else [])
        writer.writeheader()
        writer.writerows(records)


def write_runs_json(results: Sequence[RunResult], config: dict[str, Any], path: Path) -> None:
    """Write the configuration, every run (with its per-epoch history), the summaries and the
    paired differences against the first loss.

    The file holds ``{"config": ..., "runs": [...], "summary": [...], "paired": [...]}``; each
    run has the CSV's fields plus ``history`` and ``selected_test`` (every test score of each
    selected checkpoint); each summary has ``loss``, ``noise_type``, ``noise``, ``seeds`` and,
    per value, ``[mean, std]``; each paired entry has ``loss``, ``reference``, ``noise_type``,
    ``noise``, ``seeds`` and, per test metric, ``{"mean", "low", "high", "within_noise"}``.
    """
    reference = results[0].loss if results else ""
    document = {
        "config": config,
        "runs": [
            _run_record(result) | {"selected_test": result.selected_test, "history": result.history}
            for result in results
        ],
        "summary": [
            {
                "loss": summary.loss,
                "noise_type": summary.noise_type,
                "noise": summary.noise,
                "seeds": list(summary.seeds),
                "test": {name: list(value) for name, value in summary.test.items()},
                "test_accuracy_at_best_validation": {
                    name: list(value) for name, value in summary.selected_test_accuracy.items()
                },
            }
            for summary in summarize(results)
        ],
        "paired": [
            {
                "loss": comparison.loss,
                "reference": comparison.reference,
                "noise_type": comparison.noise_type,
                "noise": comparison.noise,
                "seeds": list(comparison.seeds),
                "test": {
                    name: {
                        "mean": difference.mean,
                        "low": _json_number(difference.low),
                        "high": _json_number(difference.high),
                        "within_noise": difference.within_noise,
                    }
                    for name, difference in comparison.test.items()
                },
            }
            for comparison in paired_differences(results, reference)
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _json_number(value: float) -> float | None:
    """NaN as ``null``: JSON has no NaN."""
    return value if math.isfinite(value) else None
