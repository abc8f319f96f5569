#!/usr/bin/env bash
# Runs the test suite: prepares the checkout (see bootstrap.sh), then pytest from the repository
# root. Arguments go to pytest, e.g. tests/test_config.py -x, in one process. Without arguments
# the test files run in four pytest processes (quarters, in name order), so that no single
# process accumulates the compiled programs and native state of many tests (XLA's CPU runtime
# has crashed late in a long process); the status is the first non-zero one. The learning test
# (thousands of updates on one core) runs beside them from the start in a fifth process at a
# lower CPU priority: the others leave part of the cores idle while they compile on one thread
# or wait for the processes they start, and it takes that part; its output follows theirs.
#
# The pytest processes and every process a test starts share one persistent compilation cache
# for the run (a fresh temporary folder, removed at exit; JAX_COMPILATION_CACHE_DIR names one to
# keep, JAX_ENABLE_COMPILATION_CACHE=false turns it off): a program compiled once, such as the
# tiny agents' train steps that each kill-and-resume test and each actor process compiles again,
# is loaded instead of recompiled.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" || exit 1

cache_dir="" learning_pid="" learning_log="" child=""
cleanup() {  # on any exit: stop what still runs, then remove what this script created
  local pid
  for pid in "$child" "$learning_pid"; do
    [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  done
  [ -z "$learning_log" ] || rm -f "$learning_log"
  [ -z "$cache_dir" ] || rm -rf "$cache_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${JAX_COMPILATION_CACHE_DIR:-}" ]; then  # the user's, kept; absolute for every process
  mkdir -p "$JAX_COMPILATION_CACHE_DIR"
  JAX_COMPILATION_CACHE_DIR="$(cd "$JAX_COMPILATION_CACHE_DIR" && pwd)"
else
  cache_dir="$(mktemp -d "${TMPDIR:-/tmp}/dreamer-test-xla.XXXXXX")"
  JAX_COMPILATION_CACHE_DIR="$cache_dir"
fi
export JAX_COMPILATION_CACHE_DIR
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
cd "$DREAMER_ROOT"

# pytest in the background, waited for: a signal to this script then reaches the traps above
# at once, and they stop the pytest process.
run_pytest() {
  "$VENV/bin/python" -m pytest -q "$@" &
  child=$!
  local code=0
  wait "$child" || code=$?
  child=""
  return "$code"
}

if [ "$#" -gt 0 ]; then
  code=0
  run_pytest "$@" || code=$?
  exit "$code"
fi

learning=tests/test_learning.py
learning_log="$(mktemp "${TMPDIR:-/tmp}/dreamer-test-learning.XXXXXX")"
# Its own pytest cache off: it ends last and would overwrite the failures the others recorded.
nice -n 10 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$learning" >"$learning_log" 2>&1 &
learning_pid=$!
mapfile -t files < <(printf '%s\n' tests/test_*.py | grep -vxF "$learning" | sort)
parts=4
status=0
for ((i = 0; i < parts; i++)); do
  start=$(( i * ${#files[@]} / parts )); end=$(( (i + 1) * ${#files[@]} / parts ))
  code=0
  run_pytest "${files[@]:start:end - start}" || code=$?
  [ "$status" -ne 0 ] || status=$code
done
code=0
wait "$learning_pid" || code=$?
learning_pid=""
cat "$learning_log"
[ "$status" -ne 0 ] || status=$code
exit "$status"
