"""The evidence page that ``python -m experiments study`` writes: tables and figures from
``runs.jsonl``.

The page has a generated part (everything but the reading) and a hand-written reading between
the markers :data:`READING_START` and :data:`READING_END`; regenerating the page keeps the
reading as it is. Every difference is paired by seed against the study's first loss (the
reference, ``ce``), as :mod:`~experiments.paired` computes it.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from matplotlib.figure import Figure

import fairloss
from experiments.losses import parse_loss_spec
from experiments.model import HIDDEN_SIZES
from experiments.paired import PairedDifference, paired_difference
from experiments.study import NoiseSetting, StudyConfig, record_key

__all__ = ["READING_END", "READING_START", "StudyResults", "loss_label", "write_evidence"]

READING_START = "<!-- reading:start -->"
READING_END = "<!-- reading:end -->"
READING_PLACEHOLDER = "_No reading yet: it is written by hand after looking at the numbers below._"

METRICS = ("accuracy", "nll", "ece", "pbs", "pll")
"""The page's metrics, in column order."""
METRIC_TITLES = {
    "accuracy": "accuracy %",
    "nll": "NLL",
    "ece": "ECE",
    "pbs": "PBS",
    "pll": "PLL",
    "brier": "Brier",
}
SELECTIONS = ("nll", "pll", "pbs")
FAIRLOSS_NAMES = ("fairloss", "fairloss-pll")
_GREEK = {"scaling_factor": "s", "smooth_max_beta": "β", "penalty_scale": "λ"}


def loss_label(spec_text: str) -> str:
    """A short, readable name for a loss spec.

    Example:
        >>> loss_label("fairloss:penalty_scale=logC,scaling_factor=10,smooth_max_beta=100")
        'FairLoss λ=log C, s=10, β=100'
        >>> loss_label("focal:gamma=2"), loss_label("ce")
        ('focal γ=2', 'CE')
    """
    spec = parse_loss_spec(spec_text)
    if spec.name in FAIRLOSS_NAMES:
        options = spec.resolved_options()
        scale = str(options["penalty_scale"]).replace("logC", "log C")
        text = (
            f"FairLoss λ={scale}, s={float(options['scaling_factor']):g}, "
            f"β={float(options['smooth_max_beta']):g}"
        )
        if float(options["label_smoothing"]) > 0:
            text += f" + label smoothing {float(options['label_smoothing']):g}"
        return text
    if spec.name == "ce":
        smoothing = float(spec.option("label_smoothing"))
        return "CE" if smoothing == 0 else f"CE + label smoothing {smoothing:g}"
    if spec.name == "ce-label-smoothing":
        return f"CE + label smoothing {float(spec.option('label_smoothing')):g}"
    if spec.name == "focal":
        return f"focal γ={float(spec.option('gamma')):g}"
    if spec.name == "poly1":
        return f"Poly-1 ε={float(spec.option('epsilon')):g}"
    return spec_text


def noise_title(setting: NoiseSetting) -> str:
    """``"no noise"``, ``"symmetric 0.2"`` or ``"pair 0.2"``."""
    if setting.rate == 0:
        return "no noise"
    return f"{setting.noise_type} {setting.rate:g}"


def _fairloss_options(spec_text: str) -> Optional[dict[str, Any]]:
    spec = parse_loss_spec(spec_text)
    return spec.resolved_options() if spec.name in FAIRLOSS_NAMES else None


def is_headline(spec_text: str) -> bool:
    """Baselines, and FairLoss settings with ``scaling_factor == smooth_max_beta``."""
    options = _fairloss_options(spec_text)
    return options is None or float(options["scaling_factor"]) == float(options["smooth_max_beta"])


@dataclass
class StudyResults:
    """The records of a study, indexed, with paired differences against the reference."""

    config: StudyConfig
    records: list[dict[str, Any]]

    def __post_init__(self) -> None:
        self.by_key = {record_key(record): record for record in self.records}
        self.reference = self.config.losses[0]

    def runs(self, dataset: str, setting: NoiseSetting, loss: str) -> list[dict[str, Any]]:
        """The runs of one cell, in seed order (missing seeds left out)."""
        keys = [(dataset, setting.noise_type, setting.rate, loss, s) for s in self.config.seeds]
        return [self.by_key[key] for key in keys if key in self.by_key]

    def values(
        self,
        dataset: str,
        setting: NoiseSetting,
        loss: str,
        metric: str,
        selection: Optional[str] = None,
    ) -> dict[int, float]:
        """Per seed, a test score: of the last model, or of the checkpoint ``selection`` picks."""
        return {
            run["seed"]: (run["selected_test"][selection] if selection else run["test"])[metric]
            for run in self.runs(dataset, setting, loss)
        }

    def accuracy_record(self, loss: str) -> tuple[int, float]:
        """Over every (dataset, noise) cell: cells with an accuracy difference beyond noise in
        ``loss``'s favour minus those against it, and the mean Δ accuracy."""
        wins, means = 0, []
        for dataset in self.config.datasets:
            for setting in self.config.noise:
                difference = self.difference(dataset, setting, loss, "accuracy")
                if difference is None:
                    continue
                means.append(difference.mean)
                if not difference.within_noise:
                    wins += 1 if difference.mean > 0 else -1
        return wins, statistics.fmean(means) if means else -math.inf

    def best_fairloss(self) -> Optional[str]:
        """The FairLoss setting with the best :meth:`accuracy_record` (chosen after the fact)."""
        candidates = [loss for loss in self.config.losses if _fairloss_options(loss) is not None]
        return max(candidates, key=self.accuracy_record, default=None)

    def headline(self) -> list[str]:
        """The losses of the per-cell tables and the overview: the baselines, the FairLoss
        settings with s = β, and :meth:`best_fairloss`."""
        best = self.best_fairloss()
        return [loss for loss in self.config.losses if is_headline(loss) or loss == best]

    def difference(
        self,
        dataset: str,
        setting: NoiseSetting,
        loss: str,
        metric: str,
        selection: Optional[str] = None,
    ) -> Optional[PairedDifference]:
        """``loss - reference`` paired by seed, or ``None`` without a shared seed."""
        values = self.values(dataset, setting, loss, metric, selection)
        reference = self.values(dataset, setting, self.reference, metric, selection)
        seeds = [seed for seed in values if seed in reference]
        if not seeds:
            return None
        return paired_difference([values[s] for s in seeds], [reference[s] for s in seeds])


def _better_sign(metric: str) -> float:
    return 1.0 if metric == "accuracy" else -1.0


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _digits(metric: str) -> int:
    return 1 if metric == "accuracy" else 3


def _format_mean(values: Sequence[float], metric: str) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values) * _scale(metric):.{_digits(metric)}f}"


def _format_difference(difference: Optional[PairedDifference], metric: str) -> str:
    """``+1.2 ± 0.8``, bold when the interval excludes 0."""
    if difference is None:
        return "–"
    scale, digits = _scale(metric), _digits(metric)
    style = f".{digits}f"
    if difference.mean != 0 and round(difference.mean * scale, digits) == 0:
        style = ".1e"  # too small for fixed digits: "+0.000 ± 0.000" would hide it
    text = f"{difference.mean * scale:+{style}}"
    if math.isfinite(difference.half_width):
        text += f" ± {difference.half_width * scale:{style}}"
    return text if difference.within_noise else f"**{text}**"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _split_summary(results: StudyResults) -> str:
    parts = []
    for dataset in results.config.datasets:
        record = next((r for r in results.records if r["dataset"] == dataset), None)
        if record is None:
            continue
        sizes = record["split_sizes"]
        parts.append(
            f"{dataset} ({record['num_classes']} classes; train/validation/test "
            f"{sizes['train']}/{sizes['validation']}/{sizes['test']})"
        )
    return ", ".join(parts)


def _fairloss_summary(config: StudyConfig) -> str:
    """Which FairLoss settings the study has, per penalty scale, in words."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for loss in config.losses:
        options = _fairloss_options(loss)
        if options is not None:
            pair = (float(options["scaling_factor"]), float(options["smooth_max_beta"]))
            groups.setdefault(str(options["penalty_scale"]), []).append(pair)
    parts = []
    for penalty, pairs in groups.items():
        scale = f"λ={penalty.replace('logC', 'log C')}"
        slopes = sorted({slope for slope, _ in pairs})
        betas = sorted({beta for _, beta in pairs})
        values = "{" + ", ".join(f"{value:g}" for value in sorted({*slopes, *betas})) + "}"
        if len(pairs) == len(slopes) * len(betas) and len(pairs) > 1:
            parts.append(f"s and β each in {values} at {scale}")
        elif all(slope == beta for slope, beta in pairs):
            parts.append(f"s = β in {values} at {scale}")
        else:
            parts.append(f"{len(pairs)} pairs of s and β at {scale}")
    return "; ".join(parts)


def _epochs_summary(results: StudyResults) -> str:
    epochs: dict[str, int] = {}
    for record in results.records:
        epochs.setdefault(record["dataset"], record["epochs"])
    return ", ".join(f"{count} epochs on {dataset}" for dataset, count in epochs.items())


def _intro(results: StudyResults, out: Path, command: str) -> str:
    config = results.config
    sessions = []
    sessions_path = out / "sessions.jsonl"
    if sessions_path.exists():
        sessions = [json.loads(line) for line in sessions_path.read_text().splitlines() if line]
    trained = [session for session in sessions if session["runs"] > 0]
    wall = sum(session["wall_seconds"] for session in trained)
    compute = sum(record["seconds"] for record in results.records)
    workers = sorted({session["workers"] for session in trained})
    expected_runs = len(config.cells())
    timing = (
        f"{len(results.records)} of {expected_runs} runs, {wall / 60:.1f} minutes of wall time "
        f"in {len(trained)} session(s) of `python -m experiments study` with "
        f"{'/'.join(map(str, workers))} worker process(es) of one torch thread each (the runs' "
        f"own times add up to {compute / 60:.1f} minutes), on a machine with {os.cpu_count()} "
        "CPU cores shared with other work"
    )
    fairloss_losses = [loss for loss in config.losses if _fairloss_options(loss) is not None]
    baselines = [loss_label(loss) for loss in config.losses if _fairloss_options(loss) is None]
    return "\n".join(
        [
            "# Evidence: when does FairLoss help?",
            "",
            "<!-- Generated by `python -m experiments study` (`make study`) from "
            "results/study/runs.jsonl. Only the reading between the reading markers is written "
            "by hand; a rerun keeps it. -->",
            "",
            "A small MLP (hidden sizes "
            f"{'-'.join(map(str, HIDDEN_SIZES))}, ReLU) trained with Adam (learning rate "
            f"{config.learning_rate:g}, batch {config.batch_size}, about {config.steps} steps: "
            f"{_epochs_summary(results)}) on {_split_summary(results)}, with the training "
            "labels made noisy "
            f"({', '.join(noise_title(s) for s in config.noise)}; validation and test labels stay "
            f"clean), for each of {len(config.losses)} losses: {', '.join(baselines)}, and "
            f"{len(fairloss_losses)} FairLoss settings ({_fairloss_summary(config)}). Seeds "
            f"{', '.join(map(str, config.seeds))}"
            "; a seed fixes the split, the noise, the initial weights and the batch order, the "
            "same for every loss, so differences between losses are paired by seed. Each run "
            "keeps the model after the last epoch and the checkpoints with the lowest "
            "validation NLL, PLL and PBS.",
            "",
            f"Made with `{command}` (pytorch-fairloss {fairloss.__version__}, torch "
            f"{torch.__version__}): {timing}. Rerun it with `make study`; it resumes from "
            "`results/study/runs.jsonl` and rewrites this page.",
        ]
    )


def _how_to_read(results: StudyResults) -> str:
    seeds = len(results.config.seeds)
    return "\n".join(
        [
            "## How to read the numbers",
            "",
            f"- Δ is a loss's test score minus {loss_label(results.reference)}'s on the same "
            f"seed, averaged over the {seeds} seeds, ± the half width of its 95 % Student-t "
            f"interval ({seeds - 1} degrees of freedom). **Bold**: the interval excludes 0, a "
            "difference beyond the seed-to-seed noise; the rest is within noise.",
            "- Accuracy is in percent and Δ accuracy in percentage points: higher is better. "
            "NLL (log loss), ECE (15 equal-width bins), PBS (penalized Brier score) and PLL "
            "(penalized log loss): lower is better.",
            "- Scores are of the model after the last epoch, except in the checkpoint selection "
            "section.",
            "- λ is `penalty_scale`, s `scaling_factor`, β `smooth_max_beta`. FairLoss's "
            "defaults are λ=1/C, s=β=1000; λ=log C makes it a smooth penalized log loss.",
            *_data_notes(results),
        ]
    )


def _data_notes(results: StudyResults) -> list[str]:
    """The test split sizes (one sample's worth of accuracy), and binary datasets, on which
    pair and symmetric noise at one rate flip the same labels."""
    notes = []
    sizes = []
    for dataset in results.config.datasets:
        record = next((r for r in results.records if r["dataset"] == dataset), None)
        if record is None:
            continue
        test_size = record["split_sizes"]["test"]
        sizes.append(f"{dataset} {test_size} (one sample is {100 / test_size:.1f} points)")
        rates = {
            setting.rate for setting in results.config.noise if setting.noise_type == "pair"
        } & {setting.rate for setting in results.config.noise if setting.noise_type == "symmetric"}
        if record["num_classes"] == 2 and rates:
            notes.append(
                f"- {dataset} has two classes: there pair and symmetric noise at the same rate "
                "flip the same labels (to the one other class), so those rows repeat each "
                "other and count twice in the summary table."
            )
    if sizes:
        notes.insert(0, f"- Test samples per split: {', '.join(sizes)}.")
    return notes


def _scoreboard(results: StudyResults) -> str:
    config = results.config
    cells = [(dataset, setting) for dataset in config.datasets for setting in config.noise]
    columns = [(metric, None) for metric in METRICS] + [("accuracy", "nll"), ("accuracy", "pll")]
    header = ["loss"] + [
        f"Δ {METRIC_TITLES[metric]}" + (f" @val {selection.upper()}" if selection else "")
        for metric, selection in columns
    ]
    rows = []
    for loss in config.losses[1:]:
        row = [loss_label(loss)]
        for metric, selection in columns:
            differences = [results.difference(d, s, loss, metric, selection) for d, s in cells]
            present = [difference for difference in differences if difference is not None]
            if not present:
                row.append("–")
                continue
            mean = statistics.fmean(difference.mean for difference in present)
            sign = _better_sign(metric)
            better = sum(not d.within_noise and sign * d.mean > 0 for d in present)
            worse = sum(not d.within_noise and sign * d.mean < 0 for d in present)
            row.append(f"{mean * _scale(metric):+.{_digits(metric)}f} ({better}/{worse})")
        rows.append(row)
    return "\n".join(
        [
            f"## Every loss against {loss_label(results.reference)}",
            "",
            f"Per metric: the mean Δ over the {len(cells)} (dataset, noise) cells, then in "
            "brackets how many cells show a difference beyond noise in the loss's favour / "
            "against it. The last two columns compare the test accuracy of the checkpoints "
            "picked by the lowest validation NLL (or PLL), for both losses.",
            "",
            _table(header, rows),
        ]
    )


def _best_text(results: StudyResults) -> str:
    best = results.best_fairloss()
    if best is None:
        return "no other FairLoss setting"
    wins, mean = results.accuracy_record(best)
    return (
        f"the FairLoss setting with the best accuracy record, {loss_label(best)} (net {wins:+d} "
        f"cells beyond noise, mean Δ {100 * mean:+.1f} points; picked after looking at all "
        f"{sum(_fairloss_options(loss) is not None for loss in results.config.losses)} "
        "settings, so its record is an optimistic estimate)"
    )


def _cell_tables(results: StudyResults) -> str:
    config = results.config
    headline = results.headline()
    header = ["loss"] + [f"{METRIC_TITLES[m]} (Δ)" for m in METRICS]
    sections = [
        "## Per dataset and noise",
        "",
        f"The baselines, the FairLoss settings with s = β and {_best_text(results)}; mean over "
        f"seeds, then Δ against {loss_label(results.reference)}. The other FairLoss settings "
        "are in the grid figures below and in the table above.",
    ]
    for dataset in config.datasets:
        sections += ["", f"### {dataset}"]
        for setting in config.noise:
            rows = []
            for loss in headline:
                row = [loss_label(loss)]
                for metric in METRICS:
                    mean = _format_mean(
                        list(results.values(dataset, setting, loss, metric).values()), metric
                    )
                    if loss == results.reference:
                        row.append(mean)
                    else:
                        difference = results.difference(dataset, setting, loss, metric)
                        row.append(f"{mean} ({_format_difference(difference, metric)})")
                rows.append(row)
            sections += ["", f"**{dataset}, {noise_title(setting)}**", "", _table(header, rows)]
    return "\n".join(sections)


def _selection_rows(results: StudyResults, losses: Sequence[str]) -> list[list[str]]:
    """Per (dataset, noise): test accuracy of the last model and of each selected checkpoint
    (mean over ``losses`` and seeds), and the paired Δ of PLL and PBS selection against NLL
    selection (each seed's mean over ``losses``, paired by seed)."""
    config = results.config
    rows = []
    for dataset in config.datasets:
        for setting in config.noise:
            runs = [run for loss in losses for run in results.runs(dataset, setting, loss)]
            if not runs:
                continue

            def per_seed(
                selection: Optional[str], metric: str, runs: list[dict[str, Any]] = runs
            ) -> dict[int, float]:
                grouped: dict[int, list[float]] = {}
                for run in runs:
                    scores = run["selected_test"][selection] if selection else run["test"]
                    grouped.setdefault(run["seed"], []).append(scores[metric])
                return {seed: statistics.fmean(values) for seed, values in grouped.items()}

            row = [dataset, noise_title(setting)]
            row += [
                _format_mean(list(per_seed(selection, "accuracy").values()), "accuracy")
                for selection in (None, *SELECTIONS)
            ]
            by_nll = per_seed("nll", "accuracy")
            seeds = sorted(by_nll)
            for selection in ("pll", "pbs"):
                chosen = per_seed(selection, "accuracy")
                difference = paired_difference(
                    [chosen[s] for s in seeds], [by_nll[s] for s in seeds]
                )
                row.append(_format_difference(difference, "accuracy"))
            by_nll_pll = per_seed("nll", "pll")
            by_pll_pll = per_seed("pll", "pll")
            row.append(
                _format_difference(
                    paired_difference(
                        [by_pll_pll[s] for s in seeds], [by_nll_pll[s] for s in seeds]
                    ),
                    "pll",
                )
            )
            same = sum(
                run["selected_epochs"]["pll"] == run["selected_epochs"]["nll"] for run in runs
            )
            row.append(f"{100 * same / len(runs):.0f} %")
            rows.append(row)
    return rows


def _selection_section(results: StudyResults, figure_link: str) -> str:
    header = [
        "dataset",
        "noise",
        "acc % last epoch",
        "acc % @val NLL",
        "acc % @val PLL",
        "acc % @val PBS",
        "Δ acc PLL − NLL pick",
        "Δ acc PBS − NLL pick",
        "Δ test PLL, PLL − NLL pick",
        "same epoch (PLL, NLL)",
    ]
    everything = _selection_rows(results, results.config.losses)
    reference_only = _selection_rows(results, [results.reference])
    return "\n".join(
        [
            "## Checkpoint selection by validation NLL, PLL or PBS",
            "",
            "Each run keeps three checkpoints: the epochs with the lowest validation NLL, PLL and "
            "PBS (validation labels are clean). The table gives their test accuracy, averaged "
            "over all losses and seeds, and the paired Δ of picking by PLL or PBS instead of "
            "NLL: each seed's mean over the losses, paired by seed. The last column is the share "
            "of runs in which PLL and NLL pick the same epoch.",
            "",
            "**All losses**",
            "",
            _table(header, everything),
            "",
            f"**{loss_label(results.reference)} only**",
            "",
            _table(header, reference_only),
            "",
            f"![Checkpoint selection]({figure_link})",
        ]
    )


def _plot_overview(results: StudyResults, path: Path) -> None:
    """Δ against the reference per metric (rows) and dataset (columns), headline losses."""
    config = results.config
    losses = results.headline()[1:]
    best = results.best_fairloss()
    figure = Figure(figsize=(4.2 * len(config.datasets), 2.4 * len(METRICS) + 1.2))
    figure.set_layout_engine("constrained")
    axes = figure.subplots(len(METRICS), len(config.datasets), squeeze=False, sharex=True)
    baseline_colors = ["#222222", "#777777", "#aa7700", "#557700"]
    blues = ["#9ecae1", "#4292c6", "#08519c", "#08306b"]
    reds = ["#fcae91", "#fb6a4a", "#cb181d", "#67000d"]
    colors: list[str] = []
    counters = {"base": 0, "1/C": 0, "other": 0}
    for loss in losses:
        options = _fairloss_options(loss)
        if loss == best and not is_headline(loss):
            colors.append("#1a9850")
        elif options is None:
            colors.append(baseline_colors[counters["base"] % len(baseline_colors)])
            counters["base"] += 1
        elif options["penalty_scale"] == "1/C":
            colors.append(blues[counters["1/C"] % len(blues)])
            counters["1/C"] += 1
        else:
            colors.append(reds[counters["other"] % len(reds)])
            counters["other"] += 1
    positions = np.arange(len(config.noise))
    width = 0.8 / max(len(losses), 1)
    for row, metric in enumerate(METRICS):
        for column, dataset in enumerate(config.datasets):
            ax = axes[row][column]
            ax.axhline(0.0, color="grey", linewidth=0.8)
            for index, loss in enumerate(losses):
                means, errors = [], []
                for setting in config.noise:
                    difference = results.difference(dataset, setting, loss, metric)
                    scale = _scale(metric)
                    means.append(difference.mean * scale if difference else math.nan)
                    half = difference.half_width * scale if difference else math.nan
                    errors.append(half if math.isfinite(half) else 0.0)
                offset = (index - (len(losses) - 1) / 2) * width
                ax.errorbar(
                    positions + offset,
                    means,
                    yerr=errors,
                    fmt="o",
                    markersize=3,
                    linewidth=0.8,
                    color=colors[index],
                    label=loss_label(loss) if row == 0 and column == 0 else None,
                )
            if row == 0:
                ax.set_title(dataset)
            if column == 0:
                better = "higher" if metric == "accuracy" else "lower"
                unit = " (pp)" if metric == "accuracy" else ""
                ax.set_ylabel(
                    f"Δ {METRIC_TITLES[metric].replace(' %', '')}{unit}\n{better} is better"
                )
            ax.set_xticks(positions, [noise_title(setting) for setting in config.noise], fontsize=8)
    figure.legend(loc="outside lower center", ncol=4, fontsize=8)
    figure.suptitle(f"Test scores against {loss_label(results.reference)} (mean Δ, 95 % interval)")
    figure.savefig(path, dpi=90)


def _fairloss_grid_axes(results: StudyResults) -> tuple[list[str], list[float], list[float]]:
    scales: list[str] = []
    slopes: set[float] = set()
    betas: set[float] = set()
    for loss in results.config.losses:
        options = _fairloss_options(loss)
        if options is None or float(options["label_smoothing"]) > 0:
            continue
        if str(options["penalty_scale"]) not in scales:
            scales.append(str(options["penalty_scale"]))
        slopes.add(float(options["scaling_factor"]))
        betas.add(float(options["smooth_max_beta"]))
    return scales, sorted(slopes), sorted(betas)


def _plot_grid(results: StudyResults, metric: str, path: Path) -> None:
    """Per dataset (rows) and (noise, penalty scale) (columns): a heat map over s and β of the
    mean Δ against the reference, coloured by improvement (blue better, red worse)."""
    config = results.config
    scales, slopes, betas = _fairloss_grid_axes(results)
    fairloss_specs = {}
    for loss in config.losses:
        options = _fairloss_options(loss)
        if options is not None and float(options["label_smoothing"]) == 0:
            key = (
                str(options["penalty_scale"]),
                float(options["scaling_factor"]),
                float(options["smooth_max_beta"]),
            )
            fairloss_specs[key] = loss
    panels = [(setting, scale) for setting in config.noise for scale in scales]
    figure = Figure(figsize=(2.1 * len(panels) + 1.0, 2.3 * len(config.datasets) + 0.8))
    figure.set_layout_engine("constrained")
    axes = figure.subplots(len(config.datasets), len(panels), squeeze=False)
    sign, scale_factor = _better_sign(metric), _scale(metric)
    for row, dataset in enumerate(config.datasets):
        grids = []
        for setting, penalty in panels:
            values = np.full((len(slopes), len(betas)), math.nan)
            clear = np.zeros((len(slopes), len(betas)), dtype=bool)
            for i, slope in enumerate(slopes):
                for j, beta in enumerate(betas):
                    spec = fairloss_specs.get((penalty, slope, beta))
                    difference = (
                        results.difference(dataset, setting, spec, metric) if spec else None
                    )
                    if difference is not None:
                        values[i, j] = difference.mean * scale_factor
                        clear[i, j] = not difference.within_noise
            grids.append((values, clear))
        finite = [abs(v) for values, _ in grids for v in values.flat if math.isfinite(v)]
        limit = max(finite) if finite and max(finite) > 0 else 1.0
        for column, ((setting, penalty), (values, clear)) in enumerate(zip(panels, grids)):
            ax = axes[row][column]
            ax.imshow(sign * values, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower")
            for i in range(len(slopes)):
                for j in range(len(betas)):
                    if math.isfinite(values[i, j]):
                        text = f"{values[i, j]:+.{1 if metric == 'accuracy' else 2}f}"
                        ax.text(
                            j,
                            i,
                            text,
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            fontweight="bold" if clear[i, j] else "normal",
                            color="white" if abs(values[i, j]) > 0.6 * limit else "black",
                        )
            ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=7)
            ax.set_yticks(range(len(slopes)), [f"{s:g}" for s in slopes], fontsize=7)
            if row == len(config.datasets) - 1:
                ax.set_xlabel("β (smooth_max_beta)", fontsize=7)
            if column == 0:
                ax.set_ylabel(f"{dataset}\ns (scaling_factor)", fontsize=8)
            if row == 0:
                penalty_text = penalty.replace("logC", "log C")
                ax.set_title(f"{noise_title(setting)}\nλ={penalty_text}", fontsize=8)
    unit = "percentage points" if metric == "accuracy" else "difference"
    figure.suptitle(
        f"FairLoss grid: Δ test {METRIC_TITLES[metric].replace(' %', '')} against "
        f"{loss_label(results.reference)} ({unit}; blue better, red worse, bold beyond noise)",
        fontsize=10,
    )
    figure.savefig(path, dpi=90)


def _plot_selection(results: StudyResults, path: Path) -> None:
    """Δ test accuracy of picking the checkpoint by validation PLL or PBS instead of NLL."""
    config = results.config
    figure = Figure(figsize=(4.0 * len(config.datasets), 3.2))
    figure.set_layout_engine("constrained")
    axes = figure.subplots(1, len(config.datasets), squeeze=False, sharey=True)
    positions = np.arange(len(config.noise))
    for column, dataset in enumerate(config.datasets):
        ax = axes[0][column]
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for index, (selection, color) in enumerate((("pll", "#2171b5"), ("pbs", "#cb181d"))):
            means, errors = [], []
            for setting in config.noise:
                grouped: dict[int, list[float]] = {}
                for loss in config.losses:
                    for run in results.runs(dataset, setting, loss):
                        picked = run["selected_test"][selection]["accuracy"]
                        by_nll = run["selected_test"]["nll"]["accuracy"]
                        grouped.setdefault(run["seed"], []).append(picked - by_nll)
                per_seed = [statistics.fmean(values) for values in grouped.values()]
                if not per_seed:
                    means.append(math.nan)
                    errors.append(0.0)
                    continue
                difference = paired_difference(per_seed, [0.0] * len(per_seed))
                means.append(100 * difference.mean)
                half = 100 * difference.half_width
                errors.append(half if math.isfinite(half) else 0.0)
            ax.bar(
                positions + (index - 0.5) * 0.38,
                means,
                width=0.38,
                yerr=errors,
                color=color,
                capsize=2,
                label=f"pick by {selection.upper()} − pick by NLL" if column == 0 else None,
            )
        ax.set_title(dataset)
        ax.set_xticks(positions, [noise_title(setting) for setting in config.noise], fontsize=8)
        if column == 0:
            ax.set_ylabel("Δ test accuracy (pp)")
    figure.legend(loc="outside lower center", ncol=2, fontsize=8)
    figure.suptitle("Checkpoint selection: all losses, mean over losses per seed, 95 % interval")
    figure.savefig(path, dpi=90)


def _existing_reading(page: Path) -> str:
    if not page.exists():
        return READING_PLACEHOLDER
    match = re.search(
        re.escape(READING_START) + r"\n?(.*?)\n?" + re.escape(READING_END),
        page.read_text(),
        flags=re.DOTALL,
    )
    return match.group(1).strip() if match and match.group(1).strip() else READING_PLACEHOLDER


def write_evidence(
    records: list[dict[str, Any]],
    config: StudyConfig,
    out: Path,
    page: Path,
    figures: Path,
    *,
    command: str = "python -m experiments study",
) -> None:
    """Write the evidence page and its figures from a study's records.

    The page's reading (between :data:`READING_START` and :data:`READING_END`) is kept from the
    page already at ``page``, if any.

    Args:
        records (list[dict]): the ``runs.jsonl`` records of ``config``'s cells.
        config (StudyConfig): the study.
        out (Path): the study's folder (its ``sessions.jsonl`` gives the wall time).
        page (Path): the Markdown page to write.
        figures (Path): the folder for the PNG figures (created).
        command (str, optional): the command line, for the page.
            Default: ``"python -m experiments study"``.
    """
    results = StudyResults(config, records)
    figures.mkdir(parents=True, exist_ok=True)
    page.parent.mkdir(parents=True, exist_ok=True)

    def link(name: str) -> str:
        return Path(os.path.relpath(figures / name, page.parent)).as_posix()

    _plot_overview(results, figures / "overview.png")
    for metric in METRICS:
        _plot_grid(results, metric, figures / f"grid_{metric}.png")
    _plot_selection(results, figures / "selection.png")

    grid_figures = "\n\n".join(
        f"![FairLoss grid, {METRIC_TITLES[metric]}]({link(f'grid_{metric}.png')})"
        for metric in METRICS
    )
    text = "\n\n".join(
        [
            _intro(results, out, command),
            "## Reading",
            READING_START + "\n" + _existing_reading(page) + "\n" + READING_END,
            _how_to_read(results),
            f"![Test scores against the reference]({link('overview.png')})\n\nThe overview "
            f"shows the same losses as the tables per dataset and noise below: the baselines, "
            f"the FairLoss settings with s = β and {_best_text(results)}.",
            _scoreboard(results),
            _cell_tables(results),
            "## The FairLoss grid: s × β at each penalty scale\n\n"
            "Mean Δ against the reference for every FairLoss setting, per dataset (rows) and "
            "noise and λ (columns). Blue is better than the reference, red worse; bold numbers "
            "are beyond the seed noise.\n\n" + grid_figures,
            _selection_section(results, link("selection.png")),
        ]
    )
    page.write_text(text + "\n")
