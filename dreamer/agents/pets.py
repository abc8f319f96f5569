"""PETS (Chua et al. 2018): planning with a probabilistic ensemble of dynamics models.

The model is `dreamer.core.dynamics.DynamicsModel`: K Gaussian MLPs from the normalised (state
vector, action) to the normalised (state change, reward) and a termination logit, each member
on its own fixed bootstrap of the replayed transitions, under normalisers that count each
transition once; PETS's train step is the model's, and its train state the model's
(`dynamics.ModelState`). Acting plans with CEM or MPPI (`dreamer.core.planners`) over
`pets.horizon` steps, with trajectory sampling TS-inf: each of a sequence's particles keeps one
member for the whole horizon and samples from its Gaussian at every step; a sequence's return
is the mean over its particles. The agent acts on the plan's first action and warm-starts the
next step's search from the rest.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents.modes import check_mode
from dreamer.config import ConfigError
from dreamer.core import dynamics, planners
from dreamer.core.updates import check_sequence_length

Batch = dict[str, jax.Array]


class PETS:
    """The PETS agent on the shared agent interface (see `dreamer.agents.Agent`)."""

    def __init__(self, cfg: Any, obs_space: dict, act_space: Any, axis_name: str | None = None,
                 platform: str | None = None):
        del platform  # float32 everywhere: the networks are small
        p = cfg.pets
        if "vector" not in obs_space or "image" in obs_space:
            raise ConfigError("pets plans from state vectors: set env.obs=vector (the task "
                              f"{cfg.env.task} gives {', '.join(obs_space)})")
        if p.particles % p.members:
            raise ConfigError(f"pets.particles ({p.particles}) must be a multiple of "
                              f"pets.members ({p.members}): each member carries as many")
        if p.planner == "mppi" and not 0 < p.min_std <= p.init_std:
            raise ConfigError(f"pets.min_std must be in (0, pets.init_std={p.init_std}], "
                              f"got {p.min_std}")
        if cfg.batch_length < 2:
            raise ConfigError(f"pets trains on transitions: batch_length must be at least 2, "
                              f"got {cfg.batch_length}")
        self.cfg, self.axis_name = cfg, axis_name
        self.discrete = bool(act_space.discrete)
        self.act_dim = act_space.n if self.discrete else act_space.shape[-1]
        self.obs_dim = obs_space["vector"].shape[-1]
        self.obs_keys = ("vector",)
        self.sequence_length = cfg.batch_length
        self.trained_length = cfg.batch_length - 1  # transitions per sequence
        self.acts_on_device = True  # a search of candidates x particles x horizon per step
        self.model = dynamics.DynamicsModel(
            self.obs_dim, self.act_dim, members=p.members, units=p.units, layers=p.layers,
            act=p.act, min_logvar=p.min_logvar, max_logvar=p.max_logvar, lr=p.lr,
            weight_decay=p.weight_decay, bound_reg=p.bound_reg,
            slots=dynamics.slots(cfg.replay.capacity), axis_name=axis_name)

    def init(self, key: jax.Array) -> dynamics.ModelState:
        """The model's train state: PETS trains nothing else (checkpoints keep its fields)."""
        return self.model.init(key)

    def train_step(self, state: dynamics.ModelState, batch: Batch, key: jax.Array):
        """One update of the model on [B, L, ...] sequences (with `step_id`); no replay
        updates; `key` is unused (the bootstrap weights depend on the step ids only)."""
        del key
        check_sequence_length(batch, self.sequence_length, "pets")
        state, metrics, _ = self.model.train_step(state, batch)
        return state, metrics, {}

    # ----------------------------------------------------------------------------- acting
    def rollout(self, params: dict[str, Any], state: dict[str, jax.Array],
                actions: jax.Array) -> jax.Array:
        """Returns [N] of action sequences [N, H, A] from `state` {'obs': [D], 'key'}: the
        mean discounted return over `pets.particles` TS-inf particles, each kept on one
        member, the rewards of later steps weighted by the predicted chance of no termination."""
        p = self.cfg.pets
        n, horizon, _ = actions.shape
        per = p.particles // p.members
        acts = jnp.broadcast_to(planners.as_actions(actions, self.discrete)[None, :, None],
                                (p.members, n, per, horizon, self.act_dim))
        acts = jnp.moveaxis(acts.reshape(p.members, n * per, horizon, self.act_dim), 2, 0)
        states = jnp.broadcast_to(state["obs"], (p.members, n * per, self.obs_dim))

        def step(states, inputs):
            action, key = inputs
            states, reward, done = self.model.predict(params, states, action, key)
            return states, (reward, done)

        keys = jax.random.split(state["key"], horizon)
        _, (reward, done) = jax.lax.scan(step, states, (acts, keys))  # [H, K, N * per]
        reward, done = (x.reshape(horizon, -1).T for x in (reward, done))
        ret = planners.discounted_return(reward, p.discount * (1.0 - done))
        return ret.reshape(p.members, n, per).mean((0, 2))

    def plan(self, params: dict[str, Any], obs: jax.Array, mean: jax.Array,
             key: jax.Array) -> jax.Array:
        """The planner's refined sequence [H, A] from observation [D] and warm start [H, A]."""
        p = self.cfg.pets
        k_plan, k_model = jax.random.split(key)
        state = {"obs": obs.astype(jnp.float32), "key": k_model}
        if p.planner == "cem":
            return planners.cem(self.rollout, params, state, k_plan, mean,
                                candidates=p.candidates, elites=p.elites,
                                iterations=p.iterations, init_std=p.init_std,
                                smoothing=p.smoothing)
        return planners.mppi(self.rollout, params, state, k_plan, mean,
                             candidates=p.candidates, elites=p.elites,
                             iterations=p.iterations, init_std=p.init_std,
                             min_std=p.min_std, temperature=p.temperature)

    def policy_initial(self, batch: int) -> jax.Array:
        """The warm-start plans [N, H, A] (zeros: the middle of the action range)."""
        return jnp.zeros((batch, self.cfg.pets.horizon, self.act_dim))

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        return {}

    def policy(self, params: dict[str, Any], carry: jax.Array, obs: Batch, key: jax.Array,
               mode: str = "sample"):
        """Plans for N environments: obs vector [N, D], is_first [N]. Every mode ('eval',
        'sample' and 'mode') acts on the first action of the planner's refined mean, as the
        PETS paper executes it in training and evaluation alike; the randomness is the
        search's."""
        check_mode(mode)
        carry = jnp.where(obs["is_first"][:, None, None], 0.0, carry)
        keys = jax.random.split(key, carry.shape[0])
        plans = jax.vmap(self.plan, (None, 0, 0, 0))(params, obs["vector"], carry, keys)
        return planners.shift(plans), planners.as_actions(plans[:, 0], self.discrete), {}
