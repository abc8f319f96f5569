"""Network building blocks (flax linen): activations, linear layers, norms, MLPs, SimNorm.
The convolutional encoder and decoder are in `dreamer.core.convnets`.

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

Dtype = Any


def winit(scale: float = 1.0) -> Callable:
    """Truncated-normal fan-in initialiser; `scale` multiplies the standard deviation (0: zeros)."""
    if scale == 0:
        return nn.initializers.zeros
    return nn.initializers.variance_scaling(scale ** 2, "fan_in", "truncated_normal")


def mish(x: jax.Array) -> jax.Array:
    """x tanh(softplus(x)) (Misra 2019), TD-MPC2's activation."""
    return x * jnp.tanh(jax.nn.softplus(x))


def simnorm(x: jax.Array, group: int = 8) -> jax.Array:
    """Simplicial normalisation (TD-MPC2, Hansen et al. 2024): the last axis split into groups
    of `group` entries, each group replaced by its softmax; [..., F] -> [..., F]."""
    if x.shape[-1] % group:
        raise ValueError(f"simnorm needs features divisible by the group size {group}, "
                         f"got {x.shape[-1]}")
    groups = x.reshape((*x.shape[:-1], x.shape[-1] // group, group))
    return jax.nn.softmax(groups, -1).reshape(x.shape)


ACTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu, "gelu": jax.nn.gelu, "relu": jax.nn.relu, "elu": jax.nn.elu,
    "tanh": jnp.tanh, "mish": mish}


def get_act(name: str) -> Callable[[jax.Array], jax.Array]:
    return ACTS[name]


NORMS = ("rms", "layer", "none")  # what `Norm.impl` (`model.norm`) may name


class Norm(nn.Module):
    """RMSNorm (learned scale only, as in the 2024 code) or LayerNorm (learned scale and shift)
    over the last axis; computed in float32."""

    impl: str = "rms"
    eps: float = 1e-4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl == "none":
            return x
        if self.impl not in NORMS:
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


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
