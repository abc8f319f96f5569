"""Learning curves from `metrics.jsonl` files: several runs (seeds) per method, their mean and
spread on a common step grid, and a table of scores at fixed step budgets.

Pure functions over plain data, plus `plot`, which draws with matplotlib (imported only there).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def read_series(path: str | Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in a run's `metrics.jsonl` (a file, or a logdir holding one).
    A run resumed after a kill may log a step twice; the later line wins."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}; pass training logdirs")
    points: dict[int, float] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) or not line.rstrip().endswith("}"):
                continue  # a line cut short by a kill (a resumed run writes on after it)
            raise ValueError(f"{path}:{number} is not a JSON object") from None
        if key in record and math.isfinite(record[key]):
            points[int(record["step"])] = float(record[key])
    steps = np.array(sorted(points), np.int64)
    return steps, np.array([points[s] for s in steps], np.float64)


def binned(steps: np.ndarray, values: np.ndarray, width: int) -> dict[int, float]:
    """Mean of the values in each bin (g - width, g] of a grid g = width, 2 width, ..."""
    out: dict[int, list[float]] = {}
    for step, value in zip(steps, values):
        out.setdefault(math.ceil(step / width) * width, []).append(value)
    return {g: float(np.mean(v)) for g, v in sorted(out.items())}


@dataclass
class Curve:
    """One method: grid steps and, per step, the mean, std, min and max over its runs."""

    label: str
    runs: int
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    counts: np.ndarray  # runs with a value at each step


def aggregate(label: str, series: Sequence[tuple[np.ndarray, np.ndarray]], width: int) -> Curve:
    """Mean and spread over runs on the grid of `binned` (steps where any run has a value)."""
    grids = [binned(s, v, width) for s, v in series]
    steps = np.array(sorted(set().union(*grids)), np.int64)
    rows = [[g[s] for g in grids if s in g] for s in steps]
    return Curve(label, len(series), steps,
                 mean=np.array([np.mean(r) for r in rows]), std=np.array([np.std(r) for r in rows]),
                 low=np.array([np.min(r) for r in rows]), high=np.array([np.max(r) for r in rows]),
                 counts=np.array([len(r) for r in rows]))


def at_budget(series: tuple[np.ndarray, np.ndarray], budget: int, width: int) -> float | None:
    """A run's score at a step budget: the mean of its values in (budget - width, budget]."""
    steps, values = series
    inside = (steps > budget - width) & (steps <= budget)
    return float(values[inside].mean()) if inside.any() else None


def summary(series: Sequence[tuple[np.ndarray, np.ndarray]], budget: int, width: int
            ) -> tuple[float, float, int] | None:
    """Mean, std and number of the runs with a score at a budget (`at_budget`); None when no run
    has one."""
    scores = [x for x in (at_budget(s, budget, width) for s in series) if x is not None]
    return (float(np.mean(scores)), float(np.std(scores)), len(scores)) if scores else None


def table(methods: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], budgets: Sequence[int],
          width: int, reference: Mapping[str, Sequence[float | None]] | None = None,
          reference_label: str = "reference", rows: str = "method") -> str:
    """A Markdown table: per method and budget, mean ± std over the runs that reached it (n).
    With `reference` (per method, one value or None per budget) each budget's column is followed
    by a `reference_label` column of those values. `rows` heads the column of method labels."""
    head = [rows]
    for budget in budgets:
        head += [f"{_steps(budget)} steps", *([reference_label] if reference is not None else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, series in methods.items():
        cells = [label]
        for i, budget in enumerate(budgets):
            stats = summary(series, budget, width)
            cells.append(f"{stats[0]:.1f} ± {stats[1]:.1f} (n={stats[2]})" if stats else "–")
            if reference is not None:
                value = reference.get(label, [None] * len(budgets))[i]
                cells.append("–" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: Sequence[Curve], key: str, out: str | Path, title: str = "",
         references: Sequence[Curve] = (), xmax: float | None = None) -> None:
    """Draws each curve's mean with its min–max band (std band with one run: none) to a PNG;
    `references` (e.g. published curves) dashed, with their bands; the x axis up to `xmax`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for curve, style in [*((c, "-") for c in curves), *((c, "--") for c in references)]:
        runs = f"{curve.runs} run" + "s" * (curve.runs != 1)
        line, = ax.plot(curve.steps, curve.mean, style, label=f"{curve.label} ({runs})")
        if curve.runs > 1:
            ax.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(),
                            alpha=0.2, linewidth=0)
    if xmax is not None:
        ax.set_xlim(0, xmax)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _steps(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k" if n >= 1e3 else str(n)
