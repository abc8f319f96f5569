#!/usr/bin/env bash
# Runs the test suite: prepares the checkout (see bootstrap.sh), then pytest from the repository
# root. Arguments go to pytest, e.g. tests/test_config.py -x. Without arguments the test files
# run in four pytest processes (quarters, in name order), so that no single process accumulates
# the compiled programs and native state of many tests (XLA's CPU runtime has crashed late in a
# long process); the status is the first non-zero one. The learning test (thousands of updates
# on one core) runs beside them from the start in a fifth process at a lower CPU priority: the
# others leave part of the cores idle while they compile on one thread or wait for the
# processes they start, and it takes that part; its output follows theirs.
#
# The pytest processes and every process a test starts share one persistent compilation cache
# for the run (a fresh temporary folder, removed at exit; JAX_COMPILATION_CACHE_DIR chooses
# another): a program compiled once, such as the tiny agents' train steps that each
# kill-and-resume test and each actor process compiles again, is loaded instead of recompiled.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1
cd "$DREAMER_ROOT"
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  cache_dir="$(mktemp -d "${TMPDIR:-/tmp}/dreamer-test-xla.XXXXXX")"
  trap 'rm -rf "$cache_dir"' EXIT
  JAX_COMPILATION_CACHE_DIR="$cache_dir"
fi
export JAX_COMPILATION_CACHE_DIR
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
if [ "$#" -gt 0 ]; then
  "$VENV/bin/python" -m pytest -q "$@"
  exit
fi
learning=tests/test_learning.py
learning_log="$(mktemp "${TMPDIR:-/tmp}/dreamer-test-learning.XXXXXX")"
nice -n 10 "$VENV/bin/python" -m pytest -q "$learning" >"$learning_log" 2>&1 &
learning_pid=$!
trap 'kill "$learning_pid" 2>/dev/null || true; rm -f "$learning_log"; rm -rf "${cache_dir:-}"' EXIT
mapfile -t files < <(printf '%s\n' tests/test_*.py | grep -vxF "$learning" | sort)
parts=4
status=0
for ((i = 0; i < parts; i++)); do
  start=$(( i * ${#files[@]} / parts )); end=$(( (i + 1) * ${#files[@]} / parts ))
  code=0
  "$VENV/bin/python" -m pytest -q "${files[@]:start:end - start}" || code=$?
  [ "$status" -ne 0 ] || status=$code
done
code=0
wait "$learning_pid" || code=$?
cat "$learning_log"
[ "$status" -ne 0 ] || status=$code
exit "$status"
