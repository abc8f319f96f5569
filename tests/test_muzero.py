"""MuZero: n-step value targets and unroll masks against plain loops, the unroll's gradient
scaling, the search on a known bandit, and the agent's configuration errors."""
import types

import chex
import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest

from dreamer.agents.muzero import MuZero
from dreamer.agents.muzero import targets as targets_lib
from dreamer.config import ConfigError, load_config
from dreamer.core.distributions import TwoHot
from dreamer.core.parallel import row_keys
from dreamer.envs import make_env

TINY = {"muzero.unroll": 2, "muzero.td_steps": 3, "batch_length": 6, "batch_size": 4,
        "muzero.latent": 8, "muzero.units": 16, "muzero.layers": 1, "muzero.simulations": 4,
        "muzero.considered": 3, "muzero.bins": 21}


def plain_value_target(reward, value, is_first, is_last, terminal, u, n, discount):
    """z_u by walking the window one step at a time."""
    length = len(reward)

    def ends(j):  # the last step of its episode, or interrupted by the next one's start
        return is_last[j] or (j + 1 < length and is_first[j + 1])

    if ends(u):
        return 0.0 if terminal[u] else value[u]
    total, scale = 0.0, 1.0
    for j in range(u + 1, u + n + 1):
        total += scale * reward[j]
        scale *= discount
        if ends(j):
            return total + (0.0 if terminal[j] else scale * value[j])
    return total + scale * value[u + n]


def random_flags(rng, b, length):
    """Episodes of random lengths, some ending in a terminal state, some by a time limit, one
    interrupted (a new episode starts without `is_last`)."""
    is_first = np.zeros((b, length), bool)
    is_last = np.zeros((b, length), bool)
    terminal = np.zeros((b, length), bool)
    for row in range(b):
        j = 0
        while j < length:
            is_first[row, j] = True
            j += int(rng.integers(1, 6))
            if j - 1 < length and rng.random() < 0.8:  # else interrupted
                is_last[row, j - 1] = True
                terminal[row, j - 1] = rng.random() < 0.5
    is_first[:, 0] = rng.random(b) < 0.5
    return is_first, is_last, terminal


def test_value_targets_match_a_plain_loop_with_episode_ends_inside_the_window():
    rng = np.random.default_rng(0)
    b, n, count, discount = 64, 4, 3, 0.9
    length = count + n
    reward, value = rng.normal(size=(b, length)), rng.normal(size=(b, length))
    is_first, is_last, terminal = random_flags(rng, b, length)
    ends = targets_lib.episode_ends(jnp.asarray(is_first), jnp.asarray(is_last))
    z = targets_lib.value_targets(jnp.asarray(reward, jnp.float32),
                                  jnp.asarray(value, jnp.float32), ends, jnp.asarray(terminal),
                                  n, discount, count)
    expected = [[plain_value_target(reward[r], value[r], is_first[r], is_last[r], terminal[r],
                                    u, n, discount) for u in range(count)] for r in range(b)]
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    assert is_last[:, 1:length - 1].any() and terminal.any() and (is_last & ~terminal).any()


def test_value_target_by_hand():
    # Rewards 1, 2, 3 after u = 0, terminal at step 2: z_0 = 1 + 0.5 * 2, no bootstrap;
    # z_1 = 2 (the terminal step's reward); z_2 = 0 at the terminal state itself.
    reward = jnp.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    value = jnp.array([[9.0, 9.0, 9.0, 7.0, 8.0, 6.0]])
    is_first = jnp.array([[1, 0, 0, 1, 0, 0]], bool)
    is_last = jnp.array([[0, 0, 1, 0, 0, 0]], bool)
    terminal = is_last
    ends = targets_lib.episode_ends(is_first, is_last)
    z = targets_lib.value_targets(reward, value, ends, terminal, 2, 0.5, 4)
    # z_3: a new episode; its window (3, 5] holds rewards 4, 5, then 0.25 * value[5].
    np.testing.assert_allclose(z[0], [2.0, 2.0, 0.0, 4.0 + 0.5 * 5.0 + 0.25 * 6.0])
    # A time limit at step 2 instead bootstraps from its root value.
    z = targets_lib.value_targets(reward, value, ends, jnp.zeros_like(terminal), 2, 0.5, 3)
    np.testing.assert_allclose(z[0], [1.0 + 0.5 * 2.0 + 0.25 * 9.0, 2.0 + 0.5 * 9.0, 9.0])


def test_unroll_masks_absorb_after_a_terminal_and_stop_after_a_time_limit():
    k, n, a = 3, 1, 2
    flags = np.zeros((2, k + n + 1), bool)
    is_first, is_last = flags.copy(), flags.copy()
    is_last[:, 1] = True
    is_first[:, 2] = True
    terminal = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    batch = {"reward": jnp.arange(10.0).reshape(2, 5), "is_first": jnp.asarray(is_first),
             "is_last": jnp.asarray(is_last), "is_terminal": jnp.asarray(terminal),
             "search_policy": jnp.full((2, 5, a), 0.5), "root_value": jnp.full((2, 5), 3.0),
             "searched": jnp.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], jnp.float32)}
    t = targets_lib.unroll_targets(batch, k, n, 1.0)
    chex.assert_shape([t.reward, t.value, t.reward_mask], (2, k + 1))
    chex.assert_shape(t.policy, (2, k + 1, a))
    # Row 0 ends in a terminal state at step 1: steps 2, 3 are absorbing (targets 0, losses on).
    np.testing.assert_allclose(t.reward[0], [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(t.value[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(t.reward_mask[0], [0, 1, 1, 1])
    np.testing.assert_allclose(t.value_mask[0], [1, 1, 1, 1])
    np.testing.assert_allclose(t.policy_mask[0], [1, 0, 0, 0])
    # Row 1 stops at a time limit at step 1: nothing is trained after it; a prefill step
    # (not searched) has no policy loss.
    np.testing.assert_allclose(t.value[1], [6.0 + 3.0, 3.0, 0.0, 0.0])
    np.testing.assert_allclose(t.reward_mask[1], [0, 1, 0, 0])
    np.testing.assert_allclose(t.value_mask[1], [1, 1, 0, 0])
    np.testing.assert_allclose(t.policy_mask[1], [0, 0, 0, 0])


def test_scale_gradient_keeps_the_value_and_scales_the_gradient():
    x = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(targets_lib.scale_gradient(x, 0.25), x)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(targets_lib.scale_gradient(v, 0.25)
                                                          ** 2))(x), 0.25 * 2 * x)


@pytest.fixture(scope="module")
def agent_case():
    cfg = load_config(["debug", "muzero"], TINY)
    env = make_env(cfg.env, 0)
    agent = MuZero(cfg, env.obs_space, env.act_space)
    env.close()
    return agent, agent.init(jax.random.key(0))


def test_the_unroll_halves_the_state_gradient_at_every_dynamics_step(agent_case):
    agent, state = agent_case
    params, k = state.params, agent.unroll_steps
    s0 = jax.random.uniform(jax.random.key(1), (3, agent.cfg.muzero.latent))
    actions = jax.nn.one_hot(jnp.array([[0, 1], [2, 0], [1, 1]]), agent.act_dim)
    weights = jax.random.normal(jax.random.key(2), (3, agent.cfg.muzero.bins))

    def plain(s):  # the same unroll without gradient scaling
        for j in range(k):
            s, reward = agent._apply(params, "dynamics", s, actions[:, j])
        return jnp.sum(reward * weights)

    scaled = jax.grad(lambda s: jnp.sum(agent.unroll(params, s, actions)[2][:, -1] * weights))
    np.testing.assert_allclose(scaled(s0), 0.5 ** (k - 1) * jax.grad(plain)(s0), rtol=1e-5,
                               atol=1e-7)
    # The value at step k sees k halvings; step 0's none.
    value0 = jax.grad(lambda s: jnp.sum(agent.unroll(params, s, actions)[1][:, 0] * weights))
    plain0 = jax.grad(lambda s: jnp.sum(agent._apply(params, "predict", s)[1] * weights))
    np.testing.assert_allclose(value0(s0), plain0(s0), rtol=1e-5, atol=1e-7)


def test_search_outputs_and_more_simulations_favour_the_best_arm(agent_case, monkeypatch):
    agent, state = agent_case
    arms = jnp.array([0.1, 0.9, 0.3])  # one-step bandit: reward of each action, then the end

    def root(params, obs):
        n = obs["vector"].shape[0]
        return mctx.RootFnOutput(prior_logits=jnp.zeros((n, 3)), value=jnp.zeros(n),
                                 embedding=jnp.zeros((n, 1)))

    def recurrent(params, key, action, s):
        n = action.shape[0]
        return mctx.RecurrentFnOutput(reward=arms[action], discount=jnp.zeros(n),
                                      prior_logits=jnp.zeros((n, 3)), value=jnp.zeros(n)), s

    monkeypatch.setattr(agent, "root", root)
    monkeypatch.setattr(agent, "recurrent", recurrent)
    obs = {"vector": jnp.zeros((256, 3))}
    mass = {}
    for sims in (1, 3, 16):
        monkeypatch.setattr(agent, "cfg", agent.cfg.update({"muzero.simulations": sims}))
        out = agent.search(state.params, obs, jax.random.key(sims), 1.0)
        chex.assert_shape(out.action_weights, (256, 3))
        chex.assert_shape(out.action, (256,))
        np.testing.assert_allclose(out.action_weights.sum(-1), 1.0, rtol=1e-5)
        mass[sims] = float(out.action_weights[:, 1].mean())
    assert mass[1] < mass[3] < mass[16] and mass[16] > 0.6


def test_policy_outputs_and_modes(agent_case):
    agent, state = agent_case
    obs = {"vector": jnp.zeros((2, 3)), "is_first": jnp.ones(2, bool)}
    carry = agent.policy_initial(2)
    _, action, out = agent.policy(state.params, carry, obs, jax.random.key(0), "sample")
    chex.assert_shape(action, (2, agent.act_dim))
    chex.assert_shape(out["search_policy"], (2, agent.act_dim))
    chex.assert_shape([out["root_value"], out["searched"]], (2,))
    # Evaluation searches without Gumbel noise: the same choice under any key.
    evals = [agent.policy(state.params, carry, obs, jax.random.key(i), "eval")[1]
             for i in range(3)]
    assert all((e == evals[0]).all() for e in evals)
    initial = agent.policy_outputs_initial(2)
    assert set(initial) == set(out) and not initial["searched"].any()


def test_configuration_errors_name_the_fix():
    with pytest.raises(ConfigError, match="--batch_length=6"):
        cfg = load_config(["debug", "muzero"], {**TINY, "batch_length": 8})
        env = make_env(cfg.env, 0)
        MuZero(cfg, env.obs_space, env.act_space)
    cfg = load_config(["debug", "muzero"], {**TINY, "env.task": "builtin_reach"})
    env = make_env(cfg.env, 0)
    with pytest.raises(ConfigError, match="discrete actions"):
        MuZero(cfg, env.obs_space, env.act_space)
    env.close()


def replayed_batch(agent, seed=0, b=4):
    """A batch of [B, K + n + 1] steps of random episodes with searched policy outputs."""
    rng = np.random.default_rng(seed)
    length = agent.sequence_length
    is_first, is_last, terminal = random_flags(rng, b, length)
    policy = rng.dirichlet(np.ones(agent.act_dim), (b, length)).astype(np.float32)
    return {"vector": rng.normal(size=(b, length, 3)).astype(np.float32),
            "action": np.eye(agent.act_dim, dtype=np.float32)[
                rng.integers(0, agent.act_dim, (b, length))],
            "reward": rng.normal(size=(b, length)).astype(np.float32),
            "is_first": is_first, "is_last": is_last, "is_terminal": terminal,
            "search_policy": policy, "root_value": rng.normal(size=(b, length)).astype(np.float32),
            "searched": (rng.random((b, length)) < 0.9).astype(np.float32),
            "weight": rng.uniform(0.2, 1.0, b).astype(np.float32)}


def test_the_loss_is_the_masked_step_scaled_sum_of_its_terms(agent_case):
    agent, state = agent_case
    batch = replayed_batch(agent)
    total, (_, errors) = agent.loss(state.params, batch)
    t = targets_lib.unroll_targets(batch, agent.unroll_steps, agent.td_steps,
                                   agent.cfg.muzero.discount)
    s = agent._apply(state.params, "represent", {"vector": batch["vector"][:, 0]})
    policy, value, reward = (np.asarray(x) for x in agent.unroll(state.params, s,
                                                                  batch["action"]))
    bins = np.asarray(agent.bins)

    def nll(logits, target):  # two-hot cross-entropy, by a plain loop over rows
        logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        i = np.searchsorted(bins, target) - 1
        i = int(np.clip(i, 0, len(bins) - 2))
        w = (target - bins[i]) / (bins[i + 1] - bins[i])
        return -((1 - w) * logp[i] + w * logp[i + 1])

    k = agent.unroll_steps
    expected = 0.0
    for row in range(4):
        for step in range(k + 1):
            scale = batch["weight"][row] * (1.0 if step == 0 else 1.0 / k)
            lv = nll(value[row, step], float(t.value[row, step])) * float(t.value_mask[row, step])
            logits = policy[row, step] - policy[row, step].max()
            logp = logits - np.log(np.exp(logits).sum())
            lp = -(np.asarray(t.policy[row, step]) * logp).sum() * float(
                t.policy_mask[row, step])
            lr = 0.0
            if step:
                lr = nll(reward[row, step - 1], float(t.reward[row, step])) * float(
                    t.reward_mask[row, step])
            expected += scale * (lr + agent.cfg.muzero.value_scale * lv + lp) / 4
    np.testing.assert_allclose(total, expected, rtol=1e-4)
    chex.assert_shape(errors, (4,))


def test_train_steps_lower_the_loss_on_a_fixed_batch(agent_case):
    agent, state = agent_case
    batch = {k: jnp.asarray(v) for k, v in replayed_batch(agent, seed=1, b=8).items()}
    step = jax.jit(agent.train_step)
    first = None
    for i in range(30):
        state, metrics, updates = step(state, batch, jax.random.key(i))
        first = float(metrics["loss/total"]) if first is None else first
        assert metrics["nonfinite"] == 0 and updates == {}
    assert float(metrics["loss/total"]) < 0.7 * first


def test_targets_bootstrap_from_the_target_networks_value_where_each_window_stops(agent_case):
    agent, state = agent_case
    # A target network that differs from the online one, so that using the wrong one shows.
    target = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(5), x.shape),
                          state.params)
    batch = {k: jnp.asarray(v) for k, v in replayed_batch(agent, seed=4, b=6).items()}
    value = np.asarray(agent.bootstrap_values(target, batch))
    length, k, n = agent.sequence_length, agent.unroll_steps, agent.td_steps
    flags = [np.asarray(batch[x]) for x in ("is_first", "is_last", "is_terminal")]

    def predicted(row, j):  # the target network's value of one observation
        s = agent._apply(target, "represent", {"vector": batch["vector"][row, j][None]})
        return float(TwoHot(agent._apply(target, "predict", s)[1], agent.bins).mean()[0])

    for row in range(6):
        first, last, _ = (f[row] for f in flags)
        stops = set()
        for u in range(k + 1):  # walk each window to where it stops: its episode's end or u + n
            j = u
            while not (last[j] or (j + 1 < length and first[j + 1])) and j < u + n:
                j += 1
            stops.add(j)
            np.testing.assert_allclose(value[row, j], predicted(row, j), rtol=1e-5, atol=1e-5)
        others = [j for j in range(length) if j not in stops]
        np.testing.assert_array_equal(value[row, others], 0.0)
    # The targets read those values: z_u equals the plain loop's with them.
    t = targets_lib.unroll_targets(batch, k, n, 0.9, jnp.asarray(value))
    for row in range(6):
        first, last, terminal = (f[row] for f in flags)
        if first[1:k + 1].any() or last[:k].any():
            continue  # rows whose start's episode runs through the unroll
        for u in range(k + 1):
            z = plain_value_target(np.asarray(batch["reward"][row]), value[row], first, last,
                                   terminal, u, n, 0.9)
            np.testing.assert_allclose(t.value[row, u], z, rtol=1e-5, atol=1e-5)


def test_the_target_network_is_copied_every_target_every_updates(agent_case):
    agent, state = agent_case
    every = MuZero(agent.cfg.update({"muzero.target_every": 2}), agent.obs_space,
                   types.SimpleNamespace(discrete=True, n=3))
    batch = {k: jnp.asarray(v) for k, v in replayed_batch(agent, seed=5).items()}
    step = jax.jit(every.train_step)
    one, _, _ = step(state, batch, jax.random.key(0))
    chex.assert_trees_all_equal(one.target, state.params)   # not yet copied
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(one.params),
                                                     jax.tree.leaves(state.params)))
    two, _, _ = step(one, batch, jax.random.key(1))
    # Copied after the 2nd update (up to XLA computing the update once per output: 1 ulp).
    chex.assert_trees_all_close(two.target, two.params, rtol=1e-6, atol=1e-9)
    three, _, _ = step(two, batch, jax.random.key(2))
    chex.assert_trees_all_equal(three.target, two.target)
    with pytest.raises(ConfigError, match="muzero.target_every must be >= 1"):
        MuZero(agent.cfg.update({"muzero.target_every": 0}), agent.obs_space,
               types.SimpleNamespace(discrete=True, n=3))


def test_prioritized_replay_gets_each_sequences_value_error(agent_case):
    agent, state = agent_case
    cfg = agent.cfg.update({"replay.prioritized": True, "replay.online": False})
    prioritized = MuZero(cfg, agent.obs_space, types.SimpleNamespace(discrete=True, n=3))
    batch = {k: jnp.asarray(v) for k, v in replayed_batch(agent, seed=3).items()}
    _, (_, errors) = agent.loss(state.params, batch, agent.bootstrap_values(state.target, batch))
    _, _, updates = prioritized.train_step(state, batch, jax.random.key(0))
    assert set(updates) == {"priority"}
    np.testing.assert_allclose(updates["priority"], errors, rtol=1e-6)
    assert (errors >= 0).all()


def test_reanalyse_renews_every_kth_sequence_with_a_search_from_each_step(agent_case):
    agent, state = agent_case
    assert agent.reanalyse_every == 0
    cfg = agent.cfg.update({"muzero.reanalyse": 0.5})
    env = make_env(cfg.env, 0)
    renewing = MuZero(cfg, env.obs_space, env.act_space)
    env.close()
    batch = {k: jnp.asarray(v) for k, v in replayed_batch(agent, seed=2).items()}
    key = jax.random.key(7)
    out = renewing.reanalyse(state.params, batch, key)
    length = agent.sequence_length
    keys = row_keys(key, 4, None)
    for row in range(4):
        if row % 2:  # kept as replayed
            for name in ("search_policy", "root_value", "searched"):
                np.testing.assert_array_equal(out[name][row], batch[name][row])
            continue
        step_keys = jax.random.split(keys[row], length)
        for j in range(length):
            obs = {"vector": batch["vector"][row, j][None]}
            search = agent.search(state.params, obs, step_keys[j], 1.0)
            np.testing.assert_allclose(out["search_policy"][row, j], search.action_weights[0],
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out["root_value"][row, j],
                                       search.search_tree.summary().value[0], rtol=1e-5,
                                       atol=1e-6)
        assert (out["searched"][row] == 1).all()
    _, _, updates = jax.jit(renewing.train_step)(state, batch, key)
    assert set(updates) == {"search_policy", "root_value", "searched", "update_rows"}
    np.testing.assert_array_equal(updates["update_rows"], [True, False, True, False])
    np.testing.assert_allclose(updates["search_policy"], out["search_policy"], rtol=1e-5)
    with pytest.raises(ConfigError, match="muzero.reanalyse must be 0 or 1/k"):
        MuZero(cfg.update({"muzero.reanalyse": 0.3}), renewing.obs_space,
               types.SimpleNamespace(discrete=True, n=3))
