"""The state of a training run on the host, shared by both training loops: the learner, the
replay, the acting policies, the resumable counters (`dreamer.run.state`), and the periodic work
that falls due (evaluation, reports and metric writes by its `dreamer.run.monitor.Monitor`;
checkpoints). The loops change it only through methods.

In a multi-host run each process holds a session: its own environments, replay (under
`replay/process-<i>`) and random streams, and the learner they share. The processes run the loop
in lockstep (the same steps and updates, checkpoints when process 0's clock says so); process 0
alone writes the logs.
"""
from __future__ import annotations

import math
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dreamer.agents import make_agent
from dreamer.config import Config
from dreamer.core.rngs import Rngs
from dreamer.envs import make_env
from dreamer.logging import Logger
from dreamer.replay import Replay, prioritized_options
from dreamer.run import state as run_state
from dreamer.run.acting import AgentPolicy
from dreamer.run.checkpoint import Checkpointer
from dreamer.run.clocks import LockstepSeconds, Ratio
from dreamer.run.learner import Learner
from dreamer.run.monitor import Monitor
from dreamer.run.state import Counters

SYNC_TICKS = 64  # ticks between the processes' checks whether a checkpoint is due


class ContextWriteback:
    """The replay updates of the last update (fresh latents of the replayed steps, new
    priorities of their starts), held until the next update has been dispatched and then written
    into the replay, so that the host does not wait for the devices."""

    def __init__(self, replay: Replay, learner: Learner):
        self.replay, self.learner = replay, learner
        self.pending: tuple[Any, Any] | None = None

    def hold(self, ref: Any, rows: Any) -> None:
        """Writes the held updates back and holds `rows` (for replay reference `ref`)."""
        self.flush()
        if rows:
            self.pending = (ref, rows)

    def flush(self) -> None:
        """Writes the held updates into the replay (waits for the update that made them)."""
        if self.pending is not None:
            ref, rows = self.pending
            self.pending = None
            self.replay.update(ref, self.learner.local_rows(rows))


def acts_on_device(setting: str, agent: Any) -> bool:
    """Whether the training process acts on the first learner device: `actors.policy_device`
    'learner' or 'host', or under 'auto' the agent's own `acts_on_device`."""
    if setting == "auto":
        return bool(agent.acts_on_device)
    return setting == "learner"


class Session:
    """What both training loops share. Built from the newest checkpoint under
    `logdir/checkpoints` when there is one; `close` saves the replay's new chunks and then a
    checkpoint, as every `run.checkpoint_every` seconds. `counters` is the one copy of the
    resumable counters, changed in place as the run goes; a checkpoint saves it as it stands."""

    def __init__(self, cfg: Config, logdir: Path, checkpoints: Checkpointer,
                 logger: Logger | None = None, stop: threading.Event | None = None):
        self.cfg, self.logdir, self.checkpoints = cfg, logdir, checkpoints
        self.stop = stop or threading.Event()  # set: the loops stop as on Ctrl-C
        self.repeat = cfg.env.action_repeat
        # The learner's devices start from the same state and draw the same update keys.
        self.rngs = Rngs(cfg.seed, jax.process_index(), shared=("init", "update"))
        self.replay_dir = logdir / "replay"
        if jax.process_count() > 1:
            self.replay_dir = self.replay_dir / f"process-{jax.process_index()}"
            logger = logger if jax.process_index() == 0 else Logger([])
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
                             self.replay_dir, cfg.replay.chunk, cfg.replay.recency,
                             cfg.replay.recency_window, cfg.replay.online, rngs.numpy("replay"),
                             prioritized=prioritized_options(cfg.replay))
        # Acting in this process runs on the host CPU (`Learner.params`, float32 there under
        # `auto`), or on the first learner device for an agent that plans at every step
        # (`acts_on_device`, or `actors.policy_device: learner`), with the current parameters
        # where they are. Actor processes always act on their own CPU.
        self.acts_on_device = acts_on_device(cfg.actors.policy_device, self.agent)
        acting = make_agent(cfg, space.obs_space, space.act_space,
                            platform=None if self.acts_on_device else "cpu")
        self.policy = AgentPolicy(acting, cfg.run.envs, rngs.key_stream("policy"), cfg.jax.jit)
        eval_policy = AgentPolicy(acting, 1, rngs.key_stream("eval"), cfg.jax.jit)
        # On the host, acting may lag the learner by up to `actors.max_staleness` updates on
        # accelerators, so that env steps overlap updates; on the CPU both share the cores and
        # the policy acts with the current parameters.
        self.acting_lag = 0 if self.learner.on_host else int(cfg.actors.max_staleness)
        self.ratio = Ratio(cfg, self.learner.batch_size // cfg.batch_size,  # local devices
                           self.learner.agent.trained_length)
        self.writeback = ContextWriteback(self.replay, self.learner)
        restored = run_state.restore(self.checkpoints, self.learner, self.replay, rngs,
                                     self.replay_dir, self.repeat)
        self.counters = restored if restored is not None else Counters(
            wandb_id=f"{self.logdir.name[:48]}-{uuid.uuid4().hex[:8]}")
        # 0: at exit only; all processes of a multi-host run save together.
        self.due_save = LockstepSeconds(cfg.run.checkpoint_every or math.inf, SYNC_TICKS)
        self.monitor = Monitor(cfg, self.logdir, self.counters, self.learner, self.replay, rngs,
                               eval_policy, self.eval_env, logger, self.acting_params)

    def acting_params(self) -> Any:
        """The parameters this process acts with: on the first learner device, or on the host
        at most `acting_lag` updates behind."""
        if self.acts_on_device:
            return self.learner.device_params()
        return self.learner.params(self.acting_lag)

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
        self.monitor.averages.add({"episode/score": score, "episode/length": length})

    def record(self, metrics: dict[str, float]) -> None:
        """Values averaged into the next metric write."""
        self.monitor.averages.add(metrics)

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
        """One update; its replay updates are written back after the next one is dispatched."""
        metrics, rows = self.learner.update(batch, self.rngs.key("update"))
        self.monitor.pending.add(metrics)
        self.writeback.hold(ref, rows)

    # ------------------------------------------------------------------------- periodic work
    def tick(self, extra: Callable[[float], dict[str, float]] | None = None) -> None:
        """Evaluation, report, metric write (`Monitor.tick`, with the loop's `extra` metrics)
        and checkpoint, each when it is due."""
        self.monitor.tick(extra)
        if self.due_save():
            self.save()

    def finish(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """The final evaluation and metric write (`Monitor.finish`); returns the evaluation."""
        return self.monitor.finish(extra)

    def save(self) -> None:
        """Saves the replay's new steps, then a checkpoint that matches them. The train state is
        always finite (non-finite updates are skipped), which is checked once more here."""
        start = time.perf_counter()
        state = self.learner.host_state()
        if not run_state.finite(state):
            warnings.warn("train state holds non-finite values; checkpoint not written",
                          stacklevel=2)
            return
        self.writeback.flush()
        self.replay.save(keep=self.cfg.run.checkpoint_keep)  # priorities: one file per checkpoint
        self.monitor.count_time()
        self.checkpoints.save(self.env_steps, state, run_state.record(
            self.cfg, self.counters, self.rngs, self.replay, self.learner.updates,
            self.env_steps))
        self.monitor.timing["time/checkpoint_s"] = time.perf_counter() - start

    def close(self, save: bool = True) -> None:
        """Saves (replay, then checkpoint) unless told not to, and releases the logger and the
        environment."""
        try:
            if save:
                self.save()
        finally:
            self.monitor.close()
            self.checkpoints.close()
            self.eval_env.close()
