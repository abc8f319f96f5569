"""Branched rollouts against a plain loop, and the ring buffer against a list."""
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.core.branched import Buffer, rollout


def predict(params, states, actions, key):
    """Elite e (of params, the elites' scales): s' = scale_e * s + a, reward sum(s), ends where
    s'[0] > 3 (no noise)."""
    del key
    nxt = params[:, None, None] * states + actions
    return nxt, states.sum(-1), (nxt[..., 0] > 3.0).astype(jnp.float32)


def policy(obs, key):
    del key
    return 0.5 * jnp.ones_like(obs) - 0.1 * obs


def plain(start, scale, length):
    """The same k steps of one rollout in Python: the transitions it writes."""
    rows, obs = [], np.asarray(start, np.float64)
    for _ in range(length):
        action = 0.5 - 0.1 * obs
        nxt = scale * obs + action
        ended = nxt[0] > 3.0
        rows.append((obs, action, obs.sum(), nxt, 0.0 if ended else 1.0))
        if ended:
            break
        obs = nxt
    return rows


def test_rollouts_equal_a_plain_loop_and_stop_where_the_model_ends():
    n, elites = 6, 3
    scales = np.array([0.5, 1.0, 1.5], np.float32)  # elite e's dynamics
    starts = np.random.default_rng(0).uniform(-1, 1, (n, 2)).astype(np.float32)
    starts[2] = 1.0  # on elite 2 (1.5 s + a): ends at its second step
    go = jax.jit(lambda length, buf: rollout(predict, jnp.asarray(scales), policy,
                                             jnp.asarray(starts), elites, length, buf,
                                             jax.random.key(3)))
    for length in (1, 4):  # one compiled function: the length is a traced value
        buf, stats = go(length, Buffer.empty(64, 2, 2))
        # In step order, row order within a step, only the rollouts still running.
        per_row = [plain(starts[i], scales[i % elites], length) for i in range(n)]
        expected = [per_row[i][t] for t in range(length) for i in range(n) if t < len(per_row[i])]
        assert int(stats["written"]) == int(buf.count) == len(expected)
        assert int(stats["steps"]) == length
        for j, (obs, action, reward, nxt, cont) in enumerate(expected):
            np.testing.assert_allclose(buf.data["obs"][j], obs, atol=1e-5)
            np.testing.assert_allclose(buf.data["action"][j], action, atol=1e-5)
            np.testing.assert_allclose(buf.data["reward"][j], reward, atol=1e-5)
            np.testing.assert_allclose(buf.data["next_obs"][j], nxt, atol=1e-5)
            assert buf.data["cont"][j] == cont
    assert len(per_row[2]) == 2 and per_row[2][-1][4] == 0.0  # the ended rollout's last step


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
    assert int(buf.size()) == min(len(reference), 5)
    assert int(buf.count) % 5 == len(reference) % 5
    held = sorted(np.asarray(buf.data["reward"])[:min(len(reference), 5)])
    assert held == sorted(reference[-5:])
    draws = np.asarray(buf.sample(jax.random.key(0), 200)["reward"])
    assert set(draws) == set(reference[-5:])
    # Only the newest 2 rows, whatever the capacity; a key per row draws the same rows.
    draws = np.asarray(buf.sample(jax.random.key(1), 200, newest=2)["reward"])
    assert set(draws) == set(reference[-2:])
    keys = jax.random.split(jax.random.key(2), 6)
    both = buf.sample(keys, 6, newest=3)["reward"]
    np.testing.assert_array_equal(both[:3], buf.sample(keys[:3], 3, newest=3)["reward"])


def test_a_long_run_folds_the_count_and_keeps_the_newest_rows():
    buf, add = Buffer.empty(5, 1, 1), jax.jit(Buffer.add)
    for chunk in range(40):  # 120 rows through a ring of 5
        values = np.arange(chunk * 3, chunk * 3 + 3, dtype=np.float32)
        items = {"obs": values[:, None], "action": values[:, None], "reward": values,
                 "next_obs": values[:, None], "cont": np.ones(3, np.float32)}
        buf = add(buf, items, jnp.ones(3, bool))
        assert int(buf.count) < 10 and int(buf.count) % 5 == (chunk * 3 + 3) % 5
    assert int(buf.size()) == 5
    newest = buf.data["reward"][(int(buf.count) - 1) % 5]
    assert float(newest) == 119.0
    draws = np.asarray(buf.sample(jax.random.key(0), 300, newest=3)["reward"])
    assert set(draws) == {117.0, 118.0, 119.0}


def test_rollouts_count_what_they_write_into_a_full_ring():
    starts = np.random.default_rng(1).uniform(-0.5, 0.5, (6, 2)).astype(np.float32)
    buf, stats = rollout(predict, jnp.asarray([0.5, 1.0, 1.5], np.float32), policy,
                         jnp.asarray(starts), 3, 4, Buffer.empty(8, 2, 2), jax.random.key(0))
    per_row = [plain(starts[i], [0.5, 1.0, 1.5][i % 3], 4) for i in range(6)]
    expected = [per_row[i][t] for t in range(4) for i in range(6) if t < len(per_row[i])]
    assert len(expected) > 8 and int(stats["written"]) == len(expected)
    newest = [row[2] for row in expected[-8:]]  # the ring keeps the last 8, in order
    order = (int(buf.count) - 8 + np.arange(8)) % 8
    np.testing.assert_allclose(np.asarray(buf.data["reward"])[order], newest, atol=1e-5)


def test_one_write_of_more_rows_than_the_capacity_keeps_the_last():
    values = np.arange(12, dtype=np.float32)
    items = {"obs": values[:, None], "action": values[:, None], "reward": values,
             "next_obs": values[:, None], "cont": np.ones(12, np.float32)}
    valid = np.ones(12, bool)
    valid[10] = False
    buf = jax.jit(Buffer.add)(Buffer.empty(5, 1, 1), items, jnp.asarray(valid))
    assert sorted(np.asarray(buf.data["reward"]).tolist()) == [6.0, 7.0, 8.0, 9.0, 11.0]
    assert float(buf.data["reward"][(int(buf.count) - 1) % 5]) == 11.0
