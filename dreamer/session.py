"""The state of a training run on the host, shared by both training loops: the learner, the
replay, the acting policies, the resumable counters, and the periodic work that falls due
(evaluation, reports, metric writes, checkpoints). The loops change it only through methods.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import psutil

from dreamer.acting import AgentPolicy, evaluate
from dreamer.agents import make_agent
from dreamer.checkpoint import Checkpointer, abstract
from dreamer.clocks import Every, EverySeconds, Ratio
from dreamer.config import Config
from dreamer.envs import make_env
from dreamer.learner import Learner
from dreamer.logging import Logger, make_logger
from dreamer.replay import Replay
from dreamer.rngs import Rngs


@dataclasses.dataclass
class Counters:
    """The host state a resume continues from; saved and restored whole with each checkpoint
    (beside the learner's update count, the random streams and the replay's own state)."""

    agent_steps: int = 0
    episodes: int = 0
    starts: int = 0              # earlier starts of this run (0: the first)
    trained_seconds: float = 0.0
    nonfinite_skips: int = 0     # updates skipped for a non-finite loss or gradient
    last_eval: int = 0           # env steps at the last evaluation
    last_report: int = 0         # updates at the last report
    wandb_id: str = ""

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Counters:
        """The counters of a checkpoint's record (also of one written with flat keys)."""
        saved = meta.get("counters", meta)
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


class Averages:
    """Accumulates metric values between log writes."""

    def __init__(self):
        self.values = defaultdict(list)

    def add(self, metrics: dict[str, Any], prefix: str = "") -> None:
        for key, value in metrics.items():
            self.values[prefix + key].append(float(value))

    def flush(self) -> dict[str, float]:
        out = {k: float(np.mean(v)) for k, v in self.values.items()}
        self.values.clear()
        return out


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradients."""


class UpdateMetrics:
    """Metrics of updates not yet fetched from the devices. On fetching, the finite updates'
    metrics go into the averages and the skipped (non-finite) ones are counted; `limit`
    consecutive skips stop training."""

    def __init__(self, limit: int, skips: int = 0):
        self.pending: list[dict[str, Any]] = []
        self.limit, self.skips, self.in_a_row = limit, skips, 0

    def add(self, metrics: dict[str, Any]) -> None:
        self.pending.append(metrics)

    def flush(self, averages: Averages) -> dict[str, float]:
        for metrics in jax.device_get(self.pending):
            if float(metrics.pop("nonfinite")) > 0:
                self.skips += 1
                self.in_a_row += 1
            else:
                self.in_a_row = 0
                averages.add(metrics, "train/")
        self.pending.clear()
        if self.limit and self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"training stopped: the last {self.in_a_row} updates had a non-finite loss or "
                "gradients and were skipped, so the train state is still the last finite one. "
                "Check observations and rewards for NaN/inf, or lower the learning rates "
                "(opt.model_lr, opt.actor_lr, opt.critic_lr); run.max_nonfinite sets the limit.")
        return {"train/nonfinite_skips": float(self.skips)}


class Session:
    """What both training loops share. Built from the newest checkpoint under
    `logdir/checkpoints` when there is one; `close` saves the replay's new chunks and then a
    checkpoint, as every `run.checkpoint_every` seconds."""

    def __init__(self, cfg: Config, logdir: Path, checkpoints: Checkpointer,
                 logger: Logger | None = None, stop: threading.Event | None = None):
        self.cfg, self.logdir, self.checkpoints = cfg, logdir, checkpoints
        self.stop = stop or threading.Event()  # set: the loops stop as on Ctrl-C
        self.repeat = cfg.env.action_repeat
        self.rngs = Rngs(cfg.seed)
        self.eval_env = make_env(cfg.env, self.rngs.int_seed("eval_env"))
        try:
            self._build(logger)
        except BaseException:
            self.eval_env.close()
            raise

    def _build(self, logger: Logger | None) -> None:
        cfg, rngs, space = self.cfg, self.rngs, self.eval_env
        self.learner = Learner(cfg, space.obs_space, space.act_space, rngs.key("init"))
        self.agent = self.learner.agent
        self.replay = Replay(cfg.replay.capacity, self.agent.sequence_length,
                             self.logdir / "replay", cfg.replay.chunk, cfg.replay.recency,
                             cfg.replay.recency_window, cfg.replay.online, rngs.numpy("replay"))
        # Acting runs on the host CPU (`Learner.params`), in float32 there under `auto`.
        acting = make_agent(cfg, space.obs_space, space.act_space, platform="cpu")
        self.policy = AgentPolicy(acting, cfg.run.envs, rngs.key_stream("policy"), cfg.jax.jit)
        self.eval_policy = AgentPolicy(acting, 1, rngs.key_stream("eval"), cfg.jax.jit)
        # Acting in this process may lag the learner by up to `actors.max_staleness` updates on
        # accelerators, so that env steps overlap updates; on the CPU both share the cores and
        # the policy acts with the current parameters.
        self.acting_lag = 0 if self.learner.on_host else int(cfg.actors.max_staleness)
        local_devices = self.learner.batch_size // cfg.batch_size
        self.ratio = Ratio(cfg, local_devices)
        self.counters = Counters(wandb_id=f"{self.logdir.name[:48]}-{uuid.uuid4().hex[:8]}")
        self._context: tuple[Any, Any] | None = None  # replay updates not yet written back
        self._restore()
        self.pending = UpdateMetrics(cfg.run.max_nonfinite, self.counters.nonfinite_skips)
        self.averages, self.evals, self.timing = Averages(), {}, {}
        self.due_eval = Every(cfg.run.eval_every, self.counters.last_eval)
        self.due_report = Every(cfg.logger.report_every, self.counters.last_report)
        self.due_log = EverySeconds(cfg.run.log_every)
        self.due_save = EverySeconds(cfg.run.checkpoint_every or math.inf)  # 0: at exit only
        self.logger = logger or make_logger(
            self.logdir, int(cfg.run.steps), cfg.logger.console, self.env_steps,
            self._wandb_settings() if cfg.logger.wandb else None)
        self.started = time.time()
        self._since_log = (self.counters.agent_steps, self.learner.updates)

    # ------------------------------------------------------------------------- counters
    @property
    def env_steps(self) -> int:
        return self.counters.agent_steps * self.repeat

    def env_seed(self, index: int) -> int:
        """Seed of training environment `index`; a resumed run draws new episodes."""
        return self.rngs.int_seed("env", index, self.counters.starts)

    def owed(self) -> int:
        """Updates owed by the train ratio for the agent steps collected so far; none while no
        stream of the replay holds a whole sequence."""
        if not self.replay.ready:
            return 0
        return self.ratio.owed(self.counters.agent_steps, self.learner.updates)

    def add_steps(self, records: list[dict[str, np.ndarray]], stream: Any) -> None:
        """Consecutive steps of one environment stream into the replay."""
        for record in records:
            self.replay.add(record, stream)
        self.counters.agent_steps += len(records)

    def add_episode(self, score: float, length: float) -> None:
        self.counters.episodes += 1
        self.averages.add({"episode/score": score, "episode/length": length})

    def record(self, metrics: dict[str, float]) -> None:
        """Values averaged into the next metric write."""
        self.averages.add(metrics)

    def check_stop(self) -> None:
        """Raises KeyboardInterrupt once a stop was requested (`run`'s `stop` event): a signal
        handler's own exception can be swallowed where Python ignores exceptions (a garbage
        collection callback), the loops' check cannot."""
        if self.stop.is_set():
            raise KeyboardInterrupt

    # ------------------------------------------------------------------------- updates
    def sample(self) -> tuple[dict[str, np.ndarray], Any]:
        """A training batch and its replay reference (for writing replay updates back)."""
        return self.replay.sample(self.learner.batch_size, ref=True)

    def update(self, batch: Any, ref: Any) -> None:
        """One update; the replay updates it returns are written into the replay after the
        next update has been dispatched, so the host does not wait for the devices."""
        metrics, rows = self.learner.update(batch, self.rngs.key("update"))
        self.pending.add(metrics)
        self.write_context()
        if rows:
            self._context = (ref, rows)

    def write_context(self) -> None:
        """Writes the last update's replay updates into the replay (waits for that update)."""
        if self._context is not None:
            ref, rows = self._context
            self._context = None
            self.replay.update(ref, self.learner.local_rows(rows))

    # ------------------------------------------------------------------------- periodic work
    def tick(self, extra: Callable[[float], dict[str, float]] | None = None) -> None:
        """Evaluation, report, metric write and checkpoint, each when it is due. `extra(elapsed)`
        adds the loop's own metrics to a write."""
        if self.due_eval(self.env_steps):
            self.logger.write(self.env_steps, self.evaluate())
        if self.learner.updates and self.due_report(self.learner.updates):
            self.logger.write(self.env_steps, self.report())
        elapsed = max(self.due_log.elapsed(), 1e-9)
        if self.due_log():
            steps, updates = self._since_log
            self._since_log = (self.counters.agent_steps, self.learner.updates)
            batch_steps = self.learner.batch_size * self.cfg.batch_length
            self.logger.write(self.env_steps, {
                **self.metrics(), **(extra(elapsed) if extra else {}),
                "fps/env": (self.counters.agent_steps - steps) * self.repeat / elapsed,
                "fps/train": (self.learner.updates - updates) * batch_steps / elapsed,
                "learner/updates_per_s": (self.learner.updates - updates) / elapsed})
        if self.due_save():
            self.save()

    def evaluate(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.evals = evaluate(self.eval_policy, self.learner.params(), self.eval_env,
                              self.cfg.run.eval_episodes, self.repeat,
                              video=self.cfg.logger.eval_video)
        self.timing["time/eval_s"] = time.perf_counter() - start
        return self.evals

    def report(self) -> dict[str, Any]:
        """The agent's report (open-loop prediction and reconstruction videos for DreamerV3)
        on replayed sequences."""
        start = time.perf_counter()
        batch = self.replay.sample(self.cfg.logger.report_batch, rng=self.rngs.numpy("report"))
        out = {f"report/{k}": v
               for k, v in self.learner.report(batch, self.rngs.key("report")).items()}
        self.timing["time/report_s"] = time.perf_counter() - start
        return out

    def metrics(self) -> dict[str, float]:
        """Averages since the last write, counters, replay, memory and timing."""
        skips = self.pending.flush(self.averages)
        return {**self.averages.flush(), **self.replay.stats, **skips, **self.timing,
                "train/updates": self.learner.updates, "episode/count": self.counters.episodes,
                "replay/gib": self.replay.nbytes / 2**30,
                "memory/rss_gib": psutil.Process().memory_info().rss / 2**30,
                "memory/available_gib": psutil.virtual_memory().available / 2**30,
                "time/hours": self._seconds() / 3600}

    def finish(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """The final evaluation (unless one just ran at this step) and metric write; returns the
        evaluation."""
        fresh = not (self.evals and self.due_eval.last == self.env_steps)
        if fresh:
            self.evaluate()
        self.learner.check_replicas()
        self.logger.write(self.env_steps, {**self.metrics(), **(self.evals if fresh else {}),
                                           **(extra or {})})
        return self.evals

    # ------------------------------------------------------------------------- checkpoints
    def _seconds(self) -> float:
        return self.counters.trained_seconds + time.time() - self.started

    def save(self) -> None:
        """Saves the replay's new steps, then a checkpoint that matches them. The train state is
        always finite (non-finite updates are skipped), which is checked once more here."""
        start = time.perf_counter()
        state = self.learner.host_state()
        if not all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(state)
                   if np.issubdtype(np.asarray(x).dtype, np.floating)):
            warnings.warn("train state holds non-finite values; checkpoint not written",
                          stacklevel=2)
            return
        self.write_context()
        self.replay.save()
        counters = dataclasses.replace(
            self.counters, trained_seconds=self._seconds(), nonfinite_skips=self.pending.skips,
            last_eval=self.due_eval.last, last_report=self.due_report.last)
        meta = {"env_steps": self.env_steps, "updates": self.learner.updates,
                "counters": dataclasses.asdict(counters), "rngs": self.rngs.state(),
                "replay": self.replay.state(), "config": self.cfg.to_dict(),
                "saved_at": time.time()}
        self.checkpoints.save(self.env_steps, state, meta)
        self.timing["time/checkpoint_s"] = time.perf_counter() - start

    def _restore(self) -> None:
        """Continues from the newest readable checkpoint, if there is one."""
        found = self.checkpoints.restore(abstract(self.learner.host_state()))
        replay_dir = self.logdir / "replay"
        if found is None:
            if replay_dir.is_dir() and any(replay_dir.glob("*.npz")):
                # Steps saved by a run that never wrote a checkpoint: no counters describe them.
                aside = replay_dir.with_name(f"replay-without-checkpoint-{time.time_ns()}")
                replay_dir.rename(aside)
                warnings.warn(f"{replay_dir} held steps but there is no checkpoint to resume; "
                              f"moved them to {aside} and starting afresh", stacklevel=2)
            return
        step, state, meta = found
        self.learner.load_state(state, meta["updates"])
        self.counters = Counters.from_meta(meta)
        self.counters.starts += 1
        self.rngs.load_state(meta["rngs"])
        loaded = self.replay.load(until=meta["replay"]["inserts"])
        self.replay.load_state(meta["replay"])
        print(f"dreamer: resumed {self.checkpoints.directory / str(step)}: {self.env_steps} env "
              f"steps, {self.learner.updates} updates, {loaded} replay steps", file=sys.stderr)

    def _wandb_settings(self) -> dict[str, Any]:
        lg = self.cfg.logger
        return {"config": self.cfg.flat(), "run_id": self.counters.wandb_id,
                "project": lg.project, "entity": lg.entity, "group": lg.group, "tags": lg.tags,
                "mode": lg.mode}

    def close(self) -> None:
        """Saves (replay, then checkpoint) and releases the logger and the environment."""
        try:
            self.save()
        finally:
            self.logger.close()
            self.checkpoints.close()
            self.eval_env.close()
