"""Stop signals: raised at once outside an update, only requested inside one."""
import os
import signal
import threading

import pytest

from dreamer.run import interrupts


def test_a_stop_signal_waits_for_a_deferred_section():
    stop = threading.Event()
    handle = interrupts.handler(stop)
    with interrupts.deferred(), interrupts.deferred():
        handle(signal.SIGTERM, None)  # inside: only requests the stop
    assert stop.is_set()
    stop.clear()
    with pytest.raises(KeyboardInterrupt):
        handle(signal.SIGTERM, None)
    assert stop.is_set()


def test_a_real_signal_inside_a_deferred_section_does_not_raise():
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, interrupts.handler(stop))
    try:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes of this thread
                pass
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
