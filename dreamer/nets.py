"""Network building blocks (flax linen): linear layers, norms, MLPs, CNN encoder and decoder.

Layouts follow the DreamerV3 2024 code: every hidden layer is linear -> norm -> activation,
weights use truncated-normal fan-in initialisation, norms run in float32 while matmuls and
convolutions run in the configured compute dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.distributions import symlog

Dtype = Any


def winit(scale: float = 1.0) -> Callable:
    """Truncated-normal fan-in initialiser; `scale` multiplies the standard deviation (0: zeros)."""
    if scale == 0:
        return nn.initializers.zeros
    return nn.initializers.variance_scaling(scale ** 2, "fan_in", "truncated_normal")


def get_act(name: str) -> Callable[[jax.Array], jax.Array]:
    acts = {"silu": jax.nn.silu, "gelu": jax.nn.gelu, "relu": jax.nn.relu, "elu": jax.nn.elu,
            "tanh": jnp.tanh}
    return acts[name]


class Norm(nn.Module):
    """RMSNorm (learned scale only, as in the 2024 code) or LayerNorm (learned scale and shift)
    over the last axis; computed in float32."""

    impl: str = "rms"
    eps: float = 1e-4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl == "none":
            return x
        if self.impl not in ("rms", "layer"):
            raise ValueError(f"unknown norm '{self.impl}': use rms, layer or none")
        params = {"scale": self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)}
        if self.impl == "layer":
            params["shift"] = self.param("shift", nn.initializers.zeros, (x.shape[-1],),
                                         jnp.float32)
        return normalize(x, self.impl, self.eps, params)


def normalize(x: jax.Array, impl: str, eps: float, params: dict[str, jax.Array]) -> jax.Array:
    """`Norm`'s arithmetic over the last axis of x [..., U], in float32, with its parameters
    (`scale`, and `shift` for LayerNorm) of shape [U] or broadcastable to x (e.g. [K, U] for K
    stacked norms); returns x's dtype."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if impl == "layer":
        x = x - jnp.mean(x, -1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps)
    x = x * params["scale"]
    if impl == "layer":
        x = x + params["shift"]
    return x.astype(dtype)


class Linear(nn.Module):
    """Dense layer with fan-in init and `outscale`; runs in `dtype`, keeps float32 params."""

    units: int
    outscale: float = 1.0
    bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.units, use_bias=self.bias, kernel_init=winit(self.outscale),
                        dtype=self.dtype, param_dtype=jnp.float32, name="dense")(x)


def block_matmul(x: jax.Array, kernel: jax.Array, batched: bool = False) -> jax.Array:
    """x [..., G*I] times a block-diagonal matrix of G blocks `kernel` [G, I, O] -> [..., G*O].

    Default: one matmul per block, which on the CPU runs faster than a batched matmul over the
    group axis (XLA lowers that with transposes around a strided batch dimension). `batched`:
    one batched matmul, for accelerators, where each separate matmul is a kernel launch of its
    own inside the scans."""
    g, i, o = kernel.shape
    if batched:
        y = jnp.einsum("...gi,gio->...go", x.reshape((*x.shape[:-1], g, i)), kernel)
        return y.reshape((*x.shape[:-1], g * o))
    return jnp.concatenate([x[..., k * i:(k + 1) * i] @ kernel[k] for k in range(g)], -1)


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: `groups` independent [in/g, out/g] matrices (2024 block GRU).

    x [..., I] -> [..., O]; costs I*O/g parameters and FLOPs instead of I*O.
    """

    units: int
    groups: int
    dtype: Dtype = jnp.float32
    batched: bool = False  # one batched matmul over the blocks (accelerators; `block_matmul`)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.groups
        i, o = x.shape[-1], self.units
        assert i % g == 0 and o % g == 0, (i, o, g)
        kernel = self.param("kernel", winit(), (g, i // g, o // g), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (o,), jnp.float32)
        y = block_matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.batched)
        return y + bias.astype(self.dtype)


class GroupedInputLinear(nn.Module):
    """`BlockLinear` whose input per group is [own_g, shared]: own [..., I] split into g groups,
    plus inputs shared by every group [..., S] (the 2024 block GRU's first layer).

    Same parameters as a BlockLinear on the concatenated, broadcast input ([g, I/g + S, O/g]),
    but the shared part is one dense matmul instead of g copies of the broadcast input.
    """

    units: int
    groups: int
    dtype: Dtype = jnp.float32
    batched: bool = False  # as in BlockLinear

    @nn.compact
    def __call__(self, own: jax.Array, shared: jax.Array) -> jax.Array:
        g, i, o = self.groups, own.shape[-1], self.units
        kernel = self.param("kernel", winit(), (g, i // g + shared.shape[-1], o // g),
                            jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (o,), jnp.float32)
        y = block_matmul(own.astype(self.dtype), kernel[:, : i // g], self.batched)
        shared_kernel = kernel[:, i // g:].transpose((1, 0, 2)).reshape((-1, o))
        return y + shared.astype(self.dtype) @ shared_kernel + bias.astype(self.dtype)


class ConcatLinear(nn.Module):
    """One linear map on the concatenation of inputs of `sizes` ([sum(sizes), units] kernel,
    fan-in init over all of them), applied one input at a time: `part(x_i, i)` is x_i times the
    kernel's rows of input i, and part 0 adds the bias. The sum over the parts equals the map on
    the concatenation, so a caller may compute a part that does not change inside a scan once
    for the whole sequence."""

    units: int
    sizes: tuple[int, ...]
    dtype: Dtype = jnp.float32

    def setup(self):
        self.kernel = self.param("kernel", winit(), (sum(self.sizes), self.units), jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (self.units,), jnp.float32)

    def part(self, x: jax.Array, index: int) -> jax.Array:
        """x [..., sizes[index]] -> [..., units]."""
        start = sum(self.sizes[:index])
        kernel = self.kernel[start:start + self.sizes[index]].astype(self.dtype)
        y = x.astype(self.dtype) @ kernel
        return y + self.bias.astype(self.dtype) if index == 0 else y


class Dense(nn.Module):
    """Linear -> Norm -> activation."""

    units: int
    norm: str = "rms"
    act: str = "silu"
    bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Linear(self.units, bias=self.bias, dtype=self.dtype)(x)
        return get_act(self.act)(Norm(self.norm)(x))


class MLP(nn.Module):
    """`layers` Dense blocks followed by a linear output of size `out` (if out > 0), or by one
    separate linear output per entry of a tuple `out` (e.g. a policy's mean and std)."""

    layers: int
    units: int
    out: int | tuple[int, ...] = 0
    outscale: float = 1.0
    norm: str = "rms"
    act: str = "silu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for _ in range(self.layers):
            x = Dense(self.units, self.norm, self.act, dtype=self.dtype)(x)
        if isinstance(self.out, tuple):
            return tuple(Linear(n, self.outscale, dtype=self.dtype, name=f"out{i}")(x)
                         .astype(jnp.float32) for i, n in enumerate(self.out))
        if self.out:
            x = Linear(self.out, self.outscale, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


def fused_mlps(heads: Sequence[tuple[MLP, Any]], x: jax.Array) -> list[Any]:
    """The outputs of several MLPs on the same input, [mlp.apply({'params': p}, x) for mlp, p
    in heads], computed with fewer and larger matmuls: the first layers of all heads as one
    matmul on x (their kernels side by side), each deeper layer as one batched matmul over the
    heads that have it, and the norms of a layer as one stacked norm. The heads must share
    units, norm, activation and compute dtype (depths and outputs may differ); otherwise each
    runs on its own. Gradients reach each head's own parameters as they would apart.

    On an accelerator every separate matmul and norm is a kernel launch; the value and critic
    heads of DreamerV3 read the same imagined states."""
    mlps = [m for m, _ in heads]
    first = mlps[0]
    if not all((m.units, m.norm, m.act, m.dtype) == (first.units, first.norm, first.act,
                                                    first.dtype) and m.layers > 0 for m in mlps):
        return [m.apply({"params": p}, x) for m, p in heads]
    order = sorted(range(len(heads)), key=lambda i: -mlps[i].layers)  # deepest first
    mlps = [mlps[i] for i in order]
    params = [heads[i][1] for i in order]
    dtype, act = first.dtype, get_act(first.act)

    def layer(j: int, depth: int) -> dict[str, Any]:
        return params[j][f"Dense_{depth}"]

    def norm(y: jax.Array, depth: int, count: int) -> jax.Array:
        if first.norm == "none":
            return act(y)
        stacked = {k: jnp.stack([layer(j, depth)["Norm_0"][k] for j in range(count)])
                   for k in layer(0, depth)["Norm_0"]}
        return act(normalize(y, first.norm, Norm.eps, stacked))

    x = x.astype(dtype)
    dense = [layer(j, 0)["Linear_0"]["dense"] for j in range(len(mlps))]
    kernel = jnp.concatenate([d["kernel"] for d in dense], -1).astype(dtype)
    bias = jnp.concatenate([d["bias"] for d in dense], -1).astype(dtype)
    h = (x @ kernel + bias).reshape((*x.shape[:-1], len(mlps), first.units))
    h = norm(h, 0, len(mlps))
    for depth in range(1, mlps[0].layers):
        count = sum(m.layers > depth for m in mlps)  # a prefix: the deepest come first
        dense = [layer(j, depth)["Linear_0"]["dense"] for j in range(count)]
        kernel = jnp.stack([d["kernel"] for d in dense]).astype(dtype)
        bias = jnp.stack([d["bias"] for d in dense]).astype(dtype)
        y = norm(jnp.einsum("...ku,kuv->...kv", h[..., :count, :], kernel) + bias, depth, count)
        h = y if count == len(mlps) else jnp.concatenate([y, h[..., count:, :]], -2)

    def linear(features: jax.Array, p: dict[str, Any]) -> jax.Array:
        d = p["dense"]
        return (features @ d["kernel"].astype(dtype) + d["bias"].astype(dtype)).astype(
            jnp.float32)

    outs: list[Any] = [None] * len(heads)
    for j, (m, p) in enumerate(zip(mlps, params)):
        features = h[..., j, :]
        if isinstance(m.out, tuple):
            out = tuple(linear(features, p[f"out{i}"]) for i in range(len(m.out)))
        else:
            out = linear(features, p["Linear_0"]) if m.out else features.astype(jnp.float32)
        outs[order[j]] = out
    return outs


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


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
