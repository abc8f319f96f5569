"""CEM and MPPI against a known optimum, the warm-start shift and the rollout shape check."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer import planners

TARGET = jnp.array([[0.5, -0.3], [-0.7, 0.2], [0.1, 0.9]])  # [H=3, A=2], inside [-1, 1]


def quadratic(params, state, actions):
    """Returns -|actions - target|^2 per sequence: the optimum is the target itself."""
    return -jnp.sum(jnp.square(actions - params), (1, 2))


def test_cem_finds_the_optimum_of_a_quadratic():
    plan = jax.jit(lambda k: planners.cem(
        quadratic, TARGET, None, k, jnp.zeros_like(TARGET), candidates=200, elites=20,
        iterations=8, init_std=0.5))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(plan, TARGET, atol=0.03)


def test_cem_smoothing_keeps_part_of_the_old_mean():
    kwargs = {"candidates": 50, "elites": 5, "iterations": 1, "init_std": 0.5}
    key, start = jax.random.PRNGKey(1), jnp.zeros_like(TARGET)
    refit = planners.cem(quadratic, TARGET, None, key, start, smoothing=0.0, **kwargs)
    blended = planners.cem(quadratic, TARGET, None, key, start, smoothing=0.25, **kwargs)
    np.testing.assert_allclose(blended, 0.25 * start + 0.75 * refit, atol=1e-6)


def test_mppi_finds_the_optimum_of_a_quadratic():
    plan = jax.jit(lambda k: planners.mppi(
        quadratic, TARGET, None, k, jnp.zeros_like(TARGET), candidates=500, iterations=10,
        init_std=0.3, temperature=0.05))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(plan, TARGET, atol=0.05)


def test_mppi_weights_are_a_softmax_of_the_returns():
    """One iteration with two candidates: the new mean is their softmax-weighted average."""
    key = jax.random.PRNGKey(3)
    mean = jnp.zeros((1, 1))
    plan = planners.mppi(lambda p, s, a: a[:, 0, 0] * 2.0, None, None, key, mean,
                         candidates=2, iterations=1, init_std=0.4, temperature=0.5)
    noise = jax.random.normal(jax.random.split(key, 1)[0], (2, 1, 1))
    actions = np.clip(0.4 * np.asarray(noise)[:, 0, 0], -1, 1)
    weights = np.exp(actions * 2.0 / 0.5)
    np.testing.assert_allclose(plan[0, 0], (weights * actions).sum() / weights.sum(), rtol=1e-5)


def test_candidates_stay_in_the_action_range():
    seen = []

    def record(params, state, actions):
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), actions)
        return -jnp.sum(actions, (1, 2))

    planners.cem(record, None, None, jax.random.PRNGKey(0), jnp.zeros((4, 2)) + 0.9,
                 candidates=64, elites=8, iterations=1, init_std=2.0)
    assert seen and float(np.abs(seen[0]).max()) <= 1.0


def test_a_rollout_with_the_wrong_shape_is_caught():
    with pytest.raises(AssertionError):
        planners.cem(lambda p, s, a: jnp.zeros((a.shape[0], 1)), None, None,
                     jax.random.PRNGKey(0), jnp.zeros((3, 2)), candidates=8, elites=2,
                     iterations=1, init_std=0.5)
    with pytest.raises(ValueError, match="elites"):
        planners.cem(quadratic, TARGET, None, jax.random.PRNGKey(0), TARGET, candidates=8,
                     elites=9, iterations=1, init_std=0.5)


def test_shift_advances_the_plan_by_one_step():
    plan = jnp.arange(12.0).reshape(2, 3, 2)  # [N, H, A]
    out = planners.shift(plan)
    chex.assert_shape(out, (2, 3, 2))
    np.testing.assert_array_equal(out[:, :2], plan[:, 1:])
    np.testing.assert_array_equal(out[:, 2], 0.0)
