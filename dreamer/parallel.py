"""Device parallelism lives here: the axis name and the helpers that reduce over it."""
from __future__ import annotations

from typing import Any

import jax

AXIS = "devices"


def mean_over(tree: Any, axis_name: str | None) -> Any:
    """Average every leaf over the device axis when running under it; identity otherwise."""
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)
