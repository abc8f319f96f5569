"""Actor processes: each steps `actors.envs` environments with a jitted policy on the CPU backend.

Only two things cross a process boundary: versioned policy parameters (learner -> actor, a queue
of one slot per actor that always holds the newest) and chunks of environment steps (actor ->
learner, a bounded queue per actor). The bound is the back-pressure that keeps the train ratio:
the learner reads steps only when it owes no updates, so actors that run ahead block on `put`.
An actor waits for new parameters when the learner has published more than
`actors.max_staleness` updates since the version it acts with.

An environment that raises is recreated (`env_restarts`); an actor process that dies is started
again by `ActorPool.check` (`restarts`). Each actor exits by itself when its parent process is
gone, so a learner killed with SIGKILL leaves no orphans.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from typing import Any

import numpy as np

from dreamer.config import Config

CHUNK = 16           # steps per message from one environment
QUEUE_CHUNKS = 8     # chunks per actor that may wait in the queue before actors block


@dataclasses.dataclass
class Steps:
    """Consecutive steps of one environment stream: `data[key]` is [n, ...]."""

    stream: str          # unique per (actor, actor incarnation, env, env incarnation)
    data: dict[str, np.ndarray]
    version: int         # params version that chose the actions (-1: random)
    actor: int
    lag: float           # mean of (learner's newest version - version) when choosing actions


@dataclasses.dataclass
class Report:
    """Per-actor counters sent after every chunk."""

    actor: int
    frames: int          # env frames (after action repeat) since the last report
    seconds: float
    episodes: list[dict[str, float]]
    env_restarts: int


def actor_main(index: int, incarnation: int, cfg: Config, params_queue: mp.Queue,
               out_queue: mp.Queue, stop: Any, version: Any, parent: int) -> None:
    """The body of one actor process (spawned: imports JAX itself, on the CPU backend)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner handles Ctrl-C and stops us
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:
        _Actor(index, incarnation, cfg, params_queue, out_queue, stop, version, parent).run()
    except Exception:  # noqa: BLE001 (reported, then the pool restarts the process)
        try:
            out_queue.put(("error", index, traceback.format_exc()), timeout=5)
        finally:
            os._exit(1)


class _Actor:
    def __init__(self, index, incarnation, cfg, params_queue, out_queue, stop, version, parent):
        import jax

        from dreamer.agents import make_agent
        from dreamer.core.rngs import Rngs
        from dreamer.envs import make_env
        from dreamer.run.acting import AgentPolicy, Collector

        jax.config.update("jax_platforms", "cpu")
        self.index, self.cfg = index, cfg
        self.params_queue, self.out_queue, self.stop, self.parent = (
            params_queue, out_queue, stop, parent)
        self._learner_version = version  # shared: the learner's newest published version
        self.prefix = f"a{index}.{incarnation}"
        n = cfg.actors.envs
        # Streams of this actor incarnation, split by name from the run seed.
        rngs = Rngs(cfg.seed)
        name = f"actor{index}.{incarnation}"
        self._seeds = [rngs.int_seed(f"{name}/env", i) for i in range(n)]
        self._make_env, self._collector_cls = make_env, Collector
        envs = [make_env(cfg.env, s) for s in self._seeds]
        self.agent = make_agent(cfg, envs[0].obs_space, envs[0].act_space, platform="cpu")
        self.collectors = [Collector([env], self.agent.act_dim) for env in envs]
        self.env_incarnation = [0] * n
        self.policy = AgentPolicy(self.agent, n, rngs.key_stream(f"{name}/policy"), cfg.jax.jit)
        self.rng = rngs.numpy(f"{name}/prefill")
        self._initial_outputs = self.agent.policy_outputs_initial(1)
        self.params, self.version = None, -1
        self.buffers: list[list[dict]] = [[] for _ in range(n)]
        self.lags: list[list[int]] = [[] for _ in range(n)]

    def _pull(self, block: bool) -> None:
        """Takes the newest params from the queue (waits for one when `block`)."""
        try:
            version, params = self.params_queue.get(timeout=0.1) if block else \
                self.params_queue.get_nowait()
            self.version, self.params = version, params
        except queue.Empty:
            pass

    def _stale(self, learner_version: int) -> bool:
        return (self.params is not None
                and learner_version - self.version > self.cfg.actors.max_staleness)

    def run(self) -> None:
        repeat = self.cfg.env.action_repeat
        frames, episodes, env_restarts, since = 0, [], 0, time.perf_counter()
        while not self.stop.is_set() and self._parent_alive():
            self._pull(block=False)
            latest = self.learner_version()
            while self._stale(latest) and not self.stop.is_set():
                self._pull(block=True)
                latest = self.learner_version()
            obs = {k: np.concatenate([c.batch_obs()[k] for c in self.collectors])
                   for k in self.collectors[0].batch_obs()}
            if self.params is None:
                actions = np.concatenate([c.random_actions(self.rng) for c in self.collectors])
                outputs = {k: np.repeat(v, len(self.collectors), 0)
                           for k, v in self._initial_outputs.items()}
                lag = 0
            else:
                actions, outputs = self.policy(self.params, obs)
                lag = latest - self.version  # when the params were checked for staleness
            for i, collector in enumerate(self.collectors):
                try:
                    records, done = collector.step(
                        actions[i:i + 1], {k: v[i:i + 1] for k, v in outputs.items()})
                except Exception:  # noqa: BLE001 (a broken environment is replaced)
                    env_restarts += 1
                    self._replace_env(i)
                    continue
                self.buffers[i].append(records[0])
                self.lags[i].append(lag)
                episodes += [{"score": float(e["score"]), "length": float(e["length"] * repeat)}
                             for e in done]
                frames += repeat
                if len(self.buffers[i]) >= CHUNK or records[0]["is_last"]:
                    self._send(i)
                    self._put(("report", Report(self.index, frames,
                                                time.perf_counter() - since, episodes,
                                                env_restarts)))
                    frames, episodes, env_restarts, since = 0, [], 0, time.perf_counter()

    def learner_version(self) -> int:
        return self._learner_version.value

    def _parent_alive(self) -> bool:
        """False once the learner process is gone (local processes; Ray manages its own)."""
        return self.parent is None or os.getppid() == self.parent

    def _replace_env(self, i: int) -> None:
        try:
            self.collectors[i].envs[0].close()
        except Exception:  # noqa: BLE001, S110 (the environment is already broken)
            pass
        self.buffers[i], self.lags[i] = [], []  # unsent steps of the broken episode are dropped
        self.env_incarnation[i] += 1
        env = self._make_env(self.cfg.env, self._seeds[i] + 1_000_000 * self.env_incarnation[i])
        self.collectors[i] = self._collector_cls([env], self.agent.act_dim)

    def _send(self, i: int) -> None:
        steps, lag = self.buffers[i], float(np.mean(self.lags[i]))
        self.buffers[i], self.lags[i] = [], []
        data = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
        stream = f"{self.prefix}.{i}.{self.env_incarnation[i]}"
        self._put(("steps", Steps(stream, data, self.version, self.index, lag)))

    def _put(self, message: tuple) -> None:
        """Blocks while the queue is full (the learner is behind), but not past a stop."""
        while not self.stop.is_set() and self._parent_alive():
            try:
                self.out_queue.put(message, timeout=0.1)
                return
            except queue.Full:
                continue
