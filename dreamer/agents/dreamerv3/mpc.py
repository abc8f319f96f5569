"""Latent model-predictive control: acting by planning in DreamerV3's learned model.

From the posterior model state after observing a step, the RSSM's prior is rolled forward under
candidate action sequences [N, H, A], and each sequence scores what Dreamer's imagination would
credit it with (Hafner et al. 2023, Sec. 3, the λ-return of Eq. 7 with λ = 1):

    G = Σ_{h=1..H} (Π_{j<h} γ c_j) r_h  +  (Π_{j≤H} γ c_j) v(s_H),

where s_h is the state after the sequence's h-th action, r_h and c_h the reward and continue
probability the heads predict there, γ = 1 - 1/`ac.discount_horizon`, and the critic's value at
the horizon bootstraps the rest (as TD-MPC does, Hansen et al. 2022). A planner of
`dreamer.core.planners` (CEM by default, or MPPI) refines the sequence; the agent acts on its first
action and replans at every step. Every sequence scored at one step sees the same latent noise
(common random numbers), so candidates differ by their actions alone.

Each search starts from the better-scoring of two sequences: the actor's plan (its mode at each
step of the prior rolled forward under it) and the previous step's plan shifted by one step,
ending in the actor's last action (`initial_mean`); at an episode's start, the actor's plan.
With `mpc.prior` > 0, as many sequences that the actor samples along the prior join the
candidates of every iteration (`actor_samples`; TD-MPC2 injects its policy's samples so).

Discrete actions are planned as PETS plans them: plan entries are preferences in [-1, 1] and
the action is the one-hot of the largest; the actor's plan is its probabilities scaled to
[-1, 1], so its mode is the plan's action.
"""
from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents.dreamerv3 import behavior, world_model
from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.agents.dreamerv3.behavior import ActorCriticNets
from dreamer.agents.dreamerv3.world_model import WorldModelNets
from dreamer.agents.modes import check_mode
from dreamer.config import ConfigError
from dreamer.core import planners
from dreamer.core.distributions import split_keys

PLANNERS = planners.PLANNERS
State = dict[str, jax.Array]


def check_config(mpc: Any) -> None:
    """Raises ConfigError naming the first `mpc` setting out of its range."""
    checks = [
        ("horizon", mpc.horizon >= 1, "at least 1"),
        ("candidates", mpc.candidates >= 1, "at least 1"),
        ("elites", 0 < mpc.elites <= mpc.candidates, f"in [1, mpc.candidates={mpc.candidates}]"),
        ("iterations", mpc.iterations >= 1, "at least 1"),
        ("prior", mpc.prior >= 0, "at least 0"),
        ("init_std", mpc.init_std > 0, "positive"),
        ("min_std", mpc.planner != "mppi" or 0 < mpc.min_std <= mpc.init_std,
         f"in (0, mpc.init_std={mpc.init_std}] for MPPI"),
        ("smoothing", 0 <= mpc.smoothing < 1, "in [0, 1)"),
        ("temperature", mpc.temperature > 0, "positive"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"mpc.{key} must be {expected}, got {mpc[key]!r}")


def planner_kwargs(mpc: Any) -> dict[str, Any]:
    """The keyword arguments of `plan` from the `mpc` config section."""
    check_config(mpc)
    return {"planner": mpc.planner, "horizon": mpc.horizon, "candidates": mpc.candidates,
            "elites": mpc.elites, "iterations": mpc.iterations, "prior": mpc.prior,
            "init_std": mpc.init_std, "min_std": mpc.min_std, "smoothing": mpc.smoothing,
            "temperature": mpc.temperature}


def _rows(tree: Any, n: int) -> Any:
    """Every leaf repeated along a new leading axis of n rows."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)


def returns(wm: WorldModelNets, ac: ActorCriticNets, params: dict[str, Any], state: dict[str, Any],
            actions: jax.Array, *, gamma: float, discrete: bool) -> jax.Array:
    """The planners' rollout: returns G [N] of plans [N, H, A] from `state` {'start': one model
    state {'deter': [D], 'stoch': [S*K]}, 'key': the latent noise, shared by every row}."""
    n = actions.shape[0]
    chex.assert_shape(state["start"]["deter"], (None,))
    states = rssm_lib.open_loop(wm.rssm, params["wm"]["rssm"], _rows(state["start"], n),
                                planners.as_actions(actions, discrete), _rows(state["key"], n))
    feat = rssm_lib.feat(states)  # [N, H, F]: s_1 .. s_H
    reward = world_model.predict_rewards(wm, params["wm"], states)
    cont = jax.nn.sigmoid(wm.con.apply({"params": params["wm"]["con"]}, feat)[..., 0])
    value = behavior.value_dist(ac, params["critic"], feat[:, -1]).mean()
    return planners.discounted_return(reward, gamma * cont, value)


def actor_plan(wm: WorldModelNets, ac: ActorCriticNets, params: dict[str, Any], start: State,
               key: jax.Array, *, horizon: int) -> jax.Array:
    """The actor's plan [H, A] in planner space from one model state: its mode at each step of
    the prior rolled forward under it (latent noise from `key`, as `returns` draws it), or for
    discrete actions its probabilities scaled to [-1, 1]."""
    def act(state, k, _):
        return behavior.policy_dist(ac, params["actor"], rssm_lib.feat(state)).mode()

    keys = split_keys(_rows(key, 1), horizon)
    _, states, _ = rssm_lib.unroll_prior(wm.rssm, params["wm"]["rssm"], _rows(start, 1), act,
                                         keys)
    dist = behavior.policy_dist(ac, params["actor"], rssm_lib.feat(states)[0])
    return 2.0 * jnp.exp(dist.logits) - 1.0 if ac.discrete else dist.mode()


def actor_samples(wm: WorldModelNets, ac: ActorCriticNets, params: dict[str, Any],
                  start: State, key: jax.Array, *, horizon: int, n: int) -> jax.Array:
    """n sequences [n, H, A] in planner space that the actor samples along the prior rolled
    forward under them from one model state, each row from its own key; discrete samples are
    one-hots scaled to [-1, 1]. The planner scores them beside its candidates (`prior`)."""
    def act(state, k, _):
        return behavior.policy_dist(ac, params["actor"], rssm_lib.feat(state)).sample(k)

    keys = split_keys(jax.random.split(key, n), horizon)  # [H, n] row keys
    _, _, actions = rssm_lib.unroll_prior(wm.rssm, params["wm"]["rssm"], _rows(start, n), act,
                                          keys)
    return 2.0 * actions - 1.0 if ac.discrete else actions


def initial_mean(rollout: planners.Rollout, params: Any, state: Any, previous: jax.Array,
                 actor: jax.Array, is_first: jax.Array) -> jax.Array:
    """Where the search starts [H, A]: the better-scoring of the actor's plan and the previous
    plan shifted by one step with the actor's last action appended (a tie keeps the actor's);
    the actor's plan where an episode starts (is_first, a scalar)."""
    chex.assert_equal_shape([previous, actor])
    warm = planners.shift(previous).at[-1].set(actor[-1])
    scores = rollout(params, state, jnp.stack([warm, actor]))
    chex.assert_shape(scores, (2,))
    return jnp.where(is_first | (scores[1] >= scores[0]), actor, warm)


def plan(wm: WorldModelNets, ac: ActorCriticNets, params: dict[str, Any], start: State,
         previous: jax.Array, is_first: jax.Array, key: jax.Array, *, gamma: float,
         planner: str, horizon: int, candidates: int, elites: int, iterations: int,
         prior: int, init_std: float, min_std: float, smoothing: float, temperature: float
         ) -> jax.Array:
    """The refined plan [H, A] of one environment from its model state {'deter': [D], ...},
    the previous plan [H, A] and whether the episode starts here (scalar)."""
    if planner not in PLANNERS:
        raise ValueError(f"mpc.planner must be one of {PLANNERS}, got {planner!r}")
    k_model, k_plan, k_prior = jax.random.split(key, 3)
    rollout = functools.partial(returns, wm, ac, gamma=gamma, discrete=ac.discrete)
    state = {"start": start, "key": k_model}
    actor = actor_plan(wm, ac, params, start, k_model, horizon=horizon)
    mean = initial_mean(rollout, params, state, previous, actor, is_first)
    samples = (actor_samples(wm, ac, params, start, k_prior, horizon=horizon, n=prior)
               if prior else None)
    if planner == "cem":
        return planners.cem(rollout, params, state, k_plan, mean, candidates=candidates,
                            elites=elites, iterations=iterations, init_std=init_std,
                            smoothing=smoothing, prior=samples)
    return planners.mppi(rollout, params, state, k_plan, mean, candidates=candidates,
                         elites=elites, iterations=iterations, init_std=init_std,
                         min_std=min_std, temperature=temperature, prior=samples)


class LatentMPC:
    """A trained DreamerV3 acting by latent MPC, on the acting half of the agent interface
    (`policy_initial`, `policy`, `obs_keys`, `act_dim`; see `dreamer.agents.Agent`), with the
    planner settings `mpc` (the config's `mpc` section)."""

    def __init__(self, agent: Any, mpc: Any):
        if agent.cfg.agent != "dreamerv3":
            raise ConfigError(f"latent MPC plans in DreamerV3's learned model; this run's agent "
                              f"is {agent.cfg.agent} (use --mode eval, sample or mode)")
        self.agent = agent
        self.kwargs = planner_kwargs(mpc)
        self.gamma = 1.0 - 1.0 / agent.cfg.ac.discount_horizon
        self.act_dim, self.obs_keys = agent.act_dim, agent.obs_keys

    def policy_initial(self, batch: int):
        """(the agent's carry, the previous plans [N, H, A]; unused at an episode's start)."""
        return self.agent.policy_initial(batch), jnp.zeros(
            (batch, self.kwargs["horizon"], self.act_dim))

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        return self.agent.policy_outputs_initial(batch)

    def policy(self, params: dict[str, Any], carry: Any, obs: dict[str, jax.Array],
               key: jax.Array, mode: str = "sample"):
        """One step for N environments (obs as `DreamerV3.policy` takes them): filter, then
        plan from each posterior state. Returns (carry, action [N, A], outputs). Every mode
        ('eval', 'sample' and 'mode') acts on the first action of the refined plan's mean."""
        check_mode(mode)
        inner, plans = carry
        k_obs, k_plan = jax.random.split(key)
        state = self.agent.observe(params, inner, obs, k_obs)
        keys = jax.random.split(k_plan, plans.shape[0])
        fn = functools.partial(plan, self.agent.wm, self.agent.ac, gamma=self.gamma,
                               **self.kwargs)
        plans = jax.vmap(fn, (None, 0, 0, 0, 0))(params, state, plans, obs["is_first"], keys)
        action = planners.as_actions(plans[:, 0], self.agent.ac.discrete)
        return ((state, action), plans), action, self.agent.policy_outputs(state)
