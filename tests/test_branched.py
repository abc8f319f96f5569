"""Branched rollouts against a plain loop, and the ring buffer against a list."""
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.core.branched import Buffer, rollout

MEMBERS = 3


def predict(params, states, actions, key):
    """Member m: s' = (m + 1) / 2 * s + a, reward sum(s), ends where s'[0] > 3 (no noise)."""
    del params, key
    scale = (jnp.arange(MEMBERS) + 1.0)[:, None, None] / 2
    nxt = scale * states + actions
    return nxt, states.sum(-1), (nxt[..., 0] > 3.0).astype(jnp.float32)


def policy(obs, key):
    del key
    return 0.5 * jnp.ones_like(obs) - 0.1 * obs


def plain(start, member, length):
    """The same k steps of one rollout in Python: its transitions and validity."""
    rows, obs, alive = [], np.asarray(start, np.float64), True
    for _ in range(length):
        action = 0.5 - 0.1 * obs
        nxt = (member + 1) / 2 * obs + action
        ended = nxt[0] > 3.0
        rows.append((obs, action, obs.sum(), nxt, 0.0 if ended else 1.0, alive))
        alive = alive and not ended
        obs = nxt
    return rows


def test_rollouts_equal_a_plain_loop_and_stop_where_the_model_ends():
    starts = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (5, 2)), jnp.float32)
    length = 4
    for elites in ([2], [0, 2]):
        out, valid = rollout(predict, None, policy, starts, jnp.asarray(elites), MEMBERS,
                             length, jax.random.key(3))
        assert out["obs"].shape == (length * 5, 2) and valid.shape == (length * 5,)
        for i in range(5):
            # Each row follows one of the elites for all its steps.
            matches = []
            for member in elites:
                rows = plain(starts[i], member, length)
                ok = all(np.allclose(out["obs"][t * 5 + i], r[0], atol=1e-5)
                         and np.allclose(out["action"][t * 5 + i], r[1], atol=1e-5)
                         and np.isclose(out["reward"][t * 5 + i], r[2], atol=1e-5)
                         and np.allclose(out["next_obs"][t * 5 + i], r[3], atol=1e-5)
                         and out["cont"][t * 5 + i] == r[4] and bool(valid[t * 5 + i]) == r[5]
                         for t, r in enumerate(rows))
                matches.append(ok)
            assert sum(matches) == 1, (elites, i)
    # Member 2 (s' = 1.5 s + a) ends some rollouts within 4 steps; their later steps are invalid.
    out, valid = rollout(predict, None, policy, jnp.full((1, 2), 1.0), jnp.asarray([2]),
                         MEMBERS, 4, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(valid), [True, True, False, False])
    np.testing.assert_array_equal(np.asarray(out["cont"][:2]), [1.0, 0.0])


def test_buffer_keeps_the_newest_valid_rows_in_a_ring():
    buf = Buffer.empty(5, 1, 1)
    reference = []
    rng = np.random.default_rng(0)
    add = jax.jit(Buffer.add)
    for chunk in range(4):
        values = np.arange(chunk * 3, chunk * 3 + 3, dtype=np.float32)
        valid = rng.random(3) > 0.3
        items = {"obs": values[:, None], "action": values[:, None], "reward": values,
                 "next_obs": values[:, None], "cont": np.ones(3, np.float32)}
        buf = add(buf, items, jnp.asarray(valid))
        reference += [v for v, ok in zip(values, valid) if ok]
    assert int(buf.count) == len(reference)
    held = sorted(np.asarray(buf.data["reward"])[:min(len(reference), 5)])
    assert held == sorted(reference[-5:])
    draws = np.asarray(buf.sample(jax.random.key(0), 200)["reward"])
    assert set(draws) == set(reference[-5:])
