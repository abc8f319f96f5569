"""Stop signals that wait for the sections they must not cut.

A SIGTERM or Ctrl-C unwinds the training loop by raising KeyboardInterrupt in the main thread,
so that actors stop and the replay and a checkpoint are saved. Raised inside an update, between
the moment the devices took the train state's buffers (donated to the step) and the moment the
new state is bound, it would leave no state to save. Such sections run under `deferred()`: a
signal that arrives there only sets the stop event, and the loop's next `check_stop` raises.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_depth = 0  # nesting of `deferred` sections in the main thread


@contextmanager
def deferred() -> Iterator[None]:
    """A section that a stop signal does not interrupt (it only requests the stop)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def handler(stop: threading.Event) -> Callable[[int, Any], None]:
    """A signal handler that sets `stop` and, outside `deferred` sections, raises
    KeyboardInterrupt (the loops check `stop` too, in case the exception is swallowed)."""

    def handle(signum: int, frame: Any) -> None:
        stop.set()
        if _depth == 0:
            raise KeyboardInterrupt

    return handle
