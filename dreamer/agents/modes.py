"""The acting modes of `Agent.policy`, shared by the agents, the acting loops and `dreamer-eval`.

- 'eval': the policy each agent's paper evaluates with; evaluation during training and
  `dreamer-eval` act in this mode.
- 'sample': the exploring policy that collects the training data (actor processes and the
  training loop's own acting).
- 'mode': the greedy policy, the most likely action.

What each mode means for an agent is in its `policy` docstring.
"""
from __future__ import annotations

MODES: tuple[str, ...] = ("eval", "sample", "mode")


def check_mode(mode: str) -> None:
    """Raises ValueError unless `mode` is one of `MODES`."""
    if mode not in MODES:
        raise ValueError(f"unknown policy mode {mode!r}: choose one of "
                         f"{', '.join(repr(m) for m in MODES)}")
