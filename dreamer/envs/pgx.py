"""Two-player board games from ``pgx`` (Koyamada et al. 2023) as one-player tasks against a fixed
opponent, ``pgx_<game>``: ``pgx_connect_four``, ``pgx_tic_tac_toe``.

The agent is one of the two players; who moves first is drawn at every reset (pgx's own draw),
and when it is the opponent the opponent's first move is part of the reset. Each agent step is
the agent's move and, unless that ended the game, the opponent's reply. The reward is the
agent's outcome when the game ends: +1 a win, -1 a loss, 0 a draw (and 0 before the end). An
illegal move (a full column, an occupied cell) loses at once, pgx's rule, so the agent learns
the legal moves. Every end is terminal. One move per agent step: `env.action_repeat` must be 1.

Observations: ``vector`` float32 ``[H W C]``: the board from the agent's side, pgx's planes
(its own stones, the opponent's) flattened. Actions: pgx's action index (a column of Connect
Four, a cell of Tic-tac-toe).

Opponents (``env.opponent``): ``random`` plays a uniformly random legal move; ``greedy`` looks
two plies ahead: it wins at once where it can, else plays a random move after which the agent
cannot win at once, else a random legal move. The opponent's draws follow the env's seed.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from dreamer.envs.base import (
    EnvError,
    Space,
    check_obs_mode,
    discrete_space,
    transition,
    unknown_task,
)

GAMES = ("connect_four", "tic_tac_toe")  # pgx ids
OPPONENTS = ("random", "greedy")
AGENT = 0  # the agent's player id; the opponent is 1


def opponent_policy(env: Any, kind: str):
    """The opponent's move as a function (state, key) -> action of pgx's jax API, for
    `kind` in OPPONENTS; the state is one where the opponent is to move."""
    import jax
    import jax.numpy as jnp

    actions = jnp.arange(env.num_actions, dtype=jnp.int32)

    def pick(mask, key):  # a uniformly random action among those the mask allows
        return jax.random.choice(key, actions, p=mask / jnp.sum(mask))

    if kind == "random":
        return lambda state, key: pick(state.legal_action_mask.astype(jnp.float32), key)

    def greedy(state, key):
        me = state.current_player
        legal = state.legal_action_mask
        after = jax.vmap(env.step, in_axes=(None, 0))(state, actions)
        wins = legal & (after.rewards[:, me] > 0)

        def agent_can_win(s):  # does the other player have a move that wins at once?
            replies = jax.vmap(env.step, in_axes=(None, 0))(s, actions)
            return ~s.terminated & jnp.any(s.legal_action_mask & (replies.rewards[:, 1 - me] > 0))

        safe = legal & ~jax.vmap(agent_can_win)(after)
        mask = jnp.where(jnp.any(wins), wins, jnp.where(jnp.any(safe), safe, legal))
        return pick(mask.astype(jnp.float32), key)

    return greedy


@functools.cache
def game_functions(game: str, opponent: str):
    """The jitted (reset(key) -> (state, obs, key), step(state, action, key) -> (state, obs,
    reward, done, key)) of one game against one opponent (each returns the key of the next
    call: no key is split on the host), shared by every env of the process (pure
    functions: each env compiles nothing of its own)."""
    import jax
    import jax.numpy as jnp
    import pgx

    env = pgx.make(game)
    move = opponent_policy(env, opponent)

    def reply(state, key):  # the opponent moves where the game goes on and it is its turn
        go = ~state.terminated & (state.current_player != AGENT)
        return jax.lax.cond(go, lambda s: env.step(s, move(s, key)), lambda s: s, state)

    def view(state):  # pgx's planes are the mover's then the other's: turned to the agent's side
        obs = state.observation
        return jnp.where(state.current_player == AGENT, obs, obs[..., ::-1])

    def reset(key):
        key, first, second = jax.random.split(key, 3)
        state = reply(env.init(first), second)
        return state, view(state), key

    def step(state, action, key):
        key, move_key = jax.random.split(key)
        illegal = ~state.legal_action_mask[action]
        before = view(state)
        state = env.step(state, action)
        ended, reward = state.terminated, state.rewards[AGENT]  # pgx: the last move's rewards
        state = reply(state, move_key)
        reward = jnp.where(ended, reward, state.rewards[AGENT])
        # pgx still writes an illegal move's stone (over another); the agent sees the board as
        # it was when the move lost.
        return state, jnp.where(illegal, before, view(state)), reward, state.terminated, key

    return env, jax.jit(reset), jax.jit(step)


def host_device():
    """The CPU device where JAX has one (`--jax.platform=gpu` may leave it out: then the
    default device)."""
    import jax

    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return jax.devices()[0]


class PgxGame:
    """One pgx game against a fixed opponent; see the module docstring."""

    def __init__(self, game: str, seed: int, opponent: str):
        import jax

        env, self._reset, self._step = game_functions(game, opponent)
        cpu = host_device()  # tiny boards: stepped beside the actor, not on an accelerator
        self._key = jax.device_put(jax.random.key(seed), cpu)
        self._cpu = cpu
        self._state = None
        shape = tuple(env.observation_shape)
        self.obs_space = {"vector": Space(np.float32, (int(np.prod(shape)),), 0, 1)}
        self.act_space = discrete_space(env.num_actions)

    def reset(self) -> dict[str, Any]:
        import jax

        with jax.default_device(self._cpu):
            self._state, obs, self._key = self._reset(self._key)
        return transition(self._obs(obs), is_first=True)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        import jax

        with jax.default_device(self._cpu):
            self._state, obs, reward, done, self._key = self._step(
                self._state, np.int32(action), self._key)
        done = bool(done)
        return transition(self._obs(obs), float(reward), is_last=done, is_terminal=done)

    def close(self) -> None:
        pass

    @staticmethod
    def _obs(obs: Any) -> dict[str, np.ndarray]:
        return {"vector": np.asarray(obs, np.float32).reshape(-1)}


def tasks() -> list[str]:
    return [f"pgx_{g}" for g in GAMES]


def make(name: str, cfg: Any, seed: int) -> PgxGame:
    """A pgx game against ``cfg.opponent`` from the ``env`` config; ``name`` without ``pgx_``."""
    if name not in GAMES:
        raise unknown_task(f"pgx_{name}", tasks())
    check_obs_mode(cfg.obs)
    if cfg.obs != "vector":
        raise EnvError(f"pgx_{name} observes its board as a vector of stone planes: use "
                       f"--env.obs=vector (got {cfg.obs!r})")
    if cfg.action_repeat != 1:
        raise EnvError(f"pgx_{name} plays one move per step: set --env.action_repeat=1 (got "
                       f"{cfg.action_repeat})")
    if cfg.opponent not in OPPONENTS:
        raise EnvError(f"env.opponent must be one of {', '.join(OPPONENTS)}, got "
                       f"{cfg.opponent!r}")
    try:
        import pgx  # noqa: F401
    except ImportError as err:
        raise EnvError(f"pgx_{name} needs the pgx package ({err}): reinstall the checkout with "
                       f"`bash launch/bootstrap.sh` or `pip install pgx`") from err
    return PgxGame(name, seed, cfg.opponent)
