"""Ensembles of probabilistic networks: K members as one `vmap` over stacked parameters.

A member maps inputs [N, I] to a diagonal Gaussian over O outputs (mean and log-variance) and
optionally extra logits. The log-variance is kept between learned soft bounds (Chua et al.
2018, appendix A.1): `max - softplus(max - v)`, then `min + softplus(. - min)`, so that the
variance can neither collapse on the training data nor explode away from it; a small loss on
`max - min` keeps the bounds tight. Used by `dreamer.core.dynamics` (PETS's dynamics model), and by
any agent that needs a model with epistemic uncertainty (MBPO, disagreement-driven exploration).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer.core.nets import get_act, winit


class GaussianMLP(nn.Module):
    """inputs [..., I] -> (mean [..., O], log-variance [..., O], logits [..., E])."""

    outputs: int
    units: int = 200
    layers: int = 3
    act: str = "silu"
    extra: int = 0             # extra outputs returned as logits (e.g. termination)
    min_logvar: float = -10.0
    max_logvar: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        act = get_act(self.act)
        for _ in range(self.layers):
            x = act(nn.Dense(self.units, kernel_init=winit())(x))
        out = nn.Dense(2 * self.outputs + self.extra, kernel_init=winit(0.1))(x)
        mean, raw, logits = jnp.split(out, [self.outputs, 2 * self.outputs], -1)
        hi = self.param("max_logvar", nn.initializers.constant(self.max_logvar), (self.outputs,))
        lo = self.param("min_logvar", nn.initializers.constant(self.min_logvar), (self.outputs,))
        logvar = hi - jax.nn.softplus(hi - raw)
        logvar = lo + jax.nn.softplus(logvar - lo)
        return mean, logvar, logits


def init(module: nn.Module, key: jax.Array, members: int, inputs: int) -> Any:
    """Parameters of `members` independently initialised copies, stacked on a leading axis."""
    x = jnp.zeros((1, inputs))
    return jax.vmap(lambda k: module.init(k, x)["params"])(jax.random.split(key, members))


def apply(module: nn.Module, params: Any, x: jax.Array) -> tuple[jax.Array, ...]:
    """Each member on its own inputs: x [K, N, I] -> outputs [K, N, ...]."""
    return jax.vmap(lambda p, xi: module.apply({"params": p}, xi))(params, x)


def gaussian_nll(mean: jax.Array, logvar: jax.Array, target: jax.Array) -> jax.Array:
    """Negative log-likelihood of `target` under N(mean, exp(logvar)) per element, without the
    constant 0.5 log(2 pi)."""
    return 0.5 * (jnp.square(target - mean) * jnp.exp(-logvar) + logvar)


def bound_loss(params: Any) -> jax.Array:
    """Sum over members and outputs of (max_logvar - min_logvar): keeps the soft bounds tight."""
    return jnp.sum(params["max_logvar"]) - jnp.sum(params["min_logvar"])
