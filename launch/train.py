"""Train a Dreamer agent: `python launch/train.py --configs debug [--key=value ...]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
