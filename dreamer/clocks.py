"""When periodic work is due: small clocks that the training loops ask, each testable alone.

`Every` counts a counter (env steps, updates), `EverySeconds` wall time, `Ratio` the updates
owed for the agent steps collected (the train ratio); `Phases` times the parts of a loop. None of them does the work; the session
and its monitor ask and act.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dreamer.config import Config, updates_due


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


class Ratio:
    """Updates owed by the train ratio (`dreamer.config.updates_due`): none until the replay
    holds one global batch of steps (or the prefill ends), one then, and `run.train_ratio`
    replayed steps per agent step after that."""

    def __init__(self, cfg: Config, devices: int = 1):
        self.cfg, self.devices = cfg, devices

    def owed(self, agent_steps: int, updates: int) -> int:
        """Updates due after `agent_steps` and not done yet (negative when ahead)."""
        return updates_due(self.cfg, agent_steps, self.devices) - updates


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
