"""DreamerV3 (Hafner et al., 2023; the 2024 code's choices, see README): a recurrent state-space
world model learned from replayed sequences, and an actor-critic trained on its imagination.

Modules, each importing only from those above it:
- `rssm`: the RSSM cell, filtering (`observe`) and prior unrolls (`imagine`, `open_loop`);
- `world_model`: the world model's loss terms and its open-loop and reconstruction reports;
- `behavior`: imagination, λ-returns, return normalisation, the actor and critic loss terms;
- `optim`: adaptive gradient clipping and LaProp per module group;
- `agent`: the networks, the train state, the scaled objective, `train_step` and `policy`;
- `mpc`: latent MPC, acting by planning in the learned model (`dreamer-eval --mode mpc`).
"""
from dreamer.agents.dreamerv3.agent import DreamerV3, TrainState

__all__ = ["DreamerV3", "TrainState"]
