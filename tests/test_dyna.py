"""Tabular Dyna-Q and prioritized sweeping (dreamer.agents.dyna) and the Dyna maze: updates
against values worked out by hand or a plain-Python loop, the model, the priority queue, the
transitions rebuilt from replayed sequences, acting, and N devices against one."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents import dyna, make_agent
from dreamer.config import ConfigError, load_config
from dreamer.core.parallel import AXIS, DataParallel
from dreamer.envs import make_env
from dreamer.envs.builtin import DynaMaze

S, A = 5, 3


def agent(name="dyna_q", **overrides):
    cfg = load_config([name], overrides)
    env = make_env(cfg.env, 0)
    return make_agent(cfg, env.obs_space, env.act_space)


def one(s, a, r, s_next, terminal=False, valid=True):
    """One transition as `learn` takes them, fields [1]."""
    return {"state": jnp.array([s]), "action": jnp.array([a]), "reward": jnp.array([r]),
            "next": jnp.array([s_next]), "terminal": jnp.array([terminal]),
            "valid": jnp.array([valid])}


# ------------------------------------------------------------------------------- updates


def test_q_learning_update_by_hand():
    q = jnp.zeros((S, A)).at[3].set(jnp.array([0.0, 2.0, 1.0])).at[0, 1].set(0.5)
    new, delta = dyna.q_update(q, 0, 1, 0.5, 3, False, lr=0.1, discount=0.9)
    # target 0.5 + 0.9 * max(0, 2, 1) = 2.3; Q(0, 1) = 0.5 + 0.1 * (2.3 - 0.5) = 0.68
    assert delta == pytest.approx(1.8)
    assert new[0, 1] == pytest.approx(0.68)
    assert jnp.array_equal(new.at[0, 1].set(0.5), q)  # nothing else changes
    new, delta = dyna.q_update(q, 0, 1, 0.5, 3, True, lr=0.1, discount=0.9)
    assert delta == pytest.approx(0.0) and new[0, 1] == pytest.approx(0.5)  # no bootstrap


def test_the_model_counts_transitions_and_averages_rewards():
    model = dyna.empty_model(S, A)
    model = dyna.model_update(model, 2, 1, 1.0, 4, True)
    model = dyna.model_update(model, 2, 1, 0.0, 3, False)
    model = dyna.model_update(model, 2, 1, 0.5, 3, False)
    model = dyna.model_update(model, 0, 0, 0.5, 1, False)
    model = dyna.model_update(model, 4, 2, 9.0, 0, False, weight=False)  # invalid: not counted
    assert model["count"][2, 1] == 3 and model["reward"][2, 1] == pytest.approx(0.5)
    cont, ended = np.zeros(S), np.zeros(S)
    cont[3], ended[4] = 2, 1
    np.testing.assert_array_equal(model["cont"][2, 1], cont)
    np.testing.assert_array_equal(model["ended"][2, 1], ended)
    assert (model["reward"][0, 0], model["cont"][0, 0, 1]) == (0.5, 1)
    assert set(zip(*np.nonzero(np.asarray(dyna.seen(model))))) == {(2, 1), (0, 0)}
    assert not np.asarray(model["cont"][4]).any() and model["reward"][4, 2] == 0


def test_a_pair_that_always_gives_the_same_reward_has_exactly_that_mean():
    model = dyna.empty_model(S, A)
    for _ in range(7):
        model = dyna.model_update(model, 1, 1, 0.1, 2, False)
    assert model["reward"][1, 1] == np.float32(0.1)  # not 0.1 * 7 / 7 rounded twice
    assert dyna.continue_probabilities(model)[1, 1, 2] == 1.0


def test_the_expected_update_by_hand():
    """Pair (0, 1) led to 3 twice (going on), to 4 once (going on) and to 2 once (terminated),
    with rewards 1, 0, 0, 2: mean 0.75, target 0.75 + 0.9 * (2/4 * 2 + 1/4 * 5 + 0) = 2.775."""
    model = dyna.empty_model(S, A)
    for r, s_next, term in [(1.0, 3, False), (0.0, 3, False), (0.0, 4, False), (2.0, 2, True)]:
        model = dyna.model_update(model, 0, 1, r, s_next, term)
    q = jnp.zeros((S, A)).at[3].set(jnp.array([0.0, 2.0, 1.0])).at[4, 0].set(5.0)
    q = q.at[2].set(jnp.array([7.0, 7.0, 7.0])).at[0, 1].set(0.5)  # no bootstrap from 2
    new, delta = dyna.expected_update(q, model, 0, 1, lr=0.1, discount=0.9)
    assert delta == pytest.approx(2.775 - 0.5)
    assert new[0, 1] == pytest.approx(0.5 + 0.1 * 2.275)
    assert jnp.array_equal(new.at[0, 1].set(0.5), q)
    targets = dyna.expected_targets(q, model["reward"], dyna.continue_probabilities(model),
                                    discount=0.9)
    assert targets[0, 1] == pytest.approx(2.775) and targets[1, 1] == 0.0


def test_the_sample_update_draws_outcomes_by_their_counts():
    model = dyna.empty_model(S, A)
    for s_next, term in [(3, False), (3, False), (4, False), (2, True)]:
        model = dyna.model_update(model, 0, 1, 1.0, s_next, term)
    q = jnp.zeros((S, A)).at[3, 0].set(10.0).at[4, 0].set(20.0).at[2, 0].set(1000.0)
    update = jax.jit(jax.vmap(lambda k: dyna.sample_update(q, model, 0, 1, k, lr=1.0,
                                                           discount=1.0)[0][0, 1]))
    values = np.asarray(update(jax.random.split(jax.random.key(0), 8000)))
    outcomes = collections.Counter(values.tolist())  # 1 + 10, 1 + 20, or 1 (terminated at 2)
    assert set(outcomes) == {11.0, 21.0, 1.0}
    np.testing.assert_allclose([outcomes[v] / 8000 for v in (11.0, 21.0, 1.0)],
                               [0.5, 0.25, 0.25], atol=0.02)


@pytest.mark.parametrize("backup", ["sample", "expected"])
@pytest.mark.parametrize("terminal", [False, True])
def test_a_planning_update_equals_a_real_update_on_the_only_transition(backup, terminal):
    """A deterministic world: both backups are the update on the last transition, bit for bit."""
    q = jax.random.normal(jax.random.key(0), (S, A))
    model = dyna.empty_model(S, A)
    for _ in range(3):
        model = dyna.model_update(model, 1, 2, 0.7, 4, terminal)
    planned = dyna.plan_uniform(q, model, jax.random.key(1), steps=1, lr=0.1, discount=0.9,
                                backup=backup)
    real, _ = dyna.q_update(q, 1, 2, 0.7, 4, terminal, lr=0.1, discount=0.9)
    np.testing.assert_array_equal(planned, real)


def test_on_a_deterministic_world_both_backups_learn_the_same_bits():
    """Random transitions of a deterministic world (one next state and reward per pair):
    Dyna-Q's two backups draw the same pairs and give the same tables, exactly."""
    rng = np.random.default_rng(0)
    next_of, reward_of = rng.integers(0, 54, (54, 4)), rng.normal(size=(54, 4)).astype(np.float32)
    k = 200
    s, a = rng.integers(0, 54, k), rng.integers(0, 4, k)
    trans = {"state": s, "action": a, "reward": reward_of[s, a], "next": next_of[s, a],
             "terminal": next_of[s, a] == 0, "valid": rng.random(k) < 0.9}
    trans = jax.tree.map(jnp.asarray, trans)
    tables = []
    for backup in ("sample", "expected"):
        made = agent(**{"dyna.planning_steps": 10, "dyna.backup": backup})
        state, _ = jax.jit(made.learn)(made.init(jax.random.key(0)), trans, jax.random.key(1))
        tables.append(np.asarray(state.params["q"]))
    np.testing.assert_array_equal(*tables)
    assert tables[0].any()


def plain_expected_dyna(trans, pairs, states, actions, lr, discount):
    """Dyna-Q with expected planning updates in plain Python: after each valid transition a
    Q-learning update, the counts, then an expected update on each of the given pairs."""
    q = np.zeros((states, actions))
    visits = collections.defaultdict(collections.Counter)  # (s, a) -> Counter of (s', term)
    reward_sum = collections.defaultdict(float)
    for t, (s, a, r, s2, term, valid) in enumerate(zip(*(np.asarray(trans[k]) for k in (
            "state", "action", "reward", "next", "terminal", "valid")))):
        if not valid:
            continue
        q[s, a] += lr * (r + (0.0 if term else discount * q[s2].max()) - q[s, a])
        visits[s, a][s2, bool(term)] += 1
        reward_sum[s, a] += r
        for pair in pairs[t]:
            ps, pa = divmod(int(pair), actions)
            n = sum(visits[ps, pa].values())
            target = reward_sum[ps, pa] / n + discount * sum(
                c / n * q[x].max() for (x, ended), c in visits[ps, pa].items() if not ended)
            q[ps, pa] += lr * (target - q[ps, pa])
    return q


def test_expected_planning_on_a_stochastic_world_against_a_plain_loop():
    made = agent(**{"dyna.planning_steps": 3, "dyna.backup": "expected"})
    rng = np.random.default_rng(1)
    k, states = 120, 6  # few states: pairs are visited often and lead to several states
    trans = {"state": rng.integers(0, states, k), "action": rng.integers(0, 2, k),
             "reward": rng.normal(size=k).astype(np.float32),
             "next": rng.integers(0, states, k), "terminal": rng.random(k) < 0.2,
             "valid": rng.random(k) < 0.9}
    key = jax.random.key(1)
    new, _ = jax.jit(made.learn)(made.init(jax.random.key(0)), jax.tree.map(jnp.asarray, trans),
                                 key)
    # The pairs the agent drew: its own draws over the model as it stood after each step.
    pairs, model = [], dyna.empty_model(54, 4)
    for i in range(k):
        t = {name: trans[name][i] for name in trans}
        model = dyna.model_update(model, t["state"], t["action"], t["reward"], t["next"],
                                  t["terminal"], weight=t["valid"])
        pairs.append(np.asarray(dyna.draw_seen(dyna.seen(model), jax.random.fold_in(key, i), 3)))
    expected = plain_expected_dyna(trans, pairs, 54, 4, 0.1, 0.95)
    np.testing.assert_allclose(new.params["q"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new.model["count"], model["count"])


def test_planning_draws_only_seen_pairs_and_all_of_them():
    model = dyna.empty_model(S, A)
    for s, a in [(0, 0), (1, 2), (4, 1)]:
        model = dyna.model_update(model, s, a, 1.0, 0, True)
    q = dyna.plan_uniform(jnp.zeros((S, A)), model, jax.random.key(0), steps=60, lr=0.1,
                          discount=0.9)
    assert set(zip(*np.nonzero(np.asarray(q)))) == {(0, 0), (1, 2), (4, 1)}


def test_draws_are_uniform_over_the_seen_pairs():
    seen = np.zeros((S, A), bool)
    marked = [(0, 2), (1, 0), (3, 1), (4, 2)]
    for s, a in marked:
        seen[s, a] = True
    draws = np.asarray(dyna.draw_seen(jnp.asarray(seen), jax.random.key(0), 8000))
    counts = collections.Counter(draws.tolist())
    assert set(counts) == {s * A + a for s, a in marked}
    np.testing.assert_allclose([counts[s * A + a] / 8000 for s, a in marked], 0.25, atol=0.02)
    only = np.zeros((S, A), bool)
    only[S - 1, A - 1] = True  # the last pair: the bisection's upper end
    assert (np.asarray(dyna.draw_seen(jnp.asarray(only), jax.random.key(1), 50))
            == S * A - 1).all()


def plain_q_learning(trans, states, actions, lr, discount):
    """Q-learning over transitions in a plain Python loop: the reference for n = 0."""
    q = np.zeros((states, actions))
    for s, a, r, s2, term, valid in zip(*(np.asarray(trans[k]) for k in (
            "state", "action", "reward", "next", "terminal", "valid"))):
        if valid:
            target = r + (0.0 if term else discount * q[s2].max())
            q[s, a] += lr * (target - q[s, a])
    return q


def test_no_planning_is_q_learning():
    made = agent(**{"dyna.planning_steps": 0})
    rng = np.random.default_rng(0)
    k = 300
    trans = {"state": rng.integers(0, 54, k), "action": rng.integers(0, 4, k),
             "reward": rng.normal(size=k).astype(np.float32), "next": rng.integers(0, 54, k),
             "terminal": rng.random(k) < 0.1, "valid": rng.random(k) < 0.9}
    state, metrics = jax.jit(made.learn)(made.init(jax.random.key(0)),
                                         jax.tree.map(jnp.asarray, trans), jax.random.key(1))
    np.testing.assert_allclose(state.params["q"], plain_q_learning(trans, 54, 4, 0.1, 0.95),
                               rtol=1e-5, atol=1e-6)
    assert metrics["transitions"] == trans["valid"].sum()


# ------------------------------------------------------------------------------- queue


def test_the_queue_pops_the_largest_priority_first_and_keeps_the_larger_on_a_repeat():
    priority = jnp.zeros((S, A))
    priority = dyna.push(priority, 1, 1, jnp.float32(0.3), theta=0.1)
    priority = dyna.push(priority, 2, 0, jnp.float32(0.9), theta=0.1)
    priority = dyna.push(priority, 3, 2, jnp.float32(0.05), theta=0.1)  # not above theta
    priority = dyna.push(priority, 1, 1, jnp.float32(0.2), theta=0.1)   # keeps 0.3
    popped = []
    for _ in range(3):
        s, a, queued, priority = dyna.pop(priority)
        popped.append((int(s), int(a), bool(queued)))
    assert popped[:2] == [(2, 0, True), (1, 1, True)]
    assert not popped[2][2]  # empty


def test_predecessors_are_pushed_with_their_td_error():
    model = dyna.empty_model(S, A)
    model = dyna.model_update(model, 0, 1, 0.0, 2, False)
    model = dyna.model_update(model, 1, 0, 0.5, 2, False)
    model = dyna.model_update(model, 3, 2, 1.0, 4, False)  # leads elsewhere
    q = jnp.zeros((S, A)).at[2, 2].set(1.0).at[1, 0].set(0.2)
    priority = dyna.push_predecessors(jnp.zeros((S, A)), q, model, 2, discount=0.9, theta=0.0)
    expected = np.zeros((S, A))
    expected[0, 1] = 0.9          # |0 + 0.9 * 1 - 0|
    expected[1, 0] = 0.5 + 0.9 - 0.2
    np.testing.assert_allclose(priority, expected, rtol=1e-6)


def test_predecessors_of_a_stochastic_world_are_pushed_with_their_expected_td_error():
    """Pair (0, 1) led to 2 once and to 3 once: it precedes both, with the expected error
    |0.5 * 0.9 * max Q(2) + 0.5 * 0.9 * max Q(3) - Q(0, 1)| = |0.45 + 1.35 - 0.3|."""
    model = dyna.empty_model(S, A)
    model = dyna.model_update(model, 0, 1, 0.0, 2, False)
    model = dyna.model_update(model, 0, 1, 0.0, 3, False)
    q = jnp.zeros((S, A)).at[2, 2].set(1.0).at[3, 0].set(3.0).at[0, 1].set(0.3)
    for s in (2, 3):
        priority = dyna.push_predecessors(jnp.zeros((S, A)), q, model, s, discount=0.9,
                                          theta=0.0)
        expected = np.zeros((S, A))
        expected[0, 1] = 0.45 + 1.35 - 0.3
        np.testing.assert_allclose(priority, expected, rtol=1e-6)
    assert not np.asarray(dyna.push_predecessors(jnp.zeros((S, A)), q, model, 4, discount=0.9,
                                                 theta=0.0)).any()


def plain_prioritized_sweeping(trans, states, actions, n, lr, discount, theta):
    """Prioritized sweeping with expected updates in plain Python (Sec. 8.4 with counts): after
    each valid transition count it, queue the pair by |expected TD error| above theta, then up
    to n pops of the largest priority (ties: the lowest flat index), each an expected update
    followed by queueing the predecessors of the popped pair's state."""
    q = np.zeros((states, actions))
    visits = collections.defaultdict(collections.Counter)
    reward_sum = collections.defaultdict(float)
    queue = {}

    def error(s, a):
        count = sum(visits[s, a].values())
        target = reward_sum[s, a] / count + discount * sum(
            c / count * q[x].max() for (x, ended), c in visits[s, a].items() if not ended)
        return target - q[s, a]

    def enqueue(s, a, p):
        if p > theta:
            queue[s, a] = max(queue.get((s, a), 0.0), p)

    for s, a, r, s2, term, valid in zip(*(np.asarray(trans[k]) for k in (
            "state", "action", "reward", "next", "terminal", "valid"))):
        if not valid:
            continue
        visits[s, a][s2, bool(term)] += 1
        reward_sum[s, a] += r
        enqueue(s, a, abs(error(s, a)))
        for _ in range(n):
            if not queue:
                break
            ps, pa = max(queue, key=lambda pair: (queue[pair], -(pair[0] * actions + pair[1])))
            del queue[ps, pa]
            q[ps, pa] += lr * error(ps, pa)
            for (bs, ba), outcomes in list(visits.items()):
                if any(x == ps for x, _ in outcomes):
                    enqueue(bs, ba, abs(error(bs, ba)))
    return q


def test_prioritized_sweeping_on_a_stochastic_world_against_a_plain_loop():
    made = agent("prioritized_sweeping", **{"dyna.planning_steps": 4, "dyna.theta": 1e-3})
    rng = np.random.default_rng(2)
    k, states = 80, 5
    trans = {"state": rng.integers(0, states, k), "action": rng.integers(0, 2, k),
             "reward": rng.integers(0, 3, k).astype(np.float32) / 2,
             "next": rng.integers(0, states, k), "terminal": rng.random(k) < 0.2,
             "valid": rng.random(k) < 0.9}
    new, _ = jax.jit(made.learn)(made.init(jax.random.key(0)),
                                 jax.tree.map(jnp.asarray, trans), jax.random.key(1))
    expected = plain_prioritized_sweeping(trans, 54, 4, 4, 0.1, 0.95, 1e-3)
    np.testing.assert_allclose(new.params["q"], expected, rtol=1e-4, atol=1e-6)
    assert expected.any()


def test_sweeping_carries_the_goal_back_along_a_chain():
    """A chain 0 -> 1 -> 2 -> goal (terminal, reward 1), all known to the model: after the last
    pair is queued, three sweeps with step size 1 give Q = 1, gamma and gamma^2 along it."""
    model = dyna.empty_model(S, A)
    for s in range(3):
        model = dyna.model_update(model, s, 0, float(s == 2), s + 1, s == 2)
    priority = dyna.push(jnp.zeros((S, A)), 2, 0, jnp.float32(1.0), theta=1e-4)
    q, priority = dyna.plan_prioritized(jnp.zeros((S, A)), model, priority, steps=5, lr=1.0,
                                        discount=0.9, theta=1e-4)
    np.testing.assert_allclose(q[:3, 0], [0.81, 0.9, 1.0], rtol=1e-6)
    assert not np.asarray(priority).any()  # the queue ran empty before the 5 steps


def test_prioritized_sweeping_learns_only_by_planning():
    with pytest.raises(ConfigError, match="planning_steps must be at least 1"):
        agent("prioritized_sweeping", **{"dyna.planning_steps": 0})
    made = agent("prioritized_sweeping", **{"dyna.planning_steps": 1})
    state, _ = made.learn(made.init(jax.random.key(0)), one(7, 3, 1.0, 8, True),
                          jax.random.key(0))
    assert state.params["q"][7, 3] == pytest.approx(0.1)  # the real pair, popped once


# ------------------------------------------------------------------------------- the agent


def test_transitions_of_replayed_sequences():
    eye = np.eye(6, dtype=np.float32)
    batch = {"vector": eye[[[0, 1], [4, 5]]], "action": np.eye(4, dtype=np.float32)[[[2, 3],
                                                                                    [0, 1]]],
             "reward": np.array([[0.0, 1.0], [0.5, 0.0]], np.float32),
             "is_first": np.array([[False, False], [False, True]]),
             "is_terminal": np.array([[False, True], [False, False]]),
             "prev_state": np.array([[3, 0], [-1, 4]], np.int32),
             "prev_action": np.array([[1, 2], [-1, 0]], np.int32)}
    t = jax.tree.map(np.asarray, dyna.transitions(jax.tree.map(jnp.asarray, batch)))
    np.testing.assert_array_equal(t["state"], [3, 0, -1, 4])
    np.testing.assert_array_equal(t["action"], [1, 2, -1, 0])
    np.testing.assert_array_equal(t["next"], [0, 1, 4, 5])
    np.testing.assert_array_equal(t["reward"], [0.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(t["terminal"], [False, True, False, False])
    # no previous step stored; and a step into a new episode
    np.testing.assert_array_equal(t["valid"], [True, True, False, False])


def test_the_policy_is_epsilon_greedy_with_random_ties():
    made = agent(**{"dyna.epsilon": 0.5})
    q = jnp.zeros((54, 4)).at[9].set(jnp.array([1.0, 1.0, 0.0, 0.0]))
    obs = {"vector": jnp.eye(54)[jnp.full(2000, 9)], "is_first": jnp.zeros(2000, bool)}
    policy = jax.jit(made.policy, static_argnames="mode")
    carry = made.policy_initial(2000)
    _, greedy, _ = policy({"q": q}, carry, obs, jax.random.key(0), mode="mode")
    counts = np.asarray(greedy).sum(0)
    assert counts[2:].sum() == 0 and min(counts[:2]) > 900
    carry, sampled, outputs = policy({"q": q}, carry, obs, jax.random.key(1))
    counts = np.asarray(sampled).sum(0) / 2000  # 1/2 greedy (split in two) + 1/2 uniform
    np.testing.assert_allclose(counts, [0.375, 0.375, 0.125, 0.125], atol=0.04)
    assert (np.asarray(outputs["prev_state"]) == -1).all()
    _, _, outputs = policy({"q": q}, carry, obs, jax.random.key(2))
    assert (np.asarray(outputs["prev_state"]) == 9).all()
    np.testing.assert_array_equal(outputs["prev_action"], np.argmax(sampled, -1))


def test_eval_is_greedy_while_sample_explores():
    """With ε = 1 'sample' is uniform; 'eval' stays greedy, ties broken at random as in 'mode'."""
    made = agent(**{"dyna.epsilon": 1.0})
    q = jnp.zeros((54, 4)).at[9].set(jnp.array([1.0, 1.0, 0.0, 0.0]))
    obs = {"vector": jnp.eye(54)[jnp.full(2000, 9)], "is_first": jnp.zeros(2000, bool)}
    policy = jax.jit(made.policy, static_argnames="mode")
    carry = made.policy_initial(2000)
    share = {mode: np.asarray(policy({"q": q}, carry, obs, jax.random.key(0), mode=mode)[1])
             .mean(0) for mode in ("sample", "eval", "mode")}
    np.testing.assert_allclose(share["sample"], [0.25] * 4, atol=0.04)
    for mode in ("eval", "mode"):
        assert share[mode][2:].sum() == 0 and min(share[mode][:2]) > 0.45, mode


@pytest.mark.parametrize("name", ["dyna_q", "prioritized_sweeping"])
def test_two_devices_equal_one_holding_the_whole_batch(name):
    made = agent(name)
    rng = np.random.default_rng(0)
    b = 4
    eye = np.eye(54, dtype=np.float32)
    batch = {"vector": eye[rng.integers(0, 54, (b, 2))],
             "action": np.eye(4, dtype=np.float32)[rng.integers(0, 4, (b, 2))],
             "reward": rng.random((b, 2)).astype(np.float32),
             "is_first": np.zeros((b, 2), bool), "is_last": np.zeros((b, 2), bool),
             "is_terminal": rng.random((b, 2)) < 0.2,
             "prev_state": rng.integers(0, 54, (b, 2)).astype(np.int32),
             "prev_action": rng.integers(0, 4, (b, 2)).astype(np.int32)}
    state = made.init(jax.random.key(0))
    key = jax.random.key(3)
    single, _, _ = jax.jit(made.train_step)(state, batch, key)
    cfg, space = made.cfg, make_env(made.cfg.env, 0)
    parallel_agent = make_agent(cfg, space.obs_space, space.act_space, axis_name=AXIS)
    parallel = DataParallel(parallel_agent.train_step, jax.devices()[:2], donate=False)
    replicated, _, _ = parallel(parallel.replicate(state), parallel.shard(batch), key)
    parallel.assert_replicas_equal(replicated)
    jax.tree.map(np.testing.assert_array_equal, parallel.unreplicate(replicated),
                 jax.device_get(single))
    assert np.asarray(single.params["q"]).any()


# ------------------------------------------------------------------------------- the maze


def test_maze_layout():
    env = DynaMaze(0)
    first = env.reset()
    assert env.obs_space["vector"].shape == (54,) and env.act_space.n == 4
    assert np.argmax(first["vector"]) == 2 * 9 + 0 and first["is_first"]
    up, _, left, right = range(4)
    assert np.argmax(env.step(right)["vector"]) == 2 * 9 + 1
    assert np.argmax(env.step(right)["vector"]) == 2 * 9 + 1  # (2, 2) is a wall
    env.reset()
    assert np.argmax(env.step(left)["vector"]) == 2 * 9 + 0   # off the grid: stays
    for cell in DynaMaze.WALLS:
        for move, (dr, dc) in enumerate(DynaMaze.MOVES):
            env._cell = (cell[0] - dr, cell[1] - dc)
            if 0 <= env._cell[0] < 6 and 0 <= env._cell[1] < 9 and env._cell not in env.WALLS:
                out = env.step(move)
                assert np.argmax(out["vector"]) == env._cell[0] * 9 + env._cell[1] != (
                    cell[0] * 9 + cell[1])
    env._cell = (1, 8)
    out = env.step(up)
    assert out["reward"] == 1.0 and out["is_terminal"] and out["is_last"]
    assert np.argmax(env.reset()["vector"]) == 18


def test_maze_walls_are_the_books_and_the_shortest_path_takes_14_steps():
    walls = {(1, 2), (2, 2), (3, 2), (4, 5), (0, 7), (1, 7), (2, 7)}
    assert set(DynaMaze.WALLS) == walls
    assert (DynaMaze.START, DynaMaze.GOAL) == ((2, 0), (0, 8))
    env = DynaMaze(0)
    distance = {DynaMaze.START: 0}
    frontier = collections.deque([DynaMaze.START])
    rewards = []
    while frontier:
        cell = frontier.popleft()
        for move in range(4):
            env._cell = cell
            out = env.step(move)
            rewards.append((out["reward"], env._cell == DynaMaze.GOAL))
            if env._cell not in distance:
                distance[env._cell] = distance[cell] + 1
                frontier.append(env._cell)
    assert distance[DynaMaze.GOAL] == 14
    assert len(distance) == 54 - len(walls)
    assert all(r == float(goal) for r, goal in rewards)


def test_the_agents_need_discrete_states_and_actions():
    with pytest.raises(ConfigError, match="one-hot state vector"):
        agent(**{"env.obs": "image"})
