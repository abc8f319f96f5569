"""MBPO's train step: the rollout-length schedule against the official formula, the real/model
mix of SAC's minibatches, elites chosen by held-out error, the model warm-up, SAC alone, and two
devices against one; no env loop (tests/test_agents.py and test_resume.py run that)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents import make_agent
from dreamer.agents.mbpo import mix, real_rows, rollout_length, transitions
from dreamer.config import ConfigError, load_config
from dreamer.core.parallel import AXIS, DataParallel
from dreamer.envs.base import Space, continuous_space, discrete_space

D, A = 3, 2
TINY = {"mbpo.members": 3, "mbpo.elites": 2, "mbpo.units": 16, "mbpo.layers": 1,
        "mbpo.sac_units": 16, "mbpo.sac_layers": 1, "mbpo.rollouts": 8, "mbpo.retain": 4,
        "mbpo.updates": 3, "mbpo.sac_batch": 20, "mbpo.real_ratio": 0.1,
        "mbpo.model_warmup": 0, "mbpo.holdout": 0.25, "batch_size": 16, "batch_length": 2,
        "replay.capacity": 1000, "run.prefill": 0, "run.train_ratio": 16}


def agent_of(axis_name=None, **overrides):
    cfg = load_config(["mbpo"], {**TINY, **overrides})
    return make_agent(cfg, {"vector": continuous_space(D)}, continuous_space(A),
                      axis_name=axis_name)


def batch_of(seed, b=16, first=0):
    """[B, 2] sequences of s' = 0.9 s + 0.1 a (padded), r = s[0], each in one episode."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(b, 2, D)).astype(np.float32)
    act = rng.uniform(-1, 1, (b, 2, A)).astype(np.float32)
    obs[:, 1] = 0.9 * obs[:, 0] + 0.1 * np.concatenate([act[:, 0], act[:, 0, :1]], -1)
    reward = np.stack([np.zeros(b), obs[:, 0, 0]], 1).astype(np.float32)
    flags = np.zeros((b, 2), bool)
    return {"vector": obs, "action": act, "reward": reward, "is_first": flags.copy(),
            "is_last": flags.copy(), "is_terminal": flags.copy(),
            "step_id": np.arange(first, first + 2 * b, dtype=np.int32).reshape(b, 2)}


def official_length(schedule, epoch):
    """jannerm/mbpo's MBPO._set_rollout_length, as written there."""
    min_epoch, max_epoch, min_length, max_length = schedule
    if epoch <= min_epoch:
        y = min_length
    else:
        dx = (epoch - min_epoch) / (max_epoch - min_epoch)
        dx = min(dx, 1)
        y = dx * (max_length - min_length) + min_length
    return int(y)


@pytest.mark.parametrize("schedule", [(20, 150, 1, 15), (20, 100, 1, 15), (1, 15, 1, 1),
                                      (0, 10, 5, 1)])
def test_rollout_length_follows_the_official_schedule(schedule):
    for epoch in range(200):
        assert int(rollout_length(schedule, epoch)) == official_length(schedule, epoch), epoch


def test_the_schedule_counts_env_steps_by_the_train_ratio():
    agent = agent_of(**{"run.prefill": 500, "mbpo.epoch": 100,
                        "mbpo.rollout_schedule": [5, 10, 1, 6]})
    # Training starts after the prefill (500 steps); one train step per 16 x 1 / 16 = 1 step.
    assert float(agent.env_steps(jnp.asarray(0))) == 500
    assert float(agent.env_steps(jnp.asarray(250))) == 750
    # Epochs count from the start of training, as MBPO's start after its initial exploration:
    # the prefill is not epoch 5.
    assert int(agent.length(jnp.asarray(0))) == 1      # epoch 0
    assert int(agent.length(jnp.asarray(599))) == 1    # epoch 5
    assert int(agent.length(jnp.asarray(800))) == 4    # epoch 8: 1 + 3/5 x 5
    assert int(agent.length(jnp.asarray(9000))) == 6


def test_a_minibatch_mixes_real_and_model_rows_at_the_real_ratio():
    assert real_rows(256, 0.05) == 12  # the official int(256 x 0.05)
    agent = agent_of()
    state = agent.init(jax.random.key(0))
    items = {"obs": jnp.full((6, D), -1.0), "action": jnp.zeros((6, A)),
             "reward": jnp.full(6, -1.0), "next_obs": jnp.zeros((6, D)), "cont": jnp.ones(6)}
    buffer = state.buffer.add(items, jnp.ones(6, bool))
    pool = {"obs": jnp.ones((10, D)), "action": jnp.zeros((10, A)), "reward": jnp.ones(10),
            "next_obs": jnp.zeros((10, D)), "cont": jnp.ones(10)}
    valid = jnp.arange(10) < 7
    pool["reward"] = jnp.arange(10.0) + 1  # real rows: rewards 1..10, only 1..7 valid
    got, keys = agent.minibatch(buffer, jnp.asarray(1), pool, valid, jax.random.key(1))
    reward = np.asarray(got["reward"])
    assert keys.shape == (20,)
    assert reward.shape == (20,)
    assert np.all(reward[:2] >= 1) and np.all(reward[:2] <= 7)  # int(20 x 0.1) real, valid
    np.testing.assert_array_equal(reward[2:], -1.0)
    both = mix({k: v[:1] for k, v in pool.items()}, items)
    assert both["obs"].shape == (7, D) and float(both["reward"][0]) == 1.0


def test_elites_are_the_members_of_lowest_held_out_error():
    agent = agent_of()
    np.testing.assert_array_equal(agent.elites(jnp.asarray([0.3, 0.1, 0.2])), [1, 2])
    np.testing.assert_array_equal(agent.elites(jnp.asarray([0.5, 0.1, 0.5])), [1, 0])
    # A member spoiled by a large output bias has the largest held-out error after training
    # and is never an elite; the rollouts use only the others.
    state = agent.init(jax.random.key(0))
    model = state.model.params["model"]
    leaves = jax.tree_util.tree_leaves_with_path(model)
    bias = [p for p, _ in leaves if "bias" in jax.tree_util.keystr(p)][-1]
    spoiled = jax.tree_util.tree_map_with_path(
        lambda p, x: x.at[0].add(30.0) if p == bias else x, model)
    state = state.replace(model=state.model.replace(
        params={**state.model.params, "model": spoiled}))
    step = jax.jit(agent.train_step)
    for i in range(4):
        state, _, _ = step(state, batch_of(i, first=100 * i), jax.random.key(i))
    error = np.asarray(state.error)
    assert np.all(np.isfinite(error)) and np.argmax(error) == 0
    assert 0 not in np.asarray(agent.elites(state.error))


def test_the_policy_waits_for_the_models_warm_up():
    agent = agent_of(**{"mbpo.model_warmup": 2})
    state = agent.init(jax.random.key(0))
    step = jax.jit(agent.train_step)
    actor = state.sac.actor
    for i in range(2):
        state, metrics, _ = step(state, batch_of(i, first=100 * i), jax.random.key(i))
        assert float(metrics["mbpo/policy_trains"]) == 0.0
        jax.tree.map(np.testing.assert_array_equal, state.sac.actor, actor)
        assert int(state.buffer.count) > 0  # the rollouts go on
    state, metrics, _ = step(state, batch_of(5, first=500), jax.random.key(5))
    assert float(metrics["mbpo/policy_trains"]) == 1.0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.sac.actor),
                                                       jax.tree.leaves(actor)))
    assert np.isfinite(float(metrics["loss/critic"])) and metrics["nonfinite"] == 0


def test_the_initial_state_is_finite():
    # (a checkpoint of a non-finite state is refused: one before the first update must save)
    for ratio in (0.1, 1.0):
        state = agent_of(**{"mbpo.real_ratio": ratio}).init(jax.random.key(0))
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_sac_alone_trains_on_real_data_without_a_model():
    agent = agent_of(**{"mbpo.real_ratio": 1.0, "mbpo.updates": 1})
    state = agent.init(jax.random.key(0))
    new, metrics, _ = jax.jit(agent.train_step)(state, batch_of(0), jax.random.key(1))
    assert int(new.buffer.count) == 0 and "mbpo/rollout_length" not in metrics
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(new))
    jax.tree.map(np.testing.assert_array_equal, new.model, state.model)
    assert float(metrics["mbpo/policy_trains"]) == 1.0
    pool = transitions({k: jnp.asarray(v) for k, v in batch_of(0).items()})
    batch, _ = agent.minibatch(new.buffer, 1, *pool, jax.random.key(2))
    assert batch["reward"].shape == (20,)  # every row real


def test_transitions_end_at_episode_boundaries_and_terminals():
    batch = batch_of(0, b=3)
    batch["is_last"][1, 0] = True      # pair 1 crosses episodes: invalid
    batch["is_terminal"][2, 1] = True  # pair 2 ends in a terminal state: cont 0
    items, valid = transitions({k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_array_equal(valid, [True, False, True])
    np.testing.assert_array_equal(items["cont"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(items["reward"], batch["reward"][:, 1])
    np.testing.assert_allclose(items["next_obs"], batch["vector"][:, 1])


def test_two_devices_make_the_update_of_one():
    """Two devices holding 8 sequences and 10-row SAC minibatches each make the update of one
    device holding 16 and 20: the same model, rollouts (buffer) and SAC parameters."""
    single = agent_of()
    multi = agent_of(AXIS, **{"batch_size": 8, "mbpo.sac_batch": 10})
    state = single.init(jax.random.key(0))
    batch = batch_of(0)
    want = state
    step = jax.jit(single.train_step)
    par = DataParallel(multi.train_step, jax.devices()[:2], "pmap", donate=False)
    got = par.replicate(state)
    for i in range(2):
        batch = batch_of(i, first=100 * i)
        want, _, _ = step(want, batch, jax.random.key(7 + i))
        got, _, _ = par(got, par.shard(batch), jax.random.key(7 + i))
    par.assert_replicas_equal(got)
    got = par.unreplicate(got)
    assert int(got.buffer.count) == int(want.buffer.count) > 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got),
                            strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_discrete_actions_and_images_are_clear_errors():
    cfg = load_config(["mbpo"], TINY)
    with pytest.raises(ConfigError, match="continuous action"):
        make_agent(cfg, {"vector": continuous_space(D)}, discrete_space(3))
    with pytest.raises(ConfigError, match="env.obs=vector"):
        make_agent(cfg, {"image": Space(np.uint8, (8, 8, 3), 0, 255)}, continuous_space(A))
    with pytest.raises(ConfigError, match="multiple of mbpo.elites"):
        agent_of(**{"mbpo.rollouts": 7})
    for holdout in (0.0, 1.0):
        with pytest.raises(ConfigError, match="mbpo.holdout must be in"):
            agent_of(**{"mbpo.holdout": holdout})
    agent_of(**{"mbpo.holdout": 0.0, "mbpo.real_ratio": 1.0})  # SAC alone ranks no members
    with pytest.raises(ConfigError, match="no real transitions"):
        agent_of(**{"mbpo.sac_batch": 8, "mbpo.real_ratio": 0.05})
    with pytest.raises(ConfigError, match="at least 1"):
        agent_of(**{"mbpo.retain": 0})
