"""DeepMind Control Suite tasks, ``dmc_<domain>_<task>`` (e.g. ``dmc_walker_walk``).

Observations: ``image`` uint8 ``[H, W, 3]`` rendered by MuJoCo (camera 2 for quadruped, else 0)
and/or ``vector`` float32 ``[D]``, all of the task's observation arrays flattened and concatenated
in the suite's order. Actions: float32 ``[A]`` in ``[-1, 1]``, rescaled to the task's bounds.
A step with discount 0 is terminal; the suite's own time limit ends an episode as a truncation.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dreamer.envs.base import (
    EnvError,
    Space,
    check_obs_mode,
    continuous_space,
    image_size,
    rescale_action,
    transition,
    unknown_task,
)

CAMERAS = {"quadruped": 2}

PACKAGES = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri",
    "osmesa": "libosmesa6",
}


def _render_error(err: Exception) -> EnvError:
    backend = os.environ.get("MUJOCO_GL", "")
    needs = "; ".join(f"MUJOCO_GL={k} needs {v}" for k, v in PACKAGES.items())
    return EnvError(
        f"MuJoCo rendering failed with MUJOCO_GL={backend!r} ({type(err).__name__}: {err}). "
        f"Install the Debian packages for a headless backend and set MUJOCO_GL to it: {needs} "
        "(apt-get install ...)."
    )


def _import_suite() -> Any:
    # dm_control picks its OpenGL backend at import, so the variable must be set before it.
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except (ImportError, RuntimeError, OSError) as err:
        raise _render_error(err) from err
    return suite


class DMC:
    """One dm_control task; see the module docstring for observations and actions."""

    def __init__(self, env: Any, domain: str, size: tuple[int, int], obs: str):
        image, vector = check_obs_mode(obs)
        self._env = env
        self._size = size
        self._camera = CAMERAS.get(domain, 0)
        spec = env.action_spec()
        self._low, self._high = spec.minimum, spec.maximum
        self.act_space = continuous_space(int(np.prod(spec.shape)))
        self.obs_space: dict[str, Space] = {}
        if image:
            self.obs_space["image"] = Space(np.uint8, (*size, 3), 0, 255)
        if vector:
            dims = sum(int(np.prod(s.shape)) for s in env.observation_spec().values())
            self.obs_space["vector"] = Space(np.float32, (dims,))

    def reset(self) -> dict[str, Any]:
        ts = self._env.reset()
        return transition(self._obs(ts), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        ts = self._env.step(rescale_action(action, self._low, self._high))
        terminal = ts.last() and ts.discount == 0
        return transition(self._obs(ts), ts.reward or 0.0, is_last=ts.last(), is_terminal=terminal)

    def close(self) -> None:
        self._env.close()

    def _obs(self, ts: Any) -> dict[str, np.ndarray]:
        out = {}
        if "image" in self.obs_space:
            out["image"] = self.render()
        if "vector" in self.obs_space:
            parts = [np.asarray(v, np.float32).reshape(-1) for v in ts.observation.values()]
            out["vector"] = np.concatenate(parts)
        return out

    def render(self) -> np.ndarray:
        """The current frame, uint8 ``[H, W, 3]``."""
        h, w = self._size
        try:
            return self._env.physics.render(h, w, camera_id=self._camera)
        except (ImportError, RuntimeError, OSError) as err:
            raise _render_error(err) from err


def tasks() -> list[str]:
    """Every suite task name, with its ``dmc_`` prefix."""
    return [f"dmc_{d}_{t}" for d, t in _import_suite().ALL_TASKS]


def make(name: str, cfg: Any, seed: int) -> DMC:
    """A dm_control task from the ``env`` config; ``name`` is the task without ``dmc_``."""
    check_obs_mode(cfg.obs)
    size = image_size(cfg.size)
    suite = _import_suite()
    # Domain names may contain underscores (ball_in_cup, point_mass), so match whole names.
    known = {f"{d}_{t}": (d, t) for d, t in suite.ALL_TASKS}
    if name not in known:
        raise unknown_task(f"dmc_{name}", tasks())
    domain, task = known[name]
    kwargs: dict[str, Any] = {"random": seed}
    if cfg.time_limit:
        # An explicit agent-step limit replaces the suite's own (1000 control steps).
        kwargs["time_limit"] = float("inf")
    env = suite.load(domain, task, task_kwargs=kwargs)
    env = DMC(env, domain, size, cfg.obs)
    if "image" in env.obs_space:
        env.render()  # Fail now, with install instructions, rather than at the first step.
    return env
