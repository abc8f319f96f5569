"""Several updates in one jitted call: a `lax.scan` of an agent's train step over k batches that
are already on the device, so the host dispatches (and waits on) one call per k updates.

For a small model on an accelerator each call costs a dispatch and a wait that can be as long
as the update itself; scanning k updates inside one program pays that once. The updates are the
same as k calls one after the other: the scan threads the state through them in order, each
with its own batch and key.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Step = Callable[[Any, Any, jax.Array], tuple[Any, Any, Any]]


def scan_steps(step: Step) -> Step:
    """`step(state, batch, key) -> (state, metrics, rows)` -> the same over a leading axis of
    k updates: (state, batches [k, ...], keys [k]) -> (state after the k updates, metrics
    [k, ...], rows [k, ...]), update i training on batch i with key i."""
    def steps(state, batches, keys):
        def body(state, inputs):
            batch, key = inputs
            state, metrics, rows = step(state, batch, key)
            return state, (metrics, rows)

        state, (metrics, rows) = jax.lax.scan(body, state, (batches, keys))
        return state, metrics, rows

    return steps


def stack(trees: list[Any]) -> Any:
    """k pytrees of equal structure -> one with a leading axis of k on every leaf."""
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)
