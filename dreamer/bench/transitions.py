"""Flat transitions of a vector environment, and what a one-step model does with them.

A transition is (s_t, a_t, r_t+1, s_t+1, terminal_t+1): the state vector, the discrete action
taken in it, and the reward, state and termination that followed. `collect` records them with a
uniformly random policy, episode after episode, as numpy arrays of N rows; `as_sequences` lays
them out as the replay's sequences of two steps, so that the dynamics model's `train_step`
(`dreamer.core.dynamics`, PETS's model) learns from them. A one-step model is any `predict(states [N, D], actions [N, A] one-hot) ->
(next states [N, D], rewards [N], termination probabilities [N])`: `unroll` chains it open loop
along action sequences (k-step prediction), `windows` cuts the real k-step targets out of whole
episodes, and `rollout` is the planners' rollout function for discrete actions (a continuous
relaxation: each step's action is the argmax of the planner's [A] entries, as in PETS), whose
return counts a predicted reward only while the model predicts no termination.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.core import planners

Data = dict[str, np.ndarray]
Predict = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
FIELDS = ("state", "action", "reward", "next", "terminal", "last", "episode")


def collect(env: Any, steps: int, rng: np.random.Generator) -> Data:
    """`steps` transitions of a uniformly random policy: state and next [N, D] float32, action
    [N] int32, reward [N] float32, terminal and last (the episode ends: termination or time
    limit) [N] bool, episode [N] int32 (0, 1, ...). The last episode may be cut short."""
    if not env.act_space.discrete or "vector" not in env.obs_space:
        raise ValueError("collect needs discrete actions and a `vector` observation "
                         "(a gym_ task with env.obs=vector)")
    if steps < 1:
        raise ValueError(f"collect needs at least one step, got {steps}")
    rows: dict[str, list] = {k: [] for k in FIELDS}
    obs, episode = env.reset(), 0
    for _ in range(steps):
        action = int(rng.integers(env.act_space.n))
        out = env.step(np.int32(action))
        for key, value in zip(FIELDS, (obs["vector"], action, out["reward"], out["vector"],
                                       out["is_terminal"], out["is_last"], episode)):
            rows[key].append(value)
        obs = out
        if out["is_last"]:
            obs, episode = env.reset(), episode + 1
    types = (np.float32, np.int32, np.float32, np.float32, bool, bool, np.int32)
    return {k: np.asarray(rows[k], t) for k, t in zip(FIELDS, types)}


def split(data: Data, fraction: float) -> tuple[Data, Data]:
    """(train, held out): the last `fraction` of the episodes are held out whole, so that
    k-step windows never mix the two."""
    episodes = int(data["episode"][-1]) + 1
    held = round(fraction * episodes)
    if not 0 < held < episodes:
        raise ValueError(f"holding out {fraction:g} of {episodes} episodes leaves one side "
                         "empty: collect more steps or change the fraction")
    cut = data["episode"] >= episodes - held
    return {k: v[~cut] for k, v in data.items()}, {k: v[cut] for k, v in data.items()}


def as_sequences(data: Data, act_dim: int) -> dict[str, np.ndarray]:
    """Each transition as a replayed sequence of two steps [N, 2, ...] (vector, one-hot action
    chosen at each step, reward and flags on arriving), the layout of `Agent.train_step`. The
    step ids are those a replay fed these episodes in order would give: an episode of n
    transitions holds n + 1 steps, so transition i starts at step i + episode[i]."""
    n = len(data["action"])
    first = np.arange(n, dtype=np.int32) + data["episode"].astype(np.int32)
    action = np.zeros((n, 2, act_dim), np.float32)
    action[np.arange(n), 0, data["action"]] = 1.0
    zeros = np.zeros(n, bool)
    return {"vector": np.stack([data["state"], data["next"]], 1),
            "action": action,
            "reward": np.stack([np.zeros(n, np.float32), data["reward"]], 1),
            "is_first": np.stack([~zeros, zeros], 1),
            "is_last": np.stack([zeros, data["last"]], 1),
            "is_terminal": np.stack([zeros, data["terminal"]], 1),
            "step_id": np.stack([first, first + 1], 1)}


def unroll(predict: Predict, states: jax.Array, actions: jax.Array):
    """Open-loop prediction: each step feeds the predicted state back. states [N, D], actions
    [N, H, A] -> (states s_t+1..s_t+H [N, H, D], rewards [N, H], termination probs [N, H])."""
    n, d = states.shape
    chex.assert_axis_dimension(actions, 0, n)

    def step(s, a):
        s_next, reward, done = predict(s, a)
        chex.assert_shape((s_next, reward, done), ((n, d), (n,), (n,)))
        return s_next, (s_next, reward, done)

    _, outs = jax.lax.scan(step, states, jnp.swapaxes(actions, 0, 1))
    return tuple(jnp.swapaxes(x, 0, 1) for x in outs)


def rollout(predict: Callable[..., Any], params: Any, state: jax.Array, plan: jax.Array, *,
            discount: float) -> jax.Array:
    """The planners' rollout for discrete actions: `predict(params, states, actions)` from the
    state [D] along the one-hot argmax of each step of the plans [N, H, A] -> returns [N]."""
    states = jnp.broadcast_to(state, (plan.shape[0], state.shape[-1]))
    _, rewards, done = unroll(lambda s, x: predict(params, s, x), states,
                             planners.as_actions(plan, discrete=True))
    return planners.discounted_return(rewards, discount * (1.0 - done))


def windows(data: Data, horizon: int) -> Data:
    """Every window of up to `horizon` steps inside one episode, from each transition on: start
    [M, D], action [M, H] int32, target (the real s_t+1..s_t+H) [M, H, D], and mask [M, H]
    (false past the episode's end, where action and target repeat the last row)."""
    n = len(data["action"])
    index = np.arange(n)[:, None] + np.arange(horizon)[None]
    inside = index < n
    index = np.minimum(index, n - 1)
    mask = inside & (data["episode"][index] == data["episode"][:, None])
    return {"start": data["state"], "action": data["action"][index],
            "target": data["next"][index], "mask": mask}


def errors(predicted: np.ndarray, target: np.ndarray, mask: np.ndarray):
    """Root mean squared error of each step and dimension over the windows that reach it:
    predicted, target [M, H, D], mask [M, H] -> (rmse [H, D], windows [H])."""
    chex.assert_equal_shape((predicted, target))
    count = mask.sum(0)
    squares = (np.square(predicted - target) * mask[..., None]).sum(0)
    return np.sqrt(squares / np.maximum(count, 1)[:, None]), count


def run_episodes(envs: list, act: Callable[[np.ndarray], np.ndarray]):
    """One episode in each environment, all stepped together: `act(vectors [E, D]) -> actions
    [E]` chooses every step (for finished environments too: their actions are dropped).
    Returns the undiscounted episode returns [E] and the last state vectors [E, D]."""
    outs = [env.reset() for env in envs]
    done = np.zeros(len(envs), bool)
    returns = np.zeros(len(envs))
    while not done.all():
        actions = np.asarray(act(np.stack([o["vector"] for o in outs])))
        for i, env in enumerate(envs):
            if not done[i]:
                outs[i] = env.step(np.int32(actions[i]))
                returns[i] += float(outs[i]["reward"])
                done[i] = bool(outs[i]["is_last"])
    return returns, np.stack([o["vector"] for o in outs])
