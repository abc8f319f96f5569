"""MinAtar's five games (Young & Tian 2019, the `minatar` package), ``minatar_<game>``:
``minatar_breakout``, ``minatar_asterix``, ``minatar_freeway``, ``minatar_seaquest``,
``minatar_space_invaders``.

Each game is a 10 x 10 grid with one boolean channel per kind of object (4 to 10 channels).
Observations: ``image`` uint8 ``[H, W, C]`` is the grid, each cell scaled up to
floor(min(H, W) / 10) pixels and centred on a zero canvas of ``env.size`` (16 x 16: the 10 x 10
grid with a 3-cell border; nothing is interpolated), objects 255; ``vector`` float32
``[100 C]`` is the flattened grid. Actions: an index into the game's minimal action set (3 for
Breakout, 4 for Space Invaders, up to 6). Sticky actions with MinAtar's probability 0.1 when
``env.sticky``, and the games' difficulty ramping, as MinAtar's published baselines play.
Losing is terminal; Freeway's end after 2,500 steps is reported as a time limit (``is_last``
without ``is_terminal``: its state shows no clock), and the other games have no time limit of
their own (``env.time_limit`` sets one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dreamer.envs.base import (
    EnvError,
    Space,
    check_obs_mode,
    discrete_space,
    image_size,
    transition,
    unknown_task,
)

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
GRID = 10
STICKY = 0.1  # MinAtar's own sticky-action probability


def grid_image(state: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The boolean grid [10, 10, C] as a uint8 image [H, W, C]: each cell a block of
    floor(min(H, W) / 10) pixels, centred on a zero canvas, objects 255."""
    h, w = size
    scale = min(h, w) // GRID
    cells = np.repeat(np.repeat(state.astype(np.uint8) * 255, scale, 0), scale, 1)
    out = np.zeros((h, w, state.shape[-1]), np.uint8)
    top, left = (h - cells.shape[0]) // 2, (w - cells.shape[1]) // 2
    out[top:top + cells.shape[0], left:left + cells.shape[1]] = cells
    return out


class MinAtar:
    """One MinAtar game; see the module docstring for observations and actions."""

    def __init__(self, game: str, seed: int, size: tuple[int, int], obs: str, sticky: bool):
        from minatar import Environment

        image, vector = check_obs_mode(obs)
        if min(size) < GRID:
            raise EnvError(f"minatar_{game}: env.size must be at least {GRID} x {GRID} (the "
                           f"game's grid), got {list(size)}: use e.g. --env.size=[16,16]")
        self._env = Environment(game, sticky_action_prob=STICKY if sticky else 0.0)
        self._env.seed(seed)
        self._timed = game == "freeway"  # its only end is running out of time
        self._size = size
        self._actions = list(self._env.minimal_action_set())
        self.act_space = discrete_space(len(self._actions))
        channels = int(self._env.state_shape()[-1])
        self.obs_space: dict[str, Space] = {}
        if image:
            self.obs_space["image"] = Space(np.uint8, (*size, channels), 0, 255)
        if vector:
            self.obs_space["vector"] = Space(np.float32, (GRID * GRID * channels,), 0, 1)

    def reset(self) -> dict[str, Any]:
        self._env.reset()
        return transition(self._obs(), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        reward, done = self._env.act(self._actions[int(action)])
        done = bool(done)
        return transition(self._obs(), float(reward), is_last=done,
                          is_terminal=done and not self._timed)

    def close(self) -> None:
        pass

    def _obs(self) -> dict[str, np.ndarray]:
        state = self._env.state()
        out = {}
        if "image" in self.obs_space:
            out["image"] = grid_image(state, self._size)
        if "vector" in self.obs_space:
            out["vector"] = state.astype(np.float32).reshape(-1)
        return out


def tasks() -> list[str]:
    return [f"minatar_{g}" for g in GAMES]


def make(name: str, cfg: Any, seed: int) -> MinAtar:
    """A MinAtar game from the ``env`` config; ``name`` is the game without ``minatar_``."""
    if name not in GAMES:
        raise unknown_task(f"minatar_{name}", tasks())
    if cfg.gray:
        raise EnvError("env.gray converts RGB frames; MinAtar's frames are one channel per "
                       "object: remove --env.gray")
    try:
        import minatar  # noqa: F401
    except ImportError as err:
        raise EnvError(f"minatar_{name} needs the minatar package ({err}): reinstall the "
                       f"checkout with `bash launch/bootstrap.sh` or `pip install minatar`") from err
    return MinAtar(name, seed, image_size(cfg.size), cfg.obs, bool(cfg.sticky))
