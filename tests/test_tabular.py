"""The many-seeds loop of the tabular agents (dreamer.bench.tabular): records, stopping rules and the
truncation of episodes against Q-learning in a plain loop; greedy rollouts on hand-built tables;
the moving average against numpy."""
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from dreamer.agents import make_agent
from dreamer.bench import tabular
from dreamer.config import load_config
from dreamer.envs import make_env
from dreamer.envs.base import Space, discrete_space, transition

# A corridor 0 -> 1 -> 2 -> 3 (goal) with action 1 (right); action 0 stays; state 4 a hole
# that action 0 of state 2 falls into.
STAY, RIGHT = 0, 1
P = {s: {STAY: [(1.0, s, 0.0, False)], RIGHT: [(1.0, s + 1, float(s == 2), s == 2)]}
     for s in range(3)}
P[2][STAY] = [(1.0, 4, 0.0, True)]
P[3] = P[4] = {a: [(1.0, s, 0.0, True)] for s in (3,) for a in (STAY, RIGHT)}


def test_deterministic_table_of_transition_lists():
    table = tabular.deterministic_table(P)
    np.testing.assert_array_equal(table["next"][:3], [[0, 1], [1, 2], [4, 3]])
    np.testing.assert_array_equal(table["reward"][:3], [[0, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(table["terminal"][:3], [[False] * 2, [False] * 2, [True] * 2])
    slippery = {**P, 1: {STAY: P[1][STAY], RIGHT: [(0.5, 2, 0.0, False), (0.5, 1, 0.0, False)]}}
    with pytest.raises(ValueError, match="state 1, action 1 .* not deterministic"):
        tabular.deterministic_table(slippery)


def test_greedy_rollouts_by_hand():
    table = tabular.deterministic_table(P)
    right = np.zeros((5, 2))
    right[:3, RIGHT] = [0.8, 0.9, 1.0]
    hole = right.copy()
    hole[2, STAY] = 2.0                      # prefers the hole at the last step
    loop = right.copy()
    loop[1, STAY] = 1.5                      # stays in state 1 for ever
    tie = np.zeros((5, 2))                   # all ties: the lowest action, STAY, for ever
    q = np.stack([right, hole, loop, tie])
    reaches = tabular.greedy_reaches_goal
    np.testing.assert_array_equal(reaches(q, table, 0, limit=10), [True, False, False, False])
    np.testing.assert_array_equal(reaches(q, table, 1, limit=2), [True, False, False, False])
    np.testing.assert_array_equal(reaches(q, table, 0, limit=2), [False] * 4)  # 3 steps away
    np.testing.assert_array_equal(reaches(q[:1], table, 0, limit=3), [True])


def test_exact_greedy_values_on_a_stochastic_table_by_hand():
    """0 -RIGHT-> 1 with chance 1/2 (else stays, listed as two outcomes of 1/4); 1 -RIGHT-> 2,
    the goal (reward 1, terminal); STAY stays. Greedy RIGHT reaches the goal within L steps
    with chance 1 - (1/2)^(L-1); a table of zeros acts at random (ties)."""
    slip = {0: {STAY: [(1.0, 0, 0.0, False)],
                RIGHT: [(0.5, 1, 0.0, False), (0.25, 0, 0.0, False), (0.25, 0, 0.0, False)]},
            1: {STAY: [(1.0, 1, 0.0, False)], RIGHT: [(1.0, 2, 1.0, True)]},
            2: {STAY: [(1.0, 2, 0.0, True)], RIGHT: [(1.0, 2, 0.0, True)]}}
    table = tabular.outcome_table(slip)
    np.testing.assert_allclose(table["prob"][0, RIGHT], [0.5, 0.5, 0.0])
    assert table["end"][1, RIGHT, 2] == 1.0 and table["reward"][1, RIGHT, 2] == 1.0
    right = np.zeros((3, 2))
    right[:2, RIGHT] = 1.0
    q = np.stack([right, np.zeros((3, 2))])
    for limit in (1, 2, 3, 6):
        values = tabular.greedy_value(q, table, 0, limit)
        assert values[0] == pytest.approx(1 - 0.5 ** (limit - 1))
    # At random: reach 1 at the first step (1/2 * 1/2), then RIGHT (1/2): 1/8 within 2 steps.
    assert tabular.greedy_value(q, table, 0, 2)[1] == pytest.approx(0.125)
    assert tabular.greedy_value(q, table, 1, 1)[1] == pytest.approx(0.5)
    assert tabular.greedy_value(q, table, 0, 3, discount=0.9)[0] == pytest.approx(
        0.9 * 0.5 + 0.9 ** 2 * 0.25)


def test_smooth_is_numpys_moving_average():
    x = np.random.default_rng(0).normal(size=(3, 40))
    for window in (1, 7, 40):
        expected = np.stack([np.convolve(row, np.ones(window) / window, "valid") for row in x])
        np.testing.assert_allclose(tabular.smooth(x, window), expected, atol=1e-12)
    with pytest.raises(ValueError, match="window 41"):
        tabular.smooth(x, 41)


class Treadmill:
    """One state, one action, reward 1 per step; every episode is cut after 3 steps by a time
    limit (is_last without is_terminal)."""

    def __init__(self):
        self.obs_space = {"vector": Space(np.float32, (1,))}
        self.act_space = discrete_space(1)

    def reset(self):
        self._t = 0
        return transition({"vector": np.ones(1, np.float32)}, is_first=True)

    def step(self, action):
        self._t += 1
        return transition({"vector": np.ones(1, np.float32)}, 1.0, is_last=self._t == 3)

    def close(self):
        pass


def treadmill_q(episodes, lr=0.1, discount=0.95):
    """Q after `episodes` episodes in a plain loop: three updates each, every one bootstrapping
    (a cut episode's last state is not terminal); the step into a new episode is no update."""
    q, out = 0.0, []
    for _ in range(episodes):
        for _ in range(3):
            q += lr * (1.0 + discount * q - q)
        out.append(q)
    return np.array(out)


def dyna(n=0, **overrides):
    cfg = load_config(["dyna_q"], {"dyna.planning_steps": n, **overrides})
    env = Treadmill()
    return make_agent(cfg, env.obs_space, env.act_space)


def test_truncated_episodes_bootstrap_and_the_records_and_stops():
    expected = treadmill_q(6)
    threshold = (expected[3] + expected[4]) / 2  # passed after episode 5
    checks = []

    def check(q):
        checks.append(q[:, 0, 0].copy())
        return q[:, 0, 0] > threshold

    key = jax.random.key(0)
    envs = [[Treadmill(), Treadmill()] for _ in range(2)]
    plain, _ = tabular.train_seeds([dyna(), dyna(5)], envs, key, episodes=6)
    assert plain.steps == [[3] * 6] * 2 and plain.returns == [[3.0] * 6] * 2
    assert plain.solved == [[], []]
    solved, = tabular.train_seeds([dyna()], [[Treadmill(), Treadmill()]], key, episodes=100,
                                  check=check)
    np.testing.assert_allclose(np.concatenate(checks), np.repeat(expected[:5], 2), rtol=1e-5)
    assert solved.solved == [[False] * 4 + [True]] * 2
    assert solved.steps == [[3] * 5] * 2
    for budget, count in [(5, 1), (6, 2), (7, 2)]:  # the episode ending on the last step counts
        by_count, = tabular.train_seeds([dyna()], [[Treadmill()]], key, episodes=100,
                                        steps=budget)
        assert by_count.steps == [[3] * count], budget


def test_agents_stepping_together_equal_each_alone():
    """Each seed's stream depends on its key only: two agents in one loop get the records
    each gets alone (FrozenLake 4x4, acting at random until the goal)."""
    cfg = load_config(["dyna_q"], {"env.task": "gym_FrozenLake-v1"})
    envs = lambda: [make_env(cfg.env, i) for i in range(2)]
    space = envs()[0]
    agents = [make_agent(cfg.update({"dyna.planning_steps": n}), space.obs_space,
                         space.act_space) for n in (0, 3)]
    key = jax.random.key(1)
    together = tabular.train_seeds(agents, [envs(), envs()], key, episodes=40)
    for agent, records in zip(agents, together):
        alone, = tabular.train_seeds([agent], [envs()], key, episodes=40)
        assert alone == records
        assert [len(x) for x in records.steps] == [40, 40]


def launch_dyna():
    """launch/dyna.py as a module."""
    path = Path(__file__).resolve().parent.parent / "launch" / "dyna.py"
    spec = importlib.util.spec_from_file_location("launch_dyna", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frozenlake_solve_times_by_hand():
    episodes = tabular.Episodes(steps=[[5, 7, 3, 9], [4, 4]], returns=[[0, 1, 0, 1], [0, 0]],
                                solved=[[False, False, False, True], [False, False]])
    times = launch_dyna().solve_times(episodes)
    # seed 0: greedy reaches the goal after episode 4, 24 steps; the goal first in episode 2
    np.testing.assert_array_equal(times["episodes"], [4, np.nan])
    np.testing.assert_array_equal(times["steps"], [24, np.nan])
    np.testing.assert_array_equal(times["after"], [2, np.nan])


def test_slippery_measures_at_fixed_steps_by_hand():
    episodes = tabular.Episodes(steps=[[5, 7, 3], [20]], returns=[[0, 1, 0], [0]],
                                solved=[[], []], measured=[[0.1, 0.4, 0.3], [0.9]])
    at = launch_dyna().at_steps(episodes, np.array([0, 4, 5, 12, 14, 15, 100]), 0.02)
    # seed 0: episodes end at steps 5, 12 and 15; seed 1 at 20
    np.testing.assert_allclose(at, [[0.02, 0.02, 0.1, 0.4, 0.4, 0.3, 0.3],
                                    [0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.9]])


@pytest.mark.parametrize("task,extra", [("taxi", ["--episodes", "3"]),
                                        ("frozenlake", ["--steps", "30"]),
                                        ("slippery", ["--steps", "40", "--backup", "sample"])])
def test_the_commands_write_a_figure_and_a_table(tmp_path, capsys, task, extra):
    dyna = launch_dyna()
    argv = ["--task", task, "--seeds", "2", "--planning", "2", "--sweeping", "none",
            "--out", str(tmp_path), *extra]
    assert dyna.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["task"] == task and list(printed["results"]) == ["Dyna-Q n=2"]
    table = (tmp_path / f"{task}.md").read_text()
    assert table.startswith(dyna.settings(task)) and "| Dyna-Q n=2 |" in table
    assert (tmp_path / f"{task}.png").stat().st_size > 0
    assert dyna.main(["--task", task, "--sweeping", "0"]) == 2
