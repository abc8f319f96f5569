"""When periodic work is due: small clocks that the training loops ask, each testable alone.

`Every` counts a counter (env steps, updates), `EverySeconds` wall time (`LockstepSeconds` for
processes that run in lockstep), `Ratio` the updates
owed for the agent steps collected (the train ratio, `updates_due`); `Phases` times the parts of
a loop. None of them does the work; the session and its monitor ask and act.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import jax

from dreamer.config import Config
from dreamer.core.parallel import process_zero_value


class Every:
    """Due once every `every` units of a counter (`every` <= 0: never). The count at which it was
    last due is the caller's to keep (the monitor keeps it in the run's counters, so a resumed
    run keeps its schedule)."""

    def __init__(self, every: float):
        self.every = every

    def __call__(self, now: int, last: int) -> bool:
        """Whether it is due at count `now`, having been last due at count `last`."""
        return self.every > 0 and now - last >= self.every


class EverySeconds:
    """Due once at least `every` seconds of `clock` (monotonic time) have passed since it was
    last due (0: at every call; `math.inf`: never). The first period starts when it is made."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.last = clock()

    def __call__(self) -> bool:
        now = self.clock()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    def elapsed(self) -> float:
        """Seconds since it was last due."""
        return self.clock() - self.last


class LockstepSeconds:
    """`EverySeconds` for processes that run in lockstep (a multi-host run): process 0's clock
    decides, asked every `sync_every` calls, so that all processes are due at the same call
    without a collective at every one. In a single process it is `EverySeconds`."""

    def __init__(self, every: float, sync_every: int = 64,
                 clock: Callable[[], float] = time.monotonic):
        self.local = EverySeconds(every, clock)
        self.sync_every, self.calls = sync_every, 0

    def __call__(self) -> bool:
        if jax.process_count() == 1:
            return self.local()
        self.calls += 1
        return self.calls % self.sync_every == 0 and bool(process_zero_value(self.local()))


class Ratio:
    """Updates owed by the train ratio (`updates_due`): none until the replay holds one global
    batch of steps (or the prefill ends), one then, and `run.train_ratio` trained steps per agent
    step after that (`trained_length` per replayed sequence: the agent's)."""

    def __init__(self, cfg: Config, devices: int = 1, trained_length: int | None = None):
        self.cfg, self.devices, self.trained_length = cfg, devices, trained_length

    def owed(self, agent_steps: int, updates: int) -> int:
        """Updates due after `agent_steps` and not done yet (negative when ahead)."""
        return updates_due(self.cfg, agent_steps, self.devices, self.trained_length) - updates


class Phases:
    """Wall time spent in named phases of a loop (`with phases("env"): ...`), read as shares of
    the time since the last read: `shares(elapsed)` gives `loop/<name>_fraction` for each phase
    and starts the count again. Where an env step's time goes: acting, stepping, replay inserts,
    sampling, update dispatch; what is left is logging, evaluation and the loop itself."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start

    def shares(self, elapsed: float) -> dict[str, float]:
        out = {f"loop/{name}_fraction": s / elapsed for name, s in self.seconds.items()}
        self.seconds = {}
        return out


def updates_per_frame(cfg: Config, devices: int = 1, trained_length: int | None = None) -> float:
    """Updates per simulator frame: `run.train_ratio` counts trained steps per agent step, and
    an agent step is `env.action_repeat` frames. `trained_length` is the agent's steps trained
    per replayed sequence (`Agent.trained_length`; None: `batch_length`, DreamerV3's)."""
    trained = cfg.batch_size * devices * (trained_length or cfg.batch_length)
    return cfg.run.train_ratio / (trained * cfg.env.action_repeat)


def train_start(cfg: Config, devices: int = 1) -> int:
    """Agent steps after which training starts: once the replay holds one global batch of steps
    (2024 code), or after the random prefill (`run.prefill` frames) when that is longer."""
    return max(math.ceil(cfg.run.prefill / cfg.env.action_repeat),
               cfg.batch_size * devices * cfg.batch_length)


def updates_due(cfg: Config, agent_steps: int, devices: int = 1,
                trained_length: int | None = None) -> int:
    """Updates owed in total after `agent_steps`: one when training starts, then
    `run.train_ratio` trained steps per agent step (`elements.when.Ratio` of the 2024 code,
    which counts DreamerV3's `batch_length` steps per sequence; `trained_length` as in
    `updates_per_frame`)."""
    start = train_start(cfg, devices)
    if agent_steps < start:
        return 0
    trained = cfg.batch_size * devices * (trained_length or cfg.batch_length)
    return int((agent_steps - start) * cfg.run.train_ratio / trained) + 1
