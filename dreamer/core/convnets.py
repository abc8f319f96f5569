"""Convolutional networks (flax linen): the CNN encoder and the decoder of image observations,
with the nearest-upsampling convolution computed at low resolution (`UpConv`).

Layouts follow the DreamerV3 2024 code (see `dreamer.core.nets` for the layers they are built of).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.core.distributions import symlog
from dreamer.core.nets import MLP, BlockLinear, Dense, Dtype, Linear, Norm, get_act, winit


def maxpool2(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, H/2, W/2, C] by 2x2 max-pooling."""
    n, h, w, c = x.shape
    return x.reshape((n, h // 2, 2, w // 2, 2, c)).max((2, 4))


def upsample2(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, 2H, 2W, C] by nearest-neighbour repetition."""
    return jnp.repeat(jnp.repeat(x, 2, -2), 2, -3)


def _phase_fold(kernel: int) -> np.ndarray:
    """[2, Kf, K] 0/1 map from the K taps of a conv on a 2x-upsampled input to the Kf taps of
    the equivalent conv on the original input, for output phase 0 and 1 along one axis."""
    p = kernel // 2
    q = (p + 1) // 2
    fold = np.zeros((2, 2 * q + 1, kernel), np.float32)
    for phase in range(2):
        for dy in range(-p, p + 1):
            fold[phase, (phase + dy) // 2 + q, dy + p] = 1.0
    return fold


class UpConv(nn.Module):
    """Nearest 2x upsampling followed by a KxK 'SAME' convolution, computed without upsampling.

    Every output pixel of a conv on a repeated image reads only (K+1)/2-ish distinct input
    pixels, so each of the four output phases is a small conv on the low-resolution input with
    summed taps. The result equals `conv(upsample2(x))` with the same [K, K, Cin, Cout] kernel,
    at 36/100 of the FLOPs for K=5. x [N, H, W, Cin] -> [N, 2H, 2W, Cout].
    """

    features: int
    kernel: int = 5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin, cout = self.kernel, x.shape[-1], self.features
        kernel = self.param("kernel", winit(), (k, k, cin, cout), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (cout,), jnp.float32)
        fold = _phase_fold(k)
        folded = jnp.einsum("aiy,bjx,yxco->ijcabo", fold, fold, kernel)
        kf = folded.shape[0]
        folded = folded.reshape((kf, kf, cin, 4 * cout)).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), folded, (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        n, h, w, _ = y.shape
        y = y.reshape((n, h, w, 2, 2, cout)).transpose((0, 1, 3, 2, 4, 5))
        return y.reshape((n, 2 * h, 2 * w, cout)) + bias.astype(self.dtype)


class Encoder(nn.Module):
    """Observation embedding: CNN for `image`, symlog MLP for `vector`; outputs are concatenated.

    image [N, H, W, C] uint8 -> [N, (H/2^S)(W/2^S) depth*mults[-1]]; vector [N, D] -> [N, units].
    """

    depth: int
    mults: tuple[int, ...]
    kernel: int
    units: int
    layers: int
    norm: str = "rms"
    act: str = "silu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, obs: dict[str, jax.Array]) -> jax.Array:
        outs = []
        if "vector" in obs:
            outs.append(MLP(self.layers, self.units, norm=self.norm, act=self.act,
                            dtype=self.dtype, name="mlp")(symlog(obs["vector"])))
        if "image" in obs:
            x = obs["image"].astype(self.dtype) / 255.0 - 0.5
            for i, mult in enumerate(self.mults):
                x = nn.Conv(self.depth * mult, (self.kernel, self.kernel), padding="SAME",
                            kernel_init=winit(), dtype=self.dtype, param_dtype=jnp.float32,
                            name=f"conv{i}")(x)
                x = get_act(self.act)(Norm(self.norm, name=f"conv{i}norm")(maxpool2(x)))
            outs.append(x.reshape((x.shape[0], -1)).astype(jnp.float32))
        return jnp.concatenate(outs, -1)


class Decoder(nn.Module):
    """Reconstructs observations from the model state (2024 layout).

    deter [N, D], stoch [N, S*K] -> {'image': [N, H, W, C] in [0, 1], 'vector': [N, V] (symlog)}.
    """

    shapes: dict[str, tuple[int, ...]]
    depth: int
    mults: tuple[int, ...]
    kernel: int
    units: int
    layers: int
    bspace: int = 8
    norm: str = "rms"
    act: str = "silu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, deter: jax.Array, stoch: jax.Array) -> dict[str, jax.Array]:
        out = {}
        feat = jnp.concatenate([deter, stoch], -1)
        if "vector" in self.shapes:
            out["vector"] = MLP(self.layers, self.units, self.shapes["vector"][-1],
                                norm=self.norm, act=self.act, dtype=self.dtype, name="mlp")(feat)
        if "image" in self.shapes:
            out["image"] = self._image(deter, stoch, feat)
        return out

    def _image(self, deter, stoch, feat):
        height, width, channels = self.shapes["image"]
        stages = len(self.mults)
        h, w, c = height >> stages, width >> stages, self.depth * self.mults[-1]
        act, kw = get_act(self.act), {"dtype": self.dtype}
        if self.bspace:
            # Block projection of the deterministic state into spatial features, plus a dense
            # projection of the stochastic state: far fewer parameters than one dense layer.
            g = self.bspace
            x0 = BlockLinear(h * w * c, g, name="sp0", **kw)(deter.astype(self.dtype))
            x0 = x0.reshape((-1, g, h, w, c // g)).transpose((0, 2, 3, 1, 4))
            x0 = x0.reshape((-1, h, w, c))
            x1 = Dense(2 * self.units, self.norm, self.act, name="sp1", **kw)(stoch)
            x1 = Linear(h * w * c, name="sp2", **kw)(x1).reshape((-1, h, w, c))
            x = act(Norm(self.norm, name="spnorm")(x0 + x1))
        else:
            x = Dense(h * w * c, self.norm, self.act, name="space", **kw)(feat)
            x = x.reshape((-1, h, w, c))
        for i in reversed(range(stages - 1)):
            x = UpConv(self.depth * self.mults[i], self.kernel, name=f"conv{i}", **kw)(x)
            x = act(Norm(self.norm, name=f"conv{i}norm")(x))
        x = UpConv(channels, self.kernel, name="imgout", **kw)(x)
        return jax.nn.sigmoid(x.astype(jnp.float32))
