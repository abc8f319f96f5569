"""Returns of value-based learners: TD(λ) returns over trajectories and percentile return
normalisation, as DreamerV3 trains its actor-critic with them (Hafner et al. 2023, Eq. 7 and 11)
and as any agent that bootstraps a critic on imagined or replayed steps can.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from dreamer.core.parallel import gather_over


def lambda_return(reward: jax.Array, cont: jax.Array, boot: jax.Array,
                  lam: jax.Array | float) -> jax.Array:
    """TD(λ) returns (paper Eq. 7), arrays [N, T] -> returns [N, T-1].

    R_t = r_{t+1} + c_{t+1} ((1 - λ_{t+1}) v_{t+1} + λ_{t+1} R_{t+1}), with R_{T-1} = v_{T-1},
    where `reward` r_t is received on entering step t, `cont` c_t = γ (1 - terminal_t) and
    `boot` v_t are the bootstrap values. `lam` may vary per step (0 cuts at episode ends).
    """
    chex.assert_equal_shape([reward, cont, boot])
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), reward.shape)
    # Each step is an affine map of the next return, R_t = a_t + b_t R_{t+1}; their compositions
    # come from a parallel prefix scan (log T levels, no loop that runs once per step).
    r, c, v, lm = (x[:, 1:] for x in (reward, cont, boot, lam))
    a = r + c * (1 - lm) * v
    b = c * lm

    def compose(later, now):  # now ∘ later: x -> a_now + b_now (a_later + b_later x)
        return now[0] + now[1] * later[0], now[1] * later[1]

    a, b = jax.lax.associative_scan(compose, (a, b), reverse=True, axis=1)
    return a + b * boot[:, -1:]


def update_retnorm(stats: dict[str, jax.Array], ret: jax.Array, *, lo: float, hi: float,
                   decay: float, limit: float, axis_name: str | None = None):
    """Percentile return normalisation (paper Eq. 11): EMA (rate 1 - `decay`) of the `lo` and
    `hi` quantiles of the returns on all devices.

    Returns (new stats, scale) with scale = max(limit, hi - lo); dividing advantages by it keeps
    the entropy bonus meaningful across reward scales while not amplifying tiny returns.
    """
    values = gather_over(ret.reshape(-1), axis_name)
    stats = {"lo": decay * stats["lo"] + (1 - decay) * jnp.quantile(values, lo),
             "hi": decay * stats["hi"] + (1 - decay) * jnp.quantile(values, hi)}
    return stats, jnp.maximum(limit, stats["hi"] - stats["lo"])
