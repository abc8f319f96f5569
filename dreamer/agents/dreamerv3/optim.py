"""Optimiser of the DreamerV3 2024 code, one chain per module group (world model, actor, critic).

Each chain is adaptive gradient clipping, then RMS scaling followed by momentum (LaProp:
momentum on normalised gradients), then a learning rate with linear warm-up.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

GROUPS = ("wm", "actor", "critic")


def adaptive_clip(ratio: float, pmin: float) -> optax.GradientTransformation:
    """Scale each tensor's gradient so that |g| <= ratio * max(pmin, |param|)
    (Brock et al. 2021)."""

    def update(grads, state, params):
        def clip(g, p):
            upper = ratio * jnp.maximum(pmin, jnp.linalg.norm(p.reshape(-1)))
            norm = jnp.linalg.norm(g.reshape(-1))
            return g * jnp.minimum(1.0, upper / jnp.maximum(norm, 1e-12))
        return jax.tree.map(clip, grads, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


class RMSState(NamedTuple):
    count: jax.Array
    nu: Any


def scale_by_rms(beta: float, eps: float) -> optax.GradientTransformation:
    """Divide by the root of a bias-corrected EMA of squared gradients."""

    def init(params):
        return RMSState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        count = optax.safe_int32_increment(state.count)
        nu = jax.tree.map(lambda v, g: beta * v + (1 - beta) * jnp.square(g), state.nu, grads)
        correction = 1 - beta ** count.astype(jnp.float32)
        grads = jax.tree.map(lambda g, v: g / (jnp.sqrt(v / correction) + eps), grads, nu)
        return grads, RMSState(count, nu)

    return optax.GradientTransformation(init, update)


def scale_by_momentum(beta: float) -> optax.GradientTransformation:
    """Bias-corrected EMA of the (already normalised) updates."""

    def init(params):
        return RMSState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        count = optax.safe_int32_increment(state.count)
        mu = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, state.nu, grads)
        correction = 1 - beta ** count.astype(jnp.float32)
        return jax.tree.map(lambda m: m / correction, mu), RMSState(count, mu)

    return optax.GradientTransformation(init, update)


def chain(lr: float, cfg: Any) -> optax.GradientTransformation:
    """One group's chain; `cfg` is the `opt` config section."""
    parts = []
    if cfg.agc > 0:
        parts.append(adaptive_clip(cfg.agc, cfg.pmin))
    parts.append(scale_by_rms(cfg.beta2, cfg.eps))
    if cfg.beta1 > 0:
        parts.append(scale_by_momentum(cfg.beta1))
    if cfg.warmup > 0:
        schedule = optax.linear_schedule(0.0, lr, int(cfg.warmup))
    else:
        schedule = optax.constant_schedule(lr)
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """Optimiser over params {'wm': ..., 'actor': ..., 'critic': ...}."""
    lrs = {"wm": cfg.model_lr, "actor": cfg.actor_lr, "critic": cfg.critic_lr}
    transforms = {group: chain(lrs[group], cfg) for group in GROUPS}

    def labels(params):
        return {group: jax.tree.map(lambda _, g=group: g, params[group]) for group in GROUPS}

    return optax.multi_transform(transforms, labels)
