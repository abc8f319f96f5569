"""Network blocks against dense references: the phase-decomposed upsampling conv, block and
grouped-input linear layers, the split posterior layer, norms, the policy's output layers, mish
and SimNorm against their closed forms."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.core.convnets import UpConv, maxpool2, upsample2
from dreamer.core.nets import (
    MLP,
    BlockLinear,
    ConcatLinear,
    GroupedInputLinear,
    Norm,
    fused_mlps,
    mish,
    simnorm,
)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_upconv_equals_conv_of_upsampled(kernel):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3))
    module = UpConv(4, kernel)
    params = module.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
    got = module.apply(params, x)
    p = params["params"]
    want = jax.lax.conv_general_dilated(
        upsample2(x), p["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
    chex.assert_shape(got, (2, 10, 12, 4))
    chex.assert_trees_all_close(got, want, atol=1e-5)


@pytest.mark.parametrize("batched", [False, True])
def test_block_linear_is_block_diagonal(batched):
    """Both forms (a matmul per block, CPU; one batched matmul, accelerators) are the same map."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
    module = BlockLinear(6, 2, batched=batched)
    params = module.init(jax.random.PRNGKey(1), x)
    kernel = np.asarray(params["params"]["kernel"])  # [2, 4, 3]
    dense = np.zeros((8, 6), np.float32)
    dense[:4, :3], dense[4:, 3:] = kernel[0], kernel[1]
    chex.assert_trees_all_close(module.apply(params, x), np.asarray(x) @ dense, atol=1e-5)


@pytest.mark.parametrize("batched", [False, True])
def test_grouped_input_linear_equals_block_linear_on_broadcast_input(batched):
    """Each group sees [its slice of `own`, all of `shared`]: the same map as a BlockLinear on
    the concatenated, broadcast input with the same kernel."""
    own = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
    shared = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    module = GroupedInputLinear(6, 2, batched=batched)
    params = module.init(jax.random.PRNGKey(2), own, shared)
    params = jax.tree.map(lambda p: p + 0.1, params)
    groups = jnp.concatenate([own.reshape(3, 2, 4), jnp.broadcast_to(shared[:, None], (3, 2, 5))],
                             -1).reshape(3, 18)
    want = BlockLinear(6, 2).apply(params, groups)
    chex.assert_trees_all_close(module.apply(params, own, shared), want, atol=1e-5)


def test_concat_linear_parts_sum_to_one_map_on_the_concatenation():
    """The posterior's first layer: one [D + E, H] kernel, fan-in initialised over D + E, whose
    parts applied separately add up to the map on [deter, embed]."""
    d, e, h = 40, 24, 16
    module = ConcatLinear(h, (d, e))
    deter = jax.random.normal(jax.random.PRNGKey(0), (5, d))
    embed = jax.random.normal(jax.random.PRNGKey(1), (5, e))
    params = module.init(jax.random.PRNGKey(2), deter, 0, method="part")
    kernel = params["params"]["kernel"]
    chex.assert_shape(kernel, (d + e, h))
    # Truncated normal with variance 1 / fan-in over both inputs (the kernel's std ~ 1/8).
    assert abs(float(jnp.std(kernel)) * np.sqrt(d + e) - 1.0) < 0.2
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    got = (module.apply(params, deter, 0, method="part")
           + module.apply(params, embed, 1, method="part"))
    want = jnp.concatenate([deter, embed], -1) @ params["params"]["kernel"] + 0.1
    chex.assert_trees_all_close(got, want, atol=1e-5)


def test_mlp_with_two_outputs_has_separate_layers():
    """The continuous policy's mean and std come from two output layers (2024 code)."""
    x = jnp.ones((2, 3))
    module = MLP(1, 8, (4, 4), outscale=0.5)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    assert {"out0", "out1"} <= set(params)
    mean, std = module.apply({"params": params}, x)
    chex.assert_shape([mean, std], (2, 4))
    assert not np.allclose(mean, std)


def test_rms_norm_has_scale_only_and_layer_norm_scale_and_shift():
    x = jnp.arange(1.0, 9.0).reshape(1, 8)
    assert set(Norm("rms").init(jax.random.PRNGKey(0), x)["params"]) == {"scale"}
    assert set(Norm("layer").init(jax.random.PRNGKey(0), x)["params"]) == {"scale", "shift"}


def test_rms_norm_and_pool():
    x = jnp.arange(1.0, 9.0).reshape(1, 8)
    params = Norm("rms").init(jax.random.PRNGKey(0), x)
    y = Norm("rms").apply(params, x)
    rms = np.sqrt(np.mean(np.arange(1.0, 9.0) ** 2) + 1e-4)
    chex.assert_trees_all_close(y, np.arange(1.0, 9.0)[None] / rms, atol=1e-5)
    img = jnp.arange(16.0).reshape(1, 4, 4, 1)
    chex.assert_trees_all_close(maxpool2(img)[0, :, :, 0], np.array([[5.0, 7.0], [13.0, 15.0]]))


def test_agent_on_an_accelerator_runs_the_block_gru_batched_with_the_same_result():
    """`build_nets` picks the batched block matmul for non-CPU platforms; the RSSM step gives
    the same next state with the same parameters either way."""
    from dreamer.agents.dreamerv3.agent import build_nets
    from dreamer.config import load_config
    from dreamer.envs import Space

    cfg = load_config(["debug"], {"jax.compute_dtype": "float32"})
    obs = {"vector": Space(np.float32, (5,))}
    act = Space(np.float32, (2,), -1.0, 1.0)
    cpu, gpu = build_nets(cfg, obs, act, "cpu")[0], build_nets(cfg, obs, act, "gpu")[0]
    assert not cpu.rssm.batched_blocks and gpu.rssm.batched_blocks
    assert cpu.rssm.observe_unroll == 1 < gpu.rssm.observe_unroll
    n, m = 3, cfg.model
    state = {"deter": jax.random.normal(jax.random.PRNGKey(0), (n, m.deter)),
             "stoch": jax.random.normal(jax.random.PRNGKey(1), (n, m.stoch * m.classes))}
    action = jax.random.normal(jax.random.PRNGKey(2), (n, 2))
    params = cpu.rssm.init(jax.random.PRNGKey(3), state, action, jnp.zeros((n, cpu.rssm.embed)),
                           jax.random.PRNGKey(4))
    got = [nets.rssm.apply(params, state, action, method="core") for nets in (cpu, gpu)]
    chex.assert_trees_all_close(got[0], got[1], atol=1e-5)


@pytest.mark.parametrize("norm", ["rms", "layer", "none"])
def test_fused_heads_give_each_heads_outputs_and_gradients(norm):
    """Heads of different depths and outputs (a value head, a one-layer head, a two-output
    policy head) fused into shared matmuls give what each head gives on its own, and the
    gradient of a loss over their outputs reaches each head's parameters unchanged."""
    units = 16
    heads = [MLP(3, units, 7, norm=norm), MLP(1, units, 1, norm=norm),
             MLP(3, units, (2, 2), norm=norm), MLP(2, units, 0, norm=norm)]
    x = jax.random.normal(jax.random.key(0), (5, 4, 12))
    params = []
    for i, mlp in enumerate(heads):
        p = mlp.init(jax.random.key(i + 1), x)["params"]
        # Non-trivial norm parameters, so that a mix-up between heads would show.
        params.append(jax.tree.map(
            lambda v, k=i: v + 0.1 * jax.random.normal(jax.random.key(10 + k), v.shape), p))

    def loss(params, fused):
        outs = (fused_mlps(list(zip(heads, params)), x) if fused else
                [m.apply({"params": p}, x) for m, p in zip(heads, params)])
        leaves = jax.tree.leaves(outs)
        return sum(jnp.sum(jnp.sin(leaf * (i + 1))) for i, leaf in enumerate(leaves)), outs

    (value, outs), grads = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(
        params)
    (value_ref, outs_ref), grads_ref = jax.jit(
        jax.value_and_grad(lambda p: loss(p, False), has_aux=True))(params)
    chex.assert_trees_all_close(outs, outs_ref, rtol=1e-5, atol=1e-5)
    # Gradients reach ~40 here: float32 sums in another order differ by up to ~1e-4 absolute.
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=5e-4)
    assert isinstance(outs[2], tuple) and outs[3].shape == (5, 4, units)
    chex.assert_trees_all_close(value, value_ref, rtol=1e-5)


def test_heads_that_differ_in_width_run_apart():
    heads = [MLP(1, 8, 3), MLP(1, 16, 3)]
    x = jnp.ones((2, 5))
    params = [m.init(jax.random.key(i), x)["params"] for i, m in enumerate(heads)]
    chex.assert_trees_all_close(fused_mlps(list(zip(heads, params)), x),
                                [m.apply({"params": p}, x) for m, p in zip(heads, params)])


def test_mish_is_x_tanh_softplus():
    x = np.linspace(-6.0, 6.0, 25)
    expected = x * np.tanh(np.log1p(np.exp(x)))
    np.testing.assert_allclose(mish(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5,
                               atol=1e-6)


def test_simnorm_is_a_softmax_per_group():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 12)) * 3.0
    y = np.asarray(simnorm(x, group=4))
    groups = np.asarray(x).reshape(3, 2, 3, 4)
    expected = np.exp(groups) / np.exp(groups).sum(-1, keepdims=True)
    np.testing.assert_allclose(y, expected.reshape(3, 2, 12), rtol=1e-5)
    np.testing.assert_allclose(y.reshape(3, 2, 3, 4).sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible by the group size 5"):
        simnorm(x, group=5)
