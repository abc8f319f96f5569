"""Pools that run the actors of `dreamer.run.actors`: local processes (`ActorPool`) or Ray actors
on a cluster (`RayActorPool`, `actors.ray_address`), behind one interface: `publish` versioned
params, `poll` step chunks, `check` restarts dead actors, `close` stops them.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from typing import Any

from dreamer.config import Config, ConfigError
from dreamer.run.actors import QUEUE_CHUNKS, _Actor, actor_main


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
