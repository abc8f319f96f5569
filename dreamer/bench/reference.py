"""DreamerV3's published learning curves (`dreamer/data/dreamerv3_curves.csv`, see the README
beside it): per benchmark and task, 10K-step bins with the mean, min and max over seeds of each
seed's mean score in the bin.

Steps are environment frames, the unit of `step` in our `metrics.jsonl` (env steps after action
repeat), so published values and our scores line up at the same step.
"""
from __future__ import annotations

import csv
import functools
from importlib import resources
from typing import NamedTuple

import numpy as np


class Published(NamedTuple):
    """One task's published curve: bin ends (env steps) and, per bin, the statistics over seeds."""

    steps: np.ndarray  # int64
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    seeds: np.ndarray  # int64: seeds with a point in the bin


class UnknownCurve(LookupError):
    """A benchmark or task without a published curve."""


@functools.cache
def _curves() -> dict[str, dict[str, Published]]:
    """Every curve of the CSV, by benchmark and task."""
    rows: dict[str, dict[str, list[tuple]]] = {}
    text = resources.files("dreamer").joinpath("data", "dreamerv3_curves.csv").read_text()
    for row in csv.DictReader(text.splitlines()):
        rows.setdefault(row["benchmark"], {}).setdefault(row["task"], []).append(
            (int(row["step"]), float(row["mean"]), float(row["min"]), float(row["max"]),
             int(row["seeds"])))
    out: dict[str, dict[str, Published]] = {}
    for benchmark, tasks in rows.items():
        out[benchmark] = {}
        for task, points in tasks.items():
            steps, mean, low, high, seeds = zip(*sorted(points))
            out[benchmark][task] = Published(
                np.array(steps, np.int64), np.array(mean), np.array(low), np.array(high),
                np.array(seeds, np.int64))
    return out


def benchmarks() -> list[str]:
    """The benchmarks with published curves."""
    return sorted(_curves())


def tasks(benchmark: str) -> list[str]:
    """The tasks of a benchmark; UnknownCurve names the valid benchmarks when it has none."""
    if benchmark not in _curves():
        raise UnknownCurve(f"no published curves for benchmark {benchmark!r}; benchmarks: "
                           f"{', '.join(benchmarks())}")
    return sorted(_curves()[benchmark])


def published(benchmark: str, task: str) -> Published:
    """(steps, mean, min, max, seeds) of a task's published curve, in step order. UnknownCurve
    names the valid benchmarks or the benchmark's tasks when there is none."""
    names = tasks(benchmark)
    if task not in names:
        raise UnknownCurve(f"no published {benchmark} curve for task {task!r}; its tasks: "
                           f"{', '.join(names)}")
    return _curves()[benchmark][task]


def value_at(benchmark: str, task: str, step: int) -> float | None:
    """The published mean at an env step: that of the first bin whose end is at or after `step`
    (the bin (end - 10K, end] holding it, as `dreamer.bench.plotting.binned` bins our runs). None past
    the last published bin."""
    curve = published(benchmark, task)
    index = int(np.searchsorted(curve.steps, step, side="left"))
    return float(curve.mean[index]) if index < len(curve.steps) else None
