"""Actor processes: environment crashes, actor deaths, the train ratio and clean shutdown."""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from dreamer.config import load_config
from dreamer.replay import Replay
from dreamer.run import actor_pools, actors, runner

ROOT = Path(__file__).resolve().parents[1]


def debug_cfg(tmp_path, **overrides):
    return load_config(["debug"], {"logdir": str(tmp_path), "parallel.devices": 1, **overrides})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def test_actor_replaces_an_environment_that_raises(tmp_path):
    cfg = debug_cfg(tmp_path, **{"actors.envs": 2})
    out, stop = queue.Queue(), threading.Event()
    actor = actors._Actor(0, 0, cfg, queue.Queue(), out, stop, SimpleNamespace(value=-1),
                          os.getppid())
    broken = actor.collectors[1].envs[0]
    calls = {"n": 0}
    step = broken.step

    def flaky(action):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulator exploded")
        return step(action)

    broken.step = flaky
    thread = threading.Thread(target=actor.run)
    thread.start()
    messages, deadline = [], time.time() + 60
    while time.time() < deadline and sum(m[1].env_restarts for m in messages
                                         if m[0] == "report") == 0 or len(messages) < 20:
        messages.append(out.get(timeout=30))
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert sum(m[1].env_restarts for m in messages if m[0] == "report") == 1
    streams = {m[1].stream for m in messages if m[0] == "steps"}
    # Env 1 continues as a new stream (incarnation 1) that starts with a fresh episode.
    assert "a0.0.1.1" in streams and "a0.0.0.0" in streams
    first = next(m[1] for m in messages if m[0] == "steps" and m[1].stream == "a0.0.1.1")
    assert first.data["is_first"][0]


def test_pool_restarts_a_killed_actor_and_stops_cleanly(tmp_path):
    cfg = debug_cfg(tmp_path, **{"actors.num": 2})
    pool = actor_pools.ActorPool(cfg, 2)
    try:
        streams = set()
        deadline = time.time() + 120
        while len({s.split(".")[0] for s in streams}) < 2 and time.time() < deadline:
            streams |= {m[1].stream for m in pool.poll(timeout=0.5) if m[0] == "steps"}
        assert {"a0", "a1"} <= {s.split(".")[0] for s in streams}
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        while pool.check() == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert pool.restarts == 1 and pool.incarnations == [1, 0]
        while not any(s.startswith("a0.1.") for s in streams) and time.time() < deadline:
            streams |= {m[1].stream for m in pool.poll(timeout=0.5) if m[0] == "steps"}
        assert any(s.startswith("a0.1.") for s in streams)
        pids = pool.pids()
    finally:
        start = time.time()
        pool.close()
    assert time.time() - start < 10
    assert not any(alive(pid) for pid in pids)


def test_training_with_actor_processes_keeps_the_train_ratio(tmp_path):
    cfg = debug_cfg(tmp_path, **{
        "actors.num": 2, "run.steps": 400, "run.prefill": 100, "run.eval_every": 0,
        "run.log_every": 1, "run.train_ratio": 32})
    result = runner.run(cfg)
    assert np.isfinite(result["eval/score"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    steps = max(line["step"] for line in lines)
    # The learner reads at most 2 chunks per actor between checks of what it owes.
    slack = 2 * 2 * actors.CHUNK
    assert 400 <= steps <= 400 + slack
    # (steps - prefill) * ratio / (4 x 8 replayed steps per update)
    expected = (steps - 100) * 32 / 32
    assert abs(last["train/updates"] - expected) <= slack
    keys = set().union(*lines)
    for key in ("actors/staleness", "fps/actor", "learner/wait_fraction", "actors/restarts",
                "learner/batch_wait_fraction",
                "actors/env_restarts", "learner/updates_per_s", "episode/score"):
        assert key in keys, key
    staleness = [line["actors/staleness"] for line in lines if "actors/staleness" in line]
    assert max(staleness) <= cfg.actors.max_staleness
    # The actors' steps carry the policy's model states (replay context), which the learner
    # rewrites after its updates.
    replay = Replay(10_000, 9, tmp_path / "replay", chunk=cfg.replay.chunk)
    assert replay.load() == steps
    batch = replay.sample(64)
    assert batch["context_deter"].shape == (64, 9, cfg.model.deter)
    assert batch["context_stoch"].shape == (64, 9, cfg.model.stoch)
    assert (np.abs(batch["context_deter"]).sum(-1) > 0).mean() > 0.5
    assert last["replay/updated"] > 0


def test_sigterm_stops_training_and_actors(tmp_path):
    logdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch" / "train.py"), "--configs", "debug",
         "--actors.num=2", "--parallel.devices=1", "--run.steps=1e6", "--run.log_every=1",
         f"--logdir={logdir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 180
        metrics = logdir / "metrics.jsonl"

        def trained():
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            return any(json.loads(line).get("train/updates", 0) >= 1 for line in lines)

        while time.time() < deadline and not trained():
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        children = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], check=False, capture_output=True, text=True).stdout.split()]
        assert len(children) >= 2
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.time() - start < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, proc.stdout.read()
    # Helpers such as multiprocessing's resource tracker exit when they see the parent's end of
    # their pipe close, a moment after the parent itself.
    deadline = time.time() + 5
    while any(alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in children)
    assert sorted((logdir / "replay").glob("*.npz"))
