"""Write the results: a Markdown page, a CSV table and a plot of time ratio against C."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks.cases import IGNORED_FRACTION, LABEL_SMOOTHING, TRAINED_MARGIN, Case
from benchmarks.libraries import (
    BASELINES,
    CROSS_ENTROPY,
    CROSS_ENTROPY_COMPILED,
    FAIR_LOSS,
    FAIR_LOSS_COMPILED,
    LABELS,
    OLD_RELEASE,
)
from benchmarks.suite import Environment, Result, Settings

__all__ = ["CSV_COLUMNS", "GOALS", "Goal", "render_markdown", "write_csv", "write_plot"]

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


EAGER_GOAL = 2.0
COMPILED_GOAL = 1.2
Y_TICKS = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)


@dataclass(frozen=True)
class Goal:
    """A performance target: ``library``'s ratio to its baseline on the case named ``case``.

    ``kind`` is ``"time"`` or ``"memory"`` (ratio to the baseline, at most ``bound``) or
    ``"speedup"`` (0.1.1's time over ``fair_loss``'s, at least ``bound``).
    """

    description: str
    case: str
    library: str
    kind: str
    bound: float


def _eager_goal(case: str, detail: str = "") -> Goal:
    description = f"eager fair_loss / F.cross_entropy{detail}"
    return Goal(description, case, FAIR_LOSS, "time", EAGER_GOAL)


def _compiled_goal(case: str, detail: str = "", bound: float = COMPILED_GOAL) -> Goal:
    description = f"compiled fair_loss / compiled F.cross_entropy{detail}"
    return Goal(description, case, FAIR_LOSS_COMPILED, "time", bound)


#: The same speed-ups must hold for these variants of (4096, 1000).
VARIANTS = (
    ("4096x1000 trained-like", ", trained-like logits"),
    ("4096x1000 weight", ", class weights"),
    ("4096x1000 ignore_index", ", 10% ignored"),
    ("4096x1000 label_smoothing", ", label smoothing"),
)
#: (N, C, H, W) inputs run plain PyTorch: within 2x of cross-entropy, eager and compiled.
SPATIAL = ("16x21x64x64", ", (N, C, H, W)")
GOALS = (
    _eager_goal("4096x1000"),
    _eager_goal("2048x32000"),
    _compiled_goal("4096x1000"),
    _compiled_goal("2048x32000"),
    Goal("speed-up over 0.1.1 (0.1.1 / fair_loss)", "4096x1000", OLD_RELEASE, "speedup", 8.0),
    Goal("peak memory fair_loss / F.cross_entropy", "4096x32000", FAIR_LOSS, "memory", 1.15),
    *(_eager_goal(case, detail) for case, detail in (*VARIANTS, SPATIAL)),
    *(_compiled_goal(case, detail) for case, detail in VARIANTS),
    _compiled_goal(*SPATIAL, bound=EAGER_GOAL),
)


def _index(results: Sequence[Result]) -> dict[tuple[str, str], Result]:
    return {(result.case.name, result.library): result for result in results}


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _baseline(index: dict[tuple[str, str], Result], result: Result) -> Optional[Result]:
    return index.get((result.case.name, BASELINES.get(result.library, "")))


def _time_ratio(index: dict[tuple[str, str], Result], result: Optional[Result]) -> Optional[float]:
    baseline = None if result is None else _baseline(index, result)
    if result is None or baseline is None:
        return None
    return _ratio(result.median_s, baseline.median_s)


def _memory_ratio(
    index: dict[tuple[str, str], Result], result: Optional[Result]
) -> Optional[float]:
    baseline = None if result is None else _baseline(index, result)
    if result is None or baseline is None:
        return None
    if result.peak_bytes is None or baseline.peak_bytes is None:
        return None
    return _ratio(float(result.peak_bytes), float(baseline.peak_bytes))


def _goal_value(index: dict[tuple[str, str], Result], goal: Goal) -> Optional[float]:
    result = index.get((goal.case, goal.library))
    if result is None:
        return None
    if goal.kind == "memory":
        return _memory_ratio(index, result)
    if goal.kind == "speedup":
        fair = index.get((goal.case, FAIR_LOSS))
        return None if fair is None else _ratio(result.median_s, fair.median_s)
    return _time_ratio(index, result)


def _number(value: Optional[float], digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:.{digits}g}" if abs(value) < 10 ** (digits - 1) else f"{value:,.0f}"


def write_csv(results: Sequence[Result], path: Path) -> None:
    """One row per case and loss, times in milliseconds, peaks in MiB, ratios to the baseline."""
    index = _index(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            case = result.case
            writer.writerow(
                [
                    case.name,
                    case.n,
                    case.classes,
                    "x".join(map(str, case.spatial)),
                    case.dtype,
                    case.logits,
                    case.options,
                    "" if result.target_wins is None else f"{result.target_wins:.4f}",
                    result.library,
                    BASELINES.get(result.library, ""),
                    result.time_status,
                    "" if result.median_s is None else f"{result.median_s * 1e3:.6g}",
                    "" if result.iqr_s is None else f"{result.iqr_s * 1e3:.6g}",
                    "" if result.runs is None else result.runs,
                    _number(_time_ratio(index, result), 4),
                    result.memory_status,
                    "" if result.peak_bytes is None else f"{result.peak_bytes / 2**20:.6g}",
                    _number(_memory_ratio(index, result), 4),
                    "; ".join(result.notes),
                ]
            )


def _plot_points(
    results: Sequence[Result], library: str
) -> tuple[list[int], list[float], list[str]]:
    index = _index(results)
    points = []
    for result in results:
        case = result.case
        is_size_case = not case.spatial and (case.dtype, case.logits, case.options) == (
            "float32",
            "random",
            "default",
        )
        ratio = _time_ratio(index, result) if result.library == library else None
        if is_size_case and ratio is not None:
            points.append((case.classes, ratio, f"N={case.n}"))
    points.sort()
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def write_plot(results: Sequence[Result], path: Path) -> bool:
    """Time ratio to (compiled) cross-entropy against C; False when nothing could be plotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    series = [
        (FAIR_LOSS, "fair_loss / F.cross_entropy (eager)", "o-", "tab:blue"),
        (FAIR_LOSS_COMPILED, "fair_loss / F.cross_entropy (both compiled)", "s-", "tab:orange"),
        (OLD_RELEASE, "fairloss 0.1.1 / F.cross_entropy (eager)", "^--", "tab:green"),
    ]
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    shown = [1.0, EAGER_GOAL, COMPILED_GOAL]
    for library, label, style, color in series:
        classes, ratios, annotations = _plot_points(results, library)
        if not classes:
            continue
        shown += ratios
        axes.plot(classes, ratios, style, color=color, label=label)
        for x, y, text in zip(classes, ratios, annotations):
            axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if len(shown) == 3:
        plt.close(figure)
        return False
    axes.axhline(1.0, color="grey", linewidth=0.8)
    goal_lines = ((EAGER_GOAL, "tab:blue", "eager"), (COMPILED_GOAL, "tab:orange", "compiled"))
    for goal, color, kind in goal_lines:
        label = f"goal, {kind} ({goal:g}x)"
        axes.axhline(goal, color=color, linestyle=":", linewidth=0.8, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    ticks = [tick for tick in Y_TICKS if min(shown) / 1.2 <= tick <= max(shown) * 1.2]
    axes.set_yticks(ticks, [f"{tick:g}x" for tick in ticks])
    axes.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("number of classes C (float32, random logits)")
    axes.set_ylabel("time ratio, forward+backward (median)")
    axes.set_title("FairLoss cost relative to cross-entropy")
    axes.legend(fontsize=7)
    axes.grid(True, which="both", linewidth=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _time_cell(result: Optional[Result]) -> str:
    if result is None:
        return ""
    if result.median_s is not None:
        return _number(result.median_s * 1e3)
    return result.time_status.split(":", 1)[0]


def _memory_cell(result: Optional[Result]) -> str:
    if result is None:
        return ""
    if result.peak_bytes is not None:
        return _number(result.peak_bytes / 2**20)
    return result.memory_status.split(":", 1)[0]


def _ratio_cell(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}x"


def _cases(results: Sequence[Result]) -> list[Case]:
    seen: dict[str, Case] = {}
    for result in results:
        seen.setdefault(result.case.name, result.case)
    return list(seen.values())


def _logits_mib(case: Case) -> float:
    elements = case.n * case.classes * math.prod(case.spatial)
    return elements * case.torch_dtype.itemsize / 2**20


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _time_table(results: Sequence[Result]) -> list[str]:
    index = _index(results)
    lines = [
        "| Case | target wins | F.cross_entropy ms | fair_loss ms | fair_loss / CE | 0.1.1 ms "
        "| 0.1.1 / CE | 0.1.1 / fair_loss | compiled CE ms | compiled fair_loss ms "
        "| compiled ratio |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in _cases(results):
        if not case.time:
            continue
        row = {library: index.get((case.name, library)) for library in LABELS}
        fair, old = row[FAIR_LOSS], row[OLD_RELEASE]
        speedup = None
        if fair is not None and old is not None:
            speedup = _ratio(old.median_s, fair.median_s)
        wins = next((r.target_wins for r in row.values() if r and r.target_wins is not None), None)
        cells = [
            case.name,
            "" if wins is None else f"{wins:.1%}",
            _time_cell(row[CROSS_ENTROPY]),
            _time_cell(fair),
            _ratio_cell(_time_ratio(index, fair)),
            _time_cell(old),
            _ratio_cell(_time_ratio(index, old)),
            _ratio_cell(speedup),
            _time_cell(row[CROSS_ENTROPY_COMPILED]),
            _time_cell(row[FAIR_LOSS_COMPILED]),
            _ratio_cell(_time_ratio(index, row[FAIR_LOSS_COMPILED])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _memory_table(results: Sequence[Result]) -> list[str]:
    index = _index(results)
    lines = [
        "| Case | logits MiB | F.cross_entropy MiB | fair_loss MiB | fair_loss / CE "
        "| 0.1.1 MiB | 0.1.1 / CE |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for case in _cases(results):
        if not case.memory:
            continue
        fair = index.get((case.name, FAIR_LOSS))
        old = index.get((case.name, OLD_RELEASE))
        cells = [
            case.name,
            _number(_logits_mib(case)),
            _memory_cell(index.get((case.name, CROSS_ENTROPY))),
            _memory_cell(fair),
            _ratio_cell(_memory_ratio(index, fair)),
            _memory_cell(old),
            _ratio_cell(_memory_ratio(index, old)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _headline(results: Sequence[Result]) -> list[str]:
    index = _index(results)
    lines = ["| Goal | Case | Measured | Target | Met |", "|---|---|--:|--:|:-:|"]
    for goal in GOALS:
        if (goal.case, goal.library) not in index:
            continue
        value = _goal_value(index, goal)
        at_least = goal.kind == "speedup"
        target = f"{'>=' if at_least else '<='} {goal.bound:g}x"
        if value is None:
            measured, met = "not measured", "?"
        else:
            measured = f"{value:.2f}x"
            met = "yes" if (value >= goal.bound if at_least else value <= goal.bound) else "**no**"
        lines.append(f"| {goal.description} | {goal.case} | {measured} | {target} | {met} |")
    if len(lines) == 2:
        return ["No case of this grid carries one of the goals."]
    return lines


def _notes(results: Sequence[Result]) -> list[str]:
    lines = []
    for result in results:
        label = f"{result.case.name}, {LABELS[result.library]}"
        for status in (result.time_status, result.memory_status):
            if status.startswith("failed"):
                lines.append(f"- {label}: {_escape(status)}")
        lines += [f"- {label}: {_escape(note)}" for note in result.notes]
    not_applicable = sorted(
        {
            f"- {LABELS[result.library]}: {_escape(status)}"
            for result in results
            for status in (result.time_status, result.memory_status)
            if status.startswith(("n/a", "skipped"))
        }
    )
    return lines + not_applicable


def render_markdown(
    results: Sequence[Result],
    environment: Environment,
    settings: Settings,
    plot: Optional[str] = None,
) -> str:
    """The benchmark page: header, goals, time and memory tables, plot, method and notes."""
    lines = [
        "# Benchmarks",
        "",
        "Forward+backward cost of `fairloss.fair_loss` against `F.cross_entropy`, written by "
        "`make bench` (`benchmarks/run.py`); regenerate it rather than editing it.",
        "",
        "Earlier runs: [benchmark history](benchmark-history.md).",
        "",
        "| | |",
        "|---|---|",
        f"| Machine | {_escape(environment.cpu_model)}, {environment.logical_cpus} logical CPUs, "
        f"{_escape(environment.system)} |",
        f"| Threads | {environment.threads} (`torch.set_num_threads`) |",
        f"| Memory allocator | {_escape(environment.heap)} |",
        f"| torch | {environment.torch_version} |",
        f"| Python | {environment.python_version} |",
        f"| fairloss | {environment.fairloss_version} |",
        f"| pytorch-fairloss 0.1.1 | {_escape(environment.old_release)} |",
        f"| Date | {environment.date} |",
        f"| Command | `make bench` (`{_escape(environment.command)}`) |",
        "",
        "## Goals",
        "",
        *_headline(results),
        "",
        "## Time",
        "",
        "Median forward+backward time in milliseconds. A ratio divides by `F.cross_entropy`'s "
        "time on the same inputs with the same options, measured in the same run (the compiled "
        "ratio by compiled `F.cross_entropy`'s); 0.1.1 / fair_loss is the speed-up over 0.1.1. "
        "*Target wins* is the share of rows whose target has the largest logit: FairLoss's "
        "penalty is saturated, and cheap, on most of the other rows.",
        "",
        *_time_table(results),
        "",
    ]
    if plot is not None:
        lines += [f"![Time ratio against the number of classes]({plot})", ""]
    lines += [
        "## Peak memory",
        "",
        "Growth of the peak resident set size during one forward+backward, in MiB, over the "
        "memory held just before it (inputs allocated); each number comes from a fresh process.",
        "",
        *_memory_table(results),
        "",
        "## Method",
        "",
        f"- Time: `torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time="
        f"{settings.min_run_time:g})`, the median; each step is the loss (reduction `mean`) and "
        "`torch.autograd.grad` of it w.r.t. the logits, so no gradient accumulates. The timing "
        "process keeps freed heap memory (`benchmarks.suite.keep_freed_heap_memory`): with "
        "glibc's defaults, whether a step page-faults its buffers back in depends on the order "
        "of its allocations and moved one loss's time by up to 2x between otherwise equal runs.",
        "- Inputs: class-index targets drawn uniformly; random logits are `randn` (the target is "
        "rarely the argmax); trained-like logits are "
        f"`randn + {TRAINED_MARGIN:g} * onehot(target)` (the target wins most rows by a clear "
        "margin, and the penalty of those rows is not saturated: column *target wins*). Options: "
        f"`weight` uniform in [0.5, 1.5), `ignore_index` on {IGNORED_FRACTION:.0%} of the targets, "
        f"`label_smoothing={LABEL_SMOOTHING:g}`.",
        "- Compiled: `torch.compile(loss, fullgraph=True, dynamic=False)` of the forward loss; "
        "compilation and warm-up run before the timer; the Dynamo cache is reset per case.",
        "- Memory: `python -m benchmarks.memory` per case and loss: warm-up on a few rows, peak "
        "RSS reset to the current RSS (`/proc/self/clear_refs`), one step, growth of the peak "
        "RSS (`VmHWM`; `ru_maxrss` would start at the parent's peak); eager losses only.",
        "- 0.1.1 runs where it computes the same loss as `fair_loss`: `(N, C)` logits, no class "
        "weights, no ignored targets.",
        "",
    ]
    notes = _notes(results)
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)
