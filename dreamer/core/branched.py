"""Branched model rollouts and the on-device buffer they fill (MBPO, Janner et al. 2019).

From N real states, the policy acts for k steps inside an ensemble dynamics model
(`dreamer.core.dynamics.DynamicsModel`): each rollout keeps one member drawn from the elites at
its start for all k steps (as MBPO's rollouts draw a member per transition from the elites; one
per rollout keeps a rollout one model's trajectory) and samples from its Gaussian at each step.
A rollout stops where the model predicts termination (probability > 1/2): its later steps are
kept out of the buffer. The buffer is a ring of fixed capacity in the train state, identical on
every device when every device writes the same rollouts.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


class Buffer(flax.struct.PyTreeNode):
    """A ring of transitions {obs, action, reward, next_obs, cont} with `count` written so
    far (its newest `min(count, capacity)` are valid)."""

    data: dict[str, jax.Array]
    count: jax.Array

    @classmethod
    def empty(cls, capacity: int, obs_dim: int, act_dim: int) -> Buffer:
        data = {"obs": jnp.zeros((capacity, obs_dim)), "action": jnp.zeros((capacity, act_dim)),
                "reward": jnp.zeros(capacity), "next_obs": jnp.zeros((capacity, obs_dim)),
                "cont": jnp.zeros(capacity)}
        return cls(data=data, count=jnp.zeros([], jnp.int32))

    @property
    def capacity(self) -> int:
        return self.data["reward"].shape[0]

    def add(self, items: dict[str, jax.Array], valid: jax.Array) -> Buffer:
        """Writes the rows of `items` [M, ...] where `valid` [M], in order, after the newest."""
        slot = self.count + jnp.cumsum(valid.astype(jnp.int32)) - 1
        index = jnp.where(valid, slot % self.capacity, self.capacity)  # invalid: dropped
        data = {k: v.at[index].set(items[k].astype(v.dtype), mode="drop")
                for k, v in self.data.items()}
        return Buffer(data=data, count=self.count + valid.sum(dtype=jnp.int32))

    def sample(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        """n rows drawn uniformly with replacement from the valid ones (the buffer must hold
        at least one)."""
        size = jnp.maximum(jnp.minimum(self.count, self.capacity), 1)
        index = jax.random.randint(key, (n,), 0, size)
        return {k: v[index] for k, v in self.data.items()}


def rollout(predict: Callable, params: Any, policy: Callable, starts: jax.Array,
            elites: jax.Array, members: int, length: int,
            key: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    """k = `length` steps from `starts` [N, D]. `predict(params, states [K, N, D], actions
    [K, N, A], key)` is the ensemble's sampled step (`DynamicsModel.predict`), `policy(obs
    [N, D], key) -> actions [N, A]` the current policy's sample, `elites` [E] the members to
    draw from. Returns transitions {obs, action, reward, next_obs, cont} [k * N, ...] in step
    order and which are valid [k * N]: a rollout's steps up to and including the first one the
    model ends."""
    n = starts.shape[0]
    k_member, k_steps = jax.random.split(key)
    member = elites[jax.random.randint(k_member, (n,), 0, elites.shape[0])]
    pick = jax.nn.one_hot(member, members)  # [N, K]: the row's own member

    def step(carry, step_key):
        obs, alive = carry
        k_act, k_model = jax.random.split(step_key)
        action = policy(obs, k_act)
        tiled = lambda x: jnp.broadcast_to(x, (members, *x.shape))  # noqa: E731
        nxt, reward, done = predict(params, tiled(obs), tiled(action), k_model)
        nxt = jnp.einsum("nk,knd->nd", pick, nxt)
        reward, done = jnp.einsum("nk,kn->n", pick, reward), jnp.einsum("nk,kn->n", pick, done)
        ended = done > 0.5
        out = {"obs": obs, "action": action, "reward": reward, "next_obs": nxt,
               "cont": 1.0 - ended.astype(jnp.float32)}
        return (nxt, alive & ~ended), (out, alive)

    alive = jnp.ones(n, bool)
    _, (out, valid) = jax.lax.scan(step, (starts, alive), jax.random.split(k_steps, length))
    flat = lambda x: x.reshape(length * n, *x.shape[2:])  # noqa: E731
    return jax.tree.map(flat, out), flat(valid)
