"""MuZero's three functions (Schrittwieser et al. 2020): representation h(o) -> s, dynamics
g(s, a) -> (s', r) and prediction f(s) -> (π, v), with reward and value as two-hot
distributions over symlog-spaced bins (`dreamer.core.distributions.TwoHot`).

Hidden states are min-max scaled to [0, 1] per state, as the paper scales them to the range of
the one-hot action they are concatenated with.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer.core.convnets import Encoder
from dreamer.core.nets import MLP


def scale_state(s: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Each state [..., S] min-max scaled to [0, 1] over its S entries."""
    lo = jnp.min(s, -1, keepdims=True)
    hi = jnp.max(s, -1, keepdims=True)
    return (s - lo) / (hi - lo + eps)


class Nets(nn.Module):
    """The three functions under one parameter tree. Call `represent` (observations {image
    [N, H, W, C] uint8, vector [N, D]} -> hidden states [N, S]: the shared encoder, then a
    layer), `dynamics` ((s [N, S], one-hot action [N, A]) -> (next state, reward logits
    [N, bins])) and `predict` (s -> (policy logits [N, A], value logits [N, bins])) through
    `apply(..., method=...)`."""

    actions: int
    latent: int
    layers: int
    units: int
    bins: int
    depth: int
    mults: tuple[int, ...]
    kernel: int
    norm: str = "rms"
    act: str = "silu"

    def setup(self) -> None:
        common = {"norm": self.norm, "act": self.act}
        self.enc = Encoder(self.depth, self.mults, self.kernel, self.units, self.layers,
                           **common)
        self.enc_out = MLP(1, self.units, self.latent, **common)
        self.dyn_torso = MLP(self.layers, self.units, **common)
        self.dyn_state = MLP(0, self.units, self.latent)
        self.dyn_reward = MLP(1, self.units, self.bins, outscale=0.0, **common)
        self.pred_torso = MLP(self.layers, self.units, **common)
        self.pred_policy = MLP(0, self.units, self.actions, outscale=0.01)
        self.pred_value = MLP(0, self.units, self.bins, outscale=0.0)

    def __call__(self, obs: dict[str, jax.Array], action: jax.Array) -> Any:
        """Every function once (for `init`)."""
        s = self.represent(obs)
        return self.predict(s), self.dynamics(s, action)

    def represent(self, obs: dict[str, jax.Array]) -> jax.Array:
        return scale_state(self.enc_out(self.enc(obs)))

    def dynamics(self, s: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.dyn_torso(jnp.concatenate([s, action.astype(s.dtype)], -1))
        return scale_state(self.dyn_state(x)), self.dyn_reward(x)

    def predict(self, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.pred_torso(s)
        return self.pred_policy(x), self.pred_value(x)
