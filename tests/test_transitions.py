"""Flat transitions and one-step models (dreamer.bench.transitions): collection aligned step by step,
episode splits, the replay layout the dynamics model reads back, open-loop unrolls against a plain-Python loop,
survival-weighted returns by hand, and a planner that finds the better action of a known model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.bench import transitions
from dreamer.config import load_config
from dreamer.core import dynamics, planners
from dreamer.envs import make_env
from dreamer.envs.base import Space, TimeLimit, discrete_space, transition


class Walk:
    """A walk on the integers: the action (0 or 1) is added to the position, and the episode
    terminates on reaching `end`; rewards are the new position."""

    def __init__(self, end: int = 3):
        self.obs_space = {"vector": Space(np.float32, (1,))}
        self.act_space = discrete_space(2)
        self.end, self.pos = end, 0

    def reset(self):
        self.pos = 0
        return transition({"vector": np.array([0.0])}, is_first=True)

    def step(self, action):
        self.pos += int(action)
        return transition({"vector": np.array([self.pos])}, float(self.pos),
                          is_terminal=self.pos >= self.end)

    def close(self):
        pass


def test_collect_aligns_cartpole_transitions():
    env = make_env(load_config(["gym"]).env, 0)
    data = transitions.collect(env, 400, np.random.default_rng(0))
    n = 400
    assert data["state"].shape == data["next"].shape == (n, 4) and data["action"].shape == (n,)
    same = data["episode"][1:] == data["episode"][:-1]
    # Within an episode the next state of step t is the state of step t + 1, exactly.
    np.testing.assert_array_equal(data["next"][:-1][same], data["state"][1:][same])
    # An episode changes exactly after a step that ended it.
    np.testing.assert_array_equal(~same, data["last"][:-1])
    assert np.all(np.diff(data["episode"]) >= 0) and data["episode"][-1] >= 5
    assert np.all(data["terminal"] <= data["last"]) and np.all(data["reward"] == 1.0)
    assert set(np.unique(data["action"])) == {0, 1}
    # CartPole terminates when the pole leans past 12 degrees or the cart leaves the track.
    out = (np.abs(data["next"][:, 2]) > 0.2095) | (np.abs(data["next"][:, 0]) > 2.4)
    np.testing.assert_array_equal(out, data["terminal"])


def test_collect_keeps_truncations_apart_from_terminations():
    env = TimeLimit(Walk(end=3), 2)
    data = transitions.collect(env, 30, np.random.default_rng(1))
    for s, a, r, s2, term, last in zip(*(data[k] for k in transitions.FIELDS[:-1])):
        assert s2[0] == s[0] + a and r == s2[0]
        assert term == (s2[0] >= 3)
    assert np.any(data["last"] & ~data["terminal"])  # time limits reached before the end
    starts = np.r_[True, data["last"][:-1]]
    assert np.all(data["state"][starts] == 0.0)


def test_collect_refuses_continuous_actions():
    env = make_env(load_config(["gym"], {"env.task": "gym_Pendulum-v1"}).env, 0)
    with pytest.raises(ValueError, match="discrete actions"):
        transitions.collect(env, 10, np.random.default_rng(0))


def data_of(lengths):
    """Hand-made transitions: episodes of the given lengths, state t of an episode [t, 10 t]."""
    rows = {k: [] for k in transitions.FIELDS}
    for e, length in enumerate(lengths):
        for t in range(length):
            values = ([t, 10 * t], t % 2, 1.0, [t + 1, 10 * (t + 1)], t == length - 1,
                      t == length - 1, e)
            for k, v in zip(transitions.FIELDS, values):
                rows[k].append(v)
    types = (np.float32, np.int32, np.float32, np.float32, bool, bool, np.int32)
    return {k: np.asarray(rows[k], t) for k, t in zip(transitions.FIELDS, types)}


def test_split_holds_out_whole_episodes():
    data = data_of([3, 2, 4, 1, 2])
    train, held = transitions.split(data, 0.4)
    assert list(np.unique(train["episode"])) == [0, 1, 2] and list(np.unique(held["episode"])) == [3, 4]
    assert len(train["action"]) == 9 and len(held["action"]) == 3
    with pytest.raises(ValueError, match="collect more steps"):
        transitions.split(data, 0.05)


def test_the_dynamics_model_reads_the_sequences_back_as_the_transitions():
    data = data_of([3, 2])
    seqs = transitions.as_sequences(data, 2)
    # A replay holds episode 0 as steps 0-3 (reset and three arrivals), episode 1 as 4-6.
    np.testing.assert_array_equal(seqs["step_id"], [[0, 1], [1, 2], [2, 3], [4, 5], [5, 6]])
    x, y, term, mask = dynamics.transitions({k: jnp.asarray(v) for k, v in seqs.items()})
    onehot = np.eye(2)[data["action"]]
    np.testing.assert_array_equal(x[:, 0], np.concatenate([data["state"], onehot], -1))
    delta = data["next"] - data["state"]
    np.testing.assert_array_equal(y[:, 0], np.concatenate([delta, data["reward"][:, None]], -1))
    np.testing.assert_array_equal(term[:, 0], data["terminal"])
    np.testing.assert_array_equal(mask[:, 0], np.ones(5))  # both steps of each are one episode


def linear(s, a):
    """Known dynamics: s' = 0.9 s + a_1 - a_0 (a one-hot), reward s'_0, done sigmoid(s'_1)."""
    s_next = 0.9 * s + (a[..., 1] - a[..., 0])[..., None]
    return s_next, s_next[..., 0], jax.nn.sigmoid(s_next[..., 1])


def test_unroll_equals_a_python_loop():
    n, h, d = 3, 5, 2
    s0 = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    acts = np.eye(2, dtype=np.float32)[np.random.default_rng(1).integers(2, size=(n, h))]
    states, rewards, done = jax.jit(transitions.unroll, static_argnums=0)(linear, s0, acts)
    for i in range(n):
        s = s0[i].astype(np.float64)
        for t in range(h):
            s = 0.9 * s + acts[i, t, 1] - acts[i, t, 0]
            np.testing.assert_allclose(states[i, t], s, rtol=1e-5, atol=1e-6)
            assert rewards[i, t] == pytest.approx(s[0], rel=1e-5, abs=1e-6)
            assert done[i, t] == pytest.approx(1 / (1 + np.exp(-s[1])), rel=1e-5)


def test_survival_weighted_return_by_hand():
    rewards = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    done = jnp.array([[0.0, 0.5, 1.0, 0.0]])
    # The step that terminates keeps its reward; later ones count with the chance of no end.
    for discount, expected in [(1.0, 1 + 2 + 0.5 * 3), (0.9, 1 + 0.9 * 2 + 0.81 * 0.5 * 3)]:
        got = planners.discounted_return(rewards, discount * (1.0 - done))[0]
        assert got == pytest.approx(expected)


def greedy_or_safe(params, s, a):
    """State [1] counts the steps. Action 0 ends the episode, paying `params` on the first step
    and nothing later; action 1 pays 1 and goes on."""
    greedy = a[..., 0]
    reward = greedy * params * (s[..., 0] == 0) + (1 - greedy)
    return s + 1.0, reward, greedy


@pytest.mark.parametrize("horizon, prize, best", [(5, 3.0, 1), (5, 8.0, 0), (1, 3.0, 0)])
def test_cem_picks_the_action_with_the_better_return(horizon, prize, best):
    """Ending the episode at once for `prize` beats `horizon` safe steps of 1 only when it pays
    more; were the rewards after a predicted termination counted, it would always win."""
    def rollout(params, state, plan):
        return transitions.rollout(greedy_or_safe, params, state, plan, discount=1.0)

    plan = planners.cem(rollout, jnp.float32(prize), jnp.zeros(1), jax.random.key(0),
                        jnp.zeros((horizon, 2)), candidates=64, elites=8, iterations=3,
                        init_std=0.5)
    assert int(jnp.argmax(plan[0])) == best
    ones = jnp.ones((1, horizon, 2)).at[..., 0].set(-1.0)  # always action 1: horizon
    assert rollout(jnp.float32(prize), jnp.zeros(1), ones)[0] == pytest.approx(horizon)


def test_windows_stop_at_the_episode_end():
    data = data_of([3, 2])
    w = transitions.windows(data, 3)
    np.testing.assert_array_equal(w["mask"], [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0],
                                              [1, 0, 0]])
    np.testing.assert_array_equal(w["target"][0, :, 0], [1, 2, 3])  # s_t+1..s_t+3 of episode 0
    np.testing.assert_array_equal(w["action"][3, :2], [0, 1])
    np.testing.assert_array_equal(w["start"], data["state"])


def test_errors_are_rmse_over_the_windows_that_reach_each_step():
    target = np.zeros((2, 2, 1))
    predicted = np.array([[[3.0], [1.0]], [[4.0], [5.0]]])
    mask = np.array([[True, True], [True, False]])
    rmse, count = transitions.errors(predicted, target, mask)
    np.testing.assert_allclose(rmse[:, 0], [np.sqrt((9 + 16) / 2), 1.0])
    np.testing.assert_array_equal(count, [2, 1])


def test_run_episodes_returns_each_environments_return():
    envs = [Walk(end=2), Walk(end=4)]
    returns, last = transitions.run_episodes(envs, lambda obs: np.ones(len(obs), int))
    np.testing.assert_array_equal(returns, [1 + 2, 1 + 2 + 3 + 4])
    np.testing.assert_array_equal(last, [[2], [4]])
