"""Command-line entry points (`dreamer-train`) and their argument grammar."""
from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    `--KEY VALUE` for any dotted config key (`--logdir DIR` sets `logdir`), `-h`/`--help`.
    Help prints the usage and exits with status 0. Returns the config and
    `{'presets': [...], 'overrides': {key: text}}` as given on the command line.
    """
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(usage(configs_dir))
        raise SystemExit(0)
    presets: list[str] = []
    overrides: dict[str, str] = {}
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
                raise ConfigError(f"missing value for --{name} (write --{name}=VALUE)")
            value = argv[i + 1]
            i += 1
        overrides[name] = value
        i += 1
    cfg = load_config(presets, configs_dir=configs_dir)
    cfg = cfg.update(overrides, source="command line")
    return cfg, {"presets": presets, "overrides": overrides}


def train_main(argv: list[str] | None = None) -> int:
    """`dreamer-train --configs debug --run.steps=1e4 --logdir runs/x` (see README)."""
    argv = sys.argv[1:] if argv is None else argv
    if not any(arg == "--configs" or arg.startswith("--configs=") for arg in argv):
        argv = ["--configs", DEFAULT_PRESET, *argv]
    try:
        cfg, _ = parse_args(argv)
    except ConfigError as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 2
    import jax

    if cfg.jax.platform:
        jax.config.update("jax_platforms", cfg.jax.platform)
    if cfg.parallel.devices > 1:
        # On a machine without accelerators, N devices are N fake CPU devices (for trying the
        # data-parallel path); the setting does not touch GPU or TPU backends.
        jax.config.update("jax_num_cpu_devices", cfg.parallel.devices)
    from dreamer import runner

    def terminate(signum, frame):
        raise KeyboardInterrupt  # unwinds like Ctrl-C: actors stopped, replay saved

    signal.signal(signal.SIGTERM, terminate)
    try:
        logdir = runner.prepare_logdir(cfg)
        print(f"dreamer-train: logging to {logdir}", file=sys.stderr)
        runner.run(cfg.update({"logdir": str(logdir)}))
    except (ConfigError, EnvError) as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 2
    except runner.NonFiniteError as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dreamer-train: stopped; replay saved under the logdir", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
