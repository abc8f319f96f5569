"""The environment interface shared by every suite, and the generic wrappers.

An environment returns one flat dict per step:

- the keys of ``obs_space``: ``image`` uint8 ``[H, W, C]`` and/or ``vector`` float32 ``[D]``;
- ``reward`` float32 scalar (0 on reset);
- ``is_first``, ``is_last``, ``is_terminal`` ``np.bool_`` scalars.

``is_terminal`` marks the end of the MDP (a state with no future). A truncation (time limit) ends
the episode with ``is_last=True, is_terminal=False``, so that the agent still bootstraps from its
value.
The caller calls ``reset()`` after a step that returned ``is_last``; environments never reset
themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
from PIL import Image

SUITES = ("dmc", "gym", "atari", "minatar", "pgx", "builtin")
OBS_MODES = ("image", "vector", "both")


class EnvError(ValueError):
    """An environment could not be made: unknown suite or task, bad option, missing library."""


def unknown_task(task: str, choices: Iterable[str]) -> EnvError:
    """The error for an unknown ``task``, naming the closest of ``choices`` and the suites."""
    close = difflib.get_close_matches(task, sorted(set(choices)), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    suites = ", ".join(f"{s}_*" for s in SUITES)
    return EnvError(f"Unknown environment task {task!r}.{hint} Valid suites: {suites}.")


@dataclasses.dataclass(frozen=True)
class Space:
    """Dtype, shape and bounds of one observation or of the action.

    Images are uint8 ``[H, W, C]``, vectors float32 ``[D]``, continuous actions float32 ``[A]`` in
    ``[-1, 1]``, discrete actions int32 ``[]`` in ``[0, n)`` (``low=0``, ``high=n - 1``).
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def discrete(self) -> bool:
        return np.issubdtype(self.dtype, np.integer)

    @property
    def n(self) -> int:
        """Number of discrete actions."""
        if not self.discrete or self.high is None:
            raise ValueError(f"{self} is not a bounded discrete space")
        return int(self.high) + 1


def discrete_space(n: int) -> Space:
    """An action space of ``n`` choices, passed as an int32 index."""
    return Space(np.int32, (), 0, n - 1)


def continuous_space(dims: int) -> Space:
    """A float32 ``[dims]`` action space in ``[-1, 1]``."""
    return Space(np.float32, (dims,), -1.0, 1.0)


class Env(Protocol):
    """What the agent steps. See the module docstring for the step dict."""

    obs_space: dict[str, Space]
    act_space: Space

    def reset(self) -> dict[str, np.ndarray]: ...

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def transition(
    obs: dict[str, np.ndarray],
    reward: float = 0.0,
    *,
    is_first: bool = False,
    is_last: bool = False,
    is_terminal: bool = False,
) -> dict[str, Any]:
    """One step dict with strict dtypes; ``is_terminal`` implies ``is_last``."""
    out = dict(obs)
    if "image" in out:
        out["image"] = np.asarray(out["image"], np.uint8)
    if "vector" in out:
        out["vector"] = np.asarray(out["vector"], np.float32)
    out["reward"] = np.float32(reward)
    out["is_first"] = np.bool_(is_first)
    out["is_last"] = np.bool_(is_last or is_terminal)
    out["is_terminal"] = np.bool_(is_terminal)
    return out


def check_obs_mode(obs: str) -> tuple[bool, bool]:
    """``(wants_image, wants_vector)`` for ``obs`` in ``OBS_MODES``."""
    if obs not in OBS_MODES:
        raise EnvError(f"Unknown env.obs {obs!r}: valid choices are {', '.join(OBS_MODES)}")
    return obs in ("image", "both"), obs in ("vector", "both")


def image_size(size: Any) -> tuple[int, int]:
    """``(H, W)`` from the config's ``size`` (a pair, or one int for a square)."""
    h, w = (size, size) if np.isscalar(size) else size
    if int(h) < 1 or int(w) < 1:
        raise EnvError(f"env.size must be positive, got {size!r}")
    return int(h), int(w)


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 ``[h, w, C]`` frame to ``[H, W, C]`` (``size = (H, W)``)."""
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    channels = frame.shape[-1]
    img = Image.fromarray(frame[..., 0] if channels == 1 else frame)
    out = np.asarray(img.resize((w, h), Image.BILINEAR))
    return out.reshape(h, w, channels)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of a uint8 ``[H, W, 3]`` frame, as uint8 ``[H, W, 1]``."""
    luma = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def rescale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action in ``[-1, 1]`` (clipped) to ``[low, high]``; unbounded dims pass through."""
    action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    bounded = np.isfinite(low) & np.isfinite(high)
    low, high = np.where(bounded, low, -1.0), np.where(bounded, high, 1.0)
    return low + (action + 1.0) * 0.5 * (high - low)


class Wrapper:
    """Forwards everything to the wrapped environment."""

    def __init__(self, env: Env):
        self.env = env

    @property
    def obs_space(self) -> dict[str, Space]:
        return self.env.obs_space

    @property
    def act_space(self) -> Space:
        return self.env.act_space

    def reset(self) -> dict[str, np.ndarray]:
        return self.env.reset()

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()


class ActionRepeat(Wrapper):
    """Repeats each action ``repeat`` times, summing rewards and stopping early at ``is_last``."""

    def __init__(self, env: Env, repeat: int):
        super().__init__(env)
        if repeat < 1:
            raise EnvError(f"env.action_repeat must be at least 1, got {repeat}")
        self.repeat = repeat

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        total = 0.0
        for _ in range(self.repeat):
            out = self.env.step(action)
            total += float(out["reward"])
            if out["is_last"]:
                break
        out["reward"] = np.float32(total)
        return out


class TimeLimit(Wrapper):
    """Ends the episode after ``steps`` agent steps as a truncation (``is_terminal`` unchanged)."""

    def __init__(self, env: Env, steps: int):
        super().__init__(env)
        if steps < 1:
            raise EnvError(f"time limit must be at least 1 step, got {steps}")
        self.steps = steps
        self._count = 0

    def reset(self) -> dict[str, np.ndarray]:
        self._count = 0
        return self.env.reset()

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        out = self.env.step(action)
        self._count += 1
        if self._count >= self.steps:
            out["is_last"] = np.bool_(True)
        return out
