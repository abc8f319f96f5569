"""PETS: transitions from replayed sequences, running normalisers, bootstraps fixed per
transition and member, training that is device-count invariant, a model that learns known
dynamics, TS-inf rollouts and the policy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents import make_agent, pets
from dreamer.agents.pets import PETS
from dreamer.config import ConfigError, load_config
from dreamer.envs import base
from dreamer.parallel import AXIS, DataParallel

D, A = 3, 2
OBS = {"vector": base.Space(np.float32, (D,))}
ACT = base.continuous_space(A)
TINY = {"pets.members": 2, "pets.particles": 4, "pets.units": 32, "pets.layers": 2,
        "pets.candidates": 32, "pets.elites": 4, "pets.iterations": 2, "pets.horizon": 4,
        "batch_size": 8, "batch_length": 4}


def tiny(**overrides):
    return load_config(["debug", "pets"], {**TINY, **overrides})


def batch_of(key, b=8, length=4, dynamics=None, first=0):
    """Sequences in the replay's layout: obs s_t, action a_t chosen after it, reward r_t on
    arriving at s_t; with `dynamics`, s_t+1, r_t+1 = dynamics(s_t, a_t). The step ids number
    the steps row after row from `first`."""
    k1, k2 = jax.random.split(key)
    actions = np.asarray(jax.random.uniform(k1, (b, length, A), minval=-1, maxval=1))
    obs = np.zeros((b, length, D), np.float32)
    reward = np.zeros((b, length), np.float32)
    obs[:, 0] = np.asarray(jax.random.normal(k2, (b, D)))
    for t in range(1, length):
        if dynamics is None:
            obs[:, t], reward[:, t] = obs[:, t - 1] + 1.0, t
        else:
            obs[:, t], reward[:, t] = dynamics(obs[:, t - 1], actions[:, t - 1])
    flags = np.zeros((b, length), bool)
    ids = np.arange(first, first + b * length, dtype=np.int32).reshape(b, length)
    return {"vector": obs, "action": actions.astype(np.float32), "reward": reward,
            "is_first": flags.copy(), "is_last": flags.copy(), "is_terminal": flags.copy(),
            "step_id": ids}


def linear(s, a):
    """s' = s + 0.2 [a, a0]; r' = s . (1, -0.5, 0.25) + a0."""
    move = np.concatenate([a, a[:, :1]], -1)
    return s + 0.2 * move, s @ np.array([1.0, -0.5, 0.25], np.float32) + a[:, 0]


def test_transitions_mask_pairs_across_an_episode_boundary():
    batch = batch_of(jax.random.PRNGKey(0), b=2, length=4)
    batch["is_last"][0, 1] = True  # step 2 of row 0 starts a new episode
    batch["is_terminal"][1, 2] = True
    x, y, term, mask = pets.transitions(batch)
    assert x.shape == (2, 3, D + A) and y.shape == (2, 3, D + 1)
    np.testing.assert_array_equal(mask, [[1, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(term, [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(x[0, 1], np.concatenate([batch["vector"][0, 1],
                                                         batch["action"][0, 1]]))
    np.testing.assert_allclose(y[1, 2], [1.0, 1.0, 1.0, 3.0])  # Δs = 1, r_3 = 3


def test_running_moments_equal_the_moments_of_every_transition_seen():
    agent = PETS(tiny(), OBS, ACT)
    norm = agent.init(jax.random.PRNGKey(0)).params["norm"]
    xs, ys = [], []
    for i in range(3):
        batch = batch_of(jax.random.PRNGKey(i), dynamics=linear)
        batch["is_last"][i, 1] = True  # one masked pair per batch
        x, y, _, mask = pets.transitions(batch)
        norm = pets.update_norm(norm, x, y, mask)
        keep = np.asarray(mask, bool)
        xs.append(np.asarray(x)[keep])
        ys.append(np.asarray(y)[keep])
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert float(norm["count"]) == len(x)
    np.testing.assert_allclose(norm["in_mean"], x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm["in_var"], x.var(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(norm["out_mean"], y.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm["out_var"], y.var(0), rtol=1e-4, atol=1e-6)


def test_two_devices_compute_the_update_of_one_device_on_the_whole_batch():
    cfg = tiny()
    single, multi = PETS(cfg, OBS, ACT), PETS(cfg, OBS, ACT, axis_name=AXIS)
    state = single.init(jax.random.PRNGKey(0))
    batch = batch_of(jax.random.PRNGKey(1), dynamics=linear)
    batch["is_last"][3, 0] = True
    key = jax.random.PRNGKey(2)
    want, metrics, _ = jax.jit(single.train_step)(state, batch, key)
    par = DataParallel(multi.train_step, jax.devices()[:2], "pmap", donate=False)
    got, par_metrics, _ = par(par.replicate(state), par.shard(batch), key)
    got = par.unreplicate(got)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for name in ("loss/nll", "loss/termination", "loss/mse"):
        np.testing.assert_allclose(metrics[name], par_metrics[name], rtol=1e-5)
    assert float(metrics["nonfinite"]) == 0.0


def test_bootstrap_weights_are_fixed_per_transition_and_independent_between_members():
    key = jax.random.PRNGKey(0)
    ids = np.arange(4000, dtype=np.int32).reshape(1000, 4)
    w = np.asarray(pets.bootstrap_weights(key, ids, members=4))
    assert w.shape == (4, 1000, 4)
    # The same transitions in another batch, in another order and layout: the same weights.
    order = np.random.default_rng(0).permutation(4000)
    again = np.asarray(pets.bootstrap_weights(key, ids.reshape(-1)[order].reshape(500, 8), 4))
    np.testing.assert_array_equal(again.reshape(4, -1), w.reshape(4, -1)[:, order])
    flat = w.reshape(4, -1)
    np.testing.assert_allclose(flat.mean(1), 1.0, atol=0.06)  # Poisson(1) for each member
    np.testing.assert_allclose(flat.var(1), 1.0, atol=0.12)
    corr = np.corrcoef(flat)[np.triu_indices(4, 1)]
    assert np.abs(corr).max() < 0.1, corr  # independent resamples (std of corr ~ 0.016)
    other = np.asarray(pets.bootstrap_weights(jax.random.PRNGKey(1), ids, members=4))
    assert abs(np.corrcoef(other.reshape(-1), w.reshape(-1))[0, 1]) < 0.1


def test_the_update_keeps_the_run_key_and_ignores_the_step_key():
    agent = PETS(tiny(), OBS, ACT)
    state = agent.init(jax.random.PRNGKey(0))
    other = agent.init(jax.random.PRNGKey(1))
    assert not np.array_equal(state.bootstrap, other.bootstrap)
    step = jax.jit(agent.train_step)
    batch = batch_of(jax.random.PRNGKey(1), dynamics=linear)
    a, _, _ = step(state, batch, jax.random.PRNGKey(2))
    b, _, _ = step(state, batch, jax.random.PRNGKey(3))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(a.bootstrap, state.bootstrap)
    # Another run key draws other bootstraps: the members train otherwise.
    c, _, _ = step(state.replace(bootstrap=other.bootstrap), batch, jax.random.PRNGKey(2))
    assert not np.allclose(c.params["model"]["Dense_0"]["kernel"],
                           a.params["model"]["Dense_0"]["kernel"])


def test_the_ensemble_learns_known_dynamics():
    cfg = tiny(**{"pets.lr": 3e-3, "batch_size": 32})
    agent = PETS(cfg, OBS, ACT)
    state = agent.init(jax.random.PRNGKey(0))
    step = jax.jit(agent.train_step)
    for i in range(300):
        state, metrics, _ = step(state, batch_of(jax.random.PRNGKey(i), 32, 4, linear,
                                                 first=i * 32 * 4),
                                 jax.random.PRNGKey(10_000 + i))
    test = batch_of(jax.random.PRNGKey(99_999), 64, 2, linear)
    s, a = test["vector"][:, 0], test["action"][:, 0]
    rows = lambda v: jnp.broadcast_to(v, (2, *v.shape))
    next_s, reward, done = agent.predict(state.params, rows(s), rows(a))
    want_s, want_r = linear(s, a)
    # Bounds with room for the spread over initialisations and bootstraps (over 5 init seeds:
    # mean state error <= 0.012, worst of the 384 outputs 0.02 to 0.12, reward error <= 10%
    # of the reward, no-termination probability >= 0.93).
    error = np.abs(next_s - want_s)
    assert float(error.mean()) < 0.015 and float(error.max()) < 0.15
    assert float(np.abs(reward - want_r).mean()) < 0.12 * float(np.abs(want_r).mean())
    assert float(done.max()) < 0.1
    assert float(metrics["loss/nll"]) < -1.0  # confident where it is right


def constant_model(agent, rewards, term_logit):
    """Params whose member k predicts no state change, reward rewards[k] and termination
    probability sigmoid(term_logit), with negligible variance, under identity normalisers."""
    state = agent.init(jax.random.PRNGKey(0))
    model = jax.tree.map(jnp.zeros_like, state.params["model"])
    out = [k for k in model if k.startswith("Dense")][-1]
    bias = np.zeros((agent.cfg.pets.members, 2 * (D + 1) + 1), np.float32)
    bias[:, D] = rewards
    bias[:, D + 1:2 * (D + 1)] = -30.0  # log-variance at its lower bound
    bias[:, -1] = term_logit
    model[out]["bias"] = jnp.asarray(bias)
    model["min_logvar"] = jnp.full_like(model["min_logvar"], -20.0)
    model["max_logvar"] = jnp.full_like(model["max_logvar"], 0.0)
    return {"model": model, "norm": state.params["norm"]}


def test_rollout_averages_particles_over_members_and_weights_by_termination():
    agent = PETS(tiny(**{"pets.members": 2, "pets.particles": 4, "pets.horizon": 5}), OBS, ACT)
    actions = jnp.zeros((3, 5, A))
    state = {"obs": jnp.zeros(D), "key": jax.random.PRNGKey(0)}
    params = constant_model(agent, [1.0, 3.0], -30.0)
    np.testing.assert_allclose(agent.rollout(params, state, actions), [10.0] * 3, rtol=1e-3)
    # Termination probability 1/2 per step: sum_h 0.5^h * 2 over 5 steps.
    params = constant_model(agent, [2.0, 2.0], 0.0)
    expected = sum(0.5 ** h * 2.0 for h in range(5))
    np.testing.assert_allclose(agent.rollout(params, state, actions), [expected] * 3, rtol=1e-3)


@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_policy_plans_warm_starts_and_resets(planner):
    agent = PETS(tiny(**{"pets.planner": planner}), OBS, ACT)
    params = agent.init(jax.random.PRNGKey(0)).params
    carry = agent.policy_initial(3)
    obs = {"vector": np.zeros((3, D), np.float32), "is_first": np.array([True, False, True])}
    policy = jax.jit(agent.policy)
    carry, action, outputs = policy(params, carry, obs, jax.random.PRNGKey(1))
    assert carry.shape == (3, 4, A) and action.shape == (3, A) and outputs == {}
    assert float(jnp.abs(action).max()) <= 1.0
    np.testing.assert_array_equal(carry[:, -1], 0.0)  # the shifted plan ends in zeros
    obs["is_first"] = np.array([True, False, False])
    _, again, _ = policy(params, carry + 5.0, obs, jax.random.PRNGKey(1))
    assert not np.allclose(again[0], again[1])  # env 0 restarts its search, env 1 warm-starts


def test_discrete_actions_are_one_hot():
    agent = PETS(tiny(), OBS, base.discrete_space(3))
    params = agent.init(jax.random.PRNGKey(0)).params
    obs = {"vector": np.zeros((2, D), np.float32), "is_first": np.ones(2, bool)}
    _, action, _ = jax.jit(agent.policy)(params, agent.policy_initial(2), obs,
                                         jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.sort(action, -1), [[0, 0, 1], [0, 0, 1]])


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="env.obs=vector"):
        PETS(tiny(), {"image": base.Space(np.uint8, (16, 16, 3))}, ACT)
    with pytest.raises(ConfigError, match="multiple of pets.members"):
        PETS(tiny(**{"pets.particles": 3}), OBS, ACT)
    with pytest.raises(ConfigError, match="'cem', 'mppi'"):
        PETS(tiny(**{"pets.planner": "random"}), OBS, ACT)
    with pytest.raises(ConfigError, match="'dreamerv3', 'pets'"):
        make_agent(tiny(agent="dreamer"), OBS, ACT)
