"""The results of ``fairloss compare``: the summary table, and every run as CSV and JSON."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairloss.experiment.evaluation import METRIC_NAMES
from fairloss.experiment.runner import RunResult
from fairloss.experiment.training import SELECTION_METRICS

__all__ = ["Summary", "format_table", "summarize", "write_runs_csv", "write_runs_json"]

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
    """The runs of one (loss, noise rate) pair, over seeds: per value, the mean and the sample
    standard deviation (0 for a single seed)."""

    loss: str
    noise: float
    seeds: tuple[int, ...]
    test: dict[str, tuple[float, float]]
    selected_test_accuracy: dict[str, tuple[float, float]]


def _mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[RunResult]) -> list[Summary]:
    """Group runs by (loss, noise rate), in the order they first appear, and average over seeds.

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
    groups: dict[tuple[str, float], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.loss, result.noise), []).append(result)
    return [
        Summary(
            loss=loss,
            noise=noise,
            seeds=tuple(run.seed for run in runs),
            test={name: _mean_and_std([run.test[name] for run in runs]) for name in runs[0].test},
            selected_test_accuracy={
                name: _mean_and_std([run.selected_test_accuracy[name] for run in runs])
                for name in runs[0].selected_test_accuracy
            },
        )
        for (loss, noise), runs in groups.items()
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
        [summary.loss, f"{summary.noise:g}"]
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
    return record


def write_runs_csv(results: Sequence[RunResult], path: Path) -> None:
    """Write one CSV row per run: what ran, the test scores and the selected checkpoints."""
    records = [_run_record(result) for result in results]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]) if records else [])
        writer.writeheader()
        writer.writerows(records)


def write_runs_json(results: Sequence[RunResult], config: dict[str, Any], path: Path) -> None:
    """Write the configuration, every run (with its per-epoch history) and the summaries.

    The file holds ``{"config": ..., "runs": [...], "summary": [...]}``; each run has the CSV's
    fields plus ``history``; each summary has ``loss``, ``noise``, ``seeds`` and, per value,
    ``[mean, std]``.
    """
    document = {
        "config": config,
        "runs": [_run_record(result) | {"history": result.history} for result in results],
        "summary": [
            {
                "loss": summary.loss,
                "noise": summary.noise,
                "seeds": list(summary.seeds),
                "test": {name: list(value) for name, value in summary.test.items()},
                "test_accuracy_at_best_validation": {
                    name: list(value) for name, value in summary.selected_test_accuracy.items()
                },
            }
            for summary in summarize(results)
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
