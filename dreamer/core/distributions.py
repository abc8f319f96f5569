"""Output distributions and transforms: DreamerV3's (Hafner et al. 2023, Sec. 2 and App. B), and
the tanh-squashed Gaussian of SAC-style actors (`TanhNormal`).

All functions are pure and shape-polymorphic over leading batch dimensions.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def symlog(x: jax.Array) -> jax.Array:
    """sign(x) log(1 + |x|): compresses large magnitudes for targets of any scale (paper Eq. 1)."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    """Inverse of `symlog`."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def symexp_bins(num: int, limit: float = 20.0) -> jax.Array:
    """[num] bin positions in raw space: symexp of an even grid on [-limit, limit] in symlog
    space (2024 code). The upper half mirrors the lower one, so the bins are exactly symmetric
    around zero (an odd `num` has a bin at 0)."""
    lower = symexp(jnp.linspace(-limit, limit, num, dtype=jnp.float32)[:num // 2])
    middle = jnp.zeros(num % 2, jnp.float32)
    return jnp.concatenate([lower, middle, -lower[::-1]])


def twohot_weights(x: jax.Array, bins: jax.Array):
    """The two bins around `x` [...] in sorted `bins` [K] and their weights: (index below,
    index above, weight below, weight above), each [...] (paper Eq. 9).

    The weights interpolate linearly, so that `w_below * bins[below] + w_above * bins[above]
    == x` inside the range; outside it both indices name the nearest end bin.
    """
    k = bins.shape[0]
    below = jnp.sum((bins <= x[..., None]).astype(jnp.int32), -1) - 1
    above = k - jnp.sum((bins > x[..., None]).astype(jnp.int32), -1)
    below = jnp.clip(below, 0, k - 1)
    above = jnp.clip(above, 0, k - 1)
    equal = below == above
    dist_below = jnp.where(equal, 1.0, jnp.abs(bins[below] - x))
    dist_above = jnp.where(equal, 1.0, jnp.abs(bins[above] - x))
    total = dist_below + dist_above
    return below, above, dist_above / total, dist_below / total


def twohot(x: jax.Array, bins: jax.Array) -> jax.Array:
    """Two-hot encoding of `x` [...] over sorted `bins` [K] -> [..., K] (paper Eq. 9).

    The two neighbouring bins share the weight so that `sum(enc * bins) == x` inside the range;
    values outside the range put all weight on the nearest end bin.
    """
    k = bins.shape[0]
    below, above, w_below, w_above = twohot_weights(x, bins)
    return (jax.nn.one_hot(below, k) * w_below[..., None]
            + jax.nn.one_hot(above, k) * w_above[..., None])


class TwoHot:
    """Categorical over bins placed at symexp of an even symlog grid (`symexp_bins`); reward and
    value heads (2024 code).

    Targets are two-hot encoded and the prediction is averaged in raw space, so the predicted
    mean of a mixture of returns is their mean (a 50/50 mix of 0 and 100 predicts 50), while the
    symlog spacing of the bins still covers returns of any magnitude.

    Both statistics avoid extra passes over the [..., K] logits (the heads evaluate them on
    every imagined state): the mean divides by the softmax's normaliser once per row, and the
    log-likelihood reads the two target bins' logits instead of building the two-hot vector.
    """

    def __init__(self, logits: jax.Array, bins: jax.Array):
        self.logits = logits.astype(jnp.float32)
        self.bins = bins

    def mean(self) -> jax.Array:
        """[...] expected value sum(p_k b_k). The two halves are added from the outside in, so
        that symmetric bins under uniform probabilities give exactly 0 (a left-to-right sum
        over bins of magnitude up to 5e8 leaves a rounding error far above typical rewards)."""
        # Unnormalised probabilities; the shift by the (stopped) maximum cancels in the ratio.
        e = jnp.exp(self.logits - sg(jnp.max(self.logits, -1, keepdims=True)))
        n = e.shape[-1]
        m = n // 2
        lower = (e[..., :m] * self.bins[:m])[..., ::-1]
        upper = e[..., n - m:] * self.bins[n - m:]
        middle = e[..., m] * self.bins[m] if n % 2 else 0.0
        return (jnp.sum(lower + upper, -1) + middle) / jnp.sum(e, -1)

    def log_prob(self, target: jax.Array) -> jax.Array:
        """[...] log-likelihood of `target` [...] under the two-hot target distribution:
        sum_k twohot_k log p_k, of which only the two target bins are non-zero."""
        below, above, w_below, w_above = twohot_weights(target.astype(jnp.float32), self.bins)
        pick = lambda index: jnp.take_along_axis(self.logits, index[..., None], -1)[..., 0]
        return (w_below * pick(below) + w_above * pick(above)
                - jax.nn.logsumexp(self.logits, -1))


def unimix_logits(logits: jax.Array, unimix: float) -> jax.Array:
    """Mix 1% uniform into a categorical so its KL and log-probs stay bounded (paper Sec. 2)."""
    if unimix <= 0:
        return jax.nn.log_softmax(logits, -1)
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return jnp.log(probs)


def is_row_keys(key: jax.Array) -> bool:
    """Whether `key` is a batch of PRNG keys (one per row) rather than a single key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim >= 1
    return key.ndim >= 2  # raw uint32 keys: [2] or [N, 2]


def split_keys(key: jax.Array, num: int) -> jax.Array:
    """`num` keys along a new leading axis; a batch of row keys [N] gives [num, N]: every row
    splits its own key, so what a row draws does not depend on the other rows."""
    if is_row_keys(key):
        return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num))(key), 0, 1)
    return jax.random.split(key, num)


def noise(sampler, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`sampler(key, shape)` (e.g. `jax.random.normal`) from one key, or from one key per row of
    the leading axis. Row keys make samples independent of how a batch is split over devices."""
    if is_row_keys(key):
        chex.assert_axis_dimension(key, 0, shape[0])
        return jax.vmap(lambda k: sampler(k, shape[1:]))(key)
    return sampler(key, shape)


def is_noise(key: jax.Array) -> bool:
    """Whether a sampler's `key` argument holds noise drawn ahead (floating point) rather than
    PRNG keys. Drawing a scan's noise for all its steps before the scan takes the random number
    generation out of the loop body (on a GPU every draw inside is a kernel launch per step)
    and gives the same samples, since a draw depends only on its key and shape."""
    return jnp.issubdtype(key.dtype, jnp.floating)


def sample_categorical(logits: jax.Array, key: jax.Array) -> jax.Array:
    """Index [...] drawn from categoricals with `logits` [..., K] (Gumbel-max). `key` is one key,
    one per row (see `noise`), or the Gumbel noise itself [..., K] (`is_noise`)."""
    gumbel = key if is_noise(key) else noise(jax.random.gumbel, key, logits.shape)
    return jnp.argmax(logits + gumbel, -1)


def onehot_straight_through(logits: jax.Array, key: jax.Array) -> jax.Array:
    """Sample one-hot [..., K] from `logits` with straight-through gradients (Bengio et al. 2013).

    `key` is one key, one key per row of the leading axis (see `noise`) or Gumbel noise
    [..., K] drawn ahead."""
    probs = jax.nn.softmax(logits, -1)
    sample = jax.nn.one_hot(sample_categorical(logits, key), logits.shape[-1], dtype=probs.dtype)
    return sample + probs - sg(probs)


def categorical_kl(lhs_logits: jax.Array, rhs_logits: jax.Array) -> jax.Array:
    """KL(lhs || rhs) of categoricals [..., S, K], summed over the S latents -> [...]."""
    lhs_logp = jax.nn.log_softmax(lhs_logits, -1)
    rhs_logp = jax.nn.log_softmax(rhs_logits, -1)
    kl = jnp.sum(jnp.exp(lhs_logp) * (lhs_logp - rhs_logp), -1)
    return jnp.sum(kl, -1)


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """Entropy [...] of categoricals with `logits` [..., K]."""
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.sum(jnp.exp(logp) * logp, -1)


def bernoulli_log_prob(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Log-likelihood of binary `target` under Bernoulli(sigmoid(logits)), elementwise."""
    return target * jax.nn.log_sigmoid(logits) + (1 - target) * jax.nn.log_sigmoid(-logits)


class Policy:
    """Action distribution of the actor: one-hot categorical (discrete) or bounded normal.

    Discrete: `out` [..., A] logits of a plain categorical (the 2024 code mixes no uniform into
    the policy); samples are one-hot [..., A].
    Continuous: `out` is the pair (mean [..., A], std [..., A]) of the actor's two output layers
    -> mean tanh(m), std in [minstd, maxstd]; samples [..., A].
    """

    def __init__(self, out: jax.Array | tuple[jax.Array, jax.Array], discrete: bool,
                 minstd: float = 0.1, maxstd: float = 1.0):
        self.discrete = discrete
        if discrete:
            self.logits = jax.nn.log_softmax(out.astype(jnp.float32), -1)
        else:
            mean, std = (x.astype(jnp.float32) for x in out)
            self.loc = jnp.tanh(mean)
            self.std = (maxstd - minstd) * jax.nn.sigmoid(std + 2.0) + minstd

    @staticmethod
    def noise(key: jax.Array, shape: tuple[int, ...], discrete: bool) -> jax.Array:
        """What `sample` draws from `key` for actions of `shape` [N, A]: Gumbel noise for a
        discrete policy, standard normal noise for a continuous one. `sample` given this array
        in place of the key returns the same action."""
        return noise(jax.random.gumbel if discrete else jax.random.normal, key, shape)

    def sample(self, key: jax.Array, straight_through: bool = False) -> jax.Array:
        """Continuous samples are reparameterised; discrete ones carry straight-through
        gradients when asked (for backpropagation through imagined dynamics). `key` is one key,
        one key per row of the leading axis, or the noise that `Policy.noise` draws."""
        if self.discrete:
            if straight_through:
                return onehot_straight_through(self.logits, key)
            index = sample_categorical(self.logits, key)
            return jax.nn.one_hot(index, self.logits.shape[-1], dtype=jnp.float32)
        eps = key if is_noise(key) else noise(jax.random.normal, key, self.loc.shape)
        return self.loc + self.std * eps

    def mode(self) -> jax.Array:
        if self.discrete:
            return jax.nn.one_hot(jnp.argmax(self.logits, -1), self.logits.shape[-1])
        return self.loc

    def log_prob(self, action: jax.Array) -> jax.Array:
        """[...] log-probability of `action` [..., A] (summed over action dimensions)."""
        if self.discrete:
            return jnp.sum(action * jax.nn.log_softmax(self.logits, -1), -1)
        z = (action - self.loc) / self.std
        logp = -0.5 * jnp.square(z) - jnp.log(self.std) - 0.5 * jnp.log(2 * jnp.pi)
        return jnp.sum(logp, -1)

    def entropy(self) -> jax.Array:
        """[...] entropy (summed over action dimensions)."""
        if self.discrete:
            return categorical_entropy(self.logits)
        return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(self.std), -1)


def tanh_log_det(u: jax.Array) -> jax.Array:
    """log |d tanh(u) / du| = log(1 - tanh(u)²) = 2 (log 2 - u - softplus(-2u)), summed over the
    last axis; exact where 1 - tanh(u)² rounds to 0 in float32."""
    return jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), -1)


class TanhNormal:
    """A diagonal Gaussian squashed by tanh (SAC, Haarnoja et al. 2018; TD-MPC2's actor):
    a = tanh(u), u ~ N(loc, std²), actions in (-1, 1). Its log-density is the Gaussian's minus
    the log-determinant of the squashing (`tanh_log_det`), summed over the action axis."""

    def __init__(self, loc: jax.Array, std: jax.Array):
        chex.assert_equal_shape([loc, std])
        self.loc, self.std = loc.astype(jnp.float32), std.astype(jnp.float32)

    def _gaussian_log_prob(self, u: jax.Array) -> jax.Array:
        z = (u - self.loc) / self.std
        return jnp.sum(-0.5 * jnp.square(z) - jnp.log(self.std) - 0.5 * jnp.log(2 * jnp.pi), -1)

    def sample_and_log_prob(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A reparameterised sample [..., A] and its log-density [...] (from the pre-squash
        value, so no atanh of a rounded action). `key` is one key or one per row."""
        u = self.loc + self.std * noise(jax.random.normal, key, self.loc.shape)
        return jnp.tanh(u), self._gaussian_log_prob(u) - tanh_log_det(u)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.sample_and_log_prob(key)[0]

    def log_prob(self, action: jax.Array, eps: float = 1e-6) -> jax.Array:
        """[...] log-density of `action` [..., A], clipped to (-1 + eps, 1 - eps) before atanh."""
        u = jnp.arctanh(jnp.clip(action, -1.0 + eps, 1.0 - eps))
        return self._gaussian_log_prob(u) - tanh_log_det(u)

    def mode(self) -> jax.Array:
        """tanh of the Gaussian's mean: the action SAC and TD-MPC2 evaluate with (the density's
        own mode differs where the squashing piles mass towards ±1)."""
        return jnp.tanh(self.loc)

