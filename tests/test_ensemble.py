"""The probabilistic ensemble: Gaussian NLL against the closed form, soft log-variance bounds,
members as independent networks."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.core import ensemble


def test_gaussian_nll_is_the_negative_log_density_without_the_constant():
    mean, logvar, target = 0.3, math.log(2.0), 1.1
    density = math.exp(-((target - mean) ** 2) / (2 * 2.0)) / math.sqrt(2 * math.pi * 2.0)
    expected = -math.log(density) - 0.5 * math.log(2 * math.pi)
    got = ensemble.gaussian_nll(jnp.array(mean), jnp.array(logvar), jnp.array(target))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_log_variance_stays_within_the_soft_bounds():
    net = ensemble.GaussianMLP(3, units=8, layers=1, min_logvar=-4.0, max_logvar=1.0)
    params = ensemble.init(net, jax.random.PRNGKey(0), 2, 4)
    # Large inputs drive the raw log-variance far beyond both bounds.
    x = jnp.concatenate([jnp.full((2, 1, 4), 1e3), jnp.full((2, 1, 4), -1e3)], 1)
    params = jax.tree.map(lambda p: p * 50.0 if p.ndim == 3 else p, params)
    _, logvar, _ = ensemble.apply(net, params, x)
    # The lower clamp applied after the upper one lifts it by softplus(max - min) - (max - min).
    upper = 1.0 + math.log1p(math.exp(-5.0))
    assert float(logvar.max()) <= upper + 1e-5 and float(logvar.min()) >= -4.0 - 1e-5
    assert float(logvar.max()) > upper - 1e-3  # the bound is reached: the inputs are extreme
    assert float(ensemble.bound_loss(params)) == 2 * 3 * (1.0 - (-4.0))


def test_members_are_independent_networks():
    net = ensemble.GaussianMLP(2, units=8, layers=2, extra=1)
    params = ensemble.init(net, jax.random.PRNGKey(0), 3, 5)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 5))
    mean, logvar, logits = ensemble.apply(net, params, x)
    assert mean.shape == (3, 7, 2) and logvar.shape == (3, 7, 2) and logits.shape == (3, 7, 1)
    for k in range(3):
        member = jax.tree.map(lambda p, k=k: p[k], params)
        alone = net.apply({"params": member}, x[k])
        for a, b in zip(alone, (mean[k], logvar[k], logits[k]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mean[0], mean[1])  # initialised apart
