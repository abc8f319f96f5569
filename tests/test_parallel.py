"""Data-parallel learner on fake CPU devices: N devices with B/N sequences each must compute the
same updates as one device with the whole batch, with pmap and with shard_map."""
import chex
import jax
import numpy as np
import optax
import pytest
from conftest import DEVICES, agent_batch

from dreamer.agents.dreamerv3 import DreamerV3
from dreamer.core.parallel import AXIS, DataParallel, select_devices

PER_DEVICE = 2
UPDATES = 3


def make_agents(cfg, obs_space, act_space, optimizer):
    single = DreamerV3(cfg, obs_space, act_space)
    multi = DreamerV3(cfg, obs_space, act_space, axis_name=AXIS)
    if optimizer == "sgd":
        # Plain SGD exposes a gradient that is N times too large; Adam-like optimisers hide it.
        single.opt = multi.opt = optax.sgd(0.05)
    return single, multi


@pytest.fixture(scope="module")
def reference(tiny_cfg, vector_obs_space, continuous_act_space):
    """Three single-device updates on the concatenated batches, per optimiser and device count."""
    cache = {}

    def get(optimizer, devices):
        if (optimizer, devices) not in cache:
            single, _ = make_agents(tiny_cfg, vector_obs_space, continuous_act_space, optimizer)
            state = single.init(jax.random.key(0))
            step = jax.jit(single.train_step)
            history = []
            for i in range(UPDATES):
                batch = agent_batch(single, vector_obs_space, continuous_act_space,
                                    batch=PER_DEVICE * devices, seed=i)
                state, metrics, rows = step(state, batch, jax.random.key(10 + i))
                history.append((metrics, jax.device_get(rows)))
            cache[optimizer, devices] = (state, history)
        return cache[optimizer, devices]

    return get


@pytest.mark.parametrize("optimizer", ["sgd", "laprop"])
@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
@pytest.mark.parametrize("devices", [2, 4])
def test_parallel_updates_equal_single_device(reference, tiny_cfg, vector_obs_space,
                                              continuous_act_space, optimizer, backend, devices):
    assert devices <= DEVICES == len(jax.devices())
    _, multi = make_agents(tiny_cfg, vector_obs_space, continuous_act_space, optimizer)
    parallel = DataParallel(multi.train_step, select_devices(devices), backend)
    state = parallel.replicate(multi.init(jax.random.key(0)))
    parallel.assert_replicas_equal(state)
    history = []
    for i in range(UPDATES):
        batch = agent_batch(multi, vector_obs_space, continuous_act_space,
                            batch=PER_DEVICE * devices, seed=i)
        state, metrics, rows = parallel(state, parallel.shard(batch), jax.random.key(10 + i))
        history.append((metrics, parallel.local_rows(rows)))
    parallel.assert_replicas_equal(state)
    expected_state, expected_history = reference(optimizer, devices)
    got = parallel.unreplicate(state)
    chex.assert_trees_all_close(got.params, expected_state.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(got.retnorm, expected_state.retnorm, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(got.slow_critic, expected_state.slow_critic, atol=1e-5)
    assert int(got.step) == UPDATES
    for (got_m, got_rows), (want_m, want_rows) in zip(history, expected_history, strict=True):
        assert set(got_m) == set(want_m)
        for key in want_m:
            np.testing.assert_allclose(np.asarray(got_m[key]), np.asarray(want_m[key]),
                                       rtol=1e-4, atol=1e-5, err_msg=key)
        # The replay context written back comes in the order of the host batch.
        assert set(got_rows) == set(want_rows) == {"context_deter", "context_stoch"}
        np.testing.assert_allclose(got_rows["context_deter"], want_rows["context_deter"],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got_rows["context_stoch"], want_rows["context_stoch"])


def test_replicas_that_differ_are_reported(tiny_cfg, vector_obs_space, continuous_act_space):
    _, multi = make_agents(tiny_cfg, vector_obs_space, continuous_act_space, "sgd")
    parallel = DataParallel(multi.train_step, select_devices(2), "pmap")
    tree = {"a": np.zeros(3, np.float32), "b": np.ones((2, 2), np.float32)}
    replicated = parallel.replicate(tree)
    parallel.assert_replicas_equal(replicated)
    shards = [np.array(s.data) for s in replicated["b"].addressable_shards]
    shards[1][0, 1, 1] += 1e-7
    broken = jax.make_array_from_single_device_arrays(
        replicated["b"].shape, replicated["b"].sharding,
        [jax.device_put(x, s.device) for x, s in zip(shards, replicated["b"].addressable_shards,
                                                      strict=True)])
    with pytest.raises(AssertionError, match=r"device 1 at \['b'\]"):
        parallel.assert_replicas_equal({**replicated, "b": broken})


def test_batch_must_split_evenly_and_devices_must_exist():
    parallel = DataParallel(lambda s, b, k: (s, {}, {}), select_devices(2), "shard_map")
    with pytest.raises(ValueError, match="does not split over 2 devices"):
        parallel.shard({"x": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=64"):
        select_devices(64)
    with pytest.raises(ValueError, match="unknown parallel.backend"):
        DataParallel(lambda s, b, k: (s, {}, {}), select_devices(2), "vmap")
