"""Check this machine's setup: `python launch/doctor.py [--configs PRESET ...] [--KEY=VALUE]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer.cli import doctor_main

if __name__ == "__main__":
    sys.exit(doctor_main())
