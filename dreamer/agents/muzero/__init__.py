"""MuZero (Schrittwieser et al. 2020) with Gumbel MuZero search (Danihelka et al. 2022, mctx):
`nets` (representation, dynamics, prediction), `targets` (n-step value targets and the masks of
a K-step unroll), `agent` (search, losses, the agent interface).

Imports: dreamer.core, dreamer.config, dreamer.agents.modes; mctx.
"""
from dreamer.agents.muzero.agent import MuZero

__all__ = ["MuZero"]
