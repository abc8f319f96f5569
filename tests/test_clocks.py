"""The clocks that schedule periodic work, each alone."""
import math

from dreamer.config import load_config
from dreamer.run import clocks
from dreamer.run.clocks import Every, EverySeconds, LockstepSeconds, Phases, Ratio, updates_due


def test_every_fires_once_per_period_after_last():
    every, last, fired = Every(100), 0, []
    for n in range(0, 450, 30):
        if every(n, last):
            fired.append(n)
            last = n
    assert fired == [120, 240, 360]
    assert not every(420, last=360) and every(460, last=360)


def test_every_zero_never_fires():
    assert not any(Every(0)(n, 0) for n in range(0, 1000, 7))


def test_every_seconds_follows_its_clock():
    now = [10.0]
    clock = EverySeconds(5.0, clock=lambda: now[0])
    fired = []
    for t in (11, 14.9, 15, 16, 19.9, 20.5, 30):
        now[0] = t
        fired.append(clock())
    assert fired == [False, False, True, False, False, True, True]
    now[0] = 32.0
    assert clock.elapsed() == 2.0
    assert EverySeconds(0.0)() and not EverySeconds(math.inf)()


def test_lockstep_seconds_asks_process_zero_every_sync_calls(monkeypatch):
    now = [0.0]
    # One process: the local clock, at every call.
    single = LockstepSeconds(5.0, sync_every=4, clock=lambda: now[0])
    now[0] = 6.0
    assert single() and not single()
    # Several processes: only every 4th call asks, and process 0's answer is everyone's.
    asked = []
    monkeypatch.setattr(clocks.jax, "process_count", lambda: 2)
    monkeypatch.setattr(clocks, "process_zero_value",
                        lambda value: asked.append(value) or value)
    shared = LockstepSeconds(5.0, sync_every=4, clock=lambda: now[0])
    now[0] = 12.0
    assert [shared() for _ in range(8)] == [False, False, False, True] + [False] * 4
    assert asked == [True, False]


def test_ratio_owes_the_updates_of_the_train_ratio():
    cfg = load_config(["debug"], {"run.prefill": 100, "run.train_ratio": 16})
    ratio = Ratio(cfg, devices=2)
    # Starts once the replay holds max(prefill, 2 devices x 4 x 8 = 64) steps, with one update;
    # then 16 replayed steps per agent step, 64 per update: one update per 4 agent steps.
    assert ratio.owed(99, 0) == 0
    assert ratio.owed(100, 0) == 1
    assert ratio.owed(140, 1) == 10
    assert ratio.owed(140, 20) == -9
    for steps in (0, 100, 250, 1001):
        assert ratio.owed(steps, 3) == updates_due(cfg, steps, 2) - 3


def test_phases_share_the_time_since_the_last_read():
    """Each phase's seconds (summed over its entries, an exception's too) over the elapsed
    time; a read starts the count again."""
    now = [0.0]
    phases = Phases(clock=lambda: now[0])
    for name, seconds in (("env", 2.0), ("update", 1.0), ("env", 3.0)):
        with phases(name):
            now[0] += seconds
    try:
        with phases("act"):
            now[0] += 0.5
            raise ValueError
    except ValueError:
        pass
    assert phases.shares(10.0) == {"loop/env_fraction": 0.5, "loop/update_fraction": 0.1,
                                   "loop/act_fraction": 0.05}
    assert phases.shares(1.0) == {}
