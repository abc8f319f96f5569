"""Environments behind one interface: ``make_env(cfg, seed)`` for tasks named ``<suite>_<name>``.

Suites: ``dmc_<domain>_<task>`` (DeepMind Control), ``gym_<id>`` (gymnasium), ``atari_<game>``
(ale-py), ``minatar_<game>`` (MinAtar's 10 x 10 games), ``pgx_<game>`` (board games against a
fixed opponent) and ``builtin_<name>`` (pure-numpy pixel tasks). See ``base`` for the step dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dreamer.envs import atari, builtin, dmc, gym, minatar, pgx
from dreamer.envs.base import (
    SUITES,
    ActionRepeat,
    Env,
    EnvError,
    Space,
    TimeLimit,
    check_obs_mode,
    unknown_task,
)

__all__ = ["MAKERS", "SUITES", "Env", "EnvError", "Space", "make_env"]

# Each maker builds the raw environment of its suite: (name without the suite prefix, cfg, seed).
MAKERS: dict[str, Callable[[str, Any, int], Env]] = {
    "dmc": dmc.make,
    "gym": gym.make,
    "atari": atari.make,
    "minatar": minatar.make,
    "pgx": pgx.make,
    "builtin": builtin.make,
}

_TASK_LISTS: dict[str, Callable[[], list[str]]] = {
    "dmc": dmc.tasks,
    "gym": gym.tasks,
    "atari": atari.tasks,
    "minatar": minatar.tasks,
    "pgx": pgx.tasks,
    "builtin": builtin.tasks,
}

# Atari repeats actions itself, to max-pool the last two frames.
_OWN_ACTION_REPEAT = ("atari",)


def _all_tasks() -> list[str]:
    """Valid task names of every suite whose library loads, to suggest for a bad suite prefix."""
    names = []
    for list_tasks in _TASK_LISTS.values():
        try:
            names += list_tasks()
        except EnvError:
            continue
    return names


def make_env(cfg: Any, seed: int) -> Env:
    """The environment for ``cfg.task``, with action repeat and time limit applied.

    ``cfg`` is the ``env`` config section (``task, obs, size, action_repeat, time_limit, gray,
    sticky, noops, lives, opponent, gym_kwargs``). ``cfg.time_limit`` counts agent steps (after action
    repeat); 0 keeps the environment's own limit. Raises ``EnvError`` for an unknown suite,
    task or option.
    """
    suite, _, name = cfg.task.partition("_")
    if suite not in MAKERS or not name:
        raise unknown_task(cfg.task, _all_tasks())
    check_obs_mode(cfg.obs)
    if cfg.action_repeat < 1 or cfg.time_limit < 0:
        raise EnvError(
            f"env.action_repeat must be >= 1 and env.time_limit >= 0, "
            f"got {cfg.action_repeat} and {cfg.time_limit}"
        )
    if cfg.gym_kwargs and suite != "gym":
        raise EnvError(f"env.gym_kwargs passes keyword arguments to gymnasium.make, for gym_* "
                       f"tasks only; the task is {cfg.task}: remove env.gym_kwargs")
    env = MAKERS[suite](name, cfg, seed)
    if cfg.action_repeat > 1 and suite not in _OWN_ACTION_REPEAT:
        env = ActionRepeat(env, cfg.action_repeat)
    if cfg.time_limit:
        env = TimeLimit(env, cfg.time_limit)
    return env
