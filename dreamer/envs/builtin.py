"""Pure-numpy environments: fast, deterministic given the seed, no simulator needed.

Catch, Track and Reach serve the tests and a CPU demo in which an agent must visibly learn within
minutes, so each has dense reward and a wide gap between a random and a good policy. They draw
bright objects on a dark background at any image size of at least 8x8 and also offer a small state
vector. The Dyna maze is Sutton & Barto's tabular planning benchmark, with a one-hot cell vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dreamer.envs.base import (
    EnvError,
    Space,
    check_obs_mode,
    continuous_space,
    discrete_space,
    image_size,
    transition,
    unknown_task,
)

BACKGROUND = np.array([16, 16, 40], np.uint8)
RED = np.array([255, 64, 64], np.uint8)
CYAN = np.array([64, 224, 255], np.uint8)
GREEN = np.array([64, 255, 96], np.uint8)
GRAY = np.array([128, 128, 128], np.uint8)

REACH_STEPS = 50  # default episode length of builtin_reach, in agent steps


def _obs_space(size: tuple[int, int], image: bool, vector: int | None) -> dict[str, Space]:
    space = {}
    if image:
        space["image"] = Space(np.uint8, (*size, 3), 0, 255)
    if vector:
        space["vector"] = Space(np.float32, (vector,))
    return space


class Catch:
    """Catch falling balls with a paddle; 3 discrete actions (0 left, 1 stay, 2 right).

    The board is 8x8 cells: a play area of 7 columns and a status column on the right that shows
    the balls still to come. A ball starts in a random column of the top row and falls one row per
    step; the paddle moves one cell per step along the bottom row. When the ball reaches the bottom
    row the reward is +1 if the paddle is under it and -1 otherwise, and the next ball appears at
    the top at once. The episode terminates (``is_terminal``) after ``BALLS`` balls, i.e. 28 steps.

    Scores: the optimum is +4 (the paddle can always cover the 6 columns in the 7 steps of a fall);
    a uniformly random policy scores about -2.86 (mean over 10,000 episodes: it catches about 14% of
    the balls). ``tests/test_envs.py`` checks both numbers.

    Observations: ``image`` uint8 ``[H, W, 3]`` (cells upscaled by nearest neighbour) and/or
    ``vector`` float32 ``[3]`` = (ball row, ball column, paddle column), each scaled to ``[0, 1]``.
    """

    ROWS, COLS, BALLS = 8, 7, 4

    def __init__(self, seed: int, size: tuple[int, int] = (64, 64), obs: str = "image",
                 dense: bool = False):
        image, vector = check_obs_mode(obs)
        self.dense = dense
        self.size = size
        self.obs_space = _obs_space(size, image, 3 if vector else None)
        self.act_space = discrete_space(3)
        self._rng = np.random.default_rng(seed)
        self._rows = np.arange(size[0]) * self.ROWS // size[0]
        self._cols = np.arange(size[1]) * (self.COLS + 1) // size[1]
        self._ball = (0, 0)
        self._paddle = 0
        self._left = 0

    def reset(self) -> dict[str, Any]:
        self._paddle = int(self._rng.integers(self.COLS))
        self._left = self.BALLS
        self._ball = (0, int(self._rng.integers(self.COLS)))
        return transition(self._obs(), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        move = int(action) - 1
        if move not in (-1, 0, 1):
            raise ValueError(f"builtin_catch takes actions 0, 1, 2; got {action!r}")
        self._paddle = min(max(self._paddle + move, 0), self.COLS - 1)
        row, col = self._ball[0] + 1, self._ball[1]
        self._ball = (row, col)
        if self.dense:
            reward = float(col == self._paddle)
        if row < self.ROWS - 1:
            return transition(self._obs(), reward if self.dense else 0.0)
        if not self.dense:
            reward = 1.0 if col == self._paddle else -1.0
        self._left -= 1
        if self._left > 0:
            self._ball = (0, int(self._rng.integers(self.COLS)))
        return transition(self._obs(), reward, is_terminal=self._left == 0)

    def close(self) -> None:
        pass

    def _obs(self) -> dict[str, np.ndarray]:
        out = {}
        if "image" in self.obs_space:
            grid = np.broadcast_to(BACKGROUND, (self.ROWS, self.COLS + 1, 3)).copy()
            grid[: self._left, self.COLS] = GREEN
            grid[self.ROWS - 1, self._paddle] = CYAN
            grid[self._ball] = RED
            out["image"] = grid[self._rows][:, self._cols]
        if "vector" in self.obs_space:
            row, col = self._ball
            out["vector"] = np.array(
                [row / (self.ROWS - 1), col / (self.COLS - 1), self._paddle / (self.COLS - 1)],
                np.float32,
            )
        return out


class Track(Catch):
    """`Catch` with an immediate reward: 1 on every step that ends with the paddle under the
    falling ball's column, 0 otherwise (and no reward for the landing itself).

    The reward depends only on the current frame, so it is the quickest of the builtin tasks to
    learn: the agent must learn to follow the ball. Scores over the 28 steps of an episode: a
    uniformly random policy about 4.0, following the ball as fast as possible about 22.3 (means over
    10,000 episodes; ``tests/test_envs.py`` checks both).
    """

    def __init__(self, seed: int, size: tuple[int, int] = (64, 64), obs: str = "image"):
        super().__init__(seed, size, obs, dense=True)


class Reach:
    """Move a point to a target in the unit square; continuous 2-D action in ``[-1, 1]``.

    Each step moves the point by ``0.1 * action`` (clipped to the square). The target (a green disc
    of radius ``RADIUS``) and the point (a red dot) start at random positions. The reward is shaped:
    1 while the point is inside the target disc and ``exp(-(d - RADIUS)^2 / (2 * 0.1^2))`` at
    distance ``d > RADIUS`` from the target's centre, so it is dense yet peaks only on the target.
    Episodes never terminate; they are truncated after ``steps`` steps (``is_last=True``,
    ``is_terminal=False``). ``steps=None`` leaves the length to an outer time limit.

    Scores over 50 steps: heading straight for the target scores about 48.7 (close to the optimum);
    a uniformly random policy scores about 11.2, of which about 3.4 steps inside the target (means
    over 2,000 episodes). ``tests/test_envs.py`` checks both numbers.

    Observations: ``image`` uint8 ``[H, W, 3]`` and/or ``vector`` float32 ``[4]`` = (point x,
    point y, target x, target y).
    """

    RADIUS, SPEED, SCALE = 0.15, 0.1, 0.1

    def __init__(
        self,
        seed: int,
        size: tuple[int, int] = (64, 64),
        obs: str = "image",
        steps: int | None = REACH_STEPS,
    ):
        image, vector = check_obs_mode(obs)
        self.size = size
        self.steps = steps
        self.obs_space = _obs_space(size, image, 4 if vector else None)
        self.act_space = continuous_space(2)
        self._rng = np.random.default_rng(seed)
        # Pixel centres in unit coordinates: y grows downwards, x to the right.
        self._ys = ((np.arange(size[0]) + 0.5) / size[0])[:, None]
        self._xs = ((np.arange(size[1]) + 0.5) / size[1])[None, :]
        self._point = np.zeros(2)
        self._target = np.zeros(2)
        self._count = 0

    def reset(self) -> dict[str, Any]:
        self._point = self._rng.uniform(0.0, 1.0, 2)
        self._target = self._rng.uniform(self.RADIUS, 1.0 - self.RADIUS, 2)
        self._count = 0
        return transition(self._obs(), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        action = np.asarray(action, np.float64).reshape(2)
        move = self.SPEED * np.clip(action, -1.0, 1.0)
        self._point = np.clip(self._point + move, 0.0, 1.0)
        self._count += 1
        dist = float(np.linalg.norm(self._point - self._target))
        gap = max(dist - self.RADIUS, 0.0)
        reward = float(np.exp(-0.5 * (gap / self.SCALE) ** 2))
        last = self.steps is not None and self._count >= self.steps
        return transition(self._obs(), reward, is_last=last)

    def close(self) -> None:
        pass

    def _disc(self, centre: np.ndarray, radius: float) -> np.ndarray:
        return (self._xs - centre[0]) ** 2 + (self._ys - centre[1]) ** 2 <= radius**2

    def _obs(self) -> dict[str, np.ndarray]:
        out = {}
        if "image" in self.obs_space:
            # The dot is at least a pixel wide so that it stays visible at 8x8.
            dot = max(0.05, 0.75 / min(self.size))
            img = np.broadcast_to(BACKGROUND, (*self.size, 3)).copy()
            img[self._disc(self._target, self.RADIUS)] = GREEN
            img[self._disc(self._point, dot)] = RED
            out["image"] = img
        if "vector" in self.obs_space:
            out["vector"] = np.concatenate([self._point, self._target]).astype(np.float32)
        return out


class DynaMaze:
    """The 6x9 Dyna maze of Sutton & Barto (2nd ed., Example 8.1, Figure 8.2); 4 discrete actions
    (0 up, 1 down, 2 left, 3 right).

    Rows count from the top, columns from the left. Episodes start at S = (2, 0) and terminate on
    reaching the goal G = (0, 8) with reward 1; every other step gives 0. Walls fill column 2 in
    rows 1-3, column 5 in row 4 and column 7 in rows 0-2; a move into a wall or off the grid
    leaves the agent where it is. The shortest path from S to G takes 14 steps. Deterministic:
    the seed is unused.

    Observations: ``vector`` float32 ``[54]``, the one-hot of the cell index ``row * 9 + col``,
    and/or ``image`` uint8 ``[H, W, 3]`` (walls gray, goal green, agent red).
    """

    ROWS, COLS = 6, 9
    START, GOAL = (2, 0), (0, 8)
    WALLS = ((1, 2), (2, 2), (3, 2), (4, 5), (0, 7), (1, 7), (2, 7))
    MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))

    def __init__(self, seed: int, size: tuple[int, int] = (64, 64), obs: str = "vector"):
        del seed
        image, vector = check_obs_mode(obs)
        self.obs_space = _obs_space(size, image, self.ROWS * self.COLS if vector else None)
        self.act_space = discrete_space(len(self.MOVES))
        self._rows = np.arange(size[0]) * self.ROWS // size[0]
        self._cols = np.arange(size[1]) * self.COLS // size[1]
        self._cell = self.START

    def reset(self) -> dict[str, Any]:
        self._cell = self.START
        return transition(self._obs(), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        if int(action) not in range(len(self.MOVES)):
            raise ValueError(f"builtin_dynamaze takes actions 0, 1, 2, 3; got {action!r}")
        dr, dc = self.MOVES[int(action)]
        row, col = self._cell[0] + dr, self._cell[1] + dc
        if 0 <= row < self.ROWS and 0 <= col < self.COLS and (row, col) not in self.WALLS:
            self._cell = (row, col)
        goal = self._cell == self.GOAL
        return transition(self._obs(), float(goal), is_terminal=goal)

    def close(self) -> None:
        pass

    def _obs(self) -> dict[str, np.ndarray]:
        out = {}
        if "image" in self.obs_space:
            grid = np.broadcast_to(BACKGROUND, (self.ROWS, self.COLS, 3)).copy()
            grid[tuple(np.transpose(self.WALLS))] = GRAY
            grid[self.GOAL] = GREEN
            grid[self._cell] = RED
            out["image"] = grid[self._rows][:, self._cols]
        if "vector" in self.obs_space:
            vector = np.zeros(self.ROWS * self.COLS, np.float32)
            vector[self._cell[0] * self.COLS + self._cell[1]] = 1.0
            out["vector"] = vector
        return out


def tasks() -> list[str]:
    """Every builtin task name, with its ``builtin_`` prefix."""
    return ["builtin_catch", "builtin_dynamaze", "builtin_reach", "builtin_track"]


def make(name: str, cfg: Any, seed: int) -> Catch | Reach | DynaMaze:
    """A builtin environment from the ``env`` config; ``name`` is the task without ``builtin_``."""
    size = image_size(cfg.size)
    if min(size) < 8:
        raise EnvError(f"builtin environments need env.size of at least 8x8, got {cfg.size!r}")
    if name == "catch":
        return Catch(seed, size, cfg.obs)
    if name == "track":
        return Track(seed, size, cfg.obs)
    if name == "dynamaze":
        return DynaMaze(seed, size, cfg.obs)
    if name == "reach":
        # The default length counts agent steps, so it scales with the action repeat.
        steps = None if cfg.time_limit else REACH_STEPS * cfg.action_repeat
        return Reach(seed, size, cfg.obs, steps)
    raise unknown_task(f"builtin_{name}", tasks())
