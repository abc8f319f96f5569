"""A neural world model of CartPole: real against synthetic transitions, k-step prediction errors,
and planning with the model against a uniformly random policy.

  python launch/cartpole_model.py [--steps 10000] [--epochs 200] [--batch 256] [--holdout 0.2]
                                  [--k 30] [--episodes 10] [--out runs/cartpole_model]
                                  [--seed 0] [--pets.KEY=VALUE ...]

1. Collects --steps transitions of gym_CartPole-v1 with a uniformly random policy
   (`dreamer.bench.transitions.collect`, several episodes); the last --holdout of the episodes are
   held out whole.
2. Trains PETS's dynamics model with one member (`dreamer.core.dynamics`, built by PETS with
   pets.members=1: a Gaussian MLP from the normalised (state, one-hot action) to the normalised
   (Δstate, reward) and a termination logit, with the model's normalisers, loss and train_step)
   for --epochs shuffled passes over the training transitions in batches of --batch, each
   transition a replayed sequence of two steps; the validation loss is the model's loss on the
   held-out episodes.
3. Synthetic transitions: the model sampled once from every real (state, action): next state and
   reward from its Gaussian, termination from its probability. OUT/transitions.png holds the
   histograms of real against synthetic next states, rewards and terminations. OUT/prediction.png
   holds the losses per epoch and the RMSE of open-loop predictions (the model's mean fed back,
   along the real actions) k = 1..--k steps ahead from every step of the held-out episodes, each
   dimension divided by the std of the real next states, beside the error of predicting no change.
4. Plans with the model: CEM (or MPPI: --pets.planner=mppi) of `dreamer.core.planners` over
   pets.horizon steps; each step's action is the argmax of the plan's 2 entries, and a sequence's
   return sums the predicted rewards weighted by the predicted chance that no termination came
   before them (`dreamer.bench.transitions.rollout`). The planner and the random policy each play
   --episodes episodes on the same environment seeds.

Config keys of the `pets` section (other than members and particles) change the model and the
planner, e.g. --pets.units=200 --pets.horizon=30. Writes OUT/transitions.png, OUT/prediction.png
and OUT/cartpole_model.md, and prints one JSON line.
"""
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents import make_agent
from dreamer.args import Option, UsageError, integer, number, parse
from dreamer.bench import transitions
from dreamer.config import Config, ConfigError, load_config
from dreamer.core import dynamics, planners
from dreamer.core.rngs import int_seed, jax_key, seed_sequence
from dreamer.envs import make_env

OPTIONS = (
    Option("steps", 10_000, integer(2), metavar="N"),
    Option("epochs", 200, integer(1), metavar="N"),
    Option("batch", 256, integer(1), metavar="N"),
    Option("holdout", 0.2, number(0.0), metavar="FRACTION"),
    Option("k", 30, integer(1), metavar="N"),
    Option("episodes", 10, integer(1), metavar="N"),
    Option("out", "runs/cartpole_model", metavar="DIR"),
    Option("seed", 0, integer(0), metavar="N"),
)
# One deterministic-mean model: PETS's ensemble of one, whose particles are unused here.
FIXED = {"pets.members": 1, "pets.particles": 1, "batch_length": 2}
# Sized for the whole command to take a few minutes on two CPU cores.
DEFAULTS = {"pets.units": 128, "pets.layers": 2, "pets.horizon": 20, "pets.candidates": 100,
            "pets.elites": 10, "pets.iterations": 3}
NAMES = ("cart position", "cart velocity", "pole angle", "pole angular velocity")
# gymnasium's CartPole-v1 terminates past these bounds on the cart position and pole angle.
X_BOUND, ANGLE_BOUND = 2.4, 12 * 2 * np.pi / 360


def config(overrides: dict[str, str]) -> Config:
    """The gym preset's CartPole with PETS's model and planner, `overrides` of pets.* keys."""
    for key in overrides:
        if not key.startswith("pets.") or key in FIXED:
            raise UsageError(f"--{key}: this command takes only keys of the pets section (the "
                             "model and the planner), other than pets.members and "
                             "pets.particles: it trains one model")
    return load_config(["pets", "gym"], {**DEFAULTS, **overrides, **FIXED})


def one_member(agent):
    """The member's mean prediction: (params, states [N, D], actions [N, A]) -> (next [N, D],
    rewards [N], termination probabilities [N])."""
    def predict(params, states, actions):
        states, rewards, done = agent.model.predict(params, states[None], actions[None])
        return states[0], rewards[0], done[0]
    return predict


def train(agent, data: dict, held: dict, epochs: int, batch: int, seed: int):
    """The model's train_step over shuffled batches for `epochs` passes -> (state, losses per
    epoch: {'train/NAME', 'val/NAME': [epochs]} for nll, termination and mse)."""
    n = len(data["action"])
    if batch > n:
        raise ValueError(f"--batch {batch} is more than the {n} training transitions: lower it")
    seqs = transitions.as_sequences(data, agent.act_dim)
    x, y, term, mask = dynamics.transitions(transitions.as_sequences(held, agent.act_dim))
    step = jax.jit(agent.model.train_step)

    @jax.jit
    def validate(params):
        weights = (mask / mask.sum())[None]
        _, metrics = dynamics.loss(params["model"], agent.model.net, params["norm"], x, y,
                                   term, weights, bound_reg=0.0)
        return metrics

    state = agent.init(jax_key(seed, "init"))
    rng = np.random.default_rng(seed_sequence(seed, "shuffle"))
    names = ("nll", "termination", "mse")
    losses = {f"{side}/{name}": [] for side in ("train", "val") for name in names}
    for _ in range(epochs):
        order, seen = rng.permutation(n), []
        for i in range(n // batch):
            rows = order[i * batch:(i + 1) * batch]
            state, metrics, _ = step(state, {k: v[rows] for k, v in seqs.items()})
            seen.append(metrics)
        val = validate(state.params)
        for name in names:
            losses[f"train/{name}"].append(float(np.mean([m[f"loss/{name}"] for m in seen])))
            losses[f"val/{name}"].append(float(val[f"loss/{name}"]))
    return state, losses


def synthetic(agent, params, data: dict, key: jax.Array) -> dict:
    """The model sampled once from every real (state, action): next [N, D], reward [N] and
    terminal [N] (drawn with the predicted probability)."""
    k_model, k_term = jax.random.split(key)
    actions = jax.nn.one_hot(data["action"], agent.act_dim)
    nxt, reward, done = agent.model.predict(params, jnp.asarray(data["state"])[None],
                                            actions[None], k_model)
    terminal = jax.random.bernoulli(k_term, done[0])
    return {"next": np.asarray(nxt[0]), "reward": np.asarray(reward[0]),
            "terminal": np.asarray(terminal)}


def k_step(agent, params, held: dict, k: int, scale: np.ndarray) -> dict:
    """Open-loop errors on the held-out episodes, divided by `scale` [D]: the model's and
    no change's RMSE [k, D], and the windows that reach each step [k]."""
    w = transitions.windows(held, k)
    actions = jax.nn.one_hot(w["action"], agent.act_dim)
    predict = functools.partial(one_member(agent), params)
    states, _, _ = jax.jit(transitions.unroll, static_argnums=0)(predict, w["start"], actions)
    model, count = transitions.errors(np.asarray(states), w["target"], w["mask"])
    still = np.broadcast_to(w["start"][:, None], w["target"].shape)
    unchanged, _ = transitions.errors(still, w["target"], w["mask"])
    return {"model": model / scale, "no change": unchanged / scale, "windows": count}


def make_act(agent, cfg: Config, params, episodes: int, seed: int):
    """The planner as `act(vectors [E, D]) -> actions [E]` for `transitions.run_episodes`,
    warm-starting each step from the shifted plan."""
    p = cfg.pets
    rollout = functools.partial(transitions.rollout, one_member(agent), discount=p.discount)

    def plan(params, obs, mean, key):
        if p.planner == "cem":
            return planners.cem(rollout, params, obs, key, mean, candidates=p.candidates,
                                elites=p.elites, iterations=p.iterations,
                                init_std=p.init_std, smoothing=p.smoothing)
        return planners.mppi(rollout, params, obs, key, mean, candidates=p.candidates,
                             iterations=p.iterations, init_std=p.init_std,
                             temperature=p.temperature)

    @jax.jit
    def step(params, obs, carry, key):
        plans = jax.vmap(plan, (None, 0, 0, 0))(params, obs, carry,
                                                jax.random.split(key, obs.shape[0]))
        return planners.shift(plans), jnp.argmax(plans[:, 0], -1)

    state = {"carry": jnp.zeros((episodes, p.horizon, agent.act_dim)),
             "key": jax_key(seed, "plan")}

    def act(obs: np.ndarray) -> np.ndarray:
        state["key"], key = jax.random.split(state["key"])
        state["carry"], actions = step(params, jnp.asarray(obs), state["carry"], key)
        return np.asarray(actions)

    return act


def play(cfg: Config, act, episodes: int, seed: int) -> dict:
    """`act`'s episode returns on the evaluation seeds, their mean and std, and how each ended
    (the pole fell, the cart left the track, or the time limit) with the cart's last position."""
    envs = [make_env(cfg.env, int_seed(seed, "eval", i)) for i in range(episodes)]
    returns, last = transitions.run_episodes(envs, act)
    for env in envs:
        env.close()
    fell, off = np.abs(last[:, 2]) > ANGLE_BOUND, np.abs(last[:, 0]) > X_BOUND
    return {"mean": float(returns.mean()), "std": float(returns.std()),
            "returns": [float(r) for r in returns],
            "ended": {"pole fell": int(fell.sum()), "cart left the track": int((off & ~fell).sum()),
                      "time limit": int((~fell & ~off).sum())},
            "last_cart_position": [float(x) for x in last[:, 0]]}


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance of two samples of one size: the mean gap between their sorted values."""
    return float(np.abs(np.sort(a) - np.sort(b)).mean())


def compare(data: dict, fake: dict) -> dict:
    """Real against synthetic: per quantity means, stds, W1 of the marginals and the RMSE of
    the pairs (same state and action); terminal rates and agreement."""
    out = {}
    columns = [(name, data["next"][:, i], fake["next"][:, i]) for i, name in enumerate(NAMES)]
    for name, real, synth in [*columns, ("reward", data["reward"], fake["reward"])]:
        out[name] = {"real_mean": float(real.mean()), "real_std": float(real.std()),
                     "synthetic_mean": float(synth.mean()), "synthetic_std": float(synth.std()),
                     "w1": wasserstein(real, synth),
                     "paired_rmse": float(np.sqrt(np.mean(np.square(real - synth))))}
    out["terminal"] = {"real_rate": float(data["terminal"].mean()),
                       "synthetic_rate": float(fake["terminal"].mean()),
                       "agreement": float((data["terminal"] == fake["terminal"]).mean())}
    return out


def plot_transitions(data: dict, fake: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    columns = [(f"next {n}", data["next"][:, i], fake["next"][:, i]) for i, n in enumerate(NAMES)]
    for ax, (title, real, synth) in zip(axes.flat, [*columns, ("reward", data["reward"],
                                                               fake["reward"])]):
        lo, hi = min(real.min(), synth.min()), max(real.max(), synth.max())
        # At least 2% of the values' size wide: a constant (CartPole's reward) is one spike.
        middle, half = (lo + hi) / 2, max(hi - lo, 0.02 * max(abs(lo), abs(hi), 1.0)) / 2
        bins = np.linspace(middle - half, middle + half, 50)
        ax.hist(real, bins, histtype="step", lw=1.5, label="real")
        ax.hist(synth, bins, histtype="step", lw=1.5, label="synthetic")
        ax.set(title=title)
    ax = axes.flat[5]
    rates = [data["terminal"].mean(), fake["terminal"].mean()]
    ax.bar(["real", "synthetic"], rates, color=["C0", "C1"])
    ax.set(title="terminal transitions", ylabel="fraction")
    axes.flat[0].legend()
    fig.suptitle(f"CartPole: {len(data['action']):,} real transitions (random policy) and the "
                 "model's one-step samples from the same states and actions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prediction(losses: dict, errs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = np.arange(1, len(losses["train/mse"]) + 1)
    for name, color in (("mse", "C0"), ("termination", "C3")):
        left.plot(epochs, losses[f"train/{name}"], color=color, alpha=0.5, label=f"train {name}")
        left.plot(epochs, losses[f"val/{name}"], color=color, label=f"held-out {name}")
    left.set(xlabel="epoch", ylabel="loss", yscale="log",
             title="MSE of normalised (Δstate, reward); termination cross-entropy")
    left.legend()
    ks = np.arange(1, len(errs["windows"]) + 1)
    for i, name in enumerate(NAMES):
        right.plot(ks, errs["model"][:, i], color=f"C{i}", label=f"model: {name}")
        right.plot(ks, errs["no change"][:, i], color=f"C{i}", ls=":", alpha=0.7)
    right.set(xlabel="k (steps ahead, open loop)", ylabel="RMSE / std of the dimension",
              yscale="log", title="k-step error on held-out episodes (dotted: no change)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(report: dict, k: int) -> str:
    """The Markdown tables of `report`."""
    header = ("| next state / reward | real mean ± std | synthetic mean ± std | W1 of the "
              "marginals | RMSE of the pairs |")
    rows = [header, "|---|---|---|---|---|"]
    for name, r in report["synthetic"].items():
        if name != "terminal":
            rows.append(f"| {name} | {r['real_mean']:.4f} ± {r['real_std']:.4f} | "
                        f"{r['synthetic_mean']:.4f} ± {r['synthetic_std']:.4f} | {r['w1']:.4f} | "
                        f"{r['paired_rmse']:.4f} |")
    t = report["synthetic"]["terminal"]
    rows += ["", "| terminal transitions | real | synthetic | same outcome |", "|---|---|---|---|",
             f"| fraction | {t['real_rate']:.4f} | {t['synthetic_rate']:.4f} | "
             + f"{t['agreement']:.4f} |"]
    rows += ["", "| k | held-out windows | model: RMSE / std, mean over dims | no change |",
             "|---|---|---|---|"]
    for step in [s for s in (1, 2, 5, 10, 20, 30, 50) if s <= k]:
        e = report["k_step"][str(step)]
        rows.append(f"| {step} | {e['windows']} | {e['model']:.4f} | {e['no_change']:.4f} |")
    header = ("| policy | episodes | return, mean ± std | min | max | pole fell / cart left the "
              "track / time limit | mean \\|cart position\\| at the end |")
    rows += ["", header, "|---|---|---|---|---|---|---|"]
    for name in ("planner", "random"):
        r = report[name]
        ends = " / ".join(str(n) for n in r["ended"].values())
        rows.append(f"| {name} | {len(r['returns'])} | {r['mean']:.1f} ± {r['std']:.1f} | "
                    f"{min(r['returns']):.0f} | {max(r['returns']):.0f} | {ends} | "
                    f"{np.abs(r['last_cart_position']).mean():.2f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    try:
        args = parse(argv, OPTIONS, __doc__, config=Config())
        cfg = config(args.overrides)
        if not 0 < args["holdout"] < 1:
            raise UsageError(f"--holdout {args['holdout']:g}: expected a fraction in (0, 1)")
    except ConfigError as e:
        print(f"cartpole_model: {e}", file=sys.stderr)
        return 2
    out, seed = Path(args["out"]), args["seed"]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = make_env(cfg.env, int_seed(seed, "env"))
    rng = np.random.default_rng(seed_sequence(seed, "act"))
    data = transitions.collect(env, args["steps"], rng)
    env.close()
    agent = make_agent(cfg, env.obs_space, env.act_space)
    try:
        train_data, held = transitions.split(data, args["holdout"])
        state, losses = train(agent, train_data, held, args["epochs"], args["batch"], seed)
    except ValueError as e:
        print(f"cartpole_model: {e}", file=sys.stderr)
        return 2
    trained = time.perf_counter()
    fake = synthetic(agent, state.params, data, jax_key(seed, "synthetic"))
    scale = data["next"].std(0)
    errs = k_step(agent, state.params, held, args["k"], scale)
    planned = play(cfg, make_act(agent, cfg, state.params, args["episodes"], seed),
                   args["episodes"], seed)
    rng = np.random.default_rng(seed_sequence(seed, "random"))
    uniform = play(cfg, lambda obs: rng.integers(agent.act_dim, size=len(obs)),
                   args["episodes"], seed)
    seconds = time.perf_counter() - start
    report = {
        "transitions": len(data["action"]), "episodes_collected": int(data["episode"][-1]) + 1,
        "train_transitions": len(train_data["action"]), "held_out": len(held["action"]),
        "val": {name: losses[f"val/{name}"][-1] for name in ("nll", "termination", "mse")},
        "synthetic": compare(data, fake),
        "k_step": {str(i + 1): {"windows": int(errs["windows"][i]),
                                "model": float(errs["model"][i].mean()),
                                "no_change": float(errs["no change"][i].mean())}
                   for i in range(args["k"])},
        "max_abs_cart_position_collected": float(np.abs(data["next"][:, 0]).max()),
        "planner": planned, "random": uniform,
        "seconds": {"total": round(seconds, 1), "collect_and_train": round(trained - start, 1)}}
    plot_transitions(data, fake, out / "transitions.png")
    plot_prediction(losses, errs, out / "prediction.png")
    text = table(report, args["k"])
    (out / "cartpole_model.md").write_text(text)
    print(text, file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
