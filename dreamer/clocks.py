"""When periodic work is due: small clocks that the training loops ask, each testable alone.

`Every` counts a counter (env steps, updates), `EverySeconds` wall time, `Ratio` the updates
owed for the agent steps collected (the train ratio). None of them does the work; the session
asks and acts.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from dreamer.config import Config, updates_due


class Every:
    """Due once every `every` units of a counter; `last` is the count at which it was last due
    (saved with the run, so a resumed run keeps its schedule). `every` <= 0: never."""

    def __init__(self, every: float, last: int = 0):
        self.every, self.last = every, last

    def __call__(self, now: int) -> bool:
        if self.every <= 0 or now - self.last < self.every:
            return False
        self.last = now
        return True


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
