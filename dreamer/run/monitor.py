"""What a training run writes while it goes: evaluations, the agent's reports and metric writes,
each when it is due, and the metrics of updates (skipped non-finite ones counted and limited)."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import psutil

from dreamer.config import Config
from dreamer.core.rngs import Rngs
from dreamer.envs import Env
from dreamer.logging import Logger, make_logger
from dreamer.replay import Replay
from dreamer.run.acting import AgentPolicy, evaluate
from dreamer.run.clocks import Every, EverySeconds
from dreamer.run.learner import Learner
from dreamer.run.state import Counters


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
    metrics go into the averages and the skipped (non-finite) ones are counted in
    `counters.nonfinite_skips`; `limit` consecutive skips stop training."""

    def __init__(self, limit: int, counters: Counters | None = None):
        self.pending: list[dict[str, Any]] = []
        self.limit, self.in_a_row = limit, 0
        self.counters = counters if counters is not None else Counters()

    def add(self, metrics: dict[str, Any]) -> None:
        self.pending.append(metrics)

    def flush(self, averages: Averages) -> dict[str, float]:
        for metrics in jax.device_get(self.pending):
            if float(metrics.pop("nonfinite")) > 0:
                self.counters.nonfinite_skips += 1
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
        return {"train/nonfinite_skips": float(self.counters.nonfinite_skips)}


class Monitor:
    """Evaluates every `run.eval_every` env steps (the policy's 'eval' mode), reports every
    `logger.report_every` updates and writes the metrics every `run.log_every` seconds, to its
    logger (one made for `logdir` unless given). The counts at the last evaluation and report,
    the skipped updates and the trained seconds are kept in the run's `counters`."""

    def __init__(self, cfg: Config, logdir: Path, counters: Counters, learner: Learner,
                 replay: Replay, rngs: Rngs, eval_policy: AgentPolicy, eval_env: Env,
                 logger: Logger | None = None, acting_params: Callable[[], Any] | None = None):
        self.cfg, self.counters, self.learner, self.replay, self.rngs = (
            cfg, counters, learner, replay, rngs)
        self.eval_policy, self.eval_env = eval_policy, eval_env
        self.acting_params = acting_params or learner.params  # where evaluation acts
        self.repeat = cfg.env.action_repeat
        self.pending = UpdateMetrics(cfg.run.max_nonfinite, counters)
        self.averages, self.evals, self.timing = Averages(), {}, {}
        self.due_eval = Every(cfg.run.eval_every)
        self.due_report = Every(cfg.logger.report_every)
        self.due_log = EverySeconds(cfg.run.log_every)
        self.logger = logger or make_logger(
            logdir, int(cfg.run.steps), cfg.logger.console, self.env_steps,
            self._wandb_settings() if cfg.logger.wandb else None)
        self._counted = time.time()  # wall time up to which `counters.trained_seconds` counts
        self._since_log = (counters.agent_steps, learner.updates)

    @property
    def env_steps(self) -> int:
        return self.counters.agent_steps * self.repeat

    def count_time(self) -> None:
        """Adds the wall time since the last count to `counters.trained_seconds`."""
        now = time.time()
        self.counters.trained_seconds += now - self._counted
        self._counted = now

    def tick(self, extra: Callable[[float], dict[str, float]] | None = None) -> None:
        """Evaluation, report and metric write, each when it is due. `extra(elapsed)` adds the
        loop's own metrics to a write."""
        counters, updates = self.counters, self.learner.updates
        if self.due_eval(self.env_steps, counters.last_eval):
            counters.last_eval = self.env_steps
            self.logger.write(self.env_steps, self.evaluate())
        if updates and self.due_report(updates, counters.last_report):
            counters.last_report = updates
            self.logger.write(self.env_steps, self.report())
        elapsed = max(self.due_log.elapsed(), 1e-9)
        if self.due_log():
            steps, done = self._since_log
            self._since_log = (counters.agent_steps, updates)
            batch_steps = self.learner.batch_size * self.cfg.batch_length
            self.logger.write(self.env_steps, {
                **self.metrics(), **(extra(elapsed) if extra else {}),
                "fps/env": (counters.agent_steps - steps) * self.repeat / elapsed,
                "fps/train": (updates - done) * batch_steps / elapsed,
                "learner/updates_per_s": (updates - done) / elapsed})

    def evaluate(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.evals = evaluate(self.eval_policy, self.acting_params(), self.eval_env,
                              self.cfg.run.eval_episodes, self.repeat,
                              video=self.cfg.logger.eval_video, mode="eval")
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
        self.count_time()
        return {**self.averages.flush(), **self.replay.stats, **skips, **self.timing,
                "train/updates": self.learner.updates, "episode/count": self.counters.episodes,
                "replay/gib": self.replay.nbytes / 2**30,
                "memory/rss_gib": psutil.Process().memory_info().rss / 2**30,
                "memory/available_gib": psutil.virtual_memory().available / 2**30,
                "time/hours": self.counters.trained_seconds / 3600}

    def finish(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """The final evaluation (unless one just ran at this step), a check that the learner's
        replicas agree, and the final metric write; returns the evaluation."""
        fresh = not (self.evals and self.counters.last_eval == self.env_steps)
        if fresh:
            self.evaluate()
        self.learner.check_replicas()
        self.logger.write(self.env_steps, {**self.metrics(), **(self.evals if fresh else {}),
                                           **(extra or {})})
        return self.evals

    def close(self) -> None:
        self.logger.close()

    def _wandb_settings(self) -> dict[str, Any]:
        lg = self.cfg.logger
        return {"config": self.cfg.flat(), "run_id": self.counters.wandb_id,
                "project": lg.project, "entity": lg.entity, "group": lg.group, "tags": lg.tags,
                "mode": lg.mode}
