"""The training loops: acting in this process or in actor processes, updates at the train
ratio, and the run around them (logdir, resume check, the session's periodic work).

A multi-host run (`parallel.distributed`) runs the loop that acts in the learner process, in
lockstep on every process (see `dreamer.run.session`). Processes that stop early (Ctrl-C, SIGTERM,
an error) cannot agree on a last checkpoint, so such a run resumes from its last periodic one
(`run.checkpoint_every`); one that reaches `run.steps` saves at the end as usual.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import jax

from dreamer.config import Config, ConfigError
from dreamer.core.parallel import Prefetcher
from dreamer.envs import make_env
from dreamer.logging import Logger
from dreamer.replay import prioritized_options
from dreamer.run.acting import Collector
from dreamer.run.actor_pools import make_pool
from dreamer.run.checkpoint import Checkpointer, incompatible_keys
from dreamer.run.clocks import Phases
from dreamer.run.learner import setup_distributed
from dreamer.run.monitor import NonFiniteError
from dreamer.run.session import Session

__all__ = ["NonFiniteError", "Session", "check_distributed", "check_resumable",
           "prepare_logdir", "resolve_logdir", "run"]


def resolve_logdir(cfg: Config) -> Path:
    """`logdir`, or a new dated folder under runs/ when it is empty."""
    if cfg.logdir:
        return Path(cfg.logdir).expanduser()
    return Path("runs") / f"{cfg.env.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_logdir(cfg: Config) -> Path:
    """Creates the logdir and writes its `config.yaml` (process 0 of a multi-host run)."""
    logdir = resolve_logdir(cfg)
    logdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        cfg.update({"logdir": str(logdir)}).save(logdir / "config.yaml")
    return logdir


def check_distributed(cfg: Config) -> None:
    """Raises ConfigError for what a multi-host run does not support."""
    if not cfg.parallel.distributed:
        return
    if cfg.actors.num > 0:
        raise ConfigError(
            f"parallel.distributed=true needs actors.num=0 (got {cfg.actors.num}): the "
            "processes of a multi-host run step their environments in lockstep, and actor "
            "processes deliver steps when they come.")
    if not cfg.jax.jit:
        raise ConfigError("parallel.distributed=true needs jax.jit=true: the eager step runs "
                          "on one device of one process.")
    if not cfg.logdir:
        raise ConfigError("parallel.distributed=true needs --logdir: the same folder for every "
                          "process, on a filesystem that all hosts share.")


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
    check_distributed(cfg)
    prioritized_options(cfg.replay)  # its ConfigError before anything is built
    setup_distributed(cfg)
    logdir = resolve_logdir(cfg)
    cfg = cfg.update({"logdir": str(logdir)})
    checkpoints = Checkpointer(logdir / "checkpoints", cfg.run.checkpoint_keep)
    session, finished = None, False
    try:
        meta = checkpoints.latest_meta()
        if meta is not None:  # before config.yaml is overwritten or anything is built
            check_resumable(meta, cfg, checkpoints.directory)
        prepare_logdir(cfg)
        session = Session(cfg, logdir, checkpoints, logger, stop)
        extra = _train_with_actors(session) if cfg.actors.num > 0 else _train(session)
        out = session.finish(extra)
        finished = True
        return out
    finally:
        if session is not None:
            session.close(save=finished or jax.process_count() == 1)
        else:
            checkpoints.close()


def _train(s: Session) -> dict[str, float]:
    """Steps `run.envs` environments in this process and trains at the train ratio."""
    cfg = s.cfg
    envs = [make_env(cfg.env, s.env_seed(i)) for i in range(cfg.run.envs)]
    try:
        collector = Collector(envs, s.agent.act_dim)
        random_outputs = s.agent.policy_outputs_initial(len(envs))
        phases = Phases()  # where the time goes: loop/<phase>_fraction in the metrics
        while s.env_steps < cfg.run.steps:
            s.check_stop()
            with phases("act"):
                if s.env_steps < cfg.run.prefill:
                    actions = collector.random_actions(s.rngs.numpy("prefill"))
                    outputs = random_outputs
                else:
                    actions, outputs = s.policy(s.acting_params(),
                                                collector.batch_obs())
            with phases("env"):
                records, episodes = collector.step(actions, outputs)
            with phases("insert"):
                for worker, record in enumerate(records):
                    s.add_steps([record], worker)
                for ep in episodes:
                    s.add_episode(ep["score"], ep["length"] * s.repeat)
            for _ in range(max(0, s.owed())):
                with phases("sample"):
                    batch = s.sample()
                with phases("update"):
                    s.update(*batch)
            s.tick(phases.shares)
    finally:
        for env in envs:
            env.close()
    return {}


def _train_with_actors(s: Session) -> dict[str, float]:
    """Training with `actors.num` actor processes feeding the replay (see `dreamer.run.actors`).

    The learner trains whenever it owes updates for the steps received (the train ratio) and
    otherwise waits for steps; the time it waits after prefill is `learner/wait_fraction`.
    Batches are sampled and copied to the devices ahead of time by a background thread.
    """
    cfg, learner = s.cfg, s.learner
    publish_every = max(1, cfg.actors.max_staleness // 2)
    published, waited = -1, 0.0
    totals = {"actors/restarts": 0, "actors/env_restarts": 0}
    # A resumed run's actors draw new episodes.
    pool = make_pool(cfg if s.counters.starts == 0 else cfg.update({"seed": s.env_seed(0)}))
    prefetch: Prefetcher | None = None  # samples and places batches in a background thread
    if cfg.run.prefill == 0:  # the actors act with the (initial) policy from the first step
        pool.publish(learner.updates, jax.device_get(learner.params()))
        published = learner.updates

    def extra(elapsed: float) -> dict[str, float]:
        nonlocal waited
        totals["actors/restarts"] = pool.restarts
        out = {**totals, "learner/wait_fraction": waited / elapsed}
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
                        s.add_steps([{k: v[i] for k, v in message.data.items()}
                                     for i in range(n)], message.stream)
                        if message.version >= 0:
                            s.record({"actors/staleness": message.lag})
                    elif kind == "report":
                        for ep in message.episodes:
                            s.add_episode(ep["score"], ep["length"])
                        s.record({"fps/actor": message.frames / max(message.seconds, 1e-9)})
                        totals["actors/env_restarts"] += message.env_restarts
            s.tick(extra)
        totals["actors/restarts"] = pool.restarts
    finally:
        if prefetch is not None:
            prefetch.close()
        pool.close()
    return totals
