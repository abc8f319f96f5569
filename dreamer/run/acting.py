"""Acting: stepping environments with an agent's jitted policy, and evaluation.

Used by the training loops, the actor processes and `dreamer-eval`; it knows an agent only
through the interface of `dreamer.agents` (`policy`, `policy_initial`, `obs_keys`, `act_dim`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from dreamer.envs import Env


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

    def step(self, actions: np.ndarray, outputs: dict[str, np.ndarray] | None = None
             ) -> tuple[list[dict], list[dict]]:
        """Apply actions [N, A]; returns (step records, finished episode stats). `outputs`
        ({key: [N, ...]}, the policy's per-step outputs) are stored in the records too."""
        records, episodes = [], []
        for i, env in enumerate(self.envs):
            record = {**self.obs[i], "action": actions[i].astype(np.float32),
                      **{k: np.asarray(v[i]) for k, v in (outputs or {}).items()}}
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
    """Jitted acting for N environments: keeps the policy's carry between calls and draws one
    key per call from `keys` (a named stream of `dreamer.core.rngs.Rngs`)."""

    def __init__(self, agent: Any, num_envs: int, keys: Callable[[], jax.Array],
                 jit: bool = True):
        self.agent = agent
        self.num_envs = num_envs
        self._step = jax.jit(agent.policy, static_argnames="mode") if jit else agent.policy
        self.keys = keys
        self.reset()

    def reset(self) -> None:
        self.carry = self.agent.policy_initial(self.num_envs)
        self._fresh = True

    def __call__(self, params: Any, obs: dict[str, np.ndarray], mode: str = "sample"
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(actions [N, A], per-step outputs {key: [N, ...]}) for observations [N, ...];
        `mode` is the policy's mode, 'sample' (collection) unless asked otherwise."""
        if self._fresh:
            self.carry, self._fresh = placed_like(self.carry, params), False
        inputs = {k: v for k, v in obs.items() if k in (*self.agent.obs_keys, "is_first")}
        self.carry, action, outputs = self._step(params, self.carry, inputs, self.keys(),
                                                 mode=mode)
        return np.asarray(action), jax.device_get(outputs)


def placed_like(tree: Any, params: Any) -> Any:
    """`tree` committed to the device of `params` where they are committed to one device.

    The policy's outputs (the next carry) live there; a fresh carry that does not would make
    JAX compile the policy a second time, since it keys its cache on each argument's placement."""
    leaf = next((x for x in jax.tree.leaves(params) if isinstance(x, jax.Array)), None)
    if leaf is None or not leaf.committed or len(leaf.devices()) != 1:
        return tree
    return jax.device_put(tree, next(iter(leaf.devices())))


def evaluate(policy: AgentPolicy, params: Any, env: Env, episodes: int, repeat: int = 1,
             video: bool = False, mode: str = "eval") -> dict[str, Any]:
    """Mean and spread of the score, the mean length (env steps) of `episodes` episodes, and
    the mean seconds per action (`eval/action_seconds`, each policy call timed to its action on
    the host, the first call of the evaluation left out: it may compile).

    `mode` is the policy's mode (`dreamer.agents.MODES`): 'eval', the agent's evaluation
    policy, unless asked otherwise. With `video` and image observations, `eval/video` holds the
    first episode's frames, uint8 [T, H, W, C].
    """
    collector = Collector([env], policy.agent.act_dim)
    policy.reset()
    done, frames, seconds = [], [], []
    while len(done) < episodes:
        obs = collector.batch_obs()
        if video and not done and "image" in obs:
            frames.append(obs["image"][0])
        start = time.perf_counter()
        action, _ = policy(params, obs, mode=mode)  # host arrays: the call has finished
        seconds.append(time.perf_counter() - start)
        done += collector.step(action)[1]
    scores = [e["score"] for e in done]
    out: dict[str, Any] = {"eval/score": float(np.mean(scores)),
                           "eval/score_std": float(np.std(scores)),
                           "eval/length": float(np.mean([e["length"] for e in done])) * repeat,
                           "eval/action_seconds": float(np.mean(seconds[1:] or seconds))}
    if frames:
        out["eval/video"] = np.stack(frames)
    return out
