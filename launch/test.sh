#!/usr/bin/env bash
# Runs the test suite: prepares the checkout (see bootstrap.sh), then pytest from the repository
# root. Arguments go to pytest, e.g. tests/test_config.py -x. Without arguments the test files
# run in two pytest processes (first and second half, in name order), so that no single process
# accumulates every compiled program of the suite; the status is the first non-zero one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1
cd "$DREAMER_ROOT"
if [ "$#" -gt 0 ]; then
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
mapfile -t files < <(printf '%s\n' tests/test_*.py | sort)
half=$(( ${#files[@]} / 2 ))
status=0
"$VENV/bin/python" -m pytest -q "${files[@]:0:half}" || status=$?
second=0
"$VENV/bin/python" -m pytest -q "${files[@]:half}" || second=$?
[ "$status" -ne 0 ] || status=$second
exit "$status"
