"""Any gymnasium environment, ``gym_<id>`` (e.g. ``gym_CartPole-v1``, ``gym_Pendulum-v1``).

Observations: ``vector`` float32 ``[D]`` is the flattened state of a Box observation space, or
the one-hot ``[n]`` of a Discrete one (FrozenLake, Taxi: tabular agents read the index back as its
argmax); ``image`` uint8 ``[H, W, 3]`` is the ``rgb_array`` render resized to ``env.size``.
Actions: an int32 index for Discrete spaces, float32 ``[A]`` in ``[-1, 1]`` rescaled to the
bounds of Box spaces.
gymnasium's ``terminated`` gives ``is_terminal``; ``truncated`` (its time limit) only ``is_last``.
``env.gym_kwargs`` passes keyword arguments to ``gymnasium.make``, e.g. ``[is_slippery=false]``
with ``gym_FrozenLake8x8-v1`` for the deterministic 8x8 lake (200 steps per episode).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dreamer.config import parse_kwargs
from dreamer.envs.base import (
    EnvError,
    Space,
    check_obs_mode,
    continuous_space,
    discrete_space,
    image_size,
    rescale_action,
    resize,
    transition,
    unknown_task,
)


class Gym:
    """One gymnasium environment; see the module docstring for observations and actions."""

    def __init__(self, env: Any, task: str, seed: int, size: tuple[int, int], obs: str):
        import gymnasium

        image, vector = check_obs_mode(obs)
        self._env = env
        self._task = task
        self._seed: int | None = seed
        self._size = size
        space = env.action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            self._start = int(space.start)
            self.act_space = discrete_space(int(space.n))
        elif isinstance(space, gymnasium.spaces.Box):
            self._bounds = (space.low.reshape(-1), space.high.reshape(-1))
            self._shape = space.shape
            self.act_space = continuous_space(int(np.prod(space.shape)))
        else:
            raise EnvError(f"{task}: action space {space} is neither Discrete nor Box")
        self.obs_space: dict[str, Space] = {}
        if image:
            self.obs_space["image"] = Space(np.uint8, (*size, 3), 0, 255)
        self._states = 0  # Discrete observation spaces: how many states, one-hot encoded
        if vector:
            observations = env.observation_space
            if isinstance(observations, gymnasium.spaces.Discrete):
                self._obs_start, self._states = int(observations.start), int(observations.n)
                dims = self._states
            elif isinstance(observations, gymnasium.spaces.Box):
                dims = int(np.prod(observations.shape))
            else:
                raise EnvError(
                    f"{task}: env.obs=vector needs a Box or Discrete observation space, "
                    f"got {observations}; use env.obs=image"
                )
            self.obs_space["vector"] = Space(np.float32, (dims,))

    def reset(self) -> dict[str, Any]:
        # Seed once: later resets continue the environment's own random stream.
        state, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return transition(self._obs(state), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        if self.act_space.discrete:
            native = self._start + int(action)
        else:
            flat = np.asarray(action, np.float32).reshape(-1)
            dtype = self._env.action_space.dtype
            native = rescale_action(flat, *self._bounds).reshape(self._shape).astype(dtype)
        state, reward, terminated, truncated, _ = self._env.step(native)
        obs = self._obs(state)
        return transition(obs, float(reward), is_last=truncated, is_terminal=terminated)

    def close(self) -> None:
        self._env.close()

    def _obs(self, state: Any) -> dict[str, np.ndarray]:
        out = {}
        if "image" in self.obs_space:
            out["image"] = self._render()
        if "vector" in self.obs_space and self._states:
            # One entry set, not a row of an [n, n] identity (Taxi: 500 x 500 per step).
            out["vector"] = np.zeros(self._states, np.float32)
            out["vector"][int(state) - self._obs_start] = 1.0
        elif "vector" in self.obs_space:
            out["vector"] = np.asarray(state, np.float32).reshape(-1)
        return out

    def _render(self) -> np.ndarray:
        import gymnasium

        try:
            frame = self._env.render()
        except gymnasium.error.DependencyNotInstalled as err:
            raise EnvError(f"{self._task}: rendering needs a missing package: {err}") from err
        frame = np.asarray(frame, np.uint8)
        if frame.ndim != 3:
            raise EnvError(f"{self._task}: render() gave shape {frame.shape}, not [H, W, 3]")
        return resize(frame[..., :3], self._size)


def tasks() -> list[str]:
    """Every registered gymnasium id, with its ``gym_`` prefix."""
    import gymnasium

    return [f"gym_{k}" for k in gymnasium.registry]


def make(name: str, cfg: Any, seed: int) -> Gym:
    """A gymnasium environment from the ``env`` config; ``name`` is the id without ``gym_``."""
    image, _ = check_obs_mode(cfg.obs)
    size = image_size(cfg.size)
    # gymnasium's MuJoCo environments read the OpenGL backend when they first render.
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium

    if name not in gymnasium.registry:
        raise unknown_task(f"gym_{name}", tasks())
    kwargs: dict[str, Any] = {"render_mode": "rgb_array"} if image else {}
    if cfg.time_limit:
        # Let the agent-step limit, not the registered one, end episodes.
        kwargs["max_episode_steps"] = cfg.time_limit * cfg.action_repeat
    extra = parse_kwargs("env.gym_kwargs", cfg.gym_kwargs)
    owned = {"render_mode": "env.obs", "max_episode_steps": "env.time_limit"}
    for key in set(extra) & set(owned):
        raise EnvError(f"env.gym_kwargs sets {key}, which {owned[key]} decides: set that instead")
    try:
        env = gymnasium.make(name, **kwargs, **extra)
    except gymnasium.error.DependencyNotInstalled as err:
        raise EnvError(f"gym_{name} needs a missing package: {err}") from err
    except TypeError as err:
        if not extra:
            raise
        raise EnvError(f"gym_{name} does not take env.gym_kwargs {list(cfg.gym_kwargs)}: {err}; "
                       "see its keyword arguments in the gymnasium documentation") from err
    return Gym(env, f"gym_{name}", seed, size, cfg.obs)
