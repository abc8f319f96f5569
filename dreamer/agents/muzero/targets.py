"""MuZero's training targets from a replayed sequence (Schrittwieser et al. 2020, App. G).

A sequence holds `L = K + n + 1` steps in the replay's layout: step j has the observation o_j,
the action a_j chosen after seeing it, the reward r_j received on arriving at o_j and the episode
flags; the policy's stored outputs are the search policy π_j and the search's root value v_j.
The model unrolls K steps from o_0 with a_0 ... a_{K-1}; its k-th state is trained on

- reward r_k (k >= 1), value z_k and policy π_k while the start's episode is still running;
- reward 0 and value 0 with no policy loss once it has ended in a terminal state before step k
  (the absorbing state the paper trains after a game's end);
- nothing once it has ended by a time limit before step k (the continuation is unknown).

z_u = sum_{i=1..e-u} γ^(i-1) r_{u+i} + γ^(e-u) (1 - terminal_e) v_e, where e is the first end of
the episode within (u, u+n] (u itself when o_u is the episode's last observation), else u + n: the
n-step bootstrapped return, cut at a terminal state and bootstrapped at a time limit. v_e is the
search's stored root value, or the value a target network predicts at o_e (`muzero.bootstrap`).
Sequences may cross into the next episode; its first step ends the one before even
where the replay holds no `is_last` (an interrupted episode).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Targets(NamedTuple):
    """Per unroll step k = 0..K, each [B, K+1]: targets and the masks of the losses."""

    reward: jax.Array        # r_k (0 at k = 0 and in the absorbing state)
    value: jax.Array         # z_k (0 in the absorbing state)
    policy: jax.Array        # π_k [B, K+1, A]
    reward_mask: jax.Array   # 1 where the reward loss applies (k >= 1, not past a time limit)
    value_mask: jax.Array    # 1 where the value loss applies
    policy_mask: jax.Array   # 1 where the policy loss applies (a search chose the step)


def episode_ends(is_first: jax.Array, is_last: jax.Array) -> jax.Array:
    """[B, L] bool: step j is the last of its episode (`is_last`, or the next step starts one)."""
    nxt = jnp.concatenate([is_first[:, 1:], jnp.zeros_like(is_first[:, :1])], 1)
    return is_last.astype(bool) | nxt.astype(bool)


def bootstrap_steps(ends: jax.Array, n: int, count: int):
    """Where the windows of u = 0 .. count-1 stop, from ends [B, L] (L >= count + n): (alive
    [B, count, n], 1 while step u+i still belongs to u's episode; last [B, count], the step
    e whose value the target bootstraps from: the episode's end within (u, u+n], u itself when
    o_u is its last observation, else u + n)."""
    length = ends.shape[1]
    if length < count + n:
        raise ValueError(f"value targets of {count} steps need {count + n} steps, got {length}")
    u = jnp.arange(count)[:, None]
    idx = u + jnp.arange(1, n + 1)[None, :]                        # [count, n]
    # Step u+i still belongs to u's episode while no end lies in [u, u+i).
    end_before = jnp.concatenate([ends[:, u[:, 0], None], ends[:, idx[:, :-1]]], -1)
    alive = jnp.cumprod(1.0 - end_before.astype(jnp.float32), -1)   # [B, count, n]
    return alive, u[:, 0] + jnp.sum(alive, -1).astype(jnp.int32)


def value_targets(reward: jax.Array, value: jax.Array, ends: jax.Array, terminal: jax.Array,
                  n: int, discount: float, count: int) -> jax.Array:
    """z_u for u = 0 .. count-1: [B, count] from reward, bootstrap value, ends, terminal
    [B, L] (L >= count + n); `value` is read only at the steps `bootstrap_steps` names."""
    alive, last = bootstrap_steps(ends, n, count)
    u = jnp.arange(count)[:, None]
    i = jnp.arange(1, n + 1)[None, :]
    rewards = jnp.sum(alive * discount ** (i - 1.0) * reward[:, u + i], -1)
    boot = jnp.take_along_axis(value, last, 1) * (1.0 - jnp.take_along_axis(
        terminal.astype(jnp.float32), last, 1))
    return rewards + discount ** (last - u[:, 0]).astype(jnp.float32) * boot


def unroll_targets(batch: dict[str, jax.Array], unroll: int, n: int, discount: float,
                   value: jax.Array | None = None) -> Targets:
    """The targets of a K-step unroll from each sequence's first step (see the module doc).

    batch: reward, is_first, is_last, is_terminal [B, L]; search_policy [B, L, A]; root_value
    [B, L]; searched [B, L] (1 where a search chose the step, 0 for random prefill). `value`
    [B, L], where given, replaces the stored root values as the values bootstrapped from."""
    k1 = unroll + 1
    ends = episode_ends(batch["is_first"], batch["is_last"])
    terminal = batch["is_terminal"].astype(bool)
    reward = batch["reward"].astype(jnp.float32)
    value = batch["root_value"] if value is None else value
    z = value_targets(reward, value.astype(jnp.float32), ends, terminal, n, discount, k1)
    # Step k is in the start's episode while no end lies in [0, k).
    ended = jnp.concatenate([jnp.zeros_like(ends[:, :1]), ends[:, :unroll]], 1)
    alive = jnp.cumprod(1.0 - ended.astype(jnp.float32), 1)          # [B, K+1]
    # Once ended: absorbing after a terminal state, unknown after a time limit.
    first_end = jnp.argmax(ends[:, :k1], 1)
    ended_terminal = jnp.take_along_axis(terminal, first_end[:, None], 1)
    known = jnp.maximum(alive, ended_terminal.astype(jnp.float32))
    not_first = (jnp.arange(k1) > 0).astype(jnp.float32)[None]
    policy_mask = alive * (1.0 - batch["is_last"][:, :k1].astype(jnp.float32))
    if "searched" in batch:
        policy_mask = policy_mask * batch["searched"][:, :k1].astype(jnp.float32)
    return Targets(reward=alive * not_first * reward[:, :k1], value=alive * z,
                   policy=batch["search_policy"][:, :k1].astype(jnp.float32),
                   reward_mask=known * not_first, value_mask=known, policy_mask=policy_mask)


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """x forward; its gradient times `scale` backward (the paper's `scale_gradient`)."""
    return x * scale + jax.lax.stop_gradient(x) * (1.0 - scale)
