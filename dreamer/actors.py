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

from dreamer.config import Config, ConfigError

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

        from dreamer.acting import AgentPolicy, Collector
        from dreamer.agents import make_agent
        from dreamer.envs import make_env
        from dreamer.rngs import Rngs

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


class _Poller:
    """Offers params to and reads steps from the actors' queues (`num`, `out_queues`,
    `params_queues`, `errors` and `_latest` are set by the subclasses)."""

    num: int
    out_queues: list[Any]
    params_queues: list[Any]
    errors: list[str]
    incarnations: list[int]
    restarts: int
    _latest: tuple[int, Any] | None
    _next: int = 0

    def _init_slots(self, num: int) -> None:
        """Per-actor queues and counters; then starts every actor (`_start` of the subclass)."""
        self.out_queues = [None] * num
        self.params_queues = [None] * num
        self.incarnations = [0] * num
        self.restarts = 0
        self.errors = []
        self._latest = None
        self._next = 0
        for i in range(num):
            self._start(i)

    def _start(self, i: int) -> None:
        raise NotImplementedError

    def _restart(self, i: int) -> None:
        """Starts actor `i` again as its next incarnation (new queues, new stream names)."""
        self.incarnations[i] += 1
        self.restarts += 1
        self._start(i)

    def _offer(self, version: int, params: Any) -> None:
        """Puts (version, params) in every actor's one-slot queue, replacing an unread one."""
        self._latest = (version, params)
        for q in self.params_queues:
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            try:
                q.put_nowait(self._latest)
            except queue.Full:
                pass

    def poll(self, timeout: float = 0.0, limit: int = 0) -> list[tuple]:
        """Up to `limit` (0: all) waiting messages, taken from the actors in turn; waits up to
        `timeout` seconds for the first."""
        out: list[tuple] = []
        deadline = time.monotonic() + timeout
        while True:
            empty = 0
            while empty < self.num and (not limit or len(out) < limit):
                q = self.out_queues[self._next]
                self._next = (self._next + 1) % self.num
                try:
                    out.append(q.get_nowait())
                    empty = 0
                except queue.Empty:
                    empty += 1
            if out or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        for message in out:
            if message[0] == "error":
                self.errors.append(message[2])
        return out


class ActorPool(_Poller):
    """Starts, feeds, watches and stops `num` local actor processes."""

    def __init__(self, cfg: Config, num: int):
        self.cfg, self.num = cfg, num
        self._ctx = mp.get_context("spawn")
        self.stop_event = self._ctx.Event()
        self.version = self._ctx.Value("q", -1)
        # Queues are per actor and per incarnation: a process killed while it holds a queue's
        # internal lock breaks that queue for good, so its successor gets new ones.
        self.procs: list[Any] = [None] * num
        self._init_slots(num)

    def _start(self, i: int) -> None:
        for q in (self.out_queues[i], self.params_queues[i]):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self.out_queues[i] = self._ctx.Queue(maxsize=QUEUE_CHUNKS * self.cfg.actors.envs)
        self.params_queues[i] = self._ctx.Queue(maxsize=1)
        if self._latest is not None:
            self.params_queues[i].put_nowait(self._latest)
        proc = self._ctx.Process(
            target=actor_main, name=f"dreamer-actor-{i}", daemon=True,
            args=(i, self.incarnations[i], self.cfg, self.params_queues[i], self.out_queues[i],
                  self.stop_event, self.version, os.getpid()))
        proc.start()
        self.procs[i] = proc

    def publish(self, version: int, params: Any) -> None:
        """Offers `params` (host arrays) as version `version`; replaces any unread older one."""
        self.version.value = version
        self._offer(version, params)

    def check(self) -> int:
        """Restarts actor processes that died; returns how many were restarted now."""
        restarted = 0
        for i, proc in enumerate(self.procs):
            if not proc.is_alive() and not self.stop_event.is_set():
                proc.join(timeout=0)
                self._restart(i)
                restarted += 1
        return restarted

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self, timeout: float = 5.0) -> None:
        """Stops every actor within `timeout` seconds (then terminates, then kills)."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            self.poll()  # unblock actors stuck in put
            time.sleep(0.05)
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1)
        self.poll()
        for q in [*self.out_queues, *self.params_queues]:
            q.cancel_join_thread()
            q.close()



class _RayControl:
    """The learner's stop flag and newest params version, read by Ray actors at most every
    0.1 s (each read is a round trip to a small Ray actor)."""

    def __init__(self, handle: Any):
        self._handle, self._cache, self._time = handle, (False, -1), 0.0

    def _read(self) -> tuple[bool, int]:
        import ray

        if time.monotonic() - self._time > 0.1:
            self._cache, self._time = ray.get(self._handle.get.remote()), time.monotonic()
        return self._cache

    def is_set(self) -> bool:
        return self._read()[0]

    @property
    def value(self) -> int:
        return self._read()[1]


class RayActorPool(_Poller):
    """`ActorPool` with the actors running as Ray actors on a cluster (`actors.ray_address`):
    the same actor loop, Ray queues instead of pipes, and Ray restarts instead of processes."""

    def __init__(self, cfg: Config, num: int, address: str):
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError as e:
            raise ConfigError("actors.ray_address needs Ray: pip install -e '.[ray]'") from e
        self._ray, self._queue_cls = ray, Queue
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=None if address == "local" else address,
                     include_dashboard=False, log_to_driver=False)
        self.cfg, self.num = cfg, num

        @ray.remote(num_cpus=1)
        class Control:
            def __init__(self):
                self.state = (False, -1)

            def set(self, stop: bool, version: int) -> None:
                self.state = (stop, version)

            def get(self) -> tuple[bool, int]:
                return self.state

        @ray.remote(num_cpus=1)
        class RayActor:
            def __init__(self, index, incarnation, cfg, params_queue, out_queue, control):
                os.environ["JAX_PLATFORMS"] = "cpu"
                ctl = _RayControl(control)
                self.actor = _Actor(index, incarnation, cfg, params_queue, out_queue, ctl, ctl,
                                    None)

            def run(self) -> None:
                self.actor.run()

            def pid(self) -> int:
                return os.getpid()

        self._actor_cls = RayActor
        self.control = Control.options(num_cpus=0).remote()
        self._stopped, self._version = False, -1
        self.actors: list[Any] = [None] * num
        self.runs: list[Any] = [None] * num
        self._init_slots(num)

    def _start(self, i: int) -> None:
        self.out_queues[i] = self._queue_cls(maxsize=QUEUE_CHUNKS * self.cfg.actors.envs)
        self.params_queues[i] = self._queue_cls(maxsize=1)
        if self._latest is not None:
            self.params_queues[i].put_nowait(self._latest)
        self.actors[i] = self._actor_cls.remote(
            i, self.incarnations[i], self.cfg, self.params_queues[i], self.out_queues[i],
            self.control)
        self.runs[i] = self.actors[i].run.remote()

    def publish(self, version: int, params: Any) -> None:
        self._version = version
        self.control.set.remote(self._stopped, version)
        self._offer(version, params)

    def check(self) -> int:
        """Starts a new Ray actor for each one whose loop ended (it died or raised)."""
        restarted = 0
        for i, ref in enumerate(self.runs):
            done, _ = self._ray.wait([ref], timeout=0)
            if done and not self._stopped:
                try:
                    self._ray.get(ref)
                except Exception as e:  # noqa: BLE001 (the actor died: recorded, replaced)
                    self.errors.append(repr(e))
                self._ray.kill(self.actors[i], no_restart=True)
                self._restart(i)
                restarted += 1
        return restarted

    def pids(self) -> list[int]:
        return self._ray.get([a.pid.remote() for a in self.actors])

    def close(self, timeout: float = 5.0) -> None:
        self._stopped = True
        self._ray.get(self.control.set.remote(True, self._version))
        self._ray.wait(self.runs, num_returns=len(self.runs), timeout=timeout)
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)
        if self._owns_ray:
            self._ray.shutdown()


def make_pool(cfg: Config) -> ActorPool | RayActorPool:
    """Local actor processes, or Ray actors when `actors.ray_address` is set."""
    if cfg.actors.ray_address:
        return RayActorPool(cfg, cfg.actors.num, cfg.actors.ray_address)
    return ActorPool(cfg, cfg.actors.num)
