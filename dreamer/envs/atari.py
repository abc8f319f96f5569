"""Atari 2600 games through gymnasium and ale-py, ``atari_<game>`` (e.g. ``atari_pong``,
``atari_space_invaders`` for ``ALE/SpaceInvaders-v5``).

The usual DreamerV3 preprocessing (Machado et al. 2018 protocol): sticky actions (p=0.25) when
``env.sticky``, the minimal action set, ``env.action_repeat`` frames per agent step with a max over
the last two frames (the Atari flickers sprites between frames), up to ``env.noops`` random no-ops
at reset, bilinear resize to ``env.size`` and optional grayscale.

Observations: ``image`` uint8 ``[H, W, 3]``, or ``[H, W, 1]`` when ``env.gray``. Actions: an int32
index into the minimal action set. Game over is terminal; ALE's frame limit (108,000 frames) is a
truncation. With ``env.lives`` a lost life also ends the episode as terminal; the next ``reset()``
then continues the same game (no no-ops) unless it is over.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from dreamer.envs.base import (
    EnvError,
    Space,
    check_obs_mode,
    discrete_space,
    image_size,
    resize,
    to_gray,
    transition,
    unknown_task,
)


def _game_id(game: str) -> str:
    """``space_invaders`` -> ``ALE/SpaceInvaders-v5``."""
    return "ALE/" + "".join(part.capitalize() for part in game.split("_")) + "-v5"


def _game_name(env_id: str) -> str:
    """``ALE/SpaceInvaders-v5`` -> ``space_invaders``."""
    camel = env_id.removeprefix("ALE/").removesuffix("-v5")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


class Atari:
    """One Atari game; see the module docstring for the preprocessing."""

    def __init__(self, env: Any, seed: int, cfg: Any):
        self._env = env
        self._seed: int | None = seed
        self._rng = np.random.default_rng(seed)
        self._repeat = int(cfg.action_repeat)
        self._noops = int(cfg.noops)
        self._lives = bool(cfg.lives)
        self._gray = bool(cfg.gray)
        self._size = image_size(cfg.size)
        if self._repeat < 1:
            raise EnvError(f"env.action_repeat must be at least 1, got {cfg.action_repeat}")
        self._ale = env.unwrapped.ale
        self._frames: list[np.ndarray] = []
        self._game_over = True
        self._prev_lives = 0
        self.act_space = discrete_space(int(env.action_space.n))
        self.obs_space = {"image": Space(np.uint8, (*self._size, 1 if self._gray else 3), 0, 255)}

    def reset(self) -> dict[str, Any]:
        if self._game_over or not self._lives:
            frame = self._new_game()
        else:
            # Life-loss episodes continue the current game from where it stopped.
            frame = self._frames[-1]
        self._frames = [frame, frame]
        self._prev_lives = self._ale.lives()
        return transition(self._obs(), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        reward, terminal, last = 0.0, False, False
        for _ in range(self._repeat):
            frame, r, terminated, truncated, _ = self._env.step(int(action))
            reward += float(r)
            self._frames = [self._frames[-1], frame]
            lives = self._ale.lives()
            lost_life = self._lives and lives < self._prev_lives
            self._prev_lives = lives
            self._game_over = terminated or truncated
            terminal = terminated or lost_life
            last = terminal or truncated
            if last:
                break
        return transition(self._obs(), reward, is_last=last, is_terminal=terminal)

    def close(self) -> None:
        self._env.close()

    def _new_game(self) -> np.ndarray:
        # Seed once: later games continue the emulator's own random stream.
        frame, _ = self._env.reset(seed=self._seed)
        self._seed = None
        for _ in range(int(self._rng.integers(self._noops + 1))):
            frame, _, terminated, truncated, _ = self._env.step(0)  # 0 is always NOOP in ALE
            if terminated or truncated:
                frame, _ = self._env.reset()
        self._game_over = False
        return frame

    def _obs(self) -> dict[str, np.ndarray]:
        image = resize(np.maximum(*self._frames), self._size)
        return {"image": to_gray(image) if self._gray else image}


def _register() -> Any:
    try:
        import ale_py
        import gymnasium
    except ImportError as err:
        raise EnvError(f"Atari games need ale-py: pip install ale-py ({err})") from err
    gymnasium.register_envs(ale_py)
    return gymnasium


def tasks() -> list[str]:
    """Every game, as ``atari_<game>``."""
    gymnasium = _register()
    ids = [k for k in gymnasium.registry if k.startswith("ALE/") and k.endswith("-v5")]
    return [f"atari_{_game_name(k)}" for k in ids]


def make(name: str, cfg: Any, seed: int) -> Atari:
    """An Atari game from the ``env`` config; ``name`` is the game without ``atari_``."""
    _, vector = check_obs_mode(cfg.obs)
    if vector:
        raise EnvError(f"atari_{name} has image observations only; got env.obs={cfg.obs!r}")
    gymnasium = _register()
    env_id = _game_id(name)
    if env_id not in gymnasium.registry:
        raise unknown_task(f"atari_{name}", tasks())
    try:
        env = gymnasium.make(
            env_id,
            frameskip=1,
            repeat_action_probability=0.25 if cfg.sticky else 0.0,
            full_action_space=False,
        )
    except Exception as err:  # ale-py raises several types for a missing or bad ROM.
        raise EnvError(f"atari_{name}: could not load {env_id}: {err}") from err
    return Atari(env, seed, cfg)
