"""What every agent's train step shares around its own losses: the check that replayed sequences
have the length it trains on, the skip of an update whose loss or gradients are not finite, and
exponential moving averages of parameters (target networks, DreamerV3's slow critic).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def check_sequence_length(batch: Mapping[str, Any], expected: int, agent: str,
                          source: str = "batch_length") -> None:
    """Raises ValueError unless the batch's sequences [B, L, ...] hold `expected` steps (checked
    on `is_first`, at trace time); `source` says which settings give that length."""
    length = batch["is_first"].shape[1]
    if length != expected:
        raise ValueError(f"batch sequences hold {length} steps, {agent} trains on {expected} "
                         f"({source})")


def all_finite(*trees: Any) -> jax.Array:
    """Whether every leaf of every tree is finite everywhere: a scalar bool array."""
    leaves = [x for tree in trees for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if_finite(new: Any, old: Any, *checked: Any) -> tuple[Any, jax.Array]:
    """(`new`, True) when every leaf of `checked` (the loss, the gradients) is finite, else
    (`old`, False): a non-finite update is skipped whole. `new` and `old` share a structure.
    Under a device axis, check values that every device holds alike (averaged gradients and
    losses), so that all devices skip together."""
    finite = all_finite(*checked)
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old), finite


def nonfinite_metric(finite: jax.Array) -> jax.Array:
    """`metrics['nonfinite']` of the agent interface: 1.0 for a skipped update, else 0.0."""
    return 1.0 - finite.astype(jnp.float32)


def ema(target: Any, online: Any, rate: float | jax.Array) -> Any:
    """(1 - rate) target + rate online, leaf by leaf: a target network following `online`
    (rate 1: a copy; 0: frozen)."""
    return jax.tree.map(lambda t, o: (1 - rate) * t + rate * o, target, online)
