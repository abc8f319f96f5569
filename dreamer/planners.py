"""Sampling-based planners over action sequences: the cross-entropy method and MPPI.

A planner knows nothing of the model behind it. It takes `rollout(params, state, actions)`,
which maps candidate action sequences [N, H, A] (in [-1, 1]) to their returns [N], and
returns the refined mean sequence [H, A]; the agent acts on its first action and starts the
next step's search from the shifted plan (`shift`). Jitted, `lax` loops only; randomness
that the rollout needs travels inside `state`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

Rollout = Callable[[Any, Any, jax.Array], jax.Array]


def _returns(rollout: Rollout, params: Any, state: Any, actions: jax.Array) -> jax.Array:
    returns = rollout(params, state, actions)
    # Checked right after the callback returns, as mctx checks its recurrent function.
    chex.assert_shape(returns, (actions.shape[0],))
    return returns


def cem(rollout: Rollout, params: Any, state: Any, key: jax.Array, mean: jax.Array, *,
        candidates: int, elites: int, iterations: int, init_std: float,
        smoothing: float = 0.0) -> jax.Array:
    """Cross-entropy method (Rubinstein 1999; PETS, Chua et al. 2018): sample `candidates`
    sequences from N(mean, std) clipped to [-1, 1], refit mean and std to the `elites` best, and
    blend: new = smoothing * old + (1 - smoothing) * refit. mean [H, A] -> plan [H, A]."""
    if not 0 < elites <= candidates:
        raise ValueError(f"CEM needs 0 < elites <= candidates, got {elites} and {candidates}")
    std = jnp.full_like(mean, init_std)

    def iteration(carry, k):
        mean, std = carry
        noise = jax.random.normal(k, (candidates, *mean.shape))
        actions = jnp.clip(mean + std * noise, -1.0, 1.0)
        returns = _returns(rollout, params, state, actions)
        best = actions[jax.lax.top_k(returns, elites)[1]]
        new_mean, new_std = best.mean(0), best.std(0)
        mean = smoothing * mean + (1 - smoothing) * new_mean
        std = smoothing * std + (1 - smoothing) * new_std
        return (mean, std), returns.max()

    (mean, _), _ = jax.lax.scan(iteration, (mean, std), jax.random.split(key, iterations))
    return mean


def mppi(rollout: Rollout, params: Any, state: Any, key: jax.Array, mean: jax.Array, *,
         candidates: int, iterations: int, init_std: float, temperature: float) -> jax.Array:
    """Model-predictive path integral control (Williams et al. 2017): perturb the mean with
    Gaussian noise of std `init_std`, and move it to the average of the perturbed sequences
    weighted by softmax(returns / temperature). mean [H, A] -> plan [H, A]."""
    if temperature <= 0:
        raise ValueError(f"MPPI needs a positive temperature, got {temperature}")

    def iteration(mean, k):
        noise = jax.random.normal(k, (candidates, *mean.shape))
        actions = jnp.clip(mean + init_std * noise, -1.0, 1.0)
        returns = _returns(rollout, params, state, actions)
        weights = jax.nn.softmax((returns - returns.max()) / temperature)
        return jnp.einsum("n,nha->ha", weights, actions), returns.max()

    mean, _ = jax.lax.scan(iteration, mean, jax.random.split(key, iterations))
    return mean


def as_actions(plan: jax.Array, discrete: bool) -> jax.Array:
    """Plan entries in [-1, 1] [..., A] -> the actions a model takes: the one-hot of the largest
    entry when discrete (a continuous relaxation of the choice), the entries when continuous."""
    if discrete:
        return jax.nn.one_hot(jnp.argmax(plan, -1), plan.shape[-1])
    return plan


def discounted_return(reward: jax.Array, discount: jax.Array,
                      value: jax.Array | None = None) -> jax.Array:
    """Σ_h (Π_{j<h} d_j) r_h + (Π_j d_j) v: reward, discount [N, H] and value [N] (none: 0)
    -> [N]. With d_j = γ (1 − p_j), p_j the predicted chance that step j ends the episode, a
    step's reward counts with the chance that no earlier step ended it."""
    chex.assert_equal_shape([reward, discount])
    ones = jnp.ones_like(discount[:, :1])
    before = jnp.cumprod(jnp.concatenate([ones, discount[:, :-1]], 1), 1)
    ret = (before * reward).sum(1)
    if value is None:
        return ret
    chex.assert_shape(value, reward.shape[:1])
    return ret + before[:, -1] * discount[:, -1] * value


def shift(plan: jax.Array) -> jax.Array:
    """The warm start of the next step: plan [..., H, A] advanced by one step, zeros at the end."""
    return jnp.concatenate([plan[..., 1:, :], jnp.zeros_like(plan[..., :1, :])], -2)
