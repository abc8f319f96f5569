"""Dyna-Q and prioritized sweeping on the Dyna maze (Sutton & Barto, Example 8.1, Figure 8.2):
steps per episode over the first episodes for several numbers n of planning steps, mean over seeds.

  python launch/dyna.py [--planning 0,5,50] [--sweeping 5] [--seeds 30] [--episodes 50]
                        [--out runs/dyna] [--seed 0]

Runs the agents' own jitted functions (`dreamer.agents.dyna`: `learn` after each real step, then
`policy`) in a fast loop, every seed at once (vmap) with one maze per seed, instead of the full
training loop: the book updates after every step, which is what `learn` does here. Dyna-Q runs
for each n of --planning, prioritized sweeping for each n of --sweeping (none: skip it); the
book's settings (alpha 0.1, gamma 0.95, epsilon 0.1) come from the presets. Writes
OUT/steps.png (steps per episode from episode 2 on, as in the book's figure: mean and the band
of one standard deviation over seeds) and OUT/steps.md, and prints one JSON line. An agent has
converged at the first episode from which the mean over seeds stays within 20% of its mean over
the last 10 episodes.
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents import make_agent
from dreamer.args import Option, UsageError, integer, parse
from dreamer.config import load_config
from dreamer.envs.builtin import DynaMaze

OPTIONS = (
    Option("planning", (0, 5, 50), integer(0), many=True, metavar="N"),
    Option("sweeping", (5,), integer(1), many=True, metavar="N"),
    Option("seeds", 30, integer(1), metavar="N"),
    Option("episodes", 50, integer(2), metavar="N"),
    Option("out", "runs/dyna", metavar="DIR"),
    Option("seed", 0, integer(0), metavar="N"),
)


def make_tick(agent):
    """One jitted step for every seed at once: learn from the transition into the current
    observation (from the carry's previous state and action), then act on it."""
    def tick(state, carry, obs, reward, terminal, key):
        k_learn, k_act = jax.random.split(key)
        now = jnp.argmax(obs["vector"], -1).astype(jnp.int32)
        trans = {"state": carry[0], "action": carry[1], "reward": reward, "next": now,
                 "terminal": terminal, "valid": (carry[0] >= 0) & ~obs["is_first"]}
        state, _ = agent.learn(state, trans, k_learn)
        carry, action, _ = agent.policy(state.params, carry, obs, k_act, mode="sample")
        return state, carry, action

    return jax.jit(jax.vmap(tick))


def run(name: str, planning: int, seeds: int, episodes: int, seed: int) -> np.ndarray:
    """Steps of each seed's first `episodes` episodes, [seeds, episodes]."""
    cfg = load_config([name], {"dyna.planning_steps": planning})
    envs = [DynaMaze(i) for i in range(seeds)]
    agent = make_agent(cfg, envs[0].obs_space, envs[0].act_space)
    keys = jax.random.split(jax.random.key(seed), seeds)
    state = jax.vmap(agent.init)(keys)
    carry = jax.vmap(lambda _: agent.policy_initial(1))(keys)
    tick = make_tick(agent)
    outs = [env.reset() for env in envs]
    lengths = [[] for _ in envs]
    count = np.zeros(seeds, np.int64)
    step = 0
    while min(len(x) for x in lengths) < episodes:
        obs = {"vector": np.stack([o["vector"] for o in outs])[:, None],
               "is_first": np.array([o["is_first"] for o in outs])[:, None]}
        reward = np.array([o["reward"] for o in outs], np.float32)[:, None]
        terminal = np.array([o["is_terminal"] for o in outs])[:, None]
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        state, carry, action = tick(state, carry, obs, reward, terminal, step_keys)
        action = np.argmax(np.asarray(action)[:, 0], -1)
        for i, env in enumerate(envs):
            if outs[i]["is_last"]:
                lengths[i].append(count[i])
                count[i] = 0
                outs[i] = env.reset()
            else:
                outs[i] = env.step(action[i])
                count[i] += 1
        step += 1
    return np.array([x[:episodes] for x in lengths])


def converged(mean: np.ndarray) -> int:
    """The first episode (1-based) from which `mean` stays within 20% of its last 10 episodes."""
    level = mean[-10:].mean()
    above = np.flatnonzero(mean > 1.2 * level)
    return int(above[-1] + 2) if len(above) else 1


def plot(curves: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, steps in curves.items():
        episodes = np.arange(2, steps.shape[1] + 1)
        mean, std = steps[:, 1:].mean(0), steps[:, 1:].std(0)
        ax.plot(episodes, mean, label=label)
        ax.fill_between(episodes, np.maximum(mean - std, 0), mean + std, alpha=0.2)
    ax.set(xlabel="episode", ylabel="steps per episode", ylim=(0, 800),
           title=f"Dyna maze, mean ± std over {len(next(iter(curves.values())))} seeds")
    ax.axhline(14, color="gray", lw=0.8, ls=":")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    try:
        args = parse(argv, OPTIONS, __doc__)
    except UsageError as e:
        print(f"dyna: {e}", file=sys.stderr)
        return 2
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    runs = [("dyna_q", n, f"Dyna-Q n={n}") for n in args["planning"]]
    runs += [("prioritized_sweeping", n, f"prioritized sweeping n={n}") for n in args["sweeping"]]
    start = time.perf_counter()
    curves, results = {}, {}
    for name, n, label in runs:
        steps = run(name, n, args["seeds"], args["episodes"], args["seed"])
        curves[label] = steps
        mean = steps.mean(0)
        results[label] = {"converged_episode": converged(mean),
                          "episode_1": float(mean[0]), "episode_2": float(mean[1]),
                          "last_10": float(mean[-10:].mean()),
                          "total_steps": float(steps.sum(1).mean())}
    seconds = time.perf_counter() - start
    plot(curves, out / "steps.png")
    header = ("| agent | episode 1 | episode 2 | converged at episode | last 10 episodes "
              "| steps in all |")
    rows = [header, "|---|---|---|---|---|---|"]
    rows += [f"| {label} | {r['episode_1']:.0f} | {r['episode_2']:.0f} | "
             f"{r['converged_episode']} | {r['last_10']:.1f} | {r['total_steps']:.0f} |"
             for label, r in results.items()]
    (out / "steps.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows), file=sys.stderr)
    print(json.dumps({"seeds": args["seeds"], "episodes": args["episodes"],
                      "seconds": round(seconds, 1), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
