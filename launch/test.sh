#!/usr/bin/env bash
# Runs the test suite: prepares the checkout (see bootstrap.sh), then pytest from the repository
# root (test paths from pyproject.toml). Arguments go to pytest, e.g. tests/test_config.py -x.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1
cd "$DREAMER_ROOT"
exec "$VENV/bin/python" -m pytest -q "$@"
