"""Shared fixtures: the tiny `debug` config, spaces, replay-layout batches and compiled agents.

Agents and their jitted functions are session-scoped: compiling a train step dominates the cost
of these tests, so each is compiled once and shared by every test file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents.dreamerv3 import DreamerV3, TrainState, behavior, world_model
from dreamer.config import Config, load_config
from dreamer.envs import base

# The processes tests start (launch/train.py, actor processes, notebook kernels) compile with few
# optimisations too, as this one does (`_fast_compiles`): their tiny programs run for seconds but
# took longer to optimise. A test that wants the optimisations says so itself.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

# Fake CPU devices for the data-parallel tests; must be set before JAX starts its backend.
DEVICES = 4
jax.config.update("jax_num_cpu_devices", DEVICES)

BATCH, LENGTH = 4, 8
IMAGE_SHAPE = (16, 16, 3)
VECTOR_DIM = 5


@pytest.fixture(scope="session", autouse=True)
def _fast_compiles():
    """Skip most XLA optimisation passes: with tiny models, compiling costs far more than running,
    and the optimisations do not change what the tests check."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return load_config(["debug"])


@pytest.fixture(scope="session")
def image_obs_space() -> dict[str, base.Space]:
    return {"image": base.Space(np.uint8, IMAGE_SHAPE, 0, 255)}


@pytest.fixture(scope="session")
def vector_obs_space() -> dict[str, base.Space]:
    return {"vector": base.Space(np.float32, (VECTOR_DIM,))}


@pytest.fixture(scope="session")
def discrete_act_space() -> base.Space:
    return base.discrete_space(3)


@pytest.fixture(scope="session")
def continuous_act_space() -> base.Space:
    return base.continuous_space(2)


def random_batch(obs_space: dict[str, base.Space], act_space: base.Space, batch: int = BATCH,
                 length: int = LENGTH, seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch [B, T, ...] in the replay layout.

    Every row starts an episode at t=0; row 0 also ends one in the middle (a truncation) and row 1
    ends one by termination, each followed by a new episode, so the sequences cross boundaries.
    `step_id` numbers the steps as a replay would, one row after the other; batches of other
    seeds hold other steps.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    if "image" in obs_space:
        shape = obs_space["image"].shape
        out["image"] = rng.integers(0, 256, (batch, length, *shape), dtype=np.uint8)
    if "vector" in obs_space:
        dim = obs_space["vector"].shape[-1]
        out["vector"] = rng.normal(0, 3, (batch, length, dim)).astype(np.float32)
    if act_space.discrete:
        index = rng.integers(0, act_space.n, (batch, length))
        out["action"] = np.eye(act_space.n, dtype=np.float32)[index]
    else:
        dim = act_space.shape[-1]
        out["action"] = rng.uniform(-1, 1, (batch, length, dim)).astype(np.float32)
    out["reward"] = rng.normal(0, 1, (batch, length)).astype(np.float32)
    is_first = np.zeros((batch, length), bool)
    is_last = np.zeros((batch, length), bool)
    is_terminal = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    middle = length // 2
    for row in range(min(batch, 2)):
        is_last[row, middle - 1] = True
        is_first[row, middle] = True
    is_terminal[min(batch, 2) - 1, middle - 1] = True
    out.update(is_first=is_first, is_last=is_last, is_terminal=is_terminal)
    first = seed * batch * length
    out["step_id"] = np.arange(first, first + batch * length, dtype=np.int32).reshape(batch, length)
    return out


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., dict[str, np.ndarray]]:
    """`make_batch(obs_space, act_space, batch=4, length=8, seed=0)` -> replay-layout batch."""
    return random_batch


@dataclasses.dataclass
class AgentCase:
    """An agent with its initial train state, a batch and the compiled functions tests share."""

    name: str
    agent: DreamerV3
    state: TrainState
    batch: dict[str, np.ndarray]
    train_step: Callable  # jitted, donates its state argument: pass a copy
    policy: Callable      # jitted DreamerV3.policy

    def fresh_state(self) -> TrainState:
        """A copy of the initial state that may be donated."""
        return jax.tree.map(jnp.copy, self.state)


def with_context(batch: dict[str, np.ndarray], agent: DreamerV3, seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """`batch` plus random replay context of `agent` (stored model states), when it uses it."""
    if not agent.context:
        return batch
    rng = np.random.default_rng(seed)
    b, length = batch["is_first"].shape
    m = agent.cfg.model
    return {**batch,
            "context_deter": rng.normal(0, 0.5, (b, length, m.deter)).astype(np.float32),
            "context_stoch": rng.integers(0, m.classes, (b, length, m.stoch)).astype(np.int32)}


def agent_batch(agent: DreamerV3, obs_space: dict, act_space: base.Space, batch: int = BATCH,
                seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch of `agent.sequence_length` steps with the agent's replay context."""
    data = random_batch(obs_space, act_space, batch, agent.sequence_length, seed)
    return with_context(data, agent, seed)


def _make_case(name: str, cfg: Config, obs_space: dict, act_space: base.Space) -> AgentCase:
    agent = DreamerV3(cfg, obs_space, act_space)
    state = jax.jit(agent.init)(jax.random.key(0))
    return AgentCase(
        name=name, agent=agent, state=state, batch=agent_batch(agent, obs_space, act_space),
        train_step=jax.jit(agent.train_step, donate_argnums=0),
        policy=jax.jit(agent.policy, static_argnames="mode"))


@pytest.fixture(scope="session")
def discrete_case(tiny_cfg, image_obs_space, discrete_act_space) -> AgentCase:
    """Image observations, 3 discrete actions."""
    return _make_case("discrete", tiny_cfg, image_obs_space, discrete_act_space)


@pytest.fixture(scope="session")
def continuous_case(tiny_cfg, vector_obs_space, continuous_act_space) -> AgentCase:
    """Vector observations, 2-D continuous actions."""
    return _make_case("continuous", tiny_cfg, vector_obs_space, continuous_act_space)


@pytest.fixture(scope="session", params=["discrete", "continuous"])
def case(request) -> AgentCase:
    return request.getfixturevalue(f"{request.param}_case")


def randomise_heads(params: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """Random output layers for the reward head and the critic.

    Both start at zero (outscale 0), so imagined rewards, values and hence advantages are all
    exactly zero at initialisation; random outputs make the REINFORCE term non-trivial.
    """
    def randomise(tree, k):
        leaves, treedef = jax.tree.flatten(tree)
        keys = jax.random.split(k, len(leaves))
        noisy = [x + jax.random.normal(kk, x.shape) for x, kk in zip(leaves, keys, strict=True)]
        return jax.tree.unflatten(treedef, noisy)

    k_rew, k_critic = jax.random.split(key)
    out = "Linear_0"  # the MLP's output layer (its hidden layers are Dense_i)
    rew = params["wm"]["rew"]
    wm = {**params["wm"], "rew": {**rew, out: randomise(rew[out], k_rew)}}
    critic = {**params["critic"], out: randomise(params["critic"][out], k_critic)}
    return {**params, "wm": wm, "critic": critic}


@pytest.fixture(scope="session")
def perturb_heads() -> Callable[[dict[str, Any], jax.Array], dict[str, Any]]:
    """`perturb_heads(params, key)`: params with random reward and critic output layers."""
    return randomise_heads


def imagination_outputs(case: AgentCase) -> dict[str, Any]:
    """Losses and gradients of the actor-critic and replayed-value terms w.r.t. ALL parameters.

    Uses the entropy-free config so that any actor gradient comes from the advantage term, and
    random reward/critic output layers so that advantages are non-zero. The start states of
    imagination and the features of the replayed-value loss are the world model's posterior
    states computed inside the differentiated functions, so gradients would reach the world
    model if these losses did not stop them.
    """
    agent, state = case.agent, case.state
    kwargs = {**agent.imagination_kwargs(), "entropy": 0.0}
    start, prev_action, batch = world_model.sequence_inputs(agent.wm, case.batch, agent.context)
    b, t = batch["is_first"].shape
    k_wm, k_ac = jax.random.split(jax.random.key(1))

    def posterior(p):
        return world_model.loss(agent.wm, p["wm"], batch, start, prev_action, k_wm,
                                free_nats=agent.cfg.model.free_nats)[2]

    def ac_loss(p):
        start = world_model.flat_steps(posterior(p).states)
        start_cont = 1.0 - batch["is_terminal"].reshape(-1).astype(jnp.float32)
        terms, metrics, retnorm, ret0 = behavior.actor_critic_loss(
            agent.wm, agent.ac, p, state.slow_critic, state.retnorm, start, start_cont, k_ac,
            **kwargs)
        return terms["policy"].mean() + terms["value"].mean(), (terms, metrics, retnorm, ret0)

    def repval_loss(p, boot, grad):
        ac = agent.cfg.ac
        return behavior.repval_loss(
            agent.ac, p["critic"], state.slow_critic, posterior(p).feat, batch, boot,
            discount_horizon=ac.discount_horizon, lam=ac.lam, slowreg=ac.slowreg,
            grad=grad).mean()

    @jax.jit
    def compute(p):
        (ac, aux), ac_grads = jax.value_and_grad(ac_loss, has_aux=True)(p)
        boot = aux[3].reshape(b, t)
        rep, rep_grads = jax.value_and_grad(repval_loss)(p, boot, True)
        stopped = jax.grad(repval_loss)(p, boot, False)
        return {"ac_loss": ac, "ac_aux": aux, "ac_grads": ac_grads,
                "repval_loss": rep, "repval_grads": rep_grads, "repval_stopped_grads": stopped}

    return compute(randomise_heads(state.params, jax.random.key(7)))


@pytest.fixture(scope="session")
def imagination(case) -> dict[str, Any]:
    """`imagination_outputs` of `case`, computed once per session and action space."""
    return imagination_outputs(case)
