"""Tabular Dyna-Q and prioritized sweeping (Sutton & Barto, 2nd ed., Sec. 8.2 and 8.4), with the
model of a stochastic world (Sec. 8.4's counts).

Both learn an action-value table Q [S, A] and a model of what each (state, action) pair led to:
the number of visits, the mean reward, and for every next state how often the pair led there
with and without termination. After each real transition:

- Dyna-Q makes one Q-learning update on it, counts it into the model, then `dyna.planning_steps`
  (n) updates on pairs drawn uniformly from those seen (Tabular Dyna-Q, Sec. 8.2): with
  `dyna.backup: sample`, a Q-learning update on a transition the model samples (a next state and
  termination drawn by their counts, the pair's mean reward); with `expected`, an expected update
  over the model's distribution of next states. n = 0 is one-step Q-learning.
- Prioritized sweeping counts it into the model and queues the pair with priority |expected TD
  error| when that exceeds `dyna.theta`; then up to n times, while the queue is not empty, it pops
  the pair of largest priority, makes an expected update on it and queues every predecessor of
  its state (pairs the model has seen lead there) by its own |expected TD error| (Sec. 8.4 and its
  extension to stochastic worlds). As in the book, the real transition reaches Q only through
  the queue.

In a deterministic world every pair has one outcome, its probability is exactly 1 and its mean
reward exactly the reward, so both backups equal the update on the last transition, bit for bit
(the model of the book's Sec. 8.2). The counts take S * A * S floats twice: fine for the toy-text
worlds (Taxi: 12 MB), not for large state spaces.

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

from dreamer.agents.modes import check_mode
from dreamer.config import ConfigError
from dreamer.core.parallel import gather_over
from dreamer.core.updates import all_finite, check_sequence_length, nonfinite_metric

Batch = dict[str, jax.Array]
# One or more transitions, each field [K]: state, action, reward, next, terminal, valid.
Transitions = dict[str, jax.Array]
# The model: visits [S, A], mean reward [S, A], and per next state the arrivals that went on
# (`cont`) and that terminated (`ended`), [S, A, S] each; float32 counts (exact below 2^24).
Model = dict[str, jax.Array]
BACKUPS = ("sample", "expected")  # Dyna-Q's planning updates, as `dyna.backup` names them


class DynaState(flax.struct.PyTreeNode):
    params: dict[str, jax.Array]   # {'q': [S, A]}: what the policy acts with
    model: Model                   # see `Model`
    priority: jax.Array            # [S, A]: the prioritized-sweeping queue (0: not queued)
    step: jax.Array


def empty_model(states: int, actions: int) -> Model:
    """A model that has seen no pair yet."""
    pairs, arrivals = jnp.zeros((states, actions)), jnp.zeros((states, actions, states))
    return {"count": pairs, "reward": pairs, "cont": arrivals, "ended": arrivals}


def seen(model: Model) -> jax.Array:
    """[S, A] bool: the pairs the model has a transition of."""
    return model["count"] > 0


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


def model_update(model: Model, s, a, r, s_next, terminal, weight=1.0) -> Model:
    """The model with the transition (s, a) -> (r, s_next, terminal) counted `weight` times (0 or
    1: an invalid transition is counted 0 times and changes nothing). The mean reward moves by
    (r - mean) / visits, so a pair that always gives r has mean exactly r."""
    weight = jnp.asarray(weight, jnp.float32)
    count = model["count"][s, a] + weight
    step = weight * (r - model["reward"][s, a]) / jnp.maximum(count, 1.0)
    ended = weight * jnp.asarray(terminal, jnp.float32)
    return {"count": model["count"].at[s, a].add(weight),
            "reward": model["reward"].at[s, a].add(step),
            "cont": model["cont"].at[s, a, s_next].add(weight - ended),
            "ended": model["ended"].at[s, a, s_next].add(ended)}


def continue_probabilities(model: Model) -> jax.Array:
    """[S, A, S]: the chance that each pair leads to each next state and the episode goes on
    there (visits / visits of the pair: exactly 1 for a pair's only outcome)."""
    return model["cont"] / jnp.maximum(model["count"], 1.0)[..., None]


def expected_targets(q: jax.Array, reward: jax.Array, cont: jax.Array, *, discount: float):
    """[S, A]: every pair's expected target, its mean reward (`reward` [S, A]) + discount * the
    sum over next states of the chance of going on there (`cont`, from
    `continue_probabilities`) times max_a' Q[s', a']. A product and a sum, not a matmul, so
    that no accelerator rounds the values to a lower precision and a sure outcome gives exactly
    its one value."""
    return reward + discount * (cont * q.max(-1)).sum(-1)


def expected_td(q: jax.Array, model: Model, s, a, *, discount: float) -> jax.Array:
    """The expected TD error of pair (s, a) under the model: its expected target - Q[s, a]."""
    cont = model["cont"][s, a] / jnp.maximum(model["count"][s, a], 1.0)
    return model["reward"][s, a] + discount * (cont * q.max(-1)).sum() - q[s, a]


def expected_update(q: jax.Array, model: Model, s, a, *, lr: float, discount: float):
    """An expected update of pair (s, a) over the model's next states: (q, TD error)."""
    delta = expected_td(q, model, s, a, discount=discount)
    return q.at[s, a].add(lr * delta), delta


def sample_outcomes(model: Model, s, a, key: jax.Array):
    """Transitions the model samples for pairs (s, a) (any equal shapes): each pair's mean
    reward, and a next state and termination drawn by their counts; (reward, next, terminal)."""
    states = model["count"].shape[0]
    counts = jnp.concatenate([model["cont"][s, a], model["ended"][s, a]], -1)  # [..., 2 S]
    # By the inverse of the running count: one uniform number per draw (a categorical draw
    # would take one per outcome, 2 S of them).
    running = jnp.cumsum(counts, -1)
    u = jax.random.uniform(key, running.shape[:-1]) * running[..., -1]
    outcome = jnp.minimum(jnp.sum(running <= u[..., None], -1), 2 * states - 1)
    return model["reward"][s, a], outcome % states, outcome >= states


def sample_update(q: jax.Array, model: Model, s, a, key: jax.Array, *, lr: float,
                  discount: float):
    """A Q-learning update of pair (s, a) on a transition the model samples
    (`sample_outcomes`); (q, TD error)."""
    return q_update(q, s, a, *sample_outcomes(model, s, a, key), lr=lr, discount=discount)


def draw_seen(seen: jax.Array, key: jax.Array, count: int) -> jax.Array:
    """`count` flat indices s * A + a of pairs drawn uniformly, with replacement, among those
    marked in seen [S, A] (at least one): the k-th marked pair for k uniform below their
    number, found by bisection in their running count (a categorical draw over all S * A pairs
    would cost S * A random numbers per draw)."""
    running = jnp.cumsum(seen.reshape(-1))                              # [S * A]
    ranks = jax.random.randint(key, (count,), 0, jnp.maximum(running[-1], 1))
    return jnp.searchsorted(running, ranks, side="right")


def plan_uniform(q: jax.Array, model: Model, key: jax.Array, *, steps: int, lr: float,
                 discount: float, backup: str = "sample") -> jax.Array:
    """Dyna-Q's planning: `steps` updates (`backup`: sample or expected) on pairs drawn
    uniformly among those the model has seen (at least one)."""
    if backup not in BACKUPS:
        raise ValueError(f"dyna.backup must be one of {BACKUPS}, got {backup!r}")
    if steps == 0:
        return q
    actions = q.shape[1]
    # The model does not change while planning, so the pairs, and what the loop reads of the
    # model for them, are taken up front: the loop then holds no array of the model's size (its
    # [S, A, S] counts would be copied into the loop). The samples' keys come from a stream of
    # their own, so the pairs drawn are the same for both backups.
    pairs = draw_seen(seen(model), key, steps)
    s, a = pairs // actions, pairs % actions
    if backup == "expected":
        cont = model["cont"][s, a] / jnp.maximum(model["count"][s, a], 1.0)[:, None]  # [n, S]
        reward = model["reward"][s, a]

        def body(i, q):
            target = reward[i] + discount * (cont[i] * q.max(-1)).sum()
            return q.at[s[i], a[i]].add(lr * (target - q[s[i], a[i]]))
    else:
        keys = jax.random.split(jax.random.fold_in(key, 1), steps)
        reward, s_next, terminal = jax.vmap(sample_outcomes, (None, 0, 0, 0))(model, s, a, keys)

        def body(i, q):
            return q_update(q, s[i], a[i], reward[i], s_next[i], terminal[i], lr=lr,
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


def push_predecessors(priority: jax.Array, q: jax.Array, model: Model, s, *, discount: float,
                      theta: float) -> jax.Array:
    """The queue with every pair the model has seen lead to state s (going on or terminating)
    queued at its own |expected TD error| when that exceeds theta."""
    return _push_predecessors(priority, q, model["reward"], continue_probabilities(model),
                              model["ended"] > 0, s, discount=discount, theta=theta)


def _push_predecessors(priority, q, reward, cont, ends, s, *, discount: float, theta: float):
    """`push_predecessors` on the model's mean rewards [S, A], `continue_probabilities` and
    where it saw terminations [S, A, S]."""
    lead = (cont[:, :, s] > 0) | ends[:, :, s]                           # [S, A]
    target = expected_targets(q, reward, cont, discount=discount)
    p = jnp.where(lead, jnp.abs(target - q), 0.0)
    return jnp.where(p > theta, jnp.maximum(priority, p), priority)


def plan_prioritized(q: jax.Array, model: Model, priority: jax.Array, *, steps: int, lr: float,
                     discount: float, theta: float):
    """Prioritized sweeping's planning: up to `steps` pops while the queue is not empty, each an
    expected update on the popped pair followed by queueing its state's predecessors;
    (q, queue)."""
    # The model does not change while planning: what the loop reads of it is computed once, as
    # arrays of its own (the model's counts themselves would be copied into the loop).
    cont, ends = continue_probabilities(model), model["ended"] > 0
    reward = model["reward"]

    def more(carry):
        i, _, priority = carry
        return (i < steps) & (priority.max() > 0)  # a queued pair has priority > 0

    def body(carry):
        i, q, priority = carry
        s, a, _, rest = pop(priority)
        target = reward[s, a] + discount * (cont[s, a] * q.max(-1)).sum()
        q = q.at[s, a].add(lr * (target - q[s, a]))
        return i + 1, q, _push_predecessors(rest, q, reward, cont, ends, s, discount=discount,
                                            theta=theta)

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
        self.trained_length = cfg.batch_length  # one transition into each step
        self.acts_on_device = False  # a table lookup
        self.hyper = {"lr": p.lr, "discount": p.discount}

    def init(self, key: jax.Array) -> DynaState:
        del key  # tables start at zero
        s, a = self.states, self.act_dim
        return DynaState(params={"q": jnp.zeros((s, a))}, model=empty_model(s, a),
                         priority=jnp.zeros((s, a)), step=jnp.zeros([], jnp.int32))

    # ----------------------------------------------------------------------------- learning
    def learn_one(self, state: DynaState, t: Transitions, key: jax.Array):
        """The update after one real transition (fields scalars): (state, TD error). An invalid
        transition is counted 0 times into the model and leaves Q and the queue as they were
        (selected, not branched: the counts [S, A, S] are updated in place)."""
        p = self.cfg.dyna
        q, valid = state.params["q"], t["valid"]
        args = (t["state"], t["action"], t["reward"], t["next"], t["terminal"])
        model = model_update(state.model, *args, weight=valid)
        if self.sweeping:
            delta = expected_td(q, model, t["state"], t["action"], discount=p.discount)
            priority = push(state.priority, t["state"], t["action"], jnp.abs(delta),
                            theta=p.theta)
            q, priority = plan_prioritized(q, model, priority, steps=p.planning_steps,
                                           theta=p.theta, **self.hyper)
        else:
            q, delta = q_update(q, *args, **self.hyper)
            q = plan_uniform(q, model, key, steps=p.planning_steps, backup=p.backup,
                             **self.hyper)
            priority = state.priority
        keep = lambda new, old: jnp.where(valid, new, old)
        return state.replace(params={"q": keep(q, state.params["q"])}, model=model,
                             priority=keep(priority, state.priority)), keep(delta, 0.0)

    def learn(self, state: DynaState, trans: Transitions, key: jax.Array):
        """The updates after K real transitions [K], in order; invalid ones are skipped.
        Returns (state, metrics). A non-finite Q table keeps the values and the queue of before
        (the counts of what was observed stay: they are finite by construction)."""
        def body(state, inputs):
            i, t = inputs
            state, delta = self.learn_one(state, t, jax.random.fold_in(key, i))
            return state, jnp.abs(delta)

        k = trans["valid"].shape[0]
        new, deltas = jax.lax.scan(body, state, (jnp.arange(k), trans))
        count = trans["valid"].sum()
        finite = all_finite(new.params["q"], new.model["reward"])
        keep = lambda n, o: jnp.where(finite, n, o)
        state = new.replace(params=jax.tree.map(keep, new.params, state.params),
                            model={**new.model,
                                   "reward": keep(new.model["reward"], state.model["reward"])},
                            priority=keep(new.priority, state.priority), step=state.step + 1)
        q = state.params["q"]
        metrics = {"loss/td": deltas.sum() / jnp.maximum(count, 1), "transitions": count,
                   "q/mean": q.mean(), "q/max": q.max(),
                   "model/seen": seen(state.model).mean(),
                   "nonfinite": nonfinite_metric(finite)}
        if self.sweeping:
            metrics["queue/size"] = (state.priority > 0).sum()
        return state, metrics

    def train_step(self, state: DynaState, batch: Batch, key: jax.Array):
        """Learns from every real transition of [B, L, ...] sequences of all devices (see the
        module docstring); no replay updates."""
        check_sequence_length(batch, self.sequence_length, self.cfg.agent)
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
        """Acting on Q for N environments (obs vector [N, S], is_first [N]): 'sample' is
        ε-greedy (uniformly at random with chance `dyna.epsilon`); 'eval' and 'mode' are
        greedy, the target policy whose values Q-learning learns (Sutton & Barto, Sec. 6.5).
        Ties between greedy actions are broken uniformly at random. The outputs are the state and action of the
        previous step ([N] int32, -1 at an episode's first step)."""
        check_mode(mode)
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
