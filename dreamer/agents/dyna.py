"""Tabular Dyna-Q and prioritized sweeping (Sutton & Barto, 2nd ed., Sec. 8.2 and 8.4).

Both learn an action-value table Q [S, A] and a deterministic model that stores, for every
(state, action) pair, the last transition observed from it: reward, next state and whether the
episode terminated there. After each real transition:

- Dyna-Q makes one Q-learning update on it, writes it into the model, then `dyna.planning_steps`
  (n) Q-learning updates on pairs drawn uniformly from those seen, with the model's transition
  (Tabular Dyna-Q, Sec. 8.2). n = 0 is one-step Q-learning.
- Prioritized sweeping writes it into the model and queues the pair with priority |TD error| when
  that exceeds `dyna.theta`; then up to n times, while the queue is not empty, it pops the pair of
  largest priority, updates Q on the model's transition and queues every predecessor of the
  updated state (pairs whose stored transition leads there) by its own |TD error| (Sec. 8.4).
  As in the book, the real transition reaches Q only through the queue.

The queue is the priority table [S, A] (0: not queued; a pair queued twice keeps the larger
priority), so every step is a pure function of arrays and `train_step` jit-compiles.

States are the argmax of the one-hot `vector` observation (the built-in Dyna maze, gymnasium's
Discrete spaces). The replay hands out consecutive, non-overlapping sequences, so the transition
into a sequence's first step is rebuilt from the policy's outputs, which store the previous state
and action beside each step (-1 where the policy did not act, as in a random prefill); with every
step replayed once (`run.train_ratio: 1` and the online queue) each real transition is learned
from exactly once. On several devices every device gathers all devices' transitions and applies
them in the global batch order with the same planning draws, so the tables stay replicated and N
devices compute exactly what one device holding the whole batch computes.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.config import ConfigError
from dreamer.parallel import gather_over

Batch = dict[str, jax.Array]
# One or more transitions, each field [K]: state, action, reward, next, terminal, valid.
Transitions = dict[str, jax.Array]


class DynaState(flax.struct.PyTreeNode):
    params: dict[str, jax.Array]   # {'q': [S, A]}: what the policy acts with
    model: dict[str, jax.Array]    # reward [S, A], next [S, A] int32, terminal and seen [S, A] bool
    priority: jax.Array            # [S, A]: the prioritized-sweeping queue (0: not queued)
    step: jax.Array


def empty_model(states: int, actions: int) -> dict[str, jax.Array]:
    """A model that has seen no pair yet."""
    zeros = jnp.zeros((states, actions))
    return {"reward": zeros, "next": jnp.zeros((states, actions), jnp.int32),
            "terminal": zeros.astype(bool), "seen": zeros.astype(bool)}


def td_error(q: jax.Array, s, a, r, s_next, terminal, *, discount: float) -> jax.Array:
    """r + discount * max_a' Q[s', a'] - Q[s, a], without the bootstrap after a termination;
    q [S, A], the others scalars or any equal shapes."""
    bootstrap = jnp.where(terminal, 0.0, q[s_next].max(-1))
    return r + discount * bootstrap - q[s, a]


def q_update(q: jax.Array, s, a, r, s_next, terminal, *, lr: float, discount: float):
    """One Q-learning update of Q [S, A] on one transition (Sec. 6.5, Eq. 6.8); returns the new
    table and the TD error before the update."""
    delta = td_error(q, s, a, r, s_next, terminal, discount=discount)
    return q.at[s, a].add(lr * delta), delta


def model_update(model: dict[str, jax.Array], s, a, r, s_next, terminal) -> dict[str, jax.Array]:
    """The model with pair (s, a) now leading to (r, s_next, terminal), its last transition."""
    return {"reward": model["reward"].at[s, a].set(r), "next": model["next"].at[s, a].set(s_next),
            "terminal": model["terminal"].at[s, a].set(terminal),
            "seen": model["seen"].at[s, a].set(True)}


def model_update_on(q: jax.Array, model: dict[str, jax.Array], s, a, *, lr: float,
                    discount: float):
    """A Q-learning update on the model's stored transition of pair (s, a): (q, TD error)."""
    return q_update(q, s, a, model["reward"][s, a], model["next"][s, a],
                    model["terminal"][s, a], lr=lr, discount=discount)


def draw_seen(seen: jax.Array, key: jax.Array, count: int) -> jax.Array:
    """`count` flat indices s * A + a of pairs drawn uniformly, with replacement, among those
    marked in seen [S, A] (at least one): the k-th marked pair for k uniform below their
    number, found by bisection in their running count (a categorical draw over all S * A pairs
    would cost S * A random numbers per draw)."""
    running = jnp.cumsum(seen.reshape(-1))                              # [S * A]
    ranks = jax.random.randint(key, (count,), 0, jnp.maximum(running[-1], 1))
    return jnp.searchsorted(running, ranks, side="right")


def plan_uniform(q: jax.Array, model: dict[str, jax.Array], key: jax.Array, *, steps: int,
                 lr: float, discount: float) -> jax.Array:
    """Dyna-Q's planning: `steps` updates on pairs drawn uniformly among those the model has
    seen (at least one)."""
    if steps == 0:
        return q
    actions = q.shape[1]
    # The model does not change while planning, so every pair is drawn up front.
    pairs = draw_seen(model["seen"], key, steps)

    def body(i, q):
        pair = pairs[i]
        return model_update_on(q, model, pair // actions, pair % actions, lr=lr,
                               discount=discount)[0]

    return jax.lax.fori_loop(0, steps, body, q)


def push(priority: jax.Array, s, a, p: jax.Array, *, theta: float) -> jax.Array:
    """The queue [S, A] with pair (s, a) queued at priority p when p > theta (a pair already
    queued keeps the larger of its two priorities)."""
    return priority.at[s, a].set(jnp.where(p > theta, jnp.maximum(priority[s, a], p),
                                           priority[s, a]))


def pop(priority: jax.Array):
    """The pair of largest priority: (state, action, whether the queue held any, the queue
    without it)."""
    actions = priority.shape[1]
    pair = jnp.argmax(priority.reshape(-1))
    s, a = pair // actions, pair % actions
    return s, a, priority[s, a] > 0, priority.at[s, a].set(0.0)


def push_predecessors(priority: jax.Array, q: jax.Array, model: dict[str, jax.Array], s, *,
                      discount: float, theta: float) -> jax.Array:
    """The queue with every pair whose stored transition leads to state s queued at its own
    |TD error| when that exceeds theta."""
    lead = model["seen"] & (model["next"] == s)                          # [S, A]
    target = model["reward"] + discount * jnp.where(model["terminal"], 0.0, q[s].max())
    p = jnp.where(lead, jnp.abs(target - q), 0.0)
    return jnp.where(p > theta, jnp.maximum(priority, p), priority)


def plan_prioritized(q: jax.Array, model: dict[str, jax.Array], priority: jax.Array, *,
                     steps: int, lr: float, discount: float, theta: float):
    """Prioritized sweeping's planning: up to `steps` pops while the queue is not empty, each an
    update on the popped pair followed by queueing its state's predecessors; (q, queue)."""
    def more(carry):
        i, _, priority = carry
        return (i < steps) & (priority.max() > 0)  # a queued pair has priority > 0

    def body(carry):
        i, q, priority = carry
        s, a, _, rest = pop(priority)
        q, _ = model_update_on(q, model, s, a, lr=lr, discount=discount)
        return i + 1, q, push_predecessors(rest, q, model, s, discount=discount, theta=theta)

    # A while loop, not `steps` masked no-ops: the queue is often empty (before any reward).
    _, q, priority = jax.lax.while_loop(more, body, (jnp.zeros([], jnp.int32), q, priority))
    return q, priority


def transitions(batch: Batch) -> Transitions:
    """[B, L, ...] replayed sequences -> their B * L transitions [B * L], in time order within
    each sequence: the one into the first step (from the policy's stored `prev_state` and
    `prev_action`), then the L - 1 within the sequence. A transition into an episode's first
    step, or from a step the policy did not choose, is not valid."""
    s = jnp.argmax(batch["vector"], -1).astype(jnp.int32)               # [B, L]
    a = jnp.argmax(batch["action"], -1).astype(jnp.int32)
    prev_s = batch["prev_state"][:, :1].astype(jnp.int32)
    prev_a = batch["prev_action"][:, :1].astype(jnp.int32)
    arrived = ~batch["is_first"]
    out = {"state": jnp.concatenate([prev_s, s[:, :-1]], 1),
           "action": jnp.concatenate([prev_a, a[:, :-1]], 1),
           "reward": batch["reward"].astype(jnp.float32), "next": s,
           "terminal": batch["is_terminal"],
           "valid": arrived.at[:, 0].set(arrived[:, 0] & (prev_s[:, 0] >= 0))}
    return {k: v.reshape(-1) for k, v in out.items()}


class DynaQ:
    """Tabular Dyna-Q on the shared agent interface (see `dreamer.agents.Agent`)."""

    sweeping = False  # planning from uniform draws; PrioritizedSweeping plans from its queue

    def __init__(self, cfg: Any, obs_space: dict, act_space: Any, axis_name: str | None = None,
                 platform: str | None = None):
        del platform  # tables of float32 everywhere
        p = cfg.dyna
        name = cfg.agent
        if "vector" not in obs_space or not act_space.discrete:
            raise ConfigError(f"{name} needs discrete actions and a one-hot state vector: set "
                              f"env.obs=vector on a task with discrete states (the task "
                              f"{cfg.env.task} gives {', '.join(obs_space)})")
        if cfg.batch_length < 2:
            raise ConfigError(f"{name} trains on transitions: batch_length must be at least 2, "
                              f"got {cfg.batch_length}")
        if self.sweeping and p.planning_steps < 1:
            raise ConfigError("prioritized_sweeping learns only through its planning updates: "
                              f"dyna.planning_steps must be at least 1, got {p.planning_steps}")
        self.cfg, self.axis_name = cfg, axis_name
        self.states = obs_space["vector"].shape[-1]
        self.act_dim = act_space.n
        self.obs_keys = ("vector",)
        self.sequence_length = cfg.batch_length
        self.hyper = {"lr": p.lr, "discount": p.discount}

    def init(self, key: jax.Array) -> DynaState:
        del key  # tables start at zero
        s, a = self.states, self.act_dim
        return DynaState(params={"q": jnp.zeros((s, a))}, model=empty_model(s, a),
                         priority=jnp.zeros((s, a)), step=jnp.zeros([], jnp.int32))

    # ----------------------------------------------------------------------------- learning
    def learn_one(self, state: DynaState, t: Transitions, key: jax.Array):
        """The update after one real transition (fields scalars): (state, TD error)."""
        p = self.cfg.dyna
        q, model = state.params["q"], state.model
        args = (t["state"], t["action"], t["reward"], t["next"], t["terminal"])
        if self.sweeping:
            model = model_update(model, *args)
            delta = td_error(q, *args, discount=p.discount)
            priority = push(state.priority, t["state"], t["action"], jnp.abs(delta),
                            theta=p.theta)
            q, priority = plan_prioritized(q, model, priority, steps=p.planning_steps,
                                           theta=p.theta, **self.hyper)
        else:
            q, delta = q_update(q, *args, **self.hyper)
            model = model_update(model, *args)
            q = plan_uniform(q, model, key, steps=p.planning_steps, **self.hyper)
            priority = state.priority
        return state.replace(params={"q": q}, model=model, priority=priority), delta

    def learn(self, state: DynaState, trans: Transitions, key: jax.Array):
        """The updates after K real transitions [K], in order; invalid ones are skipped.
        Returns (state, metrics)."""
        def body(state, inputs):
            i, t = inputs
            new, delta = self.learn_one(state, t, jax.random.fold_in(key, i))
            state = jax.tree.map(lambda n, o: jnp.where(t["valid"], n, o), new, state)
            return state, jnp.where(t["valid"], jnp.abs(delta), 0.0)

        k = trans["valid"].shape[0]
        new, deltas = jax.lax.scan(body, state, (jnp.arange(k), trans))
        count = trans["valid"].sum()
        finite = jnp.all(jnp.isfinite(new.params["q"]))
        new = new.replace(step=state.step + 1)
        state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        q = state.params["q"]
        metrics = {"loss/td": deltas.sum() / jnp.maximum(count, 1), "transitions": count,
                   "q/mean": q.mean(), "q/max": q.max(),
                   "model/seen": state.model["seen"].mean(),
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        if self.sweeping:
            metrics["queue/size"] = (state.priority > 0).sum()
        return state, metrics

    def train_step(self, state: DynaState, batch: Batch, key: jax.Array):
        """Learns from every real transition of [B, L, ...] sequences of all devices (see the
        module docstring); no replay updates."""
        length = batch["is_first"].shape[1]
        if length != self.sequence_length:
            raise ValueError(f"batch sequences hold {length} steps, {self.cfg.agent} trains on "
                             f"{self.sequence_length} (batch_length)")
        trans = gather_over(transitions(batch), self.axis_name)
        state, metrics = self.learn(state, trans, key)
        return state, metrics, {}

    # ----------------------------------------------------------------------------- acting
    def policy_initial(self, batch: int) -> tuple[jax.Array, jax.Array]:
        """(previous state, previous action) [N] each: -1, none yet."""
        none = jnp.full((batch,), -1, jnp.int32)
        return none, none

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        none = np.full((batch,), -1, np.int32)
        return {"prev_state": none, "prev_action": none}

    def policy(self, params: dict[str, jax.Array], carry: tuple[jax.Array, jax.Array],
               obs: Batch, key: jax.Array, mode: str = "sample"):
        """ε-greedy on Q for N environments (obs vector [N, S], is_first [N]): 'sample' acts
        uniformly at random with chance `dyna.epsilon`, 'mode' is greedy; ties between greedy
        actions are broken uniformly at random. The outputs are the state and action of the
        previous step ([N] int32, -1 at an episode's first step)."""
        s = jnp.argmax(obs["vector"], -1).astype(jnp.int32)
        q = params["q"][s]                                                   # [N, A]
        k_tie, k_explore, k_random = jax.random.split(key, 3)
        greedy = jax.random.categorical(
            k_tie, jnp.where(q == q.max(-1, keepdims=True), 0.0, -jnp.inf))
        action = greedy.astype(jnp.int32)
        if mode == "sample":
            explore = jax.random.bernoulli(k_explore, self.cfg.dyna.epsilon, s.shape)
            uniform = jax.random.randint(k_random, s.shape, 0, self.act_dim)
            action = jnp.where(explore, uniform, action)
        first = obs["is_first"]
        outputs = {"prev_state": jnp.where(first, -1, carry[0]),
                   "prev_action": jnp.where(first, -1, carry[1])}
        return (s, action), jax.nn.one_hot(action, self.act_dim), outputs


class PrioritizedSweeping(DynaQ):
    """Tabular prioritized sweeping on the shared agent interface (see the module docstring)."""

    sweeping = True
