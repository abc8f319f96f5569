#!/usr/bin/env bash
# The DreamerV3 update's speed on a GPU machine, ours and the official code's, in one script.
#
#   bash launch/gpu_bench.sh prepare [OFFICIAL_GIT_DIR]   here, with PyPI reachable: fills
#       runs/gpu-carry/ with the official source, its bench and the pure-Python packages it
#       needs that a CUDA image with JAX, flax, optax and chex lacks (installed with --target)
#   bash launch/gpu_bench.sh run [STEP ...]                on the GPU machine, from the repo root
#       with runs/gpu-carry beside it; needs python3 with a CUDA jax, flax, optax, chex, numpy,
#       pyyaml and pillow (no dm-control, gymnasium or wandb: DMC walker's spaces are built
#       by hand, `launch/bench.py --spaces walker`)
#
# `run` writes to $OUT (default runs/gpu-bench): results.jsonl, one JSON object per measurement
# with its name, and log.txt with everything printed. Each measurement has its own time limit
# (STEP_TIMEOUT, default 150 s) and a failed one is logged and skipped. SMOKE=1 runs the same
# steps with tiny models (both codes' `debug` presets) on JAX's default backend, as a check of the
# script on a machine without a GPU. STEP names pick some of the steps; all of them take about
# 14 minutes on an H200 (estimated), so under a 10-minute limit per command run them in two
# calls, e.g. the first five, then the rest with another OUT. In order:
#   ours-proprio      size1m proprio, learner only, bf16, XLA flags auto, 20 timed updates
#   ours-per-call     the same with k = 1, 4, 16 updates per jitted call
#   ours-noflags      the same as ours-proprio with --jax.xla_flags=none
#   ours-kernels      kernels and loop iterations per update in the GPU's own compiled HLO
#   official-proprio  the official size1m update (bf16 on the GPU, its jax the image's)
#   ours-vision12m    size12m vision, bf16, XLA flags auto, 10 timed updates
#   official-vision12m
#   ours-vision50m, official-vision50m
#   loop-proprio      the full loop at the dmc_proprio preset for 2500 env steps on a
#                     simulator-free task: env steps/s and loop/<phase>_fraction
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$ROOT/runs/gpu-carry"
# The official code's pure-Python dependencies (its requirements pins) that a CUDA image with
# JAX may lack.
OFFICIAL_PACKAGES=(elements==3.22.4 ninjax==3.6.3 portal==3.8.3 granular==0.24.2
                   ruamel.yaml==0.19.1 einops==0.8.2)

prepare() {
  local src="${1:-/work/.mirror/danijar+dreamerv3/repo}"
  local bench="$ROOT/../shared/tools/official-bench"
  rm -rf "$CARRY" && mkdir -p "$CARRY/official" "$CARRY/site"
  if git --git-dir="$src" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    git --git-dir="$src" archive HEAD | tar -x -C "$CARRY/official"
    git --git-dir="$src" rev-parse HEAD > "$CARRY/official/OFFICIAL_REVISION"
  elif [ -f "$src/dreamerv3/agent.py" ]; then
    cp -r "$src/." "$CARRY/official/"
  else
    echo "gpu_bench prepare: $src is neither a git directory nor a checkout of the official" \
         "code; pass one (e.g. what 'fetch github:danijar/dreamerv3' returns)" >&2
    return 2
  fi
  cp "$bench/bench_official.py" "$CARRY/"
  # The official code calls jax.jit with positional options, which jax 0.4.33 (its pin) takes
  # and newer jax (a CUDA image's) does not: this runs its bench with them given their names.
  cat > "$CARRY/run_official.py" <<'SHIM'
import runpy
import sys
from pathlib import Path

import jax

_jit = jax.jit
_NAMES = ("in_shardings", "out_shardings", "static_argnums", "static_argnames",
          "donate_argnums", "donate_argnames", "keep_unused")


def jit(fun=None, *args, **kwargs):
    kwargs.update(zip(_NAMES, args))
    return _jit(**kwargs) if fun is None else _jit(fun, **kwargs)


jax.jit = jit
bench = str(Path(__file__).parent / "bench_official.py")
sys.argv = [bench, *sys.argv[1:]]
runpy.run_path(bench, run_name="__main__")
SHIM
  python3 -m pip install -q --no-deps --target "$CARRY/site" "${OFFICIAL_PACKAGES[@]}" || return 1
  du -sh "$CARRY"
}

run() {
  local only=("$@")  # the steps to run (default: all)
  local out="${OUT:-$ROOT/runs/gpu-bench}" limit="${STEP_TIMEOUT:-150}"
  local py="${PYTHON:-python3}"
  mkdir -p "$out"
  local results="$out/results.jsonl" log="$out/log.txt"
  : > "$results"
  cd "$ROOT" || return 1
  export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  local size1m=(size1m) size12m=(size12m) size50m=(size50m) platform=cuda dtype=bfloat16
  local updates=20 few=10 loop_steps=2500
  if [ "${SMOKE:-0}" = 1 ]; then
    size1m=(debug) size12m=(debug) size50m=(debug) platform=cpu dtype=float32 updates=2 few=1
    loop_steps=300
  else
    export JAX_PLATFORMS=cuda
  fi
  {
    date -u; nvidia-smi -L 2>&1
    "$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())'
  } >> "$log" 2>&1

  # measure NAME COMMAND...: runs it under the time limit; its last stdout line (JSON) goes
  # into results.jsonl under "name", everything else into log.txt.
  measure() {
    local limit="$limit"
    if [ "$1" = --limit ]; then limit="$2"; shift 2; fi
    local name="$1"; shift
    if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then
      return
    fi
    local tmp; tmp="$(mktemp)"
    echo "=== $name: $* ($(date -u +%T))" >> "$log"
    timeout "$limit" "$@" > "$tmp" 2>> "$log"
    local rc=$?
    cat "$tmp" >> "$log"
    if [ $rc -eq 0 ] && tail -n 1 "$tmp" | "$py" -c 'import json, sys; json.loads(sys.stdin.read())' 2>/dev/null; then
      tail -n 1 "$tmp" | NAME="$name" REV="$CARRY/official/OFFICIAL_REVISION" "$py" -c '
import json, os, sys
r = json.loads(sys.stdin.read())
r["name"] = os.environ["NAME"]
if r["name"].startswith("official"):  # not the revision of the repository it was carried in
    r["official_revision"] = open(os.environ["REV"]).read().strip()
print(json.dumps(r))' >> "$results"
      echo "gpu_bench: $name done" >&2
    else
      echo "{\"name\": \"$name\", \"failed\": true, \"exit_code\": $rc}" >> "$results"
      echo "gpu_bench: $name failed (exit code $rc; see log.txt)" >&2
    fi
    rm -f "$tmp"
  }

  local ours=("$py" launch/bench.py)
  local proprio=(--configs dmc_proprio "${size1m[@]}" --spaces walker)
  measure ours-proprio "${ours[@]}" train-step "${proprio[@]}" --updates "$updates" --warmup 3
  measure ours-per-call "${ours[@]}" train-step "${proprio[@]}" --per-call 1 4 16 \
    --updates "$few" --warmup 2
  measure ours-noflags "${ours[@]}" train-step "${proprio[@]}" --updates "$updates" \
    --warmup 3 --jax.xla_flags=none
  measure ours-kernels "${ours[@]}" kernels "${proprio[@]}"

  local official=(env "PYTHONPATH=$CARRY/site" "JAX_PLATFORMS=$platform" "$py"
                  "$CARRY/run_official.py" --src "$CARRY/official"
                  --jax.platform "$platform" --jax.compute_dtype "$dtype")
  if [ -f "$CARRY/bench_official.py" ]; then
    measure official-proprio "${official[@]}" --configs dmc_proprio "${size1m[@]}" \
      --flat-proprio --updates "$updates" --warmup 3
  else
    echo "gpu_bench: no $CARRY (run 'bash launch/gpu_bench.sh prepare' here and carry it)" >&2
  fi
  measure ours-vision12m "${ours[@]}" train-step --configs dmc_vision "${size12m[@]}" \
    --spaces walker --updates "$few" --warmup 2
  if [ -f "$CARRY/bench_official.py" ]; then
    measure official-vision12m "${official[@]}" --configs dmc_vision "${size12m[@]}" \
      --updates "$few" --warmup 2
  fi
  measure ours-vision50m "${ours[@]}" train-step --configs dmc_vision "${size50m[@]}" \
    --spaces walker --updates "$few" --warmup 2
  if [ -f "$CARRY/bench_official.py" ]; then
    measure official-vision50m "${official[@]}" --configs dmc_vision "${size50m[@]}" \
      --updates "$few" --warmup 2
  fi
  # The full loop at the dmc_proprio preset (size1m, train ratio 1024: one update per env step
  # once the replay holds a batch), acting and stepping a simulator-free task in this process:
  # env steps/s and where each step's time goes (loop/<phase>_fraction), from its last line.
  rm -rf "$out/loop"
  measure --limit "$((2 * limit))" loop-proprio "$py" - "$out/loop" "$loop_steps" \
    "${size1m[@]}" <<'EOF'
import json
import subprocess
import sys

logdir, steps = sys.argv[1], sys.argv[2]
subprocess.run([sys.executable, "launch/train.py", "--configs", "dmc_proprio", *sys.argv[3:],
                "--env.task=builtin_reach", "--env.obs=vector", f"--run.steps={steps}",
                "--run.eval_every=0", "--run.log_every=10", "--run.checkpoint_every=0",
                f"--logdir={logdir}"], check=True)
lines = [json.loads(line) for line in open(f"{logdir}/metrics.jsonl")]
last = [line for line in lines if "fps/env" in line][-1]
print(json.dumps({k: v for k, v in last.items() if k.startswith(("fps/", "loop/", "learner/"))
                  or k == "step"}))
EOF
  "$py" - "$results" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    t = r.get("train_step", r)
    s = t.get("seconds_per_update")
    k = r.get("kernels", {}) if isinstance(r.get("kernels"), dict) else {}
    print(f"{r['name']:20s}", "failed" if r.get("failed") else
          f"{s * 1e3:.1f} ms/update" if s else
          f"{k.get('kernels')} kernels, {k.get('loop_iterations')} loop iterations" if k else
          json.dumps(t.get("per_call", t))[:200])
EOF
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n 2,28p "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
