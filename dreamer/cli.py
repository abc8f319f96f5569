"""Command-line entry points (`dreamer-train`) and their argument grammar."""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dreamer.checkpoint import CheckpointError
from dreamer.config import Config, ConfigError, available_presets, configs_dir_of, load_config
from dreamer.envs import EnvError

DEFAULT_PRESET = "demo"  # a pixel task that learns within minutes on a laptop CPU


def _description(path: Path) -> str:
    """The first comment line of a preset file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def usage(configs_dir: str | Path | None = None) -> str:
    """The command-line help: grammar, presets, sections."""
    directory = configs_dir_of(configs_dir)
    presets = available_presets(directory)
    width = max(map(len, presets), default=0)
    lines = [
        "usage: bash launch/train.sh [--configs PRESET [PRESET ...]] [--logdir DIR]",
        "                            [--KEY=VALUE | --KEY VALUE ...]",
        "",
        "Starts from configs/defaults.yaml, applies the presets in order (later wins), then the",
        "overrides. KEY is a dotted config key; VALUE is parsed as YAML and checked against the",
        "key's type, e.g. --run.steps=1e6 --env.size=32,32 --model.mults=[2,2] --jax.jit=false",
        "",
        "presets:",
        *(f"  {name:<{width}}  {_description(directory / f'{name}.yaml')}".rstrip()
          for name in presets),
        "",
        "keys: see configs/defaults.yaml; sections: "
        + ", ".join(k for k, v in Config(configs_dir=directory).items() if isinstance(v, Config)),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str], configs_dir: str | Path | None = None
               ) -> tuple[Config, dict[str, Any]]:
    """Parses the launcher's command line into a config.

    Grammar: `--configs NAME [NAME ...]` (presets; also `--configs=a,b`), `--KEY=VALUE` or
    `--KEY VALUE` for any dotted config key (`--logdir DIR` sets `logdir`; a boolean key alone,
    e.g. `--logger.wandb`, sets it true), `-h`/`--help`.
    Help prints the usage and exits with status 0. Returns the config and
    `{'presets': [...], 'overrides': {key: text}}` as given on the command line.
    """
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(usage(configs_dir))
        raise SystemExit(0)
    presets: list[str] = []
    overrides: dict[str, str] = {}
    flags: set[str] | None = None  # boolean keys, which may be given without a value
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; options look like --KEY=VALUE "
                              "(see --help)")
        name, eq, value = arg[2:].partition("=")
        if name == "configs":
            names = [v for v in value.split(",") if v] if eq else []
            i += 1
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                names += [v for v in argv[i].split(",") if v]
                i += 1
            if not names:
                raise ConfigError("--configs needs at least one preset name")
            presets += names
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                if flags is None:
                    flags = {k for k, v in Config(configs_dir=configs_dir_of(configs_dir))
                             .flat().items() if isinstance(v, bool)}
                if name not in flags:
                    raise ConfigError(f"missing value for --{name} (write --{name}=VALUE)")
                value = "true"  # a bare switch, e.g. --logger.wandb
            else:
                value = argv[i + 1]
                i += 1
        overrides[name] = value
        i += 1
    cfg = load_config(presets, configs_dir=configs_dir)
    cfg = cfg.update(overrides, source="command line")
    return cfg, {"presets": presets, "overrides": overrides}


def _config_of(prog: str, argv: list[str] | None) -> tuple[Config, dict[str, Any]] | None:
    """The config of a command line (the demo preset unless --configs is given); None after
    printing the error."""
    argv = sys.argv[1:] if argv is None else argv
    if not any(arg == "--configs" or arg.startswith("--configs=") for arg in argv):
        argv = ["--configs", DEFAULT_PRESET, *argv]
    try:
        return parse_args(argv)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def train_main(argv: list[str] | None = None) -> int:
    """`dreamer-train --configs debug --run.steps=1e4 --logdir runs/x` (see README)."""
    parsed = _config_of("dreamer-train", argv)
    if parsed is None:
        return 2
    cfg, _ = parsed
    import jax

    if cfg.jax.platform:
        jax.config.update("jax_platforms", cfg.jax.platform)
    if cfg.parallel.devices > 1:
        # On a machine without accelerators, N devices are N fake CPU devices (for trying the
        # data-parallel path); the setting does not touch GPU or TPU backends.
        jax.config.update("jax_num_cpu_devices", cfg.parallel.devices)
    from dreamer import doctor, runner

    try:
        doctor.preflight(cfg)
    except ConfigError as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def terminate(signum, frame):
        stop.set()  # the loops check it too, in case this exception is swallowed
        raise KeyboardInterrupt  # unwinds like Ctrl-C: actors stopped, replay saved

    signal.signal(signal.SIGTERM, terminate)
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
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(doctor_main.__doc__)
        return 0
    parsed = _config_of("dreamer-doctor", argv)
    if parsed is None:
        return 2
    cfg, info = parsed
    from dreamer import doctor

    print(f"dreamer-doctor: checking this machine for --configs {' '.join(info['presets'])}")
    checks = doctor.run_checks(cfg)
    for check in checks:
        print(check.line())
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(f"{failed} problem(s), {warned} warning(s)")
    return 1 if failed else 0


def eval_main(argv: list[str] | None = None) -> int:
    """`dreamer-eval --logdir DIR [--episodes N] [--video FILE] [--mode sample|mode]`: runs the
    policy of the newest checkpoint in DIR and prints the score's mean and spread."""
    import argparse

    parser = argparse.ArgumentParser(prog="dreamer-eval", description=eval_main.__doc__)
    parser.add_argument("--logdir", required=True, help="a training logdir (holds config.yaml "
                        "and checkpoints/)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--video", default="", help="write the first episode to this .mp4 or "
                        ".gif file")
    parser.add_argument("--mode", choices=("sample", "mode"), default="sample",
                        help="sample actions (as in training) or take the most likely one")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the episodes")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    if args.video and Path(args.video).suffix.lower() not in (".mp4", ".gif"):
        parser.error(f"--video {args.video!r}: the file name must end in .mp4 or .gif")
    try:
        result = evaluate_logdir(Path(args.logdir), args.episodes, args.mode, args.seed,
                                 args.video or None)
    except (ConfigError, EnvError, CheckpointError) as e:
        print(f"dreamer-eval: {e}", file=sys.stderr)
        return 2
    print(f"score {result['eval/score']:.4g} ± {result['eval/score_std']:.3g} (mean ± std over "
          f"{args.episodes} episodes, {args.mode} actions; checkpoint at {result['env_steps']} "
          f"env steps; episode length {result['eval/length']:.0f})")
    if args.video:
        print(f"video of the first episode: {args.video}")
    return 0


def evaluate_logdir(logdir: Path, episodes: int, mode: str = "sample", seed: int = 0,
                    video: str | None = None) -> dict[str, Any]:
    """Evaluates the newest checkpoint of a training logdir (see `eval_main`)."""
    import jax

    from dreamer import analysis
    from dreamer.acting import AgentPolicy, evaluate
    from dreamer.envs import make_env
    from dreamer.rngs import Rngs

    if (logdir / "config.yaml").is_file():
        platform = Config.load(logdir / "config.yaml").jax.platform
        if platform:
            jax.config.update("jax_platforms", platform)
    run = analysis.load_run(logdir)
    env = make_env(run.cfg.env, seed)
    try:
        policy = AgentPolicy(run.agent, 1, Rngs(seed).key_stream("eval"), run.cfg.jax.jit)
        result = evaluate(policy, run.params, env, episodes, run.cfg.env.action_repeat,
                                 video=video is not None, mode=mode)
    finally:
        env.close()
    if video is not None:
        if "eval/video" not in result:
            raise ConfigError(f"the task {run.cfg.env.task} has no image observations to film")
        analysis.write_video(video, result["eval/video"])
    return {**result, "env_steps": run.env_steps}


if __name__ == "__main__":
    sys.exit(train_main())
