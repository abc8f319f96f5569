"""The single-process training loop: prefill, train ratio, evaluation and logging."""
from __future__ import annotations

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

from dreamer.acting import AgentPolicy, Collector, evaluate
from dreamer.actors import make_pool
from dreamer.agents import make_agent
from dreamer.checkpoint import Checkpointer, abstract, incompatible_keys
from dreamer.config import Config, ConfigError, updates_due
from dreamer.envs import make_env
from dreamer.learner import Learner, setup_distributed
from dreamer.logging import Logger, make_logger
from dreamer.parallel import Prefetcher
from dreamer.replay import Replay
from dreamer.rngs import Rngs


def resolve_logdir(cfg: Config) -> Path:
    """`logdir`, or a new dated folder under runs/ when it is empty."""
    if cfg.logdir:
        return Path(cfg.logdir).expanduser()
    return Path("runs") / f"{cfg.env.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_logdir(cfg: Config) -> Path:
    """Creates the logdir and writes its `config.yaml`."""
    logdir = resolve_logdir(cfg)
    logdir.mkdir(parents=True, exist_ok=True)
    cfg.update({"logdir": str(logdir)}).save(logdir / "config.yaml")
    return logdir


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

    def __init__(self, limit: int):
        self.pending: list[dict[str, Any]] = []
        self.limit, self.skips, self.in_a_row = limit, 0, 0

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


def check_resumable(meta: dict[str, Any], cfg: Config, directory: Path) -> None:
    """Raises ConfigError when `cfg` changes a key that the checkpoint's state depends on."""
    saved = Config().update(meta["config"], source=f"checkpoint in {directory}").flat()
    changed = incompatible_keys(saved, cfg.flat())
    if changed:
        raise ConfigError(
            f"the checkpoint in {directory} was trained with other values of keys that shape the "
            f"model or its data: {'; '.join(changed)}. Resume with the checkpoint's values (see "
            f"{directory.parent / 'config.yaml'}) or train in a new --logdir.")


def run(cfg: Config, logger: Logger | None = None,
        stop: threading.Event | None = None) -> dict[str, Any]:
    """Train an agent as configured; returns the last evaluation metrics.

    A logdir that holds checkpoints resumes from the newest readable one: train state, counters,
    RNG state and replay continue exactly where it was saved.
    """
    setup_distributed(cfg)
    logdir = resolve_logdir(cfg)
    cfg = cfg.update({"logdir": str(logdir)})
    checkpoints = Checkpointer(logdir / "checkpoints", cfg.run.checkpoint_keep)
    session = None
    try:
        meta = checkpoints.latest_meta()
        if meta is not None:  # before config.yaml is overwritten or anything is built
            check_resumable(meta, cfg, checkpoints.directory)
        prepare_logdir(cfg)
        session = Session(cfg, logdir, checkpoints, logger, stop)
        extra = _train_with_actors(session) if cfg.actors.num > 0 else _train(session)
        return session.finish(extra)
    finally:
        if session is not None:
            session.close()
        else:
            checkpoints.close()


class Session:
    """What both training loops share: the learner, the replay, counters and RNG state, and the
    evaluations, reports, metric writes and checkpoints that fall due as training goes on.

    Built from the newest checkpoint under `logdir/checkpoints` when there is one. `close`
    saves the replay's new chunks and then a checkpoint, as every `run.checkpoint_every` seconds.
    """

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
        cfg, logdir = self.cfg, self.logdir
        rngs = self.rngs
        self.learner = Learner(cfg, self.eval_env.obs_space, self.eval_env.act_space,
                               rngs.key("init"))
        self.agent = self.learner.agent
        self.replay = Replay(cfg.replay.capacity, self.agent.sequence_length, logdir / "replay",
                             cfg.replay.chunk, cfg.replay.recency, cfg.replay.recency_window,
                             cfg.replay.online, rngs.numpy("replay"))
        # Acting runs on the host CPU (`Learner.params`), in float32 there under `auto`.
        acting = make_agent(cfg, self.eval_env.obs_space, self.eval_env.act_space,
                            platform="cpu")
        self.policy = AgentPolicy(acting, cfg.run.envs, rngs.key_stream("policy"), cfg.jax.jit)
        self.eval_policy = AgentPolicy(acting, 1, rngs.key_stream("eval"), cfg.jax.jit)
        # Acting in this process may lag the learner by up to `actors.max_staleness` updates on
        # accelerators, so that env steps overlap updates; on the CPU both share the cores and
        # the policy acts with the current parameters.
        self.acting_lag = 0 if self.learner.on_host else int(cfg.actors.max_staleness)
        self.batch_steps = self.learner.batch_size * cfg.batch_length
        self.local_devices = self.learner.batch_size // cfg.batch_size
        self._context: tuple[Any, Any] | None = None  # replay updates not yet written back
        self.agent_steps = self.episodes = self.last_eval = self.last_report = 0
        self.starts, self.trained_seconds = 0, 0.0
        self.wandb_id = f"{logdir.name[:48]}-{uuid.uuid4().hex[:8]}"
        self.pending = UpdateMetrics(cfg.run.max_nonfinite)
        self.averages, self.evals = Averages(), {}
        self.timing: dict[str, float] = {}
        self._restore()
        self.logger = logger or make_logger(
            logdir, int(cfg.run.steps), cfg.logger.console, self.env_steps,
            self._wandb_settings() if cfg.logger.wandb else None)
        now = time.time()
        self.started = now
        self.last_log, self.last_save = now, now
        self.last_log_steps, self.last_log_updates = self.agent_steps, self.learner.updates

    # ------------------------------------------------------------------------- counters
    @property
    def env_steps(self) -> int:
        return self.agent_steps * self.repeat

    def env_seed(self, index: int) -> int:
        """Seed of training environment `index`; a resumed run draws new episodes."""
        return self.rngs.int_seed("env", index, self.starts)

    def owed(self) -> int:
        """Updates due for the agent steps collected so far and not done yet (`updates_due`);
        none while no stream of the replay holds a whole sequence."""
        if not self.replay.ready:
            return 0
        return updates_due(self.cfg, self.agent_steps, self.local_devices) - self.learner.updates

    def sample(self) -> tuple[dict[str, np.ndarray], Any]:
        """A training batch and its replay reference (for writing the context back)."""
        return self.replay.sample(self.learner.batch_size, ref=True)

    def update(self, batch: Any, ref: Any) -> None:
        """One update; the fresh replay context it returns is written back into the replay
        after the next update has been dispatched, so the host does not wait for the devices."""
        metrics, context = self.learner.update(batch, self.rngs.key("update"))
        self.pending.add(metrics)
        self.write_context()
        if context:
            self._context = (ref, context)

    def write_context(self) -> None:
        """Writes the last update's replay context into the replay (waits for that update)."""
        if self._context is not None:
            ref, context = self._context
            self._context = None
            self.replay.update(ref, self.learner.local_rows(context))

    def check_stop(self) -> None:
        """Raises KeyboardInterrupt once a stop was requested (`run`'s `stop` event): a signal
        handler's own exception can be swallowed where Python ignores exceptions (a garbage
        collection callback), the loops' check cannot."""
        if self.stop.is_set():
            raise KeyboardInterrupt

    def add_episode(self, score: float, length: float) -> None:
        self.episodes += 1
        self.averages.add({"episode/score": score, "episode/length": length})

    # ------------------------------------------------------------------------- periodic work
    def tick(self, extra: Callable[[float], dict[str, float]] | None = None) -> None:
        """Evaluation, report, metric write and checkpoint, each when it is due. `extra(elapsed)`
        adds the loop's own metrics to a write."""
        cfg, now = self.cfg, time.time()
        if cfg.run.eval_every and self.env_steps - self.last_eval >= cfg.run.eval_every:
            self.last_eval = self.env_steps
            self.logger.write(self.env_steps, self.evaluate())
        if (cfg.logger.report_every and self.learner.updates
                and self.learner.updates - self.last_report >= cfg.logger.report_every):
            self.last_report = self.learner.updates
            self.logger.write(self.env_steps, self.report())
        if now - self.last_log >= cfg.run.log_every:
            elapsed = now - self.last_log
            self.logger.write(self.env_steps, {
                **self.metrics(), **(extra(elapsed) if extra else {}),
                "fps/env": (self.agent_steps - self.last_log_steps) * self.repeat / elapsed,
                "fps/train": (self.learner.updates - self.last_log_updates) * self.batch_steps
                / elapsed})
            self.last_log, self.last_log_steps = now, self.agent_steps
            self.last_log_updates = self.learner.updates
        if cfg.run.checkpoint_every and time.time() - self.last_save >= cfg.run.checkpoint_every:
            self.save()

    def evaluate(self) -> dict[str, Any]:
        start = time.perf_counter()
        cfg = self.cfg
        self.evals = evaluate(self.eval_policy, self.learner.params(), self.eval_env,
                              cfg.run.eval_episodes, self.repeat, video=cfg.logger.eval_video)
        self.timing["time/eval_s"] = time.perf_counter() - start
        return self.evals

    def report(self) -> dict[str, Any]:
        """Open-loop prediction and reconstruction videos on replayed sequences."""
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
                "train/updates": self.learner.updates, "episode/count": self.episodes,
                "replay/gib": self.replay.nbytes / 2**30,
                "memory/rss_gib": psutil.Process().memory_info().rss / 2**30,
                "memory/available_gib": psutil.virtual_memory().available / 2**30,
                "time/hours": (self.trained_seconds + time.time() - self.started) / 3600}

    def finish(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """The final evaluation (unless one just ran at this step) and metric write; returns the
        evaluation."""
        fresh = not (self.evals and self.last_eval == self.env_steps)
        if fresh:
            self.evaluate()
        self.learner.check_replicas()
        self.logger.write(self.env_steps, {**self.metrics(), **(self.evals if fresh else {}),
                                           **(extra or {})})
        return self.evals

    # ------------------------------------------------------------------------- checkpoints
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
        meta = {
            "env_steps": self.env_steps, "agent_steps": self.agent_steps,
            "updates": self.learner.updates, "episodes": self.episodes,
            "last_eval": self.last_eval, "last_report": self.last_report,
            "nonfinite_skips": self.pending.skips, "starts": self.starts,
            "trained_seconds": self.trained_seconds + time.time() - self.started,
            "rngs": self.rngs.state(),
            "replay": self.replay.state(), "wandb_id": self.wandb_id,
            "config": self.cfg.to_dict(), "saved_at": time.time(),
        }
        self.checkpoints.save(self.env_steps, state, meta)
        self.last_save = time.time()
        self.timing["time/checkpoint_s"] = time.perf_counter() - start

    def _restore(self) -> None:
        """Continues from the newest readable checkpoint, if there is one."""
        target = abstract(self.learner.host_state())
        found = self.checkpoints.restore(target)
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
        self.agent_steps, self.episodes = meta["agent_steps"], meta["episodes"]
        self.last_eval, self.last_report = meta["last_eval"], meta["last_report"]
        self.pending.skips = meta["nonfinite_skips"]
        self.starts = meta["starts"] + 1
        self.trained_seconds = meta["trained_seconds"]
        self.rngs.load_state(meta["rngs"])
        self.wandb_id = meta["wandb_id"]
        loaded = self.replay.load(until=meta["replay"]["inserts"])
        self.replay.load_state(meta["replay"])
        print(f"dreamer: resumed {self.checkpoints.directory / str(step)}: {self.env_steps} env "
              f"steps, {self.learner.updates} updates, {loaded} replay steps", file=sys.stderr)

    def _wandb_settings(self) -> dict[str, Any]:
        lg = self.cfg.logger
        return {"config": self.cfg.flat(), "run_id": self.wandb_id, "project": lg.project,
                "entity": lg.entity, "group": lg.group, "tags": lg.tags, "mode": lg.mode}

    def close(self) -> None:
        """Saves (replay, then checkpoint) and releases the logger and the environment."""
        try:
            self.save()
        finally:
            self.logger.close()
            self.checkpoints.close()
            self.eval_env.close()


def _train(s: Session) -> dict[str, float]:
    """Steps `run.envs` environments in this process and trains at the train ratio."""
    cfg = s.cfg
    envs = [make_env(cfg.env, s.env_seed(i)) for i in range(cfg.run.envs)]
    try:
        collector = Collector(envs, s.agent.act_dim)
        random_outputs = s.agent.policy_outputs_initial(len(envs))
        while s.env_steps < cfg.run.steps:
            s.check_stop()
            if s.env_steps < cfg.run.prefill:
                actions = collector.random_actions(s.rngs.numpy("prefill"))
                outputs = random_outputs
            else:
                actions, outputs = s.policy(s.learner.params(s.acting_lag),
                                            collector.batch_obs())
            records, episodes = collector.step(actions, outputs)
            for worker, record in enumerate(records):
                s.replay.add(record, worker)
            s.agent_steps += len(records)
            for ep in episodes:
                s.add_episode(ep["score"], ep["length"] * s.repeat)
            for _ in range(max(0, s.owed())):
                s.update(*s.sample())
            s.tick()
    finally:
        for env in envs:
            env.close()
    return {}


def _train_with_actors(s: Session) -> dict[str, float]:
    """Training with `actors.num` actor processes feeding the replay (see `dreamer.actors`).

    The learner trains whenever it owes updates for the steps received (the train ratio) and
    otherwise waits for steps; the time it waits after prefill is `learner/wait_fraction`.
    Batches are sampled and copied to the devices ahead of time by a background thread.
    """
    cfg, learner = s.cfg, s.learner
    publish_every = max(1, cfg.actors.max_staleness // 2)
    published, waited = -1, 0.0
    totals = {"actors/restarts": 0, "actors/env_restarts": 0}
    # A resumed run's actors draw new episodes.
    pool = make_pool(cfg if s.starts == 0 else cfg.update({"seed": s.env_seed(0)}))
    prefetch: Prefetcher | None = None  # samples and places batches in a background thread
    if cfg.run.prefill == 0:  # the actors act with the (initial) policy from the first step
        pool.publish(learner.updates, jax.device_get(learner.params()))
        published = learner.updates

    def extra(elapsed: float) -> dict[str, float]:
        nonlocal waited
        totals["actors/restarts"] = pool.restarts
        out = {**totals,
               "learner/updates_per_s": (learner.updates - s.last_log_updates) / elapsed,
               "learner/wait_fraction": waited / elapsed}
        if prefetch is not None:
            out["learner/batch_wait_fraction"] = prefetch.wait_fraction()
        waited = 0.0
        return out

    try:
        while s.env_steps < cfg.run.steps:
            s.check_stop()
            pool.check()
            if s.owed() > 0:
                if prefetch is None:  # replay holds enough steps from here on
                    prefetch = Prefetcher(s.sample, lambda pair: (learner.place(pair[0]), pair[1]))
                s.update(*prefetch.next())
                if learner.updates - published >= publish_every:
                    pool.publish(learner.updates, jax.device_get(learner.params()))
                    published = learner.updates
            else:
                start = time.perf_counter()
                # A few chunks at a time, so that training resumes as soon as it owes updates.
                messages = pool.poll(timeout=0.05, limit=2 * cfg.actors.num)
                if s.env_steps >= cfg.run.prefill:
                    waited += time.perf_counter() - start
                for kind, message in messages:
                    if kind == "steps":
                        n = len(message.data["is_first"])
                        for i in range(n):
                            s.replay.add({k: v[i] for k, v in message.data.items()},
                                         message.stream)
                        s.agent_steps += n
                        if message.version >= 0:
                            s.averages.add({"actors/staleness": message.lag})
                    elif kind == "report":
                        for ep in message.episodes:
                            s.add_episode(ep["score"], ep["length"])
                        s.averages.add({"fps/actor": message.frames / max(message.seconds, 1e-9)})
                        totals["actors/env_restarts"] += message.env_restarts
            s.tick(extra)
        totals["actors/restarts"] = pool.restarts
    finally:
        if prefetch is not None:
            prefetch.close()
        pool.close()
    return totals
