"""CEM and MPPI against a known optimum and hand-computed refits, truncated sampling, prior
sequences, the warm-start shift and the rollout shape check."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.core import planners

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
        quadratic, TARGET, None, k, jnp.zeros_like(TARGET), candidates=200, elites=20,
        iterations=8, init_std=0.5, temperature=0.5))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(plan, TARGET, atol=0.03)


def test_mppi_refit_by_hand():
    """Elites' returns 3 and 2 (spread 1), temperature 0.5: weights 1 : e^-2 of the actions
    0.2 and -0.4; the std is the weighted spread around the new mean."""
    actions = jnp.array([0.2, -0.4]).reshape(2, 1, 1)
    mean, std = planners.mppi_refit(actions, jnp.array([3.0, 2.0]), temperature=0.5,
                                    min_std=0.01, max_std=1.0)
    w = np.array([1.0, np.exp(-2.0)]) / (1.0 + np.exp(-2.0))  # 0.8808, 0.1192
    m = w[0] * 0.2 + w[1] * -0.4                                 # 0.1285
    s = np.sqrt(w[0] * (0.2 - m) ** 2 + w[1] * (-0.4 - m) ** 2)  # 0.1944
    np.testing.assert_allclose(float(mean[0, 0]), m, rtol=1e-6)
    np.testing.assert_allclose(float(std[0, 0]), s, rtol=1e-5)
    np.testing.assert_allclose([m, s], [0.12848, 0.19441], atol=1e-5)
    # Clipped to [min_std, max_std]; equal returns weigh equally.
    _, narrow = planners.mppi_refit(actions, jnp.array([3.0, 2.0]), temperature=0.5,
                                    min_std=0.5, max_std=1.0)
    assert float(narrow[0, 0]) == 0.5
    even, _ = planners.mppi_refit(actions, jnp.array([1.0, 1.0]), temperature=0.01,
                                  min_std=0.01, max_std=1.0)
    np.testing.assert_allclose(float(even[0, 0]), -0.1, rtol=1e-6)


def test_mppi_temperature_does_not_depend_on_the_scale_of_the_returns():
    returns = jnp.array([4.0, 1.0, 3.0, 2.5])
    w = planners.elite_weights(returns, 0.5)
    np.testing.assert_allclose(planners.elite_weights(1000.0 * returns - 7.0, 0.5), w,
                               rtol=1e-5)
    np.testing.assert_allclose(float(w[0] / w[1]), np.exp(1.0 / 0.5), rtol=1e-5)


def test_mppi_iteration_refits_the_elites_of_its_candidates():
    """One iteration: the plan is `mppi_refit` of the best `elites` of the candidates it drew."""
    key, mean = jax.random.PRNGKey(3), jnp.full((3, 2), 0.2)
    plan = planners.mppi(quadratic, TARGET, None, key, mean, candidates=16, elites=4,
                         iterations=1, init_std=0.4, temperature=0.5)
    actions = planners.sample(jax.random.split(key, 1)[0], mean, jnp.full_like(mean, 0.4), 16)
    returns = quadratic(TARGET, None, actions)
    top = np.argsort(-np.asarray(returns))[:4]
    expect, _ = planners.mppi_refit(actions[top], returns[top], temperature=0.5,
                                    min_std=0.05, max_std=0.4)
    np.testing.assert_allclose(plan, expect, rtol=1e-5, atol=1e-6)


def test_truncated_sampling_stays_in_bounds_without_piling_mass_on_them():
    """Mean 0.9 and std 2 in [-1, 1]: clipping would put about 48% of the draws on 1.0 itself;
    the truncated normal puts none there, and its mean and spread are the truncated normal's."""
    from scipy.stats import truncnorm

    draws = np.asarray(planners.sample(jax.random.PRNGKey(0), jnp.full((1, 1), 0.9),
                                       jnp.full((1, 1), 2.0), 20000)).ravel()
    assert draws.min() >= -1.0 and draws.max() <= 1.0
    assert np.mean(np.abs(draws) > 0.999) < 0.002  # ~0.0004 of the mass lies that close
    law = truncnorm((-1 - 0.9) / 2.0, (1 - 0.9) / 2.0, loc=0.9, scale=2.0)
    np.testing.assert_allclose(draws.mean(), law.mean(), atol=0.01)
    np.testing.assert_allclose(draws.std(), law.std(), atol=0.01)


@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_prior_sequences_join_the_candidates(planner):
    """The optimum given as a prior sequence is the one elite, so one iteration returns it."""
    kwargs = {"candidates": 8, "elites": 1, "iterations": 1, "init_std": 0.5,
              "prior": TARGET[None]}
    if planner == "mppi":
        kwargs.update(temperature=0.5, min_std=0.05)
    plan = getattr(planners, planner)(quadratic, TARGET, None, jax.random.PRNGKey(0),
                                      jnp.zeros_like(TARGET), **kwargs)
    np.testing.assert_allclose(plan, TARGET, atol=1e-6)


def test_candidates_stay_in_the_action_range():
    seen = []

    def record(params, state, actions):
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), actions)
        return -jnp.sum(actions, (1, 2))

    for planner, extra in (("cem", {}), ("mppi", {"temperature": 0.5})):
        getattr(planners, planner)(record, None, None, jax.random.PRNGKey(0),
                                   jnp.zeros((4, 2)) + 0.9, candidates=64, elites=8,
                                   iterations=1, init_std=2.0, **extra)
    assert len(seen) == 2 and all(float(np.abs(a).max()) <= 1.0 for a in seen)


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
