"""Metric logging: one `Logger` that fans each write out to several outputs.

The library returns metrics and never prints; the launcher builds a logger with `make_logger` and
passes it to the training loop. An output is anything with `write(step, metrics)` and `close()`
(see `Output`). Metrics are scalars or videos: uint8 arrays [T, H, W, C], or [B, T, H, W, C] shown
as B rows. Console and `metrics.jsonl` take the scalars; `WandbOutput` also takes the videos and is
the only code that knows W&B.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, Self, TextIO, runtime_checkable

import numpy as np

__all__ = [
    "ConsoleOutput",
    "JSONLOutput",
    "Logger",
    "Output",
    "WandbOutput",
    "format_duration",
    "format_steps",
    "make_logger",
    "scalars",
    "videos",
    "wandb_mode",
]

# Console shows the first of these keys that a write contains.
LOSS_KEYS = ("train/loss/total", "train/loss")


@runtime_checkable
class Output(Protocol):
    """A logging backend."""

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records `metrics` at `step` (environment steps, after action repeat)."""
        ...

    def close(self) -> None:
        """Flushes and releases resources; no writes follow."""
        ...


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The real-valued scalar entries of `metrics` as Python floats.

    Accepts Python numbers, NumPy scalars and 0-d NumPy or JAX arrays; other values (strings,
    non-scalar arrays, images) are skipped.
    """
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, int, float, np.generic)):
            array = np.asarray(value)
        elif hasattr(value, "shape") and hasattr(value, "dtype") and tuple(value.shape) == ():
            array = np.asarray(value)  # a 0-d array, also on an accelerator
        else:
            continue
        if array.shape != ():
            continue
        if array.dtype.kind in "biuf":
            out[key] = float(array)
        elif array.dtype.kind == "V":  # bfloat16 and other ml_dtypes floats
            try:
                out[key] = float(array)
            except (TypeError, ValueError):
                continue
    return out


def videos(metrics: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The video entries of `metrics` as uint8 [T, H, W, C] (a batch [B, T, H, W, C] is stacked
    into B rows of one video)."""
    out = {}
    for key, value in metrics.items():
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            continue
        array = np.asarray(value)
        if array.dtype != np.uint8 or array.ndim not in (4, 5) or array.shape[-1] not in (1, 3):
            continue
        if array.ndim == 5:
            b, t, h, w, c = array.shape
            array = array.transpose(1, 0, 2, 3, 4).reshape(t, b * h, w, c)
        out[key] = array
    return out


def format_steps(n: float) -> str:
    """Compact step counts: 950, 12.3k, 50k, 1.5M."""
    if abs(n) < 1000:
        return str(int(n))
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "B")):
        value = round(n / scale, 1)
        if abs(value) < 1000:
            break
    return f"{value:.1f}".removesuffix(".0") + suffix


def format_duration(seconds: float) -> str:
    """Compact durations: 45s, 12m05s, 3h07m, 2d04h; '?' when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class JSONLOutput:
    """Appends one JSON object per write to `logdir/metrics.jsonl`: `step` plus the metrics.

    Values are floats; non-scalar metrics are skipped. Each line is flushed, so a crashed run
    keeps everything written before the crash, and a resumed run appends to the same file.
    """

    def __init__(self, logdir: str | Path) -> None:
        self.path = Path(logdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("a")
        # A run killed mid-write leaves a last line without its newline; start the resumed
        # run's lines on a line of their own, so only the cut line is lost.
        if self.path.stat().st_size and not _ends_with_newline(self.path):
            self._file.write("\n")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"write to closed {self.path}")
        record = {"step": int(step), **scalars(metrics)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


class ConsoleOutput:
    """Prints one compact progress line per write, e.g.

    `12.3k/50k (25%) | fps 210 | score 12.5 | loss 3.21 | eta 3m00s`

    fps is `fps/env`, score the last `episode/score` seen (it persists across writes that lack it),
    loss the first of `LOSS_KEYS` present. The ETA assumes the rate in environment steps per second
    since this output was created, counted from `start_step` (the step a resumed run starts at).
    """

    def __init__(self, total_steps: int, start_step: int = 0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self._stream = stream
        self._clock = clock
        self._start_time = clock()
        self._score: float | None = None

    def line(self, step: int, metrics: Mapping[str, Any]) -> str:
        """The line that `write` prints."""
        values = scalars(metrics)
        total = max(self.total_steps, 1)
        progress = f"{format_steps(step)}/{format_steps(self.total_steps)}"
        parts = [f"{progress} ({100 * min(step / total, 1):.0f}%)"]
        if "fps/env" in values:
            parts.append(f"fps {values['fps/env']:.0f}")
        self._score = values.get("episode/score", self._score)
        if self._score is not None:
            parts.append(f"score {self._score:.4g}")
        loss = next((values[k] for k in LOSS_KEYS if k in values), None)
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        parts.append(f"eta {format_duration(self._eta(step))}")
        return " | ".join(parts)

    def _eta(self, step: int) -> float:
        if step >= self.total_steps:
            return 0.0
        done, elapsed = step - self.start_step, self._clock() - self._start_time
        if done <= 0 or elapsed <= 0:
            return math.inf
        return (self.total_steps - step) * elapsed / done

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        print(self.line(step, metrics), file=stream, flush=True)

    def close(self) -> None:
        pass


def wandb_mode(mode: str) -> str:
    """W&B mode for the `logger.mode` setting: `auto` is $WANDB_MODE when set, else online when
    W&B credentials exist ($WANDB_API_KEY or a netrc entry for api.wandb.ai), else offline."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be auto, online, offline or disabled, not {mode!r}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


class WandbOutput:
    """Logs scalars and videos (mp4) to a Weights & Biases run whose files live under
    `logdir/wandb`. Passing the `run_id` of an earlier run resumes it; offline runs upload later
    with `wandb sync logdir/wandb/offline-run-*`. Steps are environment steps (`env_step`), so a
    resumed run may log a step again without W&B dropping it."""

    def __init__(self, logdir: str | Path, config: Mapping[str, Any], run_id: str, *,
                 project: str = "dreamer", entity: str = "", group: str = "",
                 tags: Iterable[str] = (), mode: str = "auto", fps: int = 16) -> None:
        import wandb

        self._wandb = wandb
        self.fps = fps
        self.mode = wandb_mode(mode)
        self.run = wandb.init(
            project=project, entity=entity or None, group=group or None,
            tags=list(tags) or None, dir=str(logdir), id=run_id, resume="allow",
            name=Path(logdir).name, config=dict(config), mode=self.mode,
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("env_step")
        self.run.define_metric("*", step_metric="env_step")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        data: dict[str, Any] = {"env_step": int(step), **scalars(metrics)}
        for key, video in videos(metrics).items():
            frames = video.transpose(0, 3, 1, 2)  # [T, C, H, W]
            data[key] = self._wandb.Video(frames, fps=self.fps, format="mp4")
        self.run.log(data)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class Logger:
    """Fans each `write(step, metrics)` out to every output; usable as a context manager."""

    def __init__(self, outputs: Iterable[Output]) -> None:
        self.outputs = list(outputs)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records `metrics` at `step`, counted in environment steps after action repeat."""
        for output in self.outputs:
            output.write(int(step), metrics)

    def close(self) -> None:
        for output in self.outputs:
            output.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_logger(logdir: str | Path, total_steps: int, console: bool = True,
                start_step: int = 0, wandb: Mapping[str, Any] | None = None) -> Logger:
    """A logger writing `logdir/metrics.jsonl`, with `console` a progress line per write, and
    with `wandb` (keyword arguments of `WandbOutput`: config, run_id, project, ...) W&B too."""
    outputs: list[Output] = [JSONLOutput(logdir)]
    if console:
        outputs.append(ConsoleOutput(total_steps, start_step=start_step))
    if wandb is not None:
        outputs.append(WandbOutput(logdir, **wandb))
    return Logger(outputs)
