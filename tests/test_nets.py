"""Network blocks: the phase-decomposed upsampling conv equals upsample-then-conv."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.nets import BlockLinear, Norm, UpConv, maxpool2, upsample2


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


def test_block_linear_is_block_diagonal():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
    module = BlockLinear(6, 2)
    params = module.init(jax.random.PRNGKey(1), x)
    kernel = np.asarray(params["params"]["kernel"])  # [2, 4, 3]
    dense = np.zeros((8, 6), np.float32)
    dense[:4, :3], dense[4:, 3:] = kernel[0], kernel[1]
    chex.assert_trees_all_close(module.apply(params, x), np.asarray(x) @ dense, atol=1e-5)


def test_rms_norm_and_pool():
    x = jnp.arange(1.0, 9.0).reshape(1, 8)
    params = Norm("rms").init(jax.random.PRNGKey(0), x)
    y = Norm("rms").apply(params, x)
    rms = np.sqrt(np.mean(np.arange(1.0, 9.0) ** 2) + 1e-4)
    chex.assert_trees_all_close(y, np.arange(1.0, 9.0)[None] / rms, atol=1e-5)
    img = jnp.arange(16.0).reshape(1, 4, 4, 1)
    chex.assert_trees_all_close(maxpool2(img)[0, :, :, 0], np.array([[5.0, 7.0], [13.0, 15.0]]))
