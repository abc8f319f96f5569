"""Evaluate a trained agent: `python launch/eval.py --logdir DIR [--episodes N] [--video FILE]
[--mode eval|sample|mode|mpc]` (see `dreamer.cli.eval_main`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
