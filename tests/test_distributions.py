"""Tests for dreamer.core.distributions against hand-computed values and numpy/scipy references."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from dreamer.core import distributions as d

# Tested under jit, as the agent uses them (and one compile is cheaper than many eager ops).
twohot = jax.jit(d.twohot)
unimix_logits = jax.jit(d.unimix_logits, static_argnums=1)
categorical_kl = jax.jit(d.categorical_kl)


@jax.jit
def twohot_stats(logits, bins, target):
    dist = d.TwoHot(logits, bins)
    return dist.mean(), dist.log_prob(target)


@jax.jit
def discrete_policy(out, action, key):
    dist = d.Policy(out, discrete=True)
    return dist.log_prob(action), dist.entropy(), dist.sample(key), dist.mode()


@jax.jit
def continuous_policy(out, action, key):
    dist = d.Policy(jnp.split(out, 2, -1), discrete=False, minstd=0.1, maxstd=1.0)
    return dist.loc, dist.std, dist.log_prob(action), dist.entropy(), dist.sample(key), dist.mode()


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_twohot(x: float, bins: np.ndarray) -> np.ndarray:
    """Reference two-hot encoding by a linear search over the bins."""
    enc = np.zeros(len(bins))
    if x <= bins[0]:
        enc[0] = 1.0
    elif x >= bins[-1]:
        enc[-1] = 1.0
    else:
        for i in range(len(bins) - 1):
            if bins[i] <= x < bins[i + 1]:
                frac = (x - bins[i]) / (bins[i + 1] - bins[i])
                enc[i], enc[i + 1] = 1 - frac, frac
                break
    return enc


# ------------------------------------------------------------------------------ symlog / symexp


def test_symlog_known_values():
    x = jnp.array([0.0, math.e - 1, -(math.e - 1), math.e ** 2 - 1])
    chex.assert_trees_all_close(d.symlog(x), jnp.array([0.0, 1.0, -1.0, 2.0]), rtol=1e-6)
    chex.assert_trees_all_close(d.symexp(jnp.array([1.0, -2.0])),
                                jnp.array([math.e - 1, -(math.e ** 2 - 1)]), rtol=1e-6)


def test_symexp_inverts_symlog():
    x = np.array([-1e6, -12345.6, -3.0, -1e-3, 0.0, 1e-4, 0.5, 7.0, 1e5, 3e7], np.float32)
    chex.assert_trees_all_close(d.symexp(d.symlog(jnp.asarray(x))), x, rtol=1e-5)
    y = np.linspace(-15, 15, 31, dtype=np.float32)
    chex.assert_trees_all_close(d.symlog(d.symexp(jnp.asarray(y))), y, atol=1e-5)


def test_symlog_is_odd_and_compresses():
    x = jnp.linspace(0.0, 1000.0, 50)
    chex.assert_trees_all_close(d.symlog(-x), -d.symlog(x))
    assert float(d.symlog(jnp.array(1e6))) == pytest.approx(math.log(1e6 + 1), rel=1e-6)


# ------------------------------------------------------------------------------ twohot

BINS5 = jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0])


@pytest.mark.parametrize("x, expected", [
    (0.25, [0, 0, 0.75, 0.25, 0]),    # between bins 0 and 1: nearer bin gets more weight
    (-1.5, [0.5, 0.5, 0, 0, 0]),
    (1.9, [0, 0, 0, 0.1, 0.9]),
    (1.0, [0, 0, 0, 1, 0]),           # exactly on a bin
    (-2.0, [1, 0, 0, 0, 0]),          # exactly on the first bin
    (2.0, [0, 0, 0, 0, 1]),           # exactly on the last bin
    (-7.0, [1, 0, 0, 0, 0]),          # below the range: all weight on the first bin
    (100.0, [0, 0, 0, 0, 1]),         # above the range: all weight on the last bin
])
def test_twohot_hand_computed(x, expected):
    chex.assert_trees_all_close(twohot(jnp.array(x), BINS5), jnp.array(expected, jnp.float32),
                                atol=1e-6)


def np_symexp_bins(num: int, limit: float = 20.0) -> np.ndarray:
    """Reference bins: symexp of an even grid on [-limit, limit], in float64."""
    grid = np.linspace(-limit, limit, num)
    return np.sign(grid) * np.expm1(np.abs(grid))


@pytest.mark.parametrize("num", [255, 15, 16])
def test_symexp_bins_are_symmetric_symexp_of_an_even_grid(num):
    bins = np.asarray(d.symexp_bins(num), np.float64)
    chex.assert_shape(bins, (num,))
    np.testing.assert_allclose(bins, np_symexp_bins(num), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bins, -bins[::-1])  # exactly mirrored
    assert np.all(np.diff(bins) > 0)
    assert bins[-1] == pytest.approx(math.expm1(20.0), rel=1e-5)


def test_twohot_matches_reference_and_round_trips():
    bins = d.symexp_bins(255)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-500, 500, 100), rng.uniform(-2, 2, 100),
                        np.asarray(bins[100:155:5]), [0.0]])
    x = x.astype(np.float32)
    enc = twohot(jnp.asarray(x), bins)
    chex.assert_shape(enc, (len(x), 255))
    expected = np.stack([np_twohot(v, np.asarray(bins, np.float64)) for v in x])
    chex.assert_trees_all_close(enc, expected.astype(np.float32), atol=1e-4)
    chex.assert_trees_all_close(enc.sum(-1), jnp.ones(len(x)), atol=1e-6)
    chex.assert_trees_all_close((enc * bins).sum(-1), x, rtol=1e-5, atol=1e-4)
    assert int((enc > 0).sum(-1).max()) <= 2


def test_twohot_batched_shape():
    enc = twohot(jnp.zeros((3, 4)), BINS5)
    chex.assert_shape(enc, (3, 4, 5))
    chex.assert_trees_all_close(enc.sum(-1), jnp.ones((3, 4)))


def test_twohot_dist_mean_recovers_target():
    bins = d.symexp_bins(255)
    x = jnp.array([-3000.0, -12.5, -1.0, 0.0, 0.3, 4.0, 250.0, 1e5])
    logits = jnp.log(twohot(x, bins))  # -inf outside the two bins
    mean, _ = twohot_stats(logits, bins, x)
    chex.assert_trees_all_close(mean, x, rtol=1e-4, atol=1e-5)


def test_twohot_mean_of_a_mixture_is_the_raw_mean():
    """A head that puts half its probability on reward 0 and half on 100 (the cross-entropy
    optimum for 50/50 targets) predicts their mean, 50, because interpolation and the mean are
    in raw space. (Averaging in symlog space and then symexp would give
    symexp(log(101) / 2) = 9.05.)"""
    bins = d.symexp_bins(255)
    probs = 0.5 * twohot(jnp.array([0.0, 100.0]), bins).sum(0)
    mean, _ = twohot_stats(jnp.log(probs)[None], bins, jnp.zeros(1))
    assert float(mean[0]) == pytest.approx(50.0, rel=1e-4)
    assert math.expm1(math.log(101.0) / 2) == pytest.approx(9.05, abs=0.01)


def test_twohot_dist_log_prob_against_numpy():
    bins = d.symexp_bins(15)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 15)).astype(np.float32)
    target = np.array([-40.0, -1.0, 0.0, 0.7, 9.0, 1e4], np.float32)
    expected = [np_twohot(t, np.asarray(bins, np.float64)) @ lp
                for t, lp in zip(target, np_log_softmax(logits), strict=True)]
    _, got = twohot_stats(jnp.asarray(logits), bins, jnp.asarray(target))
    chex.assert_trees_all_close(got, np.array(expected, np.float32), rtol=1e-5)
    # Uniform probabilities over mirrored bins predict exactly 0, though the bins reach 4.9e8.
    for num in (15, 16, 255):
        uniform_mean, _ = twohot_stats(jnp.zeros((1, num)), d.symexp_bins(num), jnp.zeros(1))
        assert float(uniform_mean[0]) == 0.0


def test_twohot_statistics_and_gradients_equal_the_dense_formulas():
    """The mean (one division per row) and the log-likelihood (two picked logits) equal
    sum(softmax * bins) and sum(twohot * log_softmax), values and gradients."""
    bins = d.symexp_bins(255)
    logits = jax.random.normal(jax.random.key(0), (6, 255)) * 3
    target = jnp.array([-5000.0, -2.5, 0.0, 0.4, 30.0, 1e12])  # the last beyond the bins

    def dense(lg):
        mean = jnp.sum(jax.nn.softmax(lg, -1) * bins, -1)
        return mean, jnp.sum(d.twohot(target, bins) * jax.nn.log_softmax(lg, -1), -1)

    def fast(lg):
        dist = d.TwoHot(lg, bins)
        return dist.mean(), dist.log_prob(target)

    for i in range(2):
        want = jax.jit(jax.jacrev(lambda lg, i=i: dense(lg)[i]))(logits)
        got = jax.jit(jax.jacrev(lambda lg, i=i: fast(lg)[i]))(logits)
        chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-3 if i == 0 else 1e-6)
        chex.assert_trees_all_close(jax.jit(fast)(logits)[i], jax.jit(dense)(logits)[i],
                                    rtol=1e-5, atol=1e-2 if i == 0 else 1e-5)


# ------------------------------------------------------------------------------ categoricals


def test_unimix_bounds_probabilities():
    k, mix = 6, 0.01
    logits = jnp.array([[50.0, -50.0, 0.0, -50.0, -50.0, -50.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                        [3.0, 1.0, -2.0, 0.5, 0.0, -9.0]])
    probs = jnp.exp(unimix_logits(logits, mix))
    chex.assert_trees_all_close(probs.sum(-1), jnp.ones(3), atol=1e-6)
    assert float(probs.min()) >= mix / k * (1 - 1e-5)
    # A near-deterministic categorical keeps exactly the uniform share on the other classes.
    chex.assert_trees_all_close(probs[0, 1], mix / k, rtol=1e-4)
    expected = 0.99 * np.exp(np_log_softmax(np.asarray(logits))) + mix / k
    chex.assert_trees_all_close(probs, expected.astype(np.float32), atol=1e-6)
    chex.assert_trees_all_close(unimix_logits(logits, 0.0), jax.nn.log_softmax(logits))


def test_straight_through_sample_value_and_gradient():
    logits = jnp.array([[0.3, -1.2, 2.0, 0.1], [1.0, 1.0, -3.0, 0.0]])
    w = jnp.array([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.0, 2.0, 4.0]])
    key = jax.random.key(3)
    sample = d.onehot_straight_through(logits, key)
    chex.assert_shape(sample, (2, 4))
    assert set(np.round(np.asarray(sample), 6).ravel()) <= {0.0, 1.0}
    chex.assert_trees_all_close(sample.sum(-1), jnp.ones(2), atol=1e-6)
    # Forward value: the same index as a categorical sample with the same key.
    index = jax.random.categorical(key, logits, -1)
    chex.assert_trees_all_equal(jnp.argmax(sample, -1), index)
    # Backward: the softmax Jacobian, dp_i/dl_j = p_i (δ_ij - p_j).
    grad = jax.grad(lambda lg: jnp.sum(d.onehot_straight_through(lg, key) * w))(logits)
    p = np.exp(np_log_softmax(np.asarray(logits)))
    wn = np.asarray(w, np.float64)
    expected = p * (wn - (p * wn).sum(-1, keepdims=True))
    chex.assert_trees_all_close(grad, expected.astype(np.float32), atol=1e-6)


@pytest.mark.parametrize("typed", [True, False])
def test_row_keys_make_draws_independent_of_the_batch_split(typed):
    root = jax.random.key(7) if typed else jax.random.PRNGKey(7)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(root, jnp.arange(6))
    assert d.is_row_keys(keys) and not d.is_row_keys(root)
    logits = jax.random.normal(jax.random.key(1), (6, 3, 5))

    def draws(k, lg):
        a, b = d.split_keys(k, 2)
        return (d.noise(jax.random.normal, a, (lg.shape[0], 4)),
                d.onehot_straight_through(lg, b))

    whole = draws(keys, logits)
    halves = [draws(keys[i:i + 3], logits[i:i + 3]) for i in (0, 3)]
    chex.assert_trees_all_equal(whole, jax.tree.map(lambda *x: jnp.concatenate(x), *halves))
    # Each row draws from its own key: row 4 alone equals row 4 in the batch.
    chex.assert_trees_all_equal(draws(keys[4:5], logits[4:5]),
                                jax.tree.map(lambda x: x[4:5], whole))
    # Rows differ from each other, and one key for the whole batch still works.
    assert not np.allclose(whole[0][0], whole[0][1])
    chex.assert_shape(d.noise(jax.random.normal, root, (6, 4)), (6, 4))
    with pytest.raises(AssertionError):
        d.noise(jax.random.normal, keys, (5, 4))


def test_categorical_kl_against_numpy():
    rng = np.random.default_rng(2)
    lhs = rng.normal(size=(3, 5, 4, 7)).astype(np.float32)
    rhs = rng.normal(size=(3, 5, 4, 7)).astype(np.float32)
    lp, rp = np_log_softmax(lhs), np_log_softmax(rhs)
    expected = (np.exp(lp) * (lp - rp)).sum(-1).sum(-1)
    got = categorical_kl(jnp.asarray(lhs), jnp.asarray(rhs))
    chex.assert_shape(got, (3, 5))
    chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=1e-5)
    assert (np.asarray(got) > 0).all()
    chex.assert_trees_all_close(categorical_kl(jnp.asarray(lhs), jnp.asarray(lhs)),
                                jnp.zeros((3, 5)), atol=1e-6)
    # Logits that differ by a constant are the same distribution.
    chex.assert_trees_all_close(categorical_kl(jnp.asarray(lhs), jnp.asarray(lhs) + 4.0),
                                jnp.zeros((3, 5)), atol=1e-5)


def test_categorical_entropy_and_bernoulli_against_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    lp = np_log_softmax(logits)
    chex.assert_trees_all_close(d.categorical_entropy(jnp.asarray(logits)),
                                (-(np.exp(lp) * lp).sum(-1)).astype(np.float32), rtol=1e-5)
    chex.assert_trees_all_close(d.categorical_entropy(jnp.zeros(6)), jnp.array(math.log(6)))
    z = np.array([-3.0, 0.0, 0.5, 4.0], np.float32)
    target = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    expected = target * np.log(p) + (1 - target) * np.log(1 - p)
    chex.assert_trees_all_close(d.bernoulli_log_prob(jnp.asarray(z), jnp.asarray(target)),
                                expected.astype(np.float32), rtol=1e-5)


# ------------------------------------------------------------------------------ Policy


def test_discrete_policy_against_numpy():
    rng = np.random.default_rng(4)
    out = rng.normal(0, 2, size=(5, 4)).astype(np.float32)
    action = np.eye(4, dtype=np.float32)[[0, 3, 1, 2, 3]]
    logp, entropy, sample, mode = discrete_policy(jnp.asarray(out), action, jax.random.key(0))
    probs = np.exp(np_log_softmax(out))  # a plain categorical: no uniform mixed in (2024 code)
    chex.assert_trees_all_close(logp, np.log((probs * action).sum(-1)).astype(np.float32),
                                rtol=1e-5)
    chex.assert_trees_all_close(entropy, (-(probs * np.log(probs)).sum(-1)).astype(np.float32),
                                rtol=1e-5)
    chex.assert_shape(sample, (5, 4))
    chex.assert_trees_all_equal(sample.sum(-1), jnp.ones(5))
    chex.assert_trees_all_equal(jnp.argmax(mode, -1), jnp.asarray(out.argmax(-1)))


def test_discrete_policy_sample_frequencies():
    probs = np.array([0.1, 0.2, 0.7])
    out = np.broadcast_to(np.log(probs), (20000, 3)).astype(np.float32)
    _, _, sample, _ = discrete_policy(out, np.zeros_like(out), jax.random.key(1))
    expected = 0.99 * probs + 0.01 / 3
    chex.assert_trees_all_close(sample.mean(0), expected.astype(np.float32), atol=0.015)


def test_continuous_policy_against_scipy():
    minstd, maxstd = 0.1, 1.0
    rng = np.random.default_rng(5)
    mean, std_in = rng.normal(0, 2, (6, 3)), rng.normal(0, 3, (6, 3))
    out = np.concatenate([mean, std_in], -1).astype(np.float32)
    action = rng.uniform(-1.5, 1.5, (6, 3)).astype(np.float32)
    loc, std, logp, entropy, _, mode = continuous_policy(out, action, jax.random.key(0))
    expected_loc = np.tanh(mean)
    expected_std = minstd + (maxstd - minstd) / (1 + np.exp(-(std_in + 2.0)))
    chex.assert_trees_all_close(loc, expected_loc.astype(np.float32), atol=1e-6)
    chex.assert_trees_all_close(std, expected_std.astype(np.float32), rtol=1e-5)
    expected = scipy.stats.norm.logpdf(action, expected_loc, expected_std).sum(-1)
    chex.assert_trees_all_close(logp, expected.astype(np.float32), rtol=1e-5, atol=1e-5)
    expected = scipy.stats.norm.entropy(expected_loc, expected_std).sum(-1)
    chex.assert_trees_all_close(entropy, expected.astype(np.float32), rtol=1e-5)
    chex.assert_trees_all_close(mode, loc)


def test_continuous_policy_std_bounds_and_samples():
    minstd, maxstd = 0.1, 1.0
    out = np.array([[0.0, -1e4], [0.0, 1e4], [0.5, -5.0], [-0.5, 30.0]], np.float32)
    _, std, _, _, _, _ = continuous_policy(out, np.zeros((4, 1), np.float32), jax.random.key(0))
    std = np.asarray(std)
    assert (std >= minstd).all() and (std <= maxstd).all()
    assert std[0, 0] == pytest.approx(minstd) and std[1, 0] == pytest.approx(maxstd)
    n = 20000
    out = np.broadcast_to(np.array([0.4, -1.0], np.float32), (n, 2))
    loc, std, _, _, sample, _ = continuous_policy(out, np.zeros((n, 1), np.float32),
                                                  jax.random.key(2))
    chex.assert_shape(sample, (n, 1))
    z = (sample - loc) / std
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03


def test_tanh_normal_density_integrates_to_one_and_matches_change_of_variables():
    """1-D: the density on (-1, 1) integrates to 1, equals N(atanh a) / (1 - a²), and the
    log-density returned with a sample equals `log_prob` of that sample."""
    dist = d.TanhNormal(jnp.array([[0.7]]), jnp.array([[0.8]]))
    a = np.linspace(-1 + 1e-5, 1 - 1e-5, 200001)
    logp = np.asarray(dist.log_prob(jnp.asarray(a, jnp.float32)[:, None]))
    assert np.trapezoid(np.exp(logp), a) == pytest.approx(1.0, abs=2e-3)
    u = np.arctanh(np.array([-0.9, -0.2, 0.0, 0.5, 0.95]))
    by_hand = (-0.5 * ((u - 0.7) / 0.8) ** 2 - np.log(0.8) - 0.5 * np.log(2 * np.pi)
               - np.log(1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(dist.log_prob(jnp.tanh(jnp.asarray(u, jnp.float32))[:, None]),
                               by_hand, rtol=1e-4)
    batch = d.TanhNormal(jnp.full((4096, 2), 0.3), jnp.full((4096, 2), 0.5))
    sample, logp = batch.sample_and_log_prob(jax.random.PRNGKey(0))
    assert float(jnp.abs(sample).max()) < 1.0
    np.testing.assert_allclose(logp, batch.log_prob(sample), rtol=1e-3, atol=1e-3)
    grid = np.linspace(0.3 - 4.0, 0.3 + 4.0, 20001)  # E tanh(u), u ~ N(0.3, 0.5²), by quadrature
    mean = np.trapezoid(np.tanh(grid) * scipy.stats.norm.pdf(grid, 0.3, 0.5), grid)
    np.testing.assert_allclose(np.asarray(sample).mean(0), mean, atol=0.015)


def test_tanh_normal_log_det_is_stable_in_the_tails_and_samples_carry_gradients():
    u = jnp.array([[-30.0, 0.0, 30.0]])
    expected = np.log(4.0) - 2 * 30.0 + 0.0  # log(1 - tanh²u) -> log 4 - 2|u| far out
    np.testing.assert_allclose(float(d.tanh_log_det(u)[0]), 2 * expected, rtol=1e-5)
    grad = jax.grad(lambda loc: d.TanhNormal(loc, jnp.ones(3) * 0.5).sample(
        jax.random.PRNGKey(1)).sum())(jnp.zeros(3))
    assert bool(jnp.all(grad > 0.0))
    assert float(d.TanhNormal(jnp.array([2.0]), jnp.array([1.0])).mode()[0]) == pytest.approx(
        np.tanh(2.0))
