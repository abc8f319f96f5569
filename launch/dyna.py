"""Tabular Dyna-Q and prioritized sweeping (Sutton & Barto, 2nd ed., Sec. 8.2 and 8.4) on four
tasks, one command each; mean and spread over seeds.

  python launch/dyna.py [--task maze|frozenlake|taxi|slippery] [--planning N,...|none]
                        [--sweeping N,...|none] [--backup sample,expected] [--seeds 30]
                        [--episodes N] [--steps N] [--out runs/dyna] [--seed 0]

Runs the agents' own jitted functions (`dreamer.agents.dyna`: `learn` after each real step, then
`policy`) through `dreamer.bench.tabular.train_seeds`, every seed at once (vmap) with one environment
per seed, instead of the full training loop: the book updates after every step, which is what
`learn` does here. Dyna-Q runs for each n of --planning, prioritized sweeping for each n of
--sweeping (none: skip it; both default to the task's values below), Dyna-Q with n > 0 once
for each planning backup of --backup (`dyna.backup`; sample unless the task says otherwise);
every n has the same settings. Acting is epsilon-greedy with ties
between greedy actions broken at random (the agents' policy). Writes OUT/TASK.png and
OUT/TASK.md (the settings, then the table) and prints one JSON line.

maze: the Dyna maze (Example 8.1, Figure 8.2) with the presets' (the book's) alpha 0.1, gamma
0.95, epsilon 0.1; steps per episode over the first --episodes (50) episodes. An agent has
converged at the first episode from which the mean over seeds stays within 20% of its mean over
the last 10 episodes.

frozenlake: the deterministic 8x8 lake (gymnasium FrozenLake8x8-v1 with is_slippery=False, 200
steps per episode; reward 1 only at the goal, holes end the episode with 0), alpha 0.5, gamma
0.95, epsilon 0.1. After each episode the greedy policy of the Q table is rolled out once on
the lake's own transition table (gymnasium's, deterministic, so one rollout of at most 200
steps decides); it reaches the goal or not. A seed stops at the first episode after which it
does; reported are the episodes (and real steps) that took, for Dyna-Q at each n of --planning
(0, 1, 5, 10, 20, 50) and prioritized sweeping at each n of --sweeping (1, 5, 10, 20, 50), each
with the same budget of --steps real steps per seed (a seed that does not get there within it
is counted as unsolved and left out of the means). Every agent and n acts with the same keys
per seed, and until a seed first reaches the goal its values are all 0, so its episodes up to
then are the same for all of them: the differences between n come after, which the count of
episodes after the first that reached the goal isolates.

Why the experiment is sound with a Q table of zeros and a reward only at the goal: until the
goal is first reached every value is 0 and planning changes nothing, so acting is a random walk
only because ties are broken at random (breaking them by the first action, as np.argmax does,
would walk into the left wall forever but for epsilon); the rollout after each episode breaks
ties by the first action instead, so it reaches the goal only along actions whose learned values
lead there, never by luck.

taxi: gymnasium Taxi-v4 (Taxi-v3 is deprecated in gymnasium 1.x; v4 with its defaults is the
same deterministic task, 200 steps per episode), alpha 0.5, gamma 0.99, epsilon 0.1, over the
first --episodes (500) episodes: the return of each episode as the agent acted (epsilon-greedy),
smoothed over 20 episodes.

slippery: gymnasium FrozenLake-v1 as it comes (4x4, slippery: each move goes the intended way
or to either side, 1/3 each; 100 steps per episode) with the presets' alpha 0.1, gamma 0.95,
epsilon 0.1, for --steps (20,000) real steps per seed; Dyna-Q with both backups. After each
episode the exact chance that the greedy policy of the Q table (ties at random) reaches the goal
within 100 steps, computed on the lake's own transition table (`tabular.greedy_value`), not
estimated from episodes; reported at fixed real steps (the value after the last episode that
ended by then) and as its mean over all real steps.

Episodes cut by a time limit end with `is_last` but not `is_terminal`, so the update into their
last state still bootstraps from its value; only termination (goal, hole, drop-off) does not.
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from dreamer.agents import make_agent
from dreamer.args import Option, UsageError, choice, integer, parse
from dreamer.bench import tabular
from dreamer.config import load_config, parse_kwargs
from dreamer.envs import make_env

SMOOTH = 20  # taxi: episodes per moving average


@dataclasses.dataclass(frozen=True)
class Task:
    """One task's settings, the same for every agent and n, and its defaults."""

    overrides: dict        # config overrides on top of the agent's preset
    planning: tuple        # default --planning
    sweeping: tuple        # default --sweeping
    episodes: int          # default --episodes
    steps: int = 0         # default --steps (0: no budget)
    backups: tuple = ("sample",)  # default --backup


LAKE = {"env.task": "gym_FrozenLake8x8-v1", "env.gym_kwargs": ["is_slippery=false"]}
TASKS = {
    "maze": Task({}, (0, 5, 50), (5,), 50),
    "frozenlake": Task({**LAKE, "dyna.lr": 0.5}, (0, 1, 5, 10, 20, 50), (1, 5, 10, 20, 50),
                       10**9, 50_000),
    "taxi": Task({"env.task": "gym_Taxi-v4", "dyna.lr": 0.5, "dyna.discount": 0.99},
                 (0, 5, 20, 50), (), 500),
    "slippery": Task({"env.task": "gym_FrozenLake-v1"}, (0, 5, 20), (5, 20), 10**9, 20_000,
                     ("sample", "expected")),
}
SLIPPERY_AT = (1000, 2000, 5000, 10000, 20000)  # real steps of the table's columns


def count_or_none(low: int):
    """A parser of integers of at least `low`, or `none` (None: run no agent of that kind)."""
    count = integer(low)
    return lambda text: None if text == "none" else count(text)


OPTIONS = (  # a list option left empty, or None, takes the task's default
    Option("task", "maze", choice(*TASKS), metavar="NAME"),
    Option("planning", (), count_or_none(0), many=True, metavar="N"),
    Option("sweeping", (), count_or_none(1), many=True, metavar="N"),
    Option("backup", (), choice("sample", "expected"), many=True, metavar="NAME"),
    Option("seeds", 30, integer(1), metavar="N"),
    Option("episodes", None, integer(2), metavar="N"),
    Option("steps", None, integer(1), metavar="N"),
    Option("out", "runs/dyna", metavar="DIR"),
    Option("seed", 0, integer(0), metavar="N"),
)


def run(task: str, agents: list[tuple[str, int, str]], args: dict,
        check: tabular.Check | None = None, measure: tabular.Check | None = None
        ) -> list[tabular.Episodes]:
    """Every seed of each (agent name, n planning steps, backup) on `task`, all stepping
    together."""
    made, envs = [], []
    try:
        for name, n, backup in agents:
            cfg = load_config([name], {**TASKS[task].overrides, "dyna.planning_steps": n,
                                       "dyna.backup": backup})
            envs.append([make_env(cfg.env, i) for i in range(args["seeds"])])
            made.append(make_agent(cfg, envs[-1][0].obs_space, envs[-1][0].act_space))
        return tabular.train_seeds(made, envs, jax.random.key(args["seed"]),
                                   episodes=args["episodes"], steps=args["steps"] or np.inf,
                                   check=check, measure=measure)
    finally:
        for env in (env for seeds in envs for env in seeds):
            env.close()


def settings(task: str) -> str:
    """The task's alpha, gamma and epsilon, as a line of the table's file."""
    cfg = load_config(["dyna_q"], TASKS[task].overrides).dyna
    return f"α = {cfg.lr:g}, γ = {cfg.discount:g}, ε = {cfg.epsilon:g}"


def plotting():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- maze


def converged(mean: np.ndarray) -> int:
    """The first episode (1-based) from which `mean` stays within 20% of its last 10 episodes."""
    level = mean[-10:].mean()
    above = np.flatnonzero(mean > 1.2 * level)
    return int(above[-1] + 2) if len(above) else 1


def maze(runs: dict[str, tabular.Episodes], args: dict, out: Path) -> tuple[dict, list[str]]:
    """Steps per episode: the results, the table and OUT/maze.png."""
    curves = {label: np.array([x[:args["episodes"]] for x in e.steps]) for label, e in runs.items()}
    results = {}
    for label, steps in curves.items():
        mean = steps.mean(0)
        results[label] = {"converged_episode": converged(mean),
                          "episode_1": float(mean[0]), "episode_2": float(mean[1]),
                          "last_10": float(mean[-10:].mean()),
                          "total_steps": float(steps.sum(1).mean())}
    rows = [("| agent | episode 1 | episode 2 | converged at episode | last 10 episodes "
             "| steps in all |"), "|---|---|---|---|---|---|"]
    rows += [f"| {label} | {r['episode_1']:.0f} | {r['episode_2']:.0f} | "
             f"{r['converged_episode']} | {r['last_10']:.1f} | {r['total_steps']:.0f} |"
             for label, r in results.items()]
    plt = plotting()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, steps in curves.items():
        episodes = np.arange(2, steps.shape[1] + 1)
        mean, std = steps[:, 1:].mean(0), steps[:, 1:].std(0)
        ax.plot(episodes, mean, label=label)
        ax.fill_between(episodes, np.maximum(mean - std, 0), mean + std, alpha=0.2)
    ax.set(xlabel="episode", ylabel="steps per episode", ylim=(0, 800),
           title=f"Dyna maze, mean ± std over {args['seeds']} seeds")
    ax.axhline(14, color="gray", lw=0.8, ls=":")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "maze.png", dpi=120)
    plt.close(fig)
    return results, rows


# ----------------------------------------------------------------------------- frozenlake


def lake_check() -> tabular.Check:
    """Whether each Q table's greedy policy reaches the goal of the deterministic 8x8 lake
    within its episode limit (reward 1 is only at the goal)."""
    import gymnasium

    cfg = load_config(["dyna_q"], LAKE).env
    env = gymnasium.make(cfg.task.removeprefix("gym_"), **parse_kwargs("env.gym_kwargs",
                                                                       cfg.gym_kwargs))
    table = tabular.deterministic_table(env.unwrapped.P)
    start, _ = env.reset(seed=0)
    limit = env.spec.max_episode_steps
    env.close()
    return lambda q: tabular.greedy_reaches_goal(q, table, int(start), limit)


def solve_times(e: tabular.Episodes) -> dict[str, np.ndarray]:
    """Per seed, [seeds] each (NaN for a seed whose greedy policy did not reach the goal):
    `episodes` and real `steps` until its greedy policy first reached the goal, and `after`,
    how many of those episodes came after the first that reached the goal itself."""
    solved = np.array([bool(s and s[-1]) for s in e.solved])
    first = np.array([np.flatnonzero(np.array(r) > 0)[0] if max(r, default=0) > 0 else -1
                      for r in e.returns])
    times = {"episodes": np.array([len(s) for s in e.solved], float),
             "steps": np.array([sum(x) for x in e.steps], float)}
    times["after"] = times["episodes"] - 1 - first
    return {k: np.where(solved, v, np.nan) for k, v in times.items()}


def frozenlake(runs: dict[str, tabular.Episodes], args: dict, out: Path
               ) -> tuple[dict, list[str]]:
    """Episodes until the greedy policy reaches the goal: the results, the table and
    OUT/frozenlake.png (mean ± std over the seeds that got there, against n)."""
    results = {}
    for label, e in runs.items():
        times = solve_times(e)
        solved = times["episodes"][np.isfinite(times["episodes"])]
        results[label] = {"solved": len(solved),
                          "episodes_median": float(np.median(solved)) if len(solved) else np.nan}
        for key, value in times.items():
            done = value[np.isfinite(value)]  # NaN when no seed got there
            results[label] |= {f"{key}_mean": float(done.mean()) if len(done) else np.nan,
                               f"{key}_std": float(done.std()) if len(done) else np.nan}
    rows = [("| agent | seeds solved | episodes until greedy reaches the goal | median "
             "| of them after the first goal | real steps until then |"), "|---" * 6 + "|"]
    rows += [f"| {label} | {r['solved']}/{args['seeds']} | {r['episodes_mean']:.1f} ± "
             f"{r['episodes_std']:.1f} | {r['episodes_median']:.0f} | {r['after_mean']:.1f} ± "
             f"{r['after_std']:.1f} | {r['steps_mean']:.0f} ± {r['steps_std']:.0f} |"
             for label, r in results.items()]
    plt = plotting()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for agent, n_values, shift in (("Dyna-Q", args["planning"], -0.06),
                                   ("prioritized sweeping", args["sweeping"], 0.06)):
        if not n_values:
            continue
        picked = [results[f"{agent} n={n}"] for n in n_values]
        x = np.array([max(n, 0.5) for n in n_values]) * np.exp(shift)  # n = 0 drawn at 0.5
        for ax, key in zip(axes, ("episodes", "after")):
            ax.errorbar(x, [r[f"{key}_mean"] for r in picked],
                        [r[f"{key}_std"] for r in picked], marker="o", capsize=3, label=agent)
    ticks = sorted({*args["planning"], *args["sweeping"]})
    for ax, ylabel in zip(axes, ("episodes until the greedy policy reaches the goal",
                                 "of them after the first to reach the goal")):
        ax.set_xscale("log")
        ax.set_xticks([max(n, 0.5) for n in ticks], [str(n) for n in ticks])
        ax.minorticks_off()
        ax.set(xlabel="planning steps n per real step", ylabel=ylabel)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle(f"FrozenLake 8x8, deterministic: mean ± std over {args['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(out / "frozenlake.png", dpi=120)
    plt.close(fig)
    return results, rows


# ----------------------------------------------------------------------------- taxi


def taxi(runs: dict[str, tabular.Episodes], args: dict, out: Path) -> tuple[dict, list[str]]:
    """Episode returns: the results, the table (mean ± std over seeds of each seed's mean
    return per block of 100 episodes) and OUT/taxi.png (smoothed over SMOOTH episodes)."""
    count = args["episodes"]
    blocks = [(start, min(start + 100, count)) for start in range(0, count, 100)]
    results, curves = {}, {}
    for label, e in runs.items():
        returns = np.array([x[:count] for x in e.returns])               # [seeds, episodes]
        curves[label] = tabular.smooth(returns, min(SMOOTH, count))
        per_block = [returns[:, a:b].mean(1) for a, b in blocks]         # each [seeds]
        results[label] = {"blocks": [[float(x.mean()), float(x.std())] for x in per_block],
                          "steps": float(np.mean([sum(x[:count]) for x in e.steps]))}
    names = " | ".join(f"episodes {a + 1}-{b}" for a, b in blocks)
    rows = [f"| agent | {names} | real steps |", "|---|" + "---|" * (len(blocks) + 1)]
    rows += [f"| {label} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in r["blocks"])
             + f" | {r['steps']:.0f} |" for label, r in results.items()]
    plt = plotting()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        episodes = np.arange(curve.shape[1]) + min(SMOOTH, count)
        mean, std = curve.mean(0), curve.std(0)
        ax.plot(episodes, mean, label=label)
        ax.fill_between(episodes, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="episode", ylabel=f"return (mean of the last {min(SMOOTH, count)} episodes)",
           ylim=(-250, 15), title=f"Taxi, mean ± std over {args['seeds']} seeds")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "taxi.png", dpi=120)
    plt.close(fig)
    return results, rows


# ----------------------------------------------------------------------------- slippery


def lake_table(overrides: dict) -> tuple[dict, int, int]:
    """The lake's outcome table, start state and episode limit (from gymnasium itself)."""
    import gymnasium

    cfg = load_config(["dyna_q"], overrides).env
    env = gymnasium.make(cfg.task.removeprefix("gym_"), **parse_kwargs("env.gym_kwargs",
                                                                       cfg.gym_kwargs))
    table = tabular.outcome_table(env.unwrapped.P)
    start, _ = env.reset(seed=0)
    limit = env.spec.max_episode_steps
    env.close()
    return table, int(start), limit


def success_measure() -> tabular.Check:
    """The exact chance that each Q table's greedy policy reaches the slippery lake's goal
    within its episode limit (reward 1 is only at the goal)."""
    table, start, limit = lake_table(TASKS["slippery"].overrides)
    return lambda q: tabular.greedy_value(q, table, start, limit)


def at_steps(e: tabular.Episodes, grid: np.ndarray, initial: float) -> np.ndarray:
    """[seeds, len(grid)]: each seed's measure after the last episode that ended at or before
    each real step of the grid (`initial`, the measure of the table of zeros, before the
    first)."""
    out = np.full((len(e.steps), len(grid)), initial)
    for i, (steps, values) in enumerate(zip(e.steps, e.measured)):
        ends = np.cumsum(steps)
        done = np.searchsorted(ends, grid, side="right")                 # episodes by then
        out[i] = np.where(done > 0, np.asarray([initial, *values])[done], initial)
    return out


def slippery(runs: dict[str, tabular.Episodes], args: dict, out: Path
             ) -> tuple[dict, list[str]]:
    """The greedy policy's chance of reaching the goal against real steps: the results, the
    table and OUT/slippery.png (mean ± std over seeds)."""
    initial = float(success_measure()(np.zeros((1, 16, 4)))[0])
    budget = args["steps"]
    columns = [x for x in SLIPPERY_AT if x <= budget]
    dense = np.linspace(0, budget, 201)
    results, curves = {}, {}
    for label, e in runs.items():
        curves[label] = at_steps(e, dense, initial)
        fixed = at_steps(e, np.array(columns), initial)
        results[label] = {"at": {str(x): [float(fixed[:, j].mean()), float(fixed[:, j].std())]
                                 for j, x in enumerate(columns)},
                          "mean_over_steps": [float(curves[label].mean(1).mean()),
                                              float(curves[label].mean(1).std())]}
    names = " | ".join(f"{x // 1000}K steps" for x in columns)
    rows = [f"| agent | {names} | mean over 0-{budget // 1000}K |",
            "|---|" + "---|" * (len(columns) + 1)]
    rows += [f"| {label} | " + " | ".join(f"{m:.3f} ± {sd:.3f}" for m, sd in r["at"].values())
             + " | {:.3f} ± {:.3f} |".format(*r["mean_over_steps"])
             for label, r in results.items()]
    plt = plotting()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        mean, std = curve.mean(0), curve.std(0)
        ax.plot(dense, mean, label=label)
        ax.fill_between(dense, np.maximum(mean - std, 0), np.minimum(mean + std, 1), alpha=0.12)
    ax.set(xlabel="real steps", ylabel="chance that greedy acting reaches the goal",
           ylim=(0, 1), title=f"FrozenLake 4x4, slippery: mean ± std over {args['seeds']} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "slippery.png", dpi=120)
    plt.close(fig)
    return results, rows


REPORTS = {"maze": maze, "frozenlake": frozenlake, "taxi": taxi, "slippery": slippery}


def main(argv: list[str]) -> int:
    try:
        args = dict(parse(argv, OPTIONS, __doc__).values)
        task = TASKS[args["task"]]
        for key in ("planning", "sweeping"):
            given = args[key] or getattr(task, key)
            args[key] = tuple(n for n in given if n is not None)
        args["backup"] = tuple(dict.fromkeys(args["backup"] or task.backups))
        for key in ("episodes", "steps"):
            args[key] = getattr(task, key) if args[key] is None else args[key]
    except UsageError as e:
        print(f"dyna: {e}", file=sys.stderr)
        return 2
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    check = lake_check() if args["task"] == "frozenlake" else None
    measure = success_measure() if args["task"] == "slippery" else None
    backups = args["backup"]
    agents = []
    for n in args["planning"]:
        for backup in backups[:1] if n == 0 else backups:  # n = 0 makes no planning update
            named = f" ({backup})" if n and backups != ("sample",) else ""
            agents.append(("dyna_q", n, backup, f"Dyna-Q n={n}{named}"))
    agents += [("prioritized_sweeping", n, "expected", f"prioritized sweeping n={n}")
               for n in args["sweeping"]]
    start = time.perf_counter()
    episodes = run(args["task"], [agent[:3] for agent in agents], args, check, measure)
    runs = {agent[3]: e for agent, e in zip(agents, episodes)}
    seconds = time.perf_counter() - start
    results, rows = REPORTS[args["task"]](runs, args, out)
    head = f"{settings(args['task'])}, {args['seeds']} seeds\n\n"
    (out / f"{args['task']}.md").write_text(head + "\n".join(rows) + "\n")
    print(head + "\n".join(rows), file=sys.stderr)
    print(json.dumps({"task": args["task"], "seeds": args["seeds"],
                      "episodes": args["episodes"], "steps": args["steps"],
                      "seconds": round(seconds, 1), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
