"""λ-returns against the recursion and percentile return normalisation (`dreamer.core.returns`), and
DreamerV3's actor-critic and replayed-value losses on a tiny agent."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomise_heads

from dreamer.agents.dreamerv3 import behavior
from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.core import returns
from dreamer.core.distributions import TwoHot

lambda_return = jax.jit(returns.lambda_return)


def loop_lambda_return(reward, cont, boot, lam):
    """R_t = r_{t+1} + c_{t+1} ((1 - λ_{t+1}) v_{t+1} + λ_{t+1} R_{t+1}), R_{T-1} = v_{T-1}."""
    reward, cont, boot = (np.asarray(x, np.float64) for x in (reward, cont, boot))
    lam = np.broadcast_to(np.asarray(lam, np.float64), reward.shape)
    n, t = reward.shape
    out = np.zeros((n, t - 1))
    for i in range(n):
        ret = boot[i, t - 1]
        for s in reversed(range(t - 1)):
            ret = reward[i, s + 1] + cont[i, s + 1] * (
                (1 - lam[i, s + 1]) * boot[i, s + 1] + lam[i, s + 1] * ret)
            out[i, s] = ret
    return out


def random_inputs(seed, n=5, t=9):
    rng = np.random.default_rng(seed)
    reward = rng.normal(size=(n, t)).astype(np.float32)
    cont = (0.99 * (rng.uniform(size=(n, t)) > 0.15)).astype(np.float32)
    boot = rng.normal(0, 5, size=(n, t)).astype(np.float32)
    return reward, cont, boot


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_lambda_return_matches_loop_scalar_lambda(lam):
    reward, cont, boot = random_inputs(0)
    got = lambda_return(reward, cont, boot, lam)
    chex.assert_shape(got, (5, 8))
    expected = loop_lambda_return(reward, cont, boot, lam)
    chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_lambda_return_matches_loop_per_step_lambda():
    reward, cont, boot = random_inputs(1)
    rng = np.random.default_rng(2)
    lam = rng.uniform(size=reward.shape).astype(np.float32)
    lam[rng.uniform(size=lam.shape) < 0.2] = 0.0
    got = lambda_return(reward, cont, boot, lam)
    expected = loop_lambda_return(reward, cont, boot, lam)
    chex.assert_trees_all_close(got, expected.astype(np.float32), rtol=1e-5, atol=1e-5)


# Hand case: r_1..3 = 1, 2, 3 (r_0 is never used), c = 0.5, v_1..3 = 10, 20, 40.
HAND = (np.array([[9.0, 1.0, 2.0, 3.0]], np.float32), np.full((1, 4), 0.5, np.float32),
        np.array([[-7.0, 10.0, 20.0, 40.0]], np.float32))


def test_lambda_return_one_is_discounted_sum_plus_bootstrap():
    # R_2 = 3 + .5 * 40 = 23; R_1 = 2 + .5 * 23 = 13.5; R_0 = 1 + .5 * 13.5 = 7.75.
    chex.assert_trees_all_close(lambda_return(*HAND, 1.0), np.array([[7.75, 13.5, 23.0]]))
    reward, cont, boot = random_inputs(3)
    expected = np.zeros((5, 8))
    for s in range(8):
        discount = 1.0
        for k in range(s + 1, 9):
            expected[:, s] += discount * reward[:, k]
            discount = discount * cont[:, k]
        expected[:, s] += discount * boot[:, 8]
    chex.assert_trees_all_close(lambda_return(reward, cont, boot, 1.0),
                                expected.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_lambda_return_zero_is_one_step_td_target():
    # R_t = r_{t+1} + c_{t+1} v_{t+1}: 1 + 5, 2 + 10, 3 + 20.
    chex.assert_trees_all_close(lambda_return(*HAND, 0.0), np.array([[6.0, 12.0, 23.0]]))
    reward, cont, boot = random_inputs(4)
    expected = reward[:, 1:] + cont[:, 1:] * boot[:, 1:]
    chex.assert_trees_all_close(lambda_return(reward, cont, boot, 0.0), expected, rtol=1e-6)


def test_lambda_return_terminal_cuts_the_future():
    reward = np.array([[0.0, 1.0, 1.0, 1.0]], np.float32)
    cont = np.array([[1.0, 1.0, 0.0, 1.0]], np.float32)  # step 2 is terminal
    boot = np.array([[0.0, 0.0, 100.0, 100.0]], np.float32)
    # Returns before the terminal step see its reward but nothing after it.
    chex.assert_trees_all_close(lambda_return(reward, cont, boot, 1.0)[0, :2],
                                np.array([2.0, 1.0]))


# ------------------------------------------------------------------------------ return norm


PAPER_RETNORM = {"lo": 0.05, "hi": 0.95, "decay": 0.99, "limit": 1.0}


def test_retnorm_defaults_are_the_papers(tiny_cfg):
    ac = tiny_cfg.ac
    assert {"lo": ac.retnorm_lo, "hi": ac.retnorm_hi, "decay": ac.retnorm_decay,
            "limit": ac.retnorm_limit} == PAPER_RETNORM


def test_retnorm_percentiles_match_numpy():
    ret = np.random.default_rng(5).normal(0, 10, size=(32, 15)).astype(np.float32)
    zero = {"lo": jnp.zeros([]), "hi": jnp.zeros([])}
    stats, scale = returns.update_retnorm(zero, jnp.asarray(ret),
                                           **{**PAPER_RETNORM, "decay": 0.0})
    lo, hi = np.quantile(ret, 0.05), np.quantile(ret, 0.95)
    chex.assert_trees_all_close(stats, {"lo": np.float32(lo), "hi": np.float32(hi)}, rtol=1e-5)
    chex.assert_trees_all_close(scale, np.float32(hi - lo), rtol=1e-5)


def test_retnorm_ema_by_hand():
    # Percentiles of 0..100 are 5 and 95: lo = .99 * 2 + .01 * 5, hi = .99 * 5 + .01 * 95.
    ret = jnp.arange(101.0).reshape(1, 101)
    stats, scale = returns.update_retnorm({"lo": jnp.array(2.0), "hi": jnp.array(5.0)}, ret,
                                           **PAPER_RETNORM)
    chex.assert_trees_all_close(stats, {"lo": jnp.array(2.03), "hi": jnp.array(5.9)}, rtol=1e-6)
    chex.assert_trees_all_close(scale, jnp.array(3.87), rtol=1e-5)


def test_retnorm_scale_floored_at_limit():
    ret = 1e-3 * jnp.arange(101.0).reshape(1, 101)
    zero = {"lo": jnp.zeros([]), "hi": jnp.zeros([])}
    stats, scale = returns.update_retnorm(zero, ret, **PAPER_RETNORM)
    assert float(stats["hi"] - stats["lo"]) < 0.01
    assert float(scale) == 1.0
    _, scale = returns.update_retnorm(zero, ret, **{**PAPER_RETNORM, "limit": 1e-4})
    chex.assert_trees_all_close(scale, stats["hi"] - stats["lo"], rtol=1e-6)


# ------------------------------------------------------------------------------ losses


def test_actor_critic_loss_finite_with_shapes(case, imagination):
    b, t = case.batch["is_first"].shape
    t -= case.agent.context  # the context step supplies the start state only
    loss = imagination["ac_loss"]
    terms, metrics, retnorm, ret0 = imagination["ac_aux"]
    chex.assert_shape(loss, ())
    assert set(terms) == {"policy", "value"}
    chex.assert_shape(list(terms.values()), (b * t, case.agent.cfg.ac.horizon))
    chex.assert_shape(ret0, (b * t,))
    chex.assert_shape([retnorm["lo"], retnorm["hi"]], ())
    chex.assert_tree_all_finite((loss, terms, metrics, retnorm, ret0))
    for name in ("ac/entropy", "ac/return", "ac/retnorm_scale"):
        chex.assert_shape(metrics[name], ())
    assert float(metrics["ac/retnorm_scale"]) >= case.agent.cfg.ac.retnorm_limit
    # Random reward and critic heads make the returns and advantages non-trivial.
    assert float(metrics["ac/adv_abs"]) > 0


def test_repval_loss_trains_critic_and_world_model_representations(imagination):
    """The replayed-value loss trains the critic and, with `ac.repval_grad` (2024 code), the
    encoder and RSSM through the posterior features; never the actor or the other heads. With
    the option off only the critic learns from it."""
    chex.assert_shape(imagination["repval_loss"], ())
    chex.assert_tree_all_finite(imagination["repval_loss"])

    def moved(tree):
        return float(np.sum([np.abs(g).sum() for g in jax.tree.leaves(tree)])) > 0

    grads = imagination["repval_grads"]
    chex.assert_tree_all_finite(grads)
    for reached in (grads["critic"], grads["wm"]["enc"], grads["wm"]["rssm"]):
        assert moved(reached)
    for name in ("actor", "dec", "rew", "con"):
        assert not moved(grads.get(name, grads["wm"].get(name))), name
    stopped = imagination["repval_stopped_grads"]
    assert moved(stopped["critic"])
    for group in ("wm", "actor"):
        assert not moved(stopped[group]), group
    chex.assert_trees_all_close(stopped["critic"], grads["critic"], rtol=1e-5, atol=1e-8)


def test_imagined_outputs_equal_each_head_apart(case):
    """The fused heads on imagined states give what each head gives on its own (reward,
    continue, slow critic, critic, actor), and the same gradients reach the critic and the
    actor; the frozen heads get none."""
    agent, state = case.agent, case.state
    params = randomise_heads(state.params, jax.random.key(3))
    feat = jax.random.normal(jax.random.key(4), (6, 4, rssm_lib.feat(
        rssm_lib.initial(agent.wm.rssm, 1)).shape[-1]))
    wm, ac = agent.wm, agent.ac

    def apart(params):
        p = params
        return {"reward": TwoHot(wm.rew.apply({"params": p["wm"]["rew"]}, feat), wm.bins).mean(),
                "cont": jax.nn.sigmoid(wm.con.apply({"params": p["wm"]["con"]}, feat)[..., 0]),
                "slow": behavior.value_dist(ac, state.slow_critic, feat).mean(),
                "critic": behavior.value_dist(ac, p["critic"], feat).logits,
                "actor": ac.actor.apply({"params": p["actor"]}, feat)}

    def fused(params):
        out = behavior.imagined_outputs(wm, ac, params, state.slow_critic, feat)
        return {**out, "critic": out["critic"].logits}

    def loss(fn, params):
        return sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(fn(params)))

    chex.assert_trees_all_close(jax.jit(fused)(params), jax.jit(apart)(params), rtol=1e-5,
                                atol=1e-5)
    got = jax.jit(jax.grad(lambda p: loss(fused, p)))(params)
    want = jax.jit(jax.grad(lambda p: loss(apart, p)))(params)
    chex.assert_trees_all_close((got["critic"], got["actor"]), (want["critic"], want["actor"]),
                                rtol=1e-4, atol=1e-5)
    assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(got["wm"]))
