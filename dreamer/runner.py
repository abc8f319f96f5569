"""The single-process training loop: prefill, train ratio, evaluation and logging."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dreamer.agent import Agent
from dreamer.config import Config
from dreamer.envs import Env, make_env
from dreamer.learner import Learner, setup_distributed
from dreamer.logging import Logger, make_logger
from dreamer.parallel import Prefetcher
from dreamer.replay import Replay

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]


def to_env_action(action: np.ndarray, discrete: bool) -> np.ndarray:
    """Agent action [A] (one-hot or continuous) -> what the environment takes."""
    if discrete:
        return np.int32(np.argmax(action))
    return np.clip(action, -1.0, 1.0).astype(np.float32)


class Collector:
    """Steps N environments together and reports finished episodes.

    Each step record holds the observation, the action chosen after seeing it, the reward
    received on arriving there and the episode flags, which is the replay's layout.
    """

    def __init__(self, envs: list[Env], act_dim: int):
        self.envs = envs
        self.act_dim = act_dim
        self.discrete = envs[0].act_space.discrete
        self.obs = [env.reset() for env in envs]
        self.score = np.zeros(len(envs))
        self.length = np.zeros(len(envs), np.int64)

    def batch_obs(self) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in self.obs]) for k in self.obs[0]}

    def step(self, actions: np.ndarray) -> tuple[list[dict], list[dict]]:
        """Apply actions [N, A]; returns (step records, finished episode stats)."""
        records, episodes = [], []
        for i, env in enumerate(self.envs):
            record = {**self.obs[i], "action": actions[i].astype(np.float32)}
            records.append(record)
            if record["is_last"]:
                episodes.append({"score": self.score[i], "length": self.length[i]})
                self.score[i], self.length[i] = 0.0, 0
                self.obs[i] = env.reset()
            else:
                self.obs[i] = env.step(to_env_action(actions[i], self.discrete))
                self.score[i] += float(self.obs[i]["reward"])
                self.length[i] += 1
        return records, episodes

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.envs)
        if self.discrete:
            return np.eye(self.act_dim, dtype=np.float32)[rng.integers(0, self.act_dim, n)]
        return rng.uniform(-1, 1, (n, self.act_dim)).astype(np.float32)


class AgentPolicy:
    """Jitted acting for N environments: keeps the recurrent carry between calls."""

    def __init__(self, agent: Agent, num_envs: int, seed: int):
        self.agent = agent
        self.num_envs = num_envs
        jit = agent.cfg.jax.jit
        self._step = jax.jit(agent.policy, static_argnames="mode") if jit else agent.policy
        self.key = jax.random.PRNGKey(seed)
        self.reset()

    def reset(self) -> None:
        self.carry = self.agent.policy_initial(self.num_envs)

    def __call__(self, params: Any, obs: dict[str, np.ndarray], mode: str = "sample"):
        self.key, key = jax.random.split(self.key)
        inputs = {k: v for k, v in obs.items() if k in ("image", "vector", "is_first")}
        self.carry, action = self._step(params, self.carry, inputs, key, mode=mode)
        return np.asarray(action)


def evaluate(policy: AgentPolicy, params: Any, env: Env, episodes: int,
             repeat: int = 1) -> dict[str, float]:
    """Mean score and length (env steps) of `episodes` episodes with the sampling policy."""
    collector = Collector([env], policy.agent.act_dim)
    done = []
    while len(done) < episodes:
        action = policy(params, collector.batch_obs())
        done += collector.step(action)[1]
    return {"eval/score": float(np.mean([e["score"] for e in done])),
            "eval/length": float(np.mean([e["length"] for e in done])) * repeat}


def prepare_logdir(cfg: Config) -> Path:
    if cfg.logdir:
        logdir = Path(cfg.logdir).expanduser()
    else:
        logdir = Path("runs") / f"{cfg.env.task}-{time.strftime('%Y%m%d-%H%M%S')}"
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


def run(cfg: Config, logger: Logger | None = None) -> dict[str, float]:
    """Train an agent as configured; returns the last evaluation metrics."""
    setup_distributed(cfg)
    logdir = prepare_logdir(cfg)
    logger = logger or make_logger(logdir, int(cfg.run.steps))
    repeat = cfg.env.action_repeat
    envs = [make_env(cfg.env, cfg.seed * 1000 + i) for i in range(cfg.run.envs)]
    eval_env = make_env(cfg.env, cfg.seed * 1000 + 999)
    replay = Replay(cfg.replay.capacity, cfg.batch_length, logdir / "replay", cfg.replay.chunk,
                    cfg.replay.recency, cfg.replay.recency_window, cfg.seed)
    if cfg.actors.num > 0:
        for env in envs:
            env.close()
        return run_with_actors(cfg, logger, replay, eval_env)
    key = jax.random.PRNGKey(cfg.seed)
    key, init_key = jax.random.split(key)
    learner = Learner(cfg, envs[0].obs_space, envs[0].act_space, init_key)
    agent = learner.agent
    policy = AgentPolicy(agent, len(envs), cfg.seed + 1)
    eval_policy = AgentPolicy(agent, 1, cfg.seed + 2)
    collector = Collector(envs, agent.act_dim)
    rng = np.random.default_rng(cfg.seed)

    agent_steps, last_eval = 0, 0
    batch_steps = learner.batch_size * cfg.batch_length
    averages, last_log, last_log_steps, last_log_updates = Averages(), time.time(), 0, 0
    pending = UpdateMetrics(cfg.run.max_nonfinite)
    evals: dict[str, float] = {}
    try:
        while agent_steps * repeat < cfg.run.steps:
            if agent_steps * repeat < cfg.run.prefill:
                actions = collector.random_actions(rng)
            else:
                actions = policy(learner.params(), collector.batch_obs())
            records, episodes = collector.step(actions)
            for worker, record in enumerate(records):
                replay.add(record, worker)
            agent_steps += len(records)
            for ep in episodes:
                averages.add({"episode/score": ep["score"], "episode/length": ep["length"] * repeat})
            if agent_steps * repeat >= cfg.run.prefill and len(replay) >= cfg.batch_length:
                owed = int((agent_steps - cfg.run.prefill / repeat) * cfg.run.train_ratio
                           / batch_steps) + 1 - learner.updates
                for _ in range(max(0, owed)):
                    key, step_key = jax.random.split(key)
                    pending.add(learner.update(replay.sample(learner.batch_size), step_key))
            if cfg.run.eval_every and agent_steps * repeat - last_eval >= cfg.run.eval_every:
                last_eval = agent_steps * repeat
                evals = evaluate(eval_policy, learner.params(), eval_env, cfg.run.eval_episodes,
                                 repeat)
                logger.write(agent_steps * repeat, evals)
            now = time.time()
            if now - last_log >= cfg.run.log_every:
                skips = pending.flush(averages)
                elapsed = now - last_log
                logger.write(agent_steps * repeat, {
                    **averages.flush(), **replay.stats, **skips, "train/updates": learner.updates,
                    "fps/env": (agent_steps - last_log_steps) * repeat / elapsed,
                    "fps/train": (learner.updates - last_log_updates) * batch_steps / elapsed})
                last_log, last_log_steps, last_log_updates = now, agent_steps, learner.updates
        evals = evaluate(eval_policy, learner.params(), eval_env, cfg.run.eval_episodes, repeat)
        skips = pending.flush(averages)
        learner.check_replicas()
        logger.write(agent_steps * repeat,
                     {**averages.flush(), **evals, **skips, "train/updates": learner.updates})
    finally:
        replay.save()
        logger.close()
        for env in [*envs, eval_env]:
            env.close()
    return evals


def run_with_actors(cfg: Config, logger: Logger, replay: Replay, eval_env: Env
                    ) -> dict[str, float]:
    """Training with `actors.num` actor processes feeding the replay (see `dreamer.actors`).

    The learner trains whenever it owes updates for the steps received (the train ratio) and
    otherwise waits for steps; the time it waits after prefill is `learner/wait_fraction`.
    Batches are sampled and copied to the devices ahead of time by a background thread.
    """
    from dreamer.actors import make_pool

    repeat = cfg.env.action_repeat
    key = jax.random.PRNGKey(cfg.seed)
    key, init_key = jax.random.split(key)
    learner = Learner(cfg, eval_env.obs_space, eval_env.act_space, init_key)
    eval_policy = AgentPolicy(learner.agent, 1, cfg.seed + 2)
    batch_steps = learner.batch_size * cfg.batch_length
    publish_every = max(1, cfg.actors.max_staleness // 2)
    agent_steps, last_eval, published = 0, 0, -1
    averages, pending, evals = Averages(), UpdateMetrics(cfg.run.max_nonfinite), {}
    last_log, last_log_steps, last_log_updates = time.time(), 0, 0
    waited = 0.0
    totals = {"actors/restarts": 0, "actors/env_restarts": 0}
    pool = make_pool(cfg)
    prefetch: Prefetcher | None = None  # samples and places batches in a background thread
    try:
        while agent_steps * repeat < cfg.run.steps:
            pool.check()
            owed = 0
            if agent_steps * repeat >= cfg.run.prefill and len(replay) >= cfg.batch_length:
                owed = int((agent_steps - cfg.run.prefill / repeat) * cfg.run.train_ratio
                           / batch_steps) + 1 - learner.updates
            if owed > 0:
                if prefetch is None:  # replay holds enough steps from here on
                    prefetch = Prefetcher(lambda: replay.sample(learner.batch_size),
                                          learner.place)
                key, step_key = jax.random.split(key)
                pending.add(learner.update(prefetch.next(), step_key))
                if learner.updates - published >= publish_every:
                    pool.publish(learner.updates, jax.device_get(learner.params()))
                    published = learner.updates
            else:
                start = time.perf_counter()
                # A few chunks at a time, so that training resumes as soon as it owes updates.
                messages = pool.poll(timeout=0.05, limit=2 * cfg.actors.num)
                if agent_steps * repeat >= cfg.run.prefill:
                    waited += time.perf_counter() - start
                for kind, message in messages:
                    if kind == "steps":
                        n = len(message.data["is_first"])
                        for i in range(n):
                            replay.add({k: v[i] for k, v in message.data.items()}, message.stream)
                        agent_steps += n
                        if message.version >= 0:
                            averages.add({"actors/staleness": message.lag})
                    elif kind == "report":
                        for ep in message.episodes:
                            averages.add({"episode/score": ep["score"],
                                          "episode/length": ep["length"]})
                        averages.add({"fps/actor": message.frames / max(message.seconds, 1e-9)})
                        totals["actors/env_restarts"] += message.env_restarts
            if cfg.run.eval_every and agent_steps * repeat - last_eval >= cfg.run.eval_every:
                last_eval = agent_steps * repeat
                evals = evaluate(eval_policy, learner.params(), eval_env, cfg.run.eval_episodes,
                                 repeat)
                logger.write(agent_steps * repeat, evals)
            now = time.time()
            if now - last_log >= cfg.run.log_every:
                skips = pending.flush(averages)
                elapsed = now - last_log
                totals["actors/restarts"] = pool.restarts
                logger.write(agent_steps * repeat, {
                    **averages.flush(), **replay.stats, **totals, **skips,
                    "train/updates": learner.updates,
                    "fps/env": (agent_steps - last_log_steps) * repeat / elapsed,
                    "fps/train": (learner.updates - last_log_updates) * batch_steps / elapsed,
                    "learner/updates_per_s": (learner.updates - last_log_updates) / elapsed,
                    "learner/wait_fraction": waited / elapsed,
                    **({"learner/batch_wait_fraction": prefetch.wait_fraction()}
                       if prefetch is not None else {})})
                last_log, last_log_steps, last_log_updates, waited = (
                    now, agent_steps, learner.updates, 0.0)
        evals = evaluate(eval_policy, learner.params(), eval_env, cfg.run.eval_episodes, repeat)
        skips = pending.flush(averages)
        learner.check_replicas()
        totals["actors/restarts"] = pool.restarts
        logger.write(agent_steps * repeat, {**averages.flush(), **evals, **totals, **skips,
                                            "train/updates": learner.updates})
    finally:
        if prefetch is not None:
            prefetch.close()
        pool.close()
        replay.save()
        logger.close()
        eval_env.close()
    return evals
