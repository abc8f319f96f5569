"""Branched model rollouts and the on-device buffer they fill (MBPO, Janner et al. 2019).

From N real states, the policy acts for k steps inside an ensemble dynamics model
(`dreamer.core.dynamics.DynamicsModel`), each rollout on one of the E elite members for all k
steps, sampling from its Gaussian at each step. Row i of the starts follows elite i mod E: the
starts are a random draw, so this assigns the elites as a random draw per rollout would, and each
member computes only its own rows (MBPO draws a member per transition from the elites; one per
rollout keeps a rollout one model's trajectory). A rollout stops where the model predicts
termination (probability > 1/2): that step is written with `cont` 0, its later steps are not.
The length k may be a traced value (a schedule over training): the loop runs k steps, no more.
The buffer is a ring of fixed capacity in the train state, identical on every device when every
device writes the same rollouts; sampling can be limited to its newest rows (MBPO keeps the
rollouts of the last epoch, however long they are now).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from dreamer.core.distributions import is_row_keys

KEYS = ("obs", "action", "reward", "next_obs", "cont")


class Buffer(flax.struct.PyTreeNode):
    """A ring of transitions {obs, action, reward, next_obs, cont}. `count` is the rows written
    so far until the ring is full, then folded into [capacity, 2 capacity) with the same
    remainder (so it never overflows, however long a run): the newest `min(count, capacity)`
    rows are valid, the newest at `(count - 1) % capacity`."""

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

    def size(self, newest: jax.Array | int | None = None) -> jax.Array:
        """How many rows `sample` draws from: the valid ones, at most the `newest`."""
        size = jnp.minimum(self.count, self.capacity)
        return size if newest is None else jnp.minimum(size, newest)

    def add(self, items: dict[str, jax.Array], valid: jax.Array) -> Buffer:
        """Writes the rows of `items` [M, ...] where `valid` [M], in order, after the newest
        (of more valid rows than the capacity, the last `capacity`)."""
        order = jnp.cumsum(valid.astype(jnp.int32))
        total = valid.sum(dtype=jnp.int32)
        keep = valid & (order > total - self.capacity)  # no two rows write one slot
        index = jnp.where(keep, (self.count + order - 1) % self.capacity, self.capacity)
        data = {k: v.at[index].set(items[k].astype(v.dtype), mode="drop")
                for k, v in self.data.items()}
        count = self.count + total
        count = jnp.where(count >= self.capacity, self.capacity + count % self.capacity, count)
        return Buffer(data=data, count=count)

    def sample(self, key: jax.Array, n: int, newest: jax.Array | int | None = None,
               ) -> dict[str, jax.Array]:
        """n rows drawn uniformly with replacement from the valid ones, or from the `newest`
        of them (the buffer must hold at least one). `key` is one key, or one per row [n] (so
        that rows drawn on several devices are those one device would draw)."""
        size = jnp.maximum(self.size(newest), 1)
        if is_row_keys(key):
            back = jax.vmap(lambda k: jax.random.randint(k, (), 0, size))(key)
        else:
            back = jax.random.randint(key, (n,), 0, size)
        index = (self.count - 1 - back) % self.capacity  # 0: the newest row
        return {k: v[index] for k, v in self.data.items()}


def rollout(predict: Callable, params: Any, policy: Callable, starts: jax.Array,
            elites: int, length: jax.Array | int, buffer: Buffer,
            key: jax.Array) -> tuple[Buffer, dict[str, jax.Array]]:
    """k = `length` steps from `starts` [N, D] written into `buffer`.

    `predict(params, states [E, N/E, D], actions [E, N/E, A], key)` is the elites' sampled step
    (`DynamicsModel.predict` on their parameters: next states, rewards, termination
    probabilities [E, N/E, ...]); `policy(obs [N, D], key) -> actions [N, A]` the current
    policy's sample. Row i follows elite i mod E (N must be a multiple of E). Each step writes
    the transitions {obs, action, reward, next_obs, cont} of the rollouts still running, in row
    order; a rollout's steps after the first one the model ends are not written. Returns the
    buffer and {'written': transitions written, 'steps': k}."""
    n = starts.shape[0]
    if n % elites:
        raise ValueError(f"{n} rollouts cannot be split evenly over {elites} elites")
    per = n // elites
    to_members = lambda x: x.reshape(per, elites, *x.shape[1:]).swapaxes(0, 1)
    to_rows = lambda x: x.swapaxes(0, 1).reshape(n, *x.shape[2:])

    def step(t, carry):
        obs, alive, buffer, written = carry
        k_act, k_model = jax.random.split(jax.random.fold_in(key, t))
        action = policy(obs, k_act)
        nxt, reward, done = predict(params, to_members(obs), to_members(action), k_model)
        nxt, reward, ended = to_rows(nxt), to_rows(reward), to_rows(done) > 0.5
        items = {"obs": obs, "action": action, "reward": reward, "next_obs": nxt,
                 "cont": 1.0 - ended.astype(jnp.float32)}
        return (nxt, alive & ~ended, buffer.add(items, alive),
                written + alive.sum(dtype=jnp.int32))

    _, _, buffer, written = jax.lax.fori_loop(
        0, length, step, (starts, jnp.ones(n, bool), buffer, jnp.zeros([], jnp.int32)))
    return buffer, {"written": written, "steps": jnp.asarray(length, jnp.int32)}
