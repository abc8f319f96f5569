"""PETS on the shared dynamics model (`dreamer.core.dynamics`, tested in test_dynamics.py): its
train state and update are the model's, TS-inf rollouts, the policy and its config checks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents import make_agent
from dreamer.agents.pets import PETS
from dreamer.config import ConfigError, load_config
from dreamer.core import dynamics
from dreamer.envs import base

D, A = 3, 2
OBS = {"vector": base.Space(np.float32, (D,))}
ACT = base.continuous_space(A)
TINY = {"pets.members": 2, "pets.particles": 4, "pets.units": 32, "pets.layers": 2,
        "pets.candidates": 32, "pets.elites": 4, "pets.iterations": 2, "pets.horizon": 4,
        "batch_size": 8, "batch_length": 4}


def tiny(**overrides):
    return load_config(["debug", "pets"], {**TINY, **overrides})


def batch_of(seed, b=8, length=4):
    """Random replayed sequences [B, L, ...] within one episode, step ids row after row."""
    rng = np.random.default_rng(seed)
    flags = np.zeros((b, length), bool)
    return {"vector": rng.normal(size=(b, length, D)).astype(np.float32),
            "action": rng.uniform(-1, 1, (b, length, A)).astype(np.float32),
            "reward": rng.normal(size=(b, length)).astype(np.float32),
            "is_first": flags.copy(), "is_last": flags.copy(), "is_terminal": flags.copy(),
            "step_id": np.arange(b * length, dtype=np.int32).reshape(b, length)}


def test_the_train_state_is_the_models_in_the_checkpoint_layout():
    agent = PETS(tiny(), OBS, ACT)
    state = agent.init(jax.random.PRNGKey(0))
    assert isinstance(state, dynamics.ModelState)
    assert [f.name for f in dataclasses.fields(state)] == ["params", "opt_state", "step", "bootstrap", "seen"]
    assert set(state.params) == {"model", "norm"}
    assert state.seen.shape == (dynamics.slots(agent.cfg.replay.capacity),)
    want = agent.model.init(jax.random.PRNGKey(0))
    jax.tree.map(np.testing.assert_array_equal, state, want)


def test_the_update_is_the_models_and_ignores_the_step_key():
    agent = PETS(tiny(), OBS, ACT)
    state = agent.init(jax.random.PRNGKey(0))
    step = jax.jit(agent.train_step)
    batch = batch_of(1)
    a, metrics, rows = step(state, batch, jax.random.PRNGKey(2))
    b, _, _ = step(state, batch, jax.random.PRNGKey(3))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    want, want_metrics, _ = jax.jit(agent.model.train_step)(state, batch)
    jax.tree.map(np.testing.assert_array_equal, a, want)
    assert rows == {} and set(metrics) == set(want_metrics)
    with pytest.raises(ValueError, match="hold 3 steps, pets trains on 4"):
        agent.train_step(state, batch_of(1, length=3), jax.random.PRNGKey(2))


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
    with pytest.raises(ConfigError, match="'dreamer'; choose one of 'dreamerv3'") as raised:
        make_agent(tiny(agent="dreamer"), OBS, ACT)
    assert "'pets'" in str(raised.value)

