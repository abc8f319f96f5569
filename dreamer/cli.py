"""Command-line entry points (`dreamer-train`, `dreamer-doctor`, `dreamer-eval`), in the grammar
of `dreamer.args`."""
from __future__ import annotations

import inspect
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dreamer import xla_flags
from dreamer.agents import MODES
from dreamer.args import Args, Option, UsageError, choice, integer, parse
from dreamer.config import (
    Config,
    ConfigError,
    available_agents,
    available_presets,
    configs_dir_of,
    load_config,
)
from dreamer.envs import EnvError
from dreamer.run.checkpoint import CheckpointError

DEFAULT_PRESET = "demo"  # a pixel task that learns within minutes on a laptop CPU
TRAIN = "Trains an agent (on the demo preset unless --configs is given)."
DOCTOR = ("Checks this machine for the training config (the demo preset unless --configs is given) "
          "and prints each problem with its fix.")


def _description(path: Path) -> str:
    """The first comment line of a preset file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def usage(configs_dir: str | Path | None = None, command: str = "bash launch/train.sh",
          purpose: str = TRAIN) -> str:
    """The help of a command that builds a config from its command line: what it does, how the
    config is built, the presets and the sections."""
    directory = configs_dir_of(configs_dir)
    presets = available_presets(directory)
    width = max(map(len, presets), default=0)
    lines = [
        f"usage: {command} [--configs PRESET [PRESET ...]] [--logdir DIR] [--KEY=VALUE ...]",
        "",
        textwrap.fill(purpose, 92),
        "",
        "Starts from configs/defaults.yaml and the chosen agent's preset (--agent, default",
        "dreamerv3), applies the presets in order (later wins), then the overrides. KEY is a",
        "dotted config key; VALUE is parsed as YAML and checked against the key's type, e.g.",
        "--run.steps=1e6 --env.size=32,32 --model.mults=[2,2] --jax.jit=false",
        "",
        "presets:",
        *(f"  {name:<{width}}  {_description(directory / f'{name}.yaml')}".rstrip()
          for name in presets),
        "",
        "keys: see configs/defaults.yaml and the agent presets (" + ", ".join(
            available_agents(directory)) + "), which hold each agent's sections; sections: "
        + ", ".join(k for k, v in Config(configs_dir=directory).items() if isinstance(v, Config)),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str], configs_dir: str | Path | None = None, *,
               options: Sequence[Option] = (), presets: Sequence[str] = (),
               help_text: str | None = None) -> tuple[Config, Args]:
    """The config of a command line: `--configs PRESET ...` (applied in order; `presets` when not
    given) and `--KEY=VALUE` overrides of any config key, beside the command's own `options`.

    Help prints `help_text` (by default dreamer-train's `usage`) and exits with status 0; a wrong
    command line or config raises ConfigError. Returns the config and the parsed command line:
    `args['configs']` holds the presets, `args.overrides` the overrides as given.
    """
    configs = Option("configs", tuple(presets), many=True, metavar="PRESET")
    args = parse(argv, [configs, *options], help_text or usage(configs_dir),
                 config=Config(configs_dir=configs_dir_of(configs_dir)))
    # The overrides take part in choosing the agent (--agent=pets applies the pets preset).
    cfg = load_config(args["configs"], args.overrides, configs_dir=configs_dir,
                      source="command line")
    return cfg, args


def _config_of(prog: str, help_text: str, argv: list[str] | None
               ) -> tuple[Config, Args] | None:
    """The config of a command line (the demo preset unless --configs is given); None after
    printing the error."""
    try:
        return parse_args(sys.argv[1:] if argv is None else argv, presets=(DEFAULT_PRESET,),
                          help_text=help_text)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def train_main(argv: list[str] | None = None) -> int:
    """`dreamer-train --configs debug --run.steps=1e4 --logdir runs/x` (see README)."""
    parsed = _config_of("dreamer-train", usage(), argv)
    if parsed is None:
        return 2
    cfg, _ = parsed
    import jax

    if cfg.jax.platform:
        jax.config.update("jax_platforms", cfg.jax.platform)
    added = xla_flags.apply(cfg.jax.xla_flags, cfg.jax.platform)
    if added:
        print(f"dreamer-train: added to XLA_FLAGS (jax.xla_flags: {cfg.jax.xla_flags}): "
              f"{' '.join(added)}", file=sys.stderr)
    if cfg.parallel.devices > 1:
        # On a machine without accelerators, N devices are N fake CPU devices (for trying the
        # data-parallel path); the setting does not touch GPU or TPU backends.
        jax.config.update("jax_num_cpu_devices", cfg.parallel.devices)
    from dreamer import doctor
    from dreamer.run import runner

    try:
        doctor.preflight(cfg)
    except ConfigError as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 2

    from dreamer.run import interrupts

    # SIGTERM and Ctrl-C unwind the loop (actors stopped, replay and checkpoint saved), but not
    # in the middle of an update, whose train state would be lost (`interrupts.deferred`).
    stop = threading.Event()
    signal.signal(signal.SIGTERM, interrupts.handler(stop))
    signal.signal(signal.SIGINT, interrupts.handler(stop))
    try:
        logdir = runner.resolve_logdir(cfg)
        print(f"dreamer-train: logging to {logdir}", file=sys.stderr)
        runner.run(cfg.update({"logdir": str(logdir)}), stop=stop)
    except (ConfigError, EnvError, CheckpointError) as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 2
    except runner.NonFiniteError as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dreamer-train: stopped; replay and checkpoint saved under the logdir (run the "
              "same command again to resume)", file=sys.stderr)
        return 130
    return 0


def doctor_main(argv: list[str] | None = None) -> int:
    """`dreamer-doctor [--configs PRESET ...] [--KEY=VALUE ...]`: checks this machine for the
    given training config (default: the demo preset) and prints each problem with its fix."""
    parsed = _config_of("dreamer-doctor", usage(command="dreamer-doctor", purpose=DOCTOR), argv)
    if parsed is None:
        return 2
    cfg, args = parsed
    from dreamer import doctor

    print(f"dreamer-doctor: checking this machine for --configs {' '.join(args['configs'])}")
    checks = doctor.run_checks(cfg)
    for check in checks:
        print(check.line())
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(f"{failed} problem(s), {warned} warning(s)")
    return 1 if failed else 0


def _video_file(text: str) -> str:
    """A video file name: .mp4 or .gif."""
    if Path(text).suffix.lower() not in (".mp4", ".gif"):
        raise ValueError("the file name must end in .mp4 or .gif")
    return text


EVAL_OPTIONS = (
    Option("logdir", required=True, metavar="DIR"),
    Option("episodes", 10, integer(1), metavar="N"),
    Option("video", "", _video_file, metavar="FILE"),
    Option("mode", "eval", choice(*MODES, "mpc")),
    Option("seed", 12345, integer(), metavar="N"),
)


def eval_main(argv: list[str] | None = None) -> int:
    """usage: dreamer-eval --logdir DIR [--episodes N] [--video FILE]
                        [--mode eval|sample|mode|mpc] [--seed N] [--mpc.KEY=VALUE ...]

    Runs the policy of the newest checkpoint in DIR and prints the score's mean and spread and
    the seconds per action.

      --logdir DIR    a training logdir (holds config.yaml and checkpoints/)
      --episodes N    episodes to run (default 10)
      --video FILE    write the first episode to this .mp4 or .gif file
      --mode MODE     eval (the default): act as the agent's paper evaluates it (DreamerV3
                      samples from its actor as the official code does, Dyna-Q is greedy,
                      PETS takes the planner's mean); sample: act as in collecting training
                      data (Dyna-Q is epsilon-greedy); mode: greedy (the actor's most likely
                      action); mpc: plan in DreamerV3's learned model (latent MPC), then run
                      the actor's mode on the same episodes for comparison
      --seed N        seed of the episodes (default 12345)
      --mpc.KEY=VALUE a planner setting of latent MPC (section mpc of configs/dreamerv3.yaml),
                      e.g. --mpc.horizon=8 --mpc.planner=mppi
    """
    try:
        args = parse(sys.argv[1:] if argv is None else argv, EVAL_OPTIONS,
                     inspect.cleandoc(eval_main.__doc__), config=Config())
        mpc = mpc_overrides(args.overrides, args["mode"])
        result = evaluate_logdir(Path(args["logdir"]), args["episodes"], args["mode"],
                                 args["seed"], args["video"] or None, mpc)
    except (ConfigError, EnvError, CheckpointError) as e:
        print(f"dreamer-eval: {e}", file=sys.stderr)
        return 2
    print(f"score {result['eval/score']:.4g} ± {result['eval/score_std']:.3g} (mean ± std over "
          f"{args['episodes']} episodes, {args['mode']} actions; checkpoint at "
          f"{result['env_steps']} env steps; episode length {result['eval/length']:.0f}); "
          f"{_duration(result['eval/action_seconds'])} per action")
    if "actor" in result:
        actor = result["actor"]
        print(f"actor (mode actions) on the same episodes: score {actor['eval/score']:.4g} ± "
              f"{actor['eval/score_std']:.3g}; {_duration(actor['eval/action_seconds'])} per "
              f"action")
    if args["video"]:
        print(f"video of the first episode: {args['video']}")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def mpc_overrides(overrides: dict[str, str], mode: str) -> dict[str, str]:
    """The `--mpc.KEY=VALUE` settings of a dreamer-eval command line; anything else is an error
    (the run's own settings come from its config.yaml)."""
    other = [k for k in overrides if not k.startswith("mpc.")]
    if other:
        raise UsageError(f"dreamer-eval takes config overrides of the mpc section only, got "
                         f"--{other[0]} (the run's settings come from its config.yaml)")
    if overrides and mode != "mpc":
        raise UsageError(f"--{next(iter(overrides))} sets latent MPC's planner: add --mode mpc")
    return dict(overrides)


def evaluate_logdir(logdir: Path, episodes: int, mode: str = "eval", seed: int = 0,
                    video: str | None = None, mpc: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """Evaluates the newest checkpoint of a training logdir (see `eval_main`) with the policy
    in `mode` (one of `dreamer.agents.MODES`, or 'mpc'). With 'mpc' the agent plans by latent
    MPC (planner settings: the run's `mpc` section with the `mpc` overrides), acting in mode
    'eval' (the plan's mean), and the result's `actor` holds the actor's evaluation in mode
    'mode' (greedy) on the same episodes."""
    import jax

    from dreamer.bench import analysis

    if (logdir / "config.yaml").is_file():
        settings = Config.load(logdir / "config.yaml").jax
        if settings.platform:
            jax.config.update("jax_platforms", settings.platform)
        xla_flags.apply(settings.xla_flags, settings.platform)
    run = analysis.load_run(logdir)
    agent, policy_mode, result = run.agent, mode, {}
    if mode == "mpc":
        from dreamer.agents.dreamerv3.mpc import LatentMPC

        cfg = run.cfg.update(mpc or {}, source="command line")
        agent = LatentMPC(run.agent, cfg.mpc)
        result["actor"] = evaluate_agent(run, run.agent, episodes, "mode", seed)
        policy_mode = "eval"  # the plan's mean, as in every mode
    result.update(evaluate_agent(run, agent, episodes, policy_mode, seed, video))
    if video is not None:
        if "eval/video" not in result:
            raise ConfigError(f"the task {run.cfg.env.task} has no image observations to film")
        analysis.write_video(video, result["eval/video"])
    return {**result, "env_steps": run.env_steps}


def evaluate_agent(run: Any, agent: Any, episodes: int, mode: str, seed: int,
                   video: str | None = None) -> dict[str, Any]:
    """`acting.evaluate` of `agent` with a run's params on a fresh environment of seed `seed`
    (the same episodes for every agent)."""
    from dreamer.core.rngs import Rngs
    from dreamer.envs import make_env
    from dreamer.run.acting import AgentPolicy, evaluate

    env = make_env(run.cfg.env, seed)
    try:
        policy = AgentPolicy(agent, 1, Rngs(seed).key_stream("eval"), run.cfg.jax.jit)
        return evaluate(policy, run.params, env, episodes, run.cfg.env.action_repeat,
                        video=video is not None, mode=mode)
    finally:
        env.close()


if __name__ == "__main__":
    sys.exit(train_main())
