"""k updates in one jitted call (`multistep.scan_steps`) equal k calls of the train step."""
import chex
import jax
import numpy as np
from conftest import agent_batch

from dreamer.run import multistep


def test_scanned_updates_equal_one_call_per_update(continuous_case, vector_obs_space,
                                                  continuous_act_space):
    case = continuous_case
    agent = case.agent
    batches = [agent_batch(agent, vector_obs_space, continuous_act_space, seed=s)
               for s in (1, 2, 3)]
    keys = jax.random.split(jax.random.key(7), 3)
    step = case.train_step  # compiled once for the session; donates its state
    state = case.fresh_state()
    want_metrics = []
    for batch, key in zip(batches, keys):
        state, metrics, _ = step(state, batch, key)
        want_metrics.append(metrics)
    many = jax.jit(multistep.scan_steps(agent.train_step))
    got, metrics, rows = many(case.fresh_state(), multistep.stack(batches), keys)
    chex.assert_trees_all_close(got, state, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(metrics, multistep.stack(want_metrics), rtol=1e-4, atol=1e-5)
    assert int(got.step) == 3
    for leaf in jax.tree.leaves(rows):
        assert leaf.shape[0] == 3 and np.all(np.isfinite(np.asarray(leaf)))
