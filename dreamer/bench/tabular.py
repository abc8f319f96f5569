"""Many seeds of a tabular agent at once, outside the training loop, as Sutton & Barto run them:
`train_seeds` calls the agent's own jitted `learn` after every real step and then `policy`, for
every seed together (vmap), one environment per seed. Also greedy rollouts of Q tables on a known
deterministic model (`deterministic_table`, `greedy_reaches_goal`), the exact value of greedy
acting on a known stochastic one (`outcome_table`, `greedy_value`) and a moving average
(`smooth`).

Episodes that end by termination and by truncation (a time limit) differ only in the learned
transition's `terminal` flag, which the environment's `is_terminal` gives: the update into a
truncated episode's last state still bootstraps from that state, and the next episode's first
step is no transition (`agent.learn` skips it as invalid).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.envs import Env

# A Q-table check run after each episode of a seed: q [K, S, A] -> [K] bool (a seed stops at
# the first true) or, as a measure, [K] floats (recorded only).
Check = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Episodes:
    """Each seed's episodes in order, one list per seed."""

    steps: list[list[int]]       # agent steps per episode
    returns: list[list[float]]   # undiscounted return per episode
    solved: list[list[bool]]     # the check of the Q table after each episode (empty without one)
    measured: list[list[float]] = dataclasses.field(default_factory=list)  # the measure, likewise


def make_tick(agent: Any) -> Callable:
    """One step for every seed at once (vmap): learn from the transition into the current
    observation (from the carry's previous state and action), then act on it; each seed's key
    [seeds] is folded with the step count, so that its stream depends on nothing else."""
    def tick(state, carry, obs, reward, terminal, key, step):
        k_learn, k_act = jax.random.split(jax.random.fold_in(key, step))
        now = jnp.argmax(obs["vector"], -1).astype(jnp.int32)
        trans = {"state": carry[0], "action": carry[1], "reward": reward, "next": now,
                 "terminal": terminal, "valid": (carry[0] >= 0) & ~obs["is_first"]}
        state, _ = agent.learn(state, trans, k_learn)
        carry, action, _ = agent.policy(state.params, carry, obs, k_act, mode="sample")
        return state, carry, action

    return jax.vmap(tick, in_axes=(0, 0, 0, 0, 0, 0, None))


class _Seeds:
    """The host side of one agent's seeds: environments, their last steps and the records."""

    def __init__(self, envs: Sequence[Env], episodes: int, steps: float):
        self.envs, self.limits = envs, (episodes, steps)
        self.outs = [env.reset() for env in envs]
        n = len(envs)
        self.length, self.total = np.zeros(n, np.int64), np.zeros(n)
        self.taken = np.zeros(n, np.int64)
        self.done = np.zeros(n, bool)
        self.record = Episodes(*([[] for _ in envs] for _ in range(4)))

    def finished(self, i: int) -> bool:
        episodes, steps = self.limits
        solved = self.record.solved[i]
        # An episode that ends on the budget's last step still counts.
        spent = self.taken[i] > steps or (self.taken[i] == steps and not self.outs[i]["is_last"])
        return len(self.record.steps[i]) >= episodes or spent or bool(solved and solved[-1])

    def inputs(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """(obs, reward, terminal) of the last steps, [seeds, 1, ...] each."""
        outs = self.outs
        obs = {"vector": np.stack([o["vector"] for o in outs])[:, None],
               "is_first": np.array([o["is_first"] for o in outs])[:, None]}
        return (obs, np.array([o["reward"] for o in outs], np.float32)[:, None],
                np.array([o["is_terminal"] for o in outs])[:, None])

    def advance(self, q: jax.Array, action: np.ndarray, check: Check | None,
                measure: Check | None = None) -> None:
        """Records the episodes that ended (with `check` and `measure` of their Q tables
        [seeds, S, A]), then resets or steps every unfinished seed's environment with its
        action [seeds]."""
        active = np.flatnonzero(~self.done)
        ended = [i for i in active if self.outs[i]["is_last"]]
        for fn, record, kind in ((check, self.record.solved, bool),
                                 (measure, self.record.measured, float)):
            if fn is not None and ended:
                values = np.asarray(fn(np.asarray(q)[ended]))
                chex.assert_shape(values, (len(ended),))
                for i, value in zip(ended, values):
                    record[i].append(kind(value))
        for i in ended:
            self.record.steps[i].append(int(self.length[i]))
            self.record.returns[i].append(float(self.total[i]))
        for i in active:
            if i in ended and self.finished(i):
                self.done[i] = True  # no more records: spare its environment
                continue
            if self.outs[i]["is_last"]:
                self.length[i], self.total[i] = 0, 0.0
                self.outs[i] = self.envs[i].reset()
            else:
                self.outs[i] = self.envs[i].step(action[i])
                self.length[i] += 1
                self.total[i] += float(self.outs[i]["reward"])
                self.taken[i] += 1
            self.done[i] = self.finished(i)


def train_seeds(agents: Sequence[Any], envs: Sequence[Sequence[Env]], key: jax.Array, *,
                episodes: int, steps: float = np.inf, check: Check | None = None,
                measure: Check | None = None) -> list[Episodes]:
    """Trains each agent on its own environments, one copy per environment (a seed), each copy
    from its own key split from `key` (the same keys for every agent), until every seed has
    finished: after `episodes` episodes, after `steps` real steps (an unfinished episode is not
    counted), or at the first episode after which `check` of its Q table is true; `measure` of
    the Q table is recorded after every episode. The agents with unfinished seeds step
    together, in one jitted call per step (the train state donated: its tables are updated in
    place); seeds that finished stop stepping their environments. Returns each agent's
    Episodes."""
    keys = [jax.random.split(key, len(e)) for e in envs]
    states = [jax.vmap(a.init)(k) for a, k in zip(agents, keys)]
    carries = [jax.vmap(lambda _, a=a: a.policy_initial(1))(k) for a, k in zip(agents, keys)]
    # One each, so that none recompiles when another stops.
    ticks = [jax.jit(make_tick(a), donate_argnums=0) for a in agents]
    runs = [_Seeds(e, episodes, steps) for e in envs]
    step = 0
    while active := [j for j, r in enumerate(runs) if not r.done.all()]:
        # Dispatch is asynchronous: every agent's step is queued before any action is read.
        out = {j: ticks[j](states[j], carries[j], *runs[j].inputs(), keys[j], step)
               for j in active}
        for j, (states[j], carries[j], action) in out.items():
            runs[j].advance(states[j].params["q"], np.argmax(np.asarray(action)[:, 0], -1),
                            check, measure)
        step += 1
    return [r.record for r in runs]


def deterministic_table(transitions: Mapping[int, Mapping[int, Sequence[tuple]]]
                        ) -> dict[str, np.ndarray]:
    """A toy-text environment's transition lists (gymnasium's `env.unwrapped.P`: P[s][a] is a
    list of (probability, next state, reward, terminated)) as arrays next [S, A] int64,
    reward [S, A] float64 and terminal [S, A] bool. Every pair must have one sure outcome."""
    states, actions = len(transitions), len(transitions[0])
    table = {"next": np.zeros((states, actions), np.int64),
             "reward": np.zeros((states, actions)), "terminal": np.zeros((states, actions), bool)}
    for s in range(states):
        for a in range(actions):
            outcomes = transitions[s][a]
            if len(outcomes) != 1 or outcomes[0][0] != 1.0:
                raise ValueError(f"state {s}, action {a} has outcomes {outcomes}, not one sure "
                                 "outcome: the environment is not deterministic (FrozenLake: "
                                 "make it with is_slippery=False)")
            _, table["next"][s, a], table["reward"][s, a], table["terminal"][s, a] = outcomes[0]
    return table


def outcome_table(transitions: Mapping[int, Mapping[int, Sequence[tuple]]]
                  ) -> dict[str, np.ndarray]:
    """A toy-text environment's transition lists (gymnasium's `env.unwrapped.P`, stochastic or
    not) as arrays over outcomes [S, A, S]: `prob` of each next state, the expected `reward` of
    arriving there, and the chance `end` that the episode terminates there. Outcomes listed
    twice (a slip into a wall) are summed."""
    states, actions = len(transitions), len(transitions[0])
    prob, gain, end = (np.zeros((states, actions, states)) for _ in range(3))
    for s in range(states):
        for a in range(actions):
            for p, s_next, r, terminal in transitions[s][a]:
                prob[s, a, s_next] += p
                gain[s, a, s_next] += p * r
                end[s, a, s_next] += p * terminal
    arrived = np.maximum(prob, 1e-300)
    return {"prob": prob, "reward": gain / arrived, "end": end / arrived}


def greedy_value(q: np.ndarray, table: Mapping[str, np.ndarray], start: int, limit: int,
                 discount: float = 1.0) -> np.ndarray:
    """The exact expected return of acting greedily on each Q table (q [N, S, A]) from state
    `start` for at most `limit` steps on a known `outcome_table`: [N]. Ties between greedy
    actions are broken uniformly at random, as the agents' `mode` policy does. With a reward of
    1 only at a goal, it is the chance of reaching the goal within the limit."""
    greedy = q == q.max(-1, keepdims=True)
    pi = greedy / greedy.sum(-1, keepdims=True)                           # [N, S, A]
    going = table["prob"] * (1.0 - table["end"])                          # [S, A, S']
    reward = (table["prob"] * table["reward"]).sum(-1)                    # [S, A]
    value = np.zeros(q.shape[:2])                                         # [N, S]
    for _ in range(limit):  # value with k steps left, from k - 1
        value = (pi * (reward + discount * np.einsum("sat,nt->nsa", going, value))).sum(-1)
    return value[:, start]


def greedy_reaches_goal(q: np.ndarray, table: Mapping[str, np.ndarray], start: int,
                        limit: int) -> np.ndarray:
    """Whether each Q table's greedy policy (q [N, S, A]), rolled out once from state `start`
    on a deterministic `table` for at most `limit` steps, ends the episode with a positive
    reward (reaches a goal): [N] bool. Ties go to the lowest action (np.argmax), not at random,
    so that only learned values lead anywhere: a table of zeros always takes action 0. A
    rollout that comes back to a state it left goes round that loop for ever, so it stops."""
    n, states, actions = q.shape
    chex.assert_shape([table["next"], table["reward"], table["terminal"]], (states, actions))
    rows, s = np.arange(n), np.full(n, start)
    visited = np.zeros((n, states), bool)
    running, reached = np.ones(n, bool), np.zeros(n, bool)
    for _ in range(limit):
        visited[rows, s] |= running
        a = q[rows, s].argmax(-1)
        end = running & table["terminal"][s, a]
        reached |= end & (table["reward"][s, a] > 0)
        s = table["next"][s, a]
        running &= ~end & ~visited[rows, s]
        if not running.any():
            break
    return reached


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """The mean over each `window` consecutive entries of the last axis: [..., T] ->
    [..., T - window + 1]."""
    if not 1 <= window <= x.shape[-1]:
        raise ValueError(f"window {window} must be between 1 and the length {x.shape[-1]}")
    sums = np.cumsum(x, -1, dtype=np.float64)
    sums = np.concatenate([np.zeros((*x.shape[:-1], 1)), sums], -1)
    return (sums[..., window:] - sums[..., :-window]) / window
