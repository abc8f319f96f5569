"""Latent MPC: plan scores against a plain-Python loop, the actor's plan as the search's start,
planners that find known answers, and `dreamer-eval --mode mpc` on a tiny trained run."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer import cli
from dreamer.agents.dreamerv3 import behavior, mpc
from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.bench import analysis
from dreamer.config import ConfigError, load_config
from dreamer.core import planners
from dreamer.core.distributions import TwoHot
from dreamer.core.rngs import Rngs
from dreamer.envs import make_env
from dreamer.run import runner
from dreamer.run.acting import AgentPolicy, evaluate

GAMMA = 0.9


def start_state(case, row: int = 0):
    """A posterior model state {'deter': [D], 'stoch': [S*K]} of the case's first batch step."""
    agent = case.agent
    obs = {k: case.batch[k][:, 0] for k in (*agent.obs_keys, "is_first")}
    state = agent.observe(case.state.params, agent.policy_initial(obs["is_first"].shape[0]), obs,
                          jax.random.key(3))
    return jax.tree.map(lambda x: x[row], state)


@pytest.fixture(scope="module")
def params(continuous_case, perturb_heads):
    """Random reward and critic output layers: at initialisation both predict exactly zero."""
    return perturb_heads(continuous_case.state.params, jax.random.key(5))


def rollout_of(case, gamma=GAMMA):
    return functools.partial(mpc.returns, case.agent.wm, case.agent.ac, gamma=gamma,
                             discrete=case.agent.ac.discrete)


def test_discounted_return_by_hand():
    # 1 + 0.5 * 2 + 0.5 * 0.25 * 4 = 2.5; then 0 + 1 * 3 + 1 * 1 * (-1) = 2
    out = planners.discounted_return(jnp.array([[1.0, 2.0], [0.0, 3.0]]),
                                     jnp.array([[0.5, 0.25], [1.0, 1.0]]),
                                     jnp.array([4.0, -1.0]))
    np.testing.assert_allclose(out, [2.5, 2.0])


def test_returns_match_a_plain_python_loop(continuous_case, params):
    """Discounted predicted rewards plus the bootstrap value, each sequence scored alone in a
    Python loop over steps; sequences scored together see the same latent noise."""
    agent, start, key = continuous_case.agent, start_state(continuous_case), jax.random.key(9)
    actions = jax.random.uniform(jax.random.key(1), (3, 4, agent.act_dim), minval=-1, maxval=1)
    got = jax.jit(rollout_of(continuous_case))(params, {"start": start, "key": key}, actions)
    wm = agent.wm
    for i in range(actions.shape[0]):
        one = jax.tree.map(lambda x: x[None], start)
        states = rssm_lib.open_loop(wm.rssm, params["wm"]["rssm"], one, actions[i:i + 1],
                                    key[None])
        feat = np.asarray(rssm_lib.feat(states)[0], np.float64)
        total, discount = 0.0, 1.0
        for h in range(actions.shape[1]):
            f = jnp.asarray(feat[h:h + 1], jnp.float32)
            reward = float(TwoHot(wm.rew.apply({"params": params["wm"]["rew"]}, f),
                                              wm.bins).mean()[0])
            cont = float(jax.nn.sigmoid(wm.con.apply({"params": params["wm"]["con"]}, f))[0, 0])
            total += discount * reward
            discount *= GAMMA * cont
        value = float(behavior.value_dist(agent.ac, params["critic"],
                                          jnp.asarray(feat[-1:], jnp.float32)).mean()[0])
        total += discount * value
        np.testing.assert_allclose(got[i], total, rtol=1e-4, atol=1e-5)
    assert len(set(np.round(np.asarray(got), 5))) == 3  # the actions matter


def test_the_actors_plan_is_its_mode_along_the_imagined_states(continuous_case, params):
    agent, start, key = continuous_case.agent, start_state(continuous_case), jax.random.key(2)
    plan = mpc.actor_plan(agent.wm, agent.ac, params, start, key, horizon=5)
    assert plan.shape == (5, agent.act_dim)
    # The prior rolled forward under the plan with the same latent noise passes through the
    # states where the actor chose each next action.
    one = jax.tree.map(lambda x: x[None], start)
    states = rssm_lib.open_loop(agent.wm.rssm, params["wm"]["rssm"], one, plan[None], key[None])
    feats = jnp.concatenate([rssm_lib.feat(one)[:, None], rssm_lib.feat(states)], 1)[0, :-1]
    mode = behavior.policy_dist(agent.ac, params["actor"], feats).mode()
    np.testing.assert_allclose(plan, mode, atol=1e-5)


def test_actor_samples_draw_from_the_actor(continuous_case, params):
    """The first actions of many sampled sequences have the actor's mean and std at the start
    state; later steps differ between rows (each follows its own sampled path)."""
    agent, start = continuous_case.agent, start_state(continuous_case)
    samples = jax.jit(functools.partial(mpc.actor_samples, agent.wm, agent.ac, horizon=3,
                                        n=2048))(params, start, jax.random.key(7))
    assert samples.shape == (2048, 3, agent.act_dim)
    dist = behavior.policy_dist(agent.ac, params["actor"], rssm_lib.feat(
        jax.tree.map(lambda x: x[None], start)))
    np.testing.assert_allclose(samples[:, 0].mean(0), dist.loc[0], atol=0.05)
    np.testing.assert_allclose(samples[:, 0].std(0), dist.std[0], rtol=0.1)
    assert float(samples[:, 2].std(0).min()) > 0.0


def test_initial_mean_is_the_better_of_the_shifted_plan_and_the_actors():
    target = jnp.array([[0.5], [0.5], [0.5]])
    rollout = lambda p, s, a: -jnp.sum(jnp.square(a - target), (1, 2))
    actor = jnp.zeros((3, 1))
    close = jnp.array([[0.0], [0.5], [0.5]])  # shifted: [0.5, 0.5, actor's last 0.0]
    warm = jnp.array([[0.5], [0.5], [0.0]])
    np.testing.assert_allclose(mpc.initial_mean(rollout, None, None, close, actor, False), warm)
    np.testing.assert_allclose(mpc.initial_mean(rollout, None, None, close, actor, True), actor)
    far = -jnp.ones((3, 1))
    np.testing.assert_allclose(mpc.initial_mean(rollout, None, None, far, actor, False), actor)


def test_the_actors_plan_is_where_the_search_starts(continuous_case):
    """With a search that cannot move, latent MPC acts as the actor's mode does."""
    case = continuous_case
    cfg = case.agent.cfg.update({"mpc.init_std": 1e-6, "mpc.smoothing": 0.0,
                                 "mpc.candidates": 4, "mpc.elites": 2, "mpc.iterations": 1,
                                 "mpc.horizon": 3})
    planner = mpc.LatentMPC(case.agent, cfg.mpc)
    obs = {k: case.batch[k][:, 0] for k in (*case.agent.obs_keys, "is_first")}
    n, key = obs["is_first"].shape[0], jax.random.key(4)
    _, planned, _ = jax.jit(planner.policy)(case.state.params, planner.policy_initial(n), obs,
                                            key)
    _, greedy, _ = case.policy(case.state.params, case.agent.policy_initial(n), obs, key,
                               mode="mode")
    np.testing.assert_allclose(planned, greedy, atol=1e-4)


@pytest.mark.parametrize("planner", mpc.PLANNERS)
def test_the_planner_improves_on_the_actors_plan(continuous_case, params, planner):
    agent, start = continuous_case.agent, start_state(continuous_case)
    cfg = agent.cfg.update({"mpc.planner": planner, "mpc.candidates": 64, "mpc.elites": 8,
                            "mpc.iterations": 3, "mpc.horizon": 3, "mpc.init_std": 0.5,
                            "mpc.prior": 4})
    kwargs = mpc.planner_kwargs(cfg.mpc)
    key = jax.random.key(6)
    plan = jax.jit(functools.partial(mpc.plan, agent.wm, agent.ac, gamma=GAMMA, **kwargs))(
        params, start, jnp.zeros((3, agent.act_dim)), True, key)
    k_model, _, _ = jax.random.split(key, 3)  # the latent noise `plan` scores with
    actor = mpc.actor_plan(agent.wm, agent.ac, params, start, k_model, horizon=3)
    scores = rollout_of(continuous_case)(params, {"start": start, "key": k_model},
                                         jnp.stack([plan, actor]))
    assert scores[0] > scores[1]


def test_discrete_mpc_picks_the_best_first_action(discrete_case, perturb_heads):
    """One step, three actions: the answer is the action whose one-step score is largest."""
    agent = discrete_case.agent
    params = perturb_heads(discrete_case.state.params, jax.random.key(8))
    start, key = start_state(discrete_case), jax.random.key(7)
    k_model, _ = jax.random.split(key)
    rollout = rollout_of(discrete_case)
    every = 2.0 * jnp.eye(3)[:, None] - 1.0  # [3, 1, 3]: each action once
    scores = rollout(params, {"start": start, "key": k_model}, every)
    assert np.ptp(np.asarray(scores)) > 1e-3  # the actions matter
    kwargs = mpc.planner_kwargs(agent.cfg.mpc.update({
        "horizon": 1, "candidates": 32, "elites": 4, "iterations": 2, "init_std": 1.0}))
    plan = jax.jit(functools.partial(mpc.plan, agent.wm, agent.ac, gamma=GAMMA, **kwargs))(
        params, start, jnp.zeros((1, 3)), True, key)
    assert int(jnp.argmax(plan[0])) == int(jnp.argmax(scores))


def test_bad_settings_and_other_agents_are_clear_errors(tiny_cfg):
    with pytest.raises(ConfigError, match=r"mpc\.elites must be in \[1, mpc\.candidates=8\]"):
        mpc.check_config(tiny_cfg.update({"mpc.candidates": 8, "mpc.elites": 9}).mpc)
    with pytest.raises(ConfigError, match=r"mpc\.horizon must be at least 1, got 0"):
        mpc.check_config(tiny_cfg.update({"mpc.horizon": 0}).mpc)
    with pytest.raises(ConfigError, match=r"'mpc\.planner'.*choose one of 'cem', 'mppi'"):
        tiny_cfg.update({"mpc.planner": "mcts"})
    pets = types.SimpleNamespace(cfg=load_config(["debug", "pets"]))
    with pytest.raises(ConfigError, match="plans in DreamerV3's learned model; this run's "
                                          "agent is pets"):
        mpc.LatentMPC(pets, pets.cfg.mpc)


TINY_MPC = ["--mpc.candidates=8", "--mpc.elites=2", "--mpc.iterations=2", "--mpc.horizon=3"]


def test_dreamer_eval_mode_mpc_on_a_trained_run(tmp_path, capsys, monkeypatch):
    logdir = tmp_path / "run"
    runner.run(load_config(["debug"], {
        "logdir": str(logdir), "env.task": "builtin_reach", "env.time_limit": 6,
        "run.steps": 60, "run.prefill": 40, "run.eval_every": 0, "run.log_every": 0,
        "run.checkpoint_every": 0, "logger.console": False, "logger.report_every": 0,
        "parallel.devices": 1}))
    modes, original = [], mpc.LatentMPC.policy

    def spy(self, params, carry, obs, key, mode="sample"):
        modes.append(mode)  # at each trace
        return original(self, params, carry, obs, key, mode)

    monkeypatch.setattr(mpc.LatentMPC, "policy", spy)
    assert cli.eval_main(["--logdir", str(logdir), "--episodes", "2", "--mode", "mpc",
                          *TINY_MPC]) == 0
    assert modes == ["eval"]  # the planner acts in the evaluation mode: the plan's mean
    out = capsys.readouterr().out
    assert "over 2 episodes, mpc actions; checkpoint at 60 env steps; episode length 6)" in out
    assert "per action\nactor (mode actions) on the same episodes: score" in out

    # One compilation for every step of every episode.
    run = analysis.load_run(logdir)
    cfg = run.cfg.update({k[2:].split("=")[0]: k.split("=")[1] for k in TINY_MPC})
    policy = AgentPolicy(mpc.LatentMPC(run.agent, cfg.mpc), 1, Rngs(0).key_stream("eval"))
    env = make_env(run.cfg.env, 0)
    result = evaluate(policy, run.params, env, 2)
    env.close()
    assert result["eval/length"] == 6 and result["eval/action_seconds"] > 0
    assert policy._step._cache_size() == 1

    for argv, message in [
            (["--mode", "plan"], "--mode 'plan': expected one of eval, sample, mode, mpc"),
            (["--mode", "mpc", "--mpc.elites=0"], "mpc.elites must be in [1, mpc.candidates"),
            (["--mode", "mpc", "--mpc.planner=mcts"], "'mpc.planner': 'mcts'; choose one of"),
            (["--mpc.horizon=3"], "--mpc.horizon sets latent MPC's planner: add --mode mpc"),
            (["--mode", "mpc", "--model.deter=8"], "overrides of the mpc section only")]:
        assert cli.eval_main(["--logdir", str(logdir), *argv]) == 2
        assert message in capsys.readouterr().err

