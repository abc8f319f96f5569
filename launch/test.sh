#!/usr/bin/env bash
# Runs the test suite: prepares the checkout (see bootstrap.sh), then pytest from the repository
# root. Arguments go to pytest, e.g. tests/test_config.py -x. Without arguments the test files
# run in four pytest processes (quarters, in name order), so that no single process accumulates
# the compiled programs and native state of many tests (XLA's CPU runtime has crashed late in a
# long process); the status is the first non-zero one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1
cd "$DREAMER_ROOT"
if [ "$#" -gt 0 ]; then
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
mapfile -t files < <(printf '%s\n' tests/test_*.py | sort)
parts=4
status=0
for ((i = 0; i < parts; i++)); do
  start=$(( i * ${#files[@]} / parts )); end=$(( (i + 1) * ${#files[@]} / parts ))
  code=0
  "$VENV/bin/python" -m pytest -q "${files[@]:start:end - start}" || code=$?
  [ "$status" -ne 0 ] || status=$code
done
exit "$status"
