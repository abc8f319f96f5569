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


class Representation(nn.Module):
    """Observations {image [N, H, W, C] uint8, vector [N, D]} -> hidden states [N, S]: the
    shared encoder (CNN for images, symlog MLP for vectors), then an MLP."""

    latent: int
    layers: int
    units: int
    depth: int
    mults: tuple[int, ...]
    kernel: int
    norm: str = "rms"
    act: str = "silu"

    @nn.compact
    def __call__(self, obs: dict[str, jax.Array]) -> jax.Array:
        x = Encoder(self.depth, self.mults, self.kernel, self.units, self.layers, self.norm,
                    self.act, name="enc")(obs)
        return scale_state(MLP(1, self.units, self.latent, norm=self.norm, act=self.act,
                               name="out")(x))


class Dynamics(nn.Module):
    """(hidden state [N, S], one-hot action [N, A]) -> (next state [N, S], reward logits
    [N, bins])."""

    latent: int
    layers: int
    units: int
    bins: int
    norm: str = "rms"
    act: str = "silu"

    @nn.compact
    def __call__(self, s: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.layers, self.units, norm=self.norm, act=self.act, name="torso")(
            jnp.concatenate([s, action.astype(s.dtype)], -1))
        nxt = scale_state(MLP(0, self.units, self.latent, name="state")(x))
        reward = MLP(1, self.units, self.bins, outscale=0.0, norm=self.norm, act=self.act,
                     name="reward")(x)
        return nxt, reward


class Prediction(nn.Module):
    """Hidden state [N, S] -> (policy logits [N, A], value logits [N, bins])."""

    actions: int
    layers: int
    units: int
    bins: int
    norm: str = "rms"
    act: str = "silu"

    @nn.compact
    def __call__(self, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.layers, self.units, norm=self.norm, act=self.act, name="torso")(s)
        return (MLP(0, self.units, self.actions, outscale=0.01, name="policy")(x),
                MLP(0, self.units, self.bins, outscale=0.0, name="value")(x))


class Nets(nn.Module):
    """The three functions under one parameter tree: {'repr', 'dyn', 'pred'}. Call the methods
    `represent`, `dynamics` and `predict` through `apply(..., method=...)`."""

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
        self.repr = Representation(self.latent, self.layers, self.units, self.depth,
                                   self.mults, self.kernel, **common)
        self.dyn = Dynamics(self.latent, self.layers, self.units, self.bins, **common)
        self.pred = Prediction(self.actions, self.layers, self.units, self.bins, **common)

    def __call__(self, obs: dict[str, jax.Array], action: jax.Array) -> Any:
        """Every function once (for `init`)."""
        s = self.represent(obs)
        return self.predict(s), self.dynamics(s, action)

    def represent(self, obs: dict[str, jax.Array]) -> jax.Array:
        return self.repr(obs)

    def dynamics(self, s: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.dyn(s, action)

    def predict(self, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.pred(s)
