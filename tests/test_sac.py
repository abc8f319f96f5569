"""SAC's losses against their formulas in numpy, where gradients flow and stop, the Polyak
step, and a one-step task it must solve."""
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.core import sac


def test_losses_match_their_formulas():
    rng = np.random.default_rng(0)
    n, gamma, alpha = 16, 0.99, 0.3
    reward, cont = rng.normal(size=n), (rng.random(n) > 0.2).astype(np.float64)
    next_q, q, logp = rng.normal(size=(2, n)), rng.normal(size=(2, n)), rng.normal(size=n)
    y = reward + gamma * cont * (np.minimum(next_q[0], next_q[1]) - alpha * logp)
    np.testing.assert_allclose(sac.critic_target(reward, cont, next_q, logp, alpha, gamma), y,
                               rtol=1e-6)
    expected = 0.5 * np.mean((q[0] - y) ** 2) + 0.5 * np.mean((q[1] - y) ** 2)
    np.testing.assert_allclose(sac.critic_loss(q, y), expected, rtol=1e-6)
    np.testing.assert_allclose(sac.actor_loss(q, logp, alpha),
                               np.mean(alpha * logp - np.minimum(q[0], q[1])), rtol=1e-6)
    np.testing.assert_allclose(sac.temperature_loss(np.log(alpha), logp, -2.0),
                               -np.mean(np.log(alpha) * (logp - 2.0)), rtol=1e-6)


def test_gradients_stop_at_the_target_and_at_alpha():
    rng = np.random.default_rng(1)
    q, y, logp = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 8), 8, 8))
    assert not jnp.any(jax.grad(lambda t: sac.critic_loss(q, t))(y))
    np.testing.assert_allclose(jax.grad(lambda t: sac.critic_loss(t, y))(q), (q - y) / 8,
                               rtol=1e-5)
    assert jax.grad(lambda a: sac.actor_loss(q, logp, a))(jnp.float32(0.5)) == 0
    assert not jnp.any(jax.grad(lambda lp: sac.temperature_loss(jnp.float32(0.1), lp, -1.0))(logp))


def test_temperature_rises_below_the_target_entropy_and_falls_above():
    """d loss / d log α = -(mean log π + H̄): negative (α grows under descent) when the entropy
    -mean log π is below H̄."""
    grad = jax.grad(sac.temperature_loss)
    low_entropy = jnp.full(8, 2.0)  # entropy -2 < target -1
    high_entropy = jnp.full(8, -3.0)  # entropy 3 > target -1
    np.testing.assert_allclose(grad(jnp.float32(0.0), low_entropy, -1.0), -1.0)
    np.testing.assert_allclose(grad(jnp.float32(0.0), high_entropy, -1.0), 4.0)


def test_update_moves_the_targets_by_polyak_and_only_its_own_parameters():
    agent = sac.SAC(3, 2, layers=1, units=8, tau=0.1)
    state = agent.init(jax.random.key(0))
    rng = np.random.default_rng(2)
    batch = {"obs": rng.normal(size=(8, 3)), "action": rng.uniform(-1, 1, (8, 2)),
             "reward": rng.normal(size=8), "next_obs": rng.normal(size=(8, 3)),
             "cont": np.ones(8)}
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
    new, metrics = jax.jit(agent.update)(state, batch, jax.random.key(1))
    expected = jax.tree.map(lambda t, c: 0.9 * t + 0.1 * c, state.target, new.critic)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 new.target, expected)
    for old, changed in ((state.actor, new.actor), (state.critic, new.critic)):
        assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old),
                                                         jax.tree.leaves(changed)))
    assert new.log_alpha != state.log_alpha
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_learns_the_best_action_of_a_one_step_task():
    """Reward -(a - 0.5)² with every step terminal: the critic learns Q(a) and the actor's
    mode moves to 0.5 while the temperature shrinks the spread."""
    agent = sac.SAC(1, 1, layers=2, units=32, lr=3e-3, target_entropy=-3.0)
    state = agent.init(jax.random.key(0))

    def step(state, key):
        k_act, k_update = jax.random.split(key)
        obs = jnp.zeros((64, 1))
        action = jax.random.uniform(k_act, (64, 1), minval=-1, maxval=1)
        batch = {"obs": obs, "action": action, "reward": -jnp.square(action[:, 0] - 0.5),
                 "next_obs": obs, "cont": jnp.zeros(64)}
        return agent.update(state, batch, k_update)

    state, metrics = jax.jit(lambda s, k: jax.lax.scan(step, s, jax.random.split(k, 600)))(
        state, jax.random.key(1))
    mode = float(agent.policy(state.actor, jnp.zeros((1, 1))).mode()[0, 0])
    assert abs(mode - 0.5) < 0.1, mode
    assert float(metrics["sac/alpha"][-1]) < 0.5
