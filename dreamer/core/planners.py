"""Sampling-based planners over action sequences: the cross-entropy method and MPPI.

A planner knows nothing of the model behind it. It takes `rollout(params, state, actions)`,
which maps candidate action sequences [N, H, A] (in [-1, 1]) to their returns [N], and
returns the refined mean sequence [H, A]; the agent acts on its first action and starts the
next step's search from the shifted plan (`shift`). Candidates are drawn from a normal
distribution truncated to [-1, 1] (`sample`: redrawn inside the range, not clipped onto its
ends), and sequences from elsewhere, such as a policy's samples, may join them in every
iteration (`prior`). Jitted, `lax` loops only; randomness that the rollout needs travels inside
`state`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

Rollout = Callable[[Any, Any, jax.Array], jax.Array]
LOW, HIGH = -1.0, 1.0  # the action range of every plan
PLANNERS = ("cem", "mppi")  # what an agent's planner key may name (`pets.planner`, `mpc.planner`)


def _returns(rollout: Rollout, params: Any, state: Any, actions: jax.Array) -> jax.Array:
    returns = rollout(params, state, actions)
    # Checked right after the callback returns, as mctx checks its recurrent function.
    chex.assert_shape(returns, (actions.shape[0],))
    return returns


def sample(key: jax.Array, mean: jax.Array, std: jax.Array, n: int) -> jax.Array:
    """n sequences [n, H, A] from N(mean, std²) truncated to [-1, 1] entry by entry: inside the
    range the density is the normal's, renormalised, so no mass piles on the ends (clipping
    would put every draw beyond them exactly there). A mean outside the range counts as its
    nearest end."""
    mean = jnp.clip(mean, LOW, HIGH)
    std = jnp.maximum(std, 1e-6)
    z = jax.random.truncated_normal(key, (LOW - mean) / std, (HIGH - mean) / std,
                                    (n, *mean.shape))
    return jnp.clip(mean + std * z, LOW, HIGH)  # float rounding only


def _candidates(key: jax.Array, mean: jax.Array, std: jax.Array, n: int,
                prior: jax.Array | None) -> jax.Array:
    """n samples around (mean, std), followed by the `prior` sequences [P, H, A] if any."""
    actions = sample(key, mean, std, n)
    if prior is None:
        return actions
    chex.assert_shape(prior, (None, *mean.shape))
    return jnp.concatenate([actions, jnp.clip(prior, LOW, HIGH)], 0)


def _check_elites(elites: int, candidates: int, prior: jax.Array | None) -> None:
    total = candidates + (0 if prior is None else prior.shape[0])
    if not 0 < elites <= total:
        raise ValueError(f"the planner needs 0 < elites <= candidates (+ prior sequences), "
                         f"got {elites} and {total}")


def cem(rollout: Rollout, params: Any, state: Any, key: jax.Array, mean: jax.Array, *,
        candidates: int, elites: int, iterations: int, init_std: float,
        smoothing: float = 0.0, prior: jax.Array | None = None) -> jax.Array:
    """Cross-entropy method (Rubinstein 1999; PETS, Chua et al. 2018): sample `candidates`
    sequences from N(mean, std) truncated to [-1, 1] (with the `prior` sequences beside them),
    refit mean and std to the `elites` best, and blend: new = smoothing * old + (1 - smoothing)
    * refit. mean [H, A] -> plan [H, A]."""
    _check_elites(elites, candidates, prior)
    std = jnp.full_like(mean, init_std)

    def iteration(carry, k):
        mean, std = carry
        actions = _candidates(k, mean, std, candidates, prior)
        returns = _returns(rollout, params, state, actions)
        best = actions[jax.lax.top_k(returns, elites)[1]]
        new_mean, new_std = best.mean(0), best.std(0)
        mean = smoothing * mean + (1 - smoothing) * new_mean
        std = smoothing * std + (1 - smoothing) * new_std
        return (mean, std), returns.max()

    (mean, _), _ = jax.lax.scan(iteration, (mean, std), jax.random.split(key, iterations))
    return mean


def elite_weights(returns: jax.Array, temperature: float) -> jax.Array:
    """MPPI's weights [E] of the elites' returns [E]: softmax(z / temperature) with
    z = (R - max R) / (max R - min R), the returns normalised by their spread. The best elite
    weighs exp(1 / temperature) times the worst whatever the scale of the returns; equal
    returns weigh equally."""
    spread = returns.max() - returns.min()
    z = (returns - returns.max()) / jnp.maximum(spread, 1e-8 * (1.0 + jnp.abs(returns).max()))
    return jax.nn.softmax(z / temperature)


def mppi_refit(actions: jax.Array, returns: jax.Array, *, temperature: float, min_std: float,
               max_std: float) -> tuple[jax.Array, jax.Array]:
    """MPPI's new (mean, std) [H, A] from the elites' sequences [E, H, A] and returns [E]: the
    `elite_weights`-weighted mean, and the weighted standard deviation around it, clipped to
    [min_std, max_std]."""
    w = elite_weights(returns, temperature)
    mean = jnp.einsum("e,eha->ha", w, actions)
    var = jnp.einsum("e,eha->ha", w, jnp.square(actions - mean))
    return mean, jnp.clip(jnp.sqrt(var), min_std, max_std)


def mppi(rollout: Rollout, params: Any, state: Any, key: jax.Array, mean: jax.Array, *,
         candidates: int, elites: int, iterations: int, init_std: float, temperature: float,
         min_std: float = 0.05, prior: jax.Array | None = None) -> jax.Array:
    """Model-predictive path integral control (Williams et al. 2017) as TD-MPC (Hansen et al.
    2022) runs it: sample `candidates` sequences around the mean (std `init_std` at first; the
    `prior` sequences beside them), keep the `elites` best, and move the mean and std to their
    `mppi_refit` (weights softmax of the spread-normalised returns over `temperature`; std in
    [min_std, init_std]). mean [H, A] -> plan [H, A]."""
    if temperature <= 0:
        raise ValueError(f"MPPI needs a positive temperature, got {temperature}")
    if not 0 < min_std <= init_std:
        raise ValueError(f"MPPI needs 0 < min_std <= init_std, got {min_std} and {init_std}")
    _check_elites(elites, candidates, prior)
    std = jnp.full_like(mean, init_std)

    def iteration(carry, k):
        mean, std = carry
        actions = _candidates(k, mean, std, candidates, prior)
        returns = _returns(rollout, params, state, actions)
        top, index = jax.lax.top_k(returns, elites)
        carry = mppi_refit(actions[index], top, temperature=temperature, min_std=min_std,
                           max_std=init_std)
        return carry, returns.max()

    (mean, _), _ = jax.lax.scan(iteration, (mean, std), jax.random.split(key, iterations))
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
