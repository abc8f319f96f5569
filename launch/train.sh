#!/usr/bin/env bash
# Trains an agent: prepares the checkout (see bootstrap.sh), then runs launch/train.py.
#   bash launch/train.sh --configs dmc_vision size12m --logdir runs/walker
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1
exec "$VENV/bin/python" "$DREAMER_ROOT/launch/train.py" "$@"
