"""Command-line entry points (`dreamer-train`)."""
from __future__ import annotations

import sys

from dreamer.config import ConfigError, parse_args
from dreamer.envs import EnvError

DEFAULT_PRESET = "demo"  # a pixel task that learns within minutes on a laptop CPU


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
    from dreamer import runner

    try:
        logdir = runner.prepare_logdir(cfg)
        print(f"dreamer-train: logging to {logdir}", file=sys.stderr)
        runner.run(cfg.update({"logdir": str(logdir)}))
    except (ConfigError, EnvError) as e:
        print(f"dreamer-train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreamer-train: interrupted; replay saved under the logdir", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
