"""Benchmarks; the last line printed is one JSON object.

  python launch/bench.py params
  python launch/bench.py train-step --configs dmc_proprio size1m [--updates 5] [--key=value ...]
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer import benchmark
from dreamer.cli import parse_args
from dreamer.config import ConfigError

COMMANDS = ("params", "train-step")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        print(f"bench: choose a command from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "params":
        result = {"params": benchmark.param_counts()}
    else:
        updates = 5
        if "--updates" in rest:
            i = rest.index("--updates")
            updates = int(rest[i + 1])
            rest = rest[:i] + rest[i + 2:]
        try:
            cfg, info = parse_args(rest)
        except ConfigError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        result = {"train_step": benchmark.train_step(cfg, updates=updates),
                  "configs": info["presets"], "overrides": info["overrides"]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
