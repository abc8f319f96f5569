"""The train step side by side with the official DreamerV3 code (`launch/bench.py compare`).

`compare` times the official DreamerV3 train update (github.com/danijar/dreamerv3, through
tools/official-bench/run.sh) and ours (`launch/bench.py train-step`) on the same machine, one
after the other, each side in a fresh process per round, alternating official, ours,
official, ours, ... so that slow drifts in the machine's load fall on both sides alike.

Both sides train on the same batch: the official bench feeds batch_size x (batch_length +
replay_context) = 16 x (64 + 1) steps, whose first step only seeds the model state (consec=0);
ours, with `replay.context`, feeds `agent.sequence_length` = batch_length + 1 = 65 steps whose
first step supplies the starting state in the same way. Both report that shape as
`batch_shape_fed`, and `check_same_batch` refuses a comparison where it or the compute dtype
differ. Both compute in float32 on the CPU: the official bench forces `jax.platform=cpu` and
`jax.compute_dtype=float32`, and ours is given the same. Each side reports the median seconds
per update over `updates` timed updates after compiling and `warmup` untimed ones, blocking
until the update's results are ready; the official timing is its `Agent.train` call
(the jitted update and its host-side bookkeeping), ours the compiled train step.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OFFICIAL_BENCH = Path("..") / "shared" / "tools" / "official-bench" / "run.sh"
CompareRun = Callable[[Sequence[str]], str]


class CompareFailed(RuntimeError):
    """One side of `compare` failed (non-zero exit, no JSON result) or the two sides do not
    measure the same thing; `stderr_tail` holds the last lines of the failing side's stderr."""

    def __init__(self, message: str, stderr_tail: str = ""):
        super().__init__(message)
        self.stderr_tail = stderr_tail


def official_bench_script(repo: Path, override: str | None = None) -> Path:
    """The official benchmark's run.sh: `override`, else `../shared/tools/official-bench/run.sh`
    next to the repository root `repo` (so it does not depend on the working directory)."""
    return Path(override) if override else (Path(repo) / OFFICIAL_BENCH).resolve()


def compare_setup_problem(src: str | Path, script: str | Path) -> str | None:
    """What keeps `compare` from starting, with the fix; None when nothing does. The official
    source must be what run.sh accepts: a checkout (with dreamerv3/agent.py) or a git
    directory, bare or not, of danijar/dreamerv3."""
    script, src = Path(script), Path(src)
    if not script.is_file():
        return (f"the official benchmark script {script} does not exist; pass --official-bench "
                "PATH (run.sh of tools/official-bench)")
    fix = ("pass --official-src DIR: a checkout of github.com/danijar/dreamerv3 or its (bare) "
           "git directory")
    if not src.exists():
        return f"the official source {src} does not exist; {fix}"
    checkout = (src / "dreamerv3" / "agent.py").is_file()
    git_dir = (src / "HEAD").is_file() and (src / "objects").is_dir()
    if not (checkout or git_dir):
        return (f"the official source {src} is neither a checkout (no dreamerv3/agent.py) nor a "
                f"git directory; {fix}")
    return None


def official_command(script: str | Path, src: str | Path, configs: Sequence[str], updates: int,
                     warmup: int) -> list[str]:
    """The official side's command line (run.sh forces the CPU and float32 itself)."""
    return [str(script), "--src", str(src), "--configs", *configs, "--updates", str(updates),
            "--warmup", str(warmup)]


def ours_command(bench_py: str | Path, configs: Sequence[str], updates: int, warmup: int,
                 python: str = sys.executable) -> list[str]:
    """Our side's command line: `bench.py train-step` in float32 on the CPU, as the official
    bench runs."""
    return [python, str(bench_py), "train-step", "--configs", *configs, "--updates",
            str(updates), "--warmup", str(warmup), "--jax.compute_dtype=float32",
            "--jax.platform=cpu"]


def official_kernels(script: str | Path, src: str | Path, configs: Sequence[str],
                     run: Callable[[Sequence[str], dict[str, str]], str] | None = None
                     ) -> dict[str, Any]:
    """Kernels and while-loop iterations of the official train update (`dreamer.bench.kernels`):
    its bench compiles the update for the CPU in float32 (one update, none timed that matters)
    and writes the compiled function's optimized HLO, which is counted here."""
    import tempfile

    from dreamer.bench import kernels

    run = run or run_command
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "official.hlo"
        stdout = run(official_command(script, src, configs, 1, 0), {"HLO_DUMP": str(dump)})
        if not dump.is_file():
            raise CompareFailed("the official bench wrote no HLO (its run.sh does not support "
                                "HLO_DUMP?)")
        count = kernels.count(dump.read_text())
    result = last_json(stdout)
    return {**kernels.summary(count), "jax": result.get("jax"),
            "revision": result.get("official_revision"), "layout": "cpu",
            "compute_dtype": result.get("compute_dtype", "float32")}


def tail(text: str, lines: int = 30) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_command(cmd: Sequence[str], extra_env: dict[str, str] | None = None) -> str:
    """Runs `cmd` in a fresh process on JAX's CPU backend (with `extra_env` set) and returns its
    stdout; CompareFailed with the tail of its stderr when it exits non-zero."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    proc = subprocess.run(list(cmd), check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise CompareFailed(f"{cmd[0]} exited with status {proc.returncode}", tail(proc.stderr))
    return proc.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of `stdout` that is a JSON object (the benchmarks print their result
    last); ValueError when there is none."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no line of the output is a JSON object")


def side_result(stdout: str) -> dict[str, Any]:
    """One side's timing from its stdout: the official bench's JSON line itself, or the
    `train_step` entry of ours."""
    result = last_json(stdout)
    result = result.get("train_step", result)
    if "seconds_per_update" not in result:
        raise ValueError("its JSON result has no seconds_per_update")
    return result


def run_rounds(commands: dict[str, Sequence[str]], rounds: int, run: CompareRun,
               log: Callable[[str], None] = lambda _: None) -> dict[str, list[dict[str, Any]]]:
    """Runs every side's command once per round, in the order of `commands` (official, ours,
    official, ours, ...), and returns each side's results per round with `process_s`, the wall
    time of its process (compilation included)."""
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in commands}
    for r in range(rounds):
        for side, cmd in commands.items():
            where = f"the {side} side (round {r + 1} of {rounds})"
            log(f"{where}: {' '.join(map(str, cmd))}")
            start = time.perf_counter()
            try:
                stdout = run(cmd)
            except CompareFailed as e:
                raise CompareFailed(f"{where} failed: {e}", e.stderr_tail) from e
            try:
                result = side_result(stdout)
            except ValueError as e:
                raise CompareFailed(f"{where} printed no usable result: {e}",
                                    f"(its stdout ended)\n{tail(stdout)}") from e
            result["process_s"] = time.perf_counter() - start
            log(f"{where}: {result['seconds_per_update']:.3f} s per update, process "
                f"{result['process_s']:.0f} s")
            results[side].append(result)
    return results


def check_same_batch(results: dict[str, list[dict[str, Any]]]) -> list[int]:
    """The batch shape fed to every side ([B, T + context]), after checking that all runs of
    both sides fed the same shape in the same compute dtype; CompareFailed otherwise."""
    seen = {(side, str(r.get("batch_shape_fed")), str(r.get("compute_dtype")))
            for side, runs in results.items() for r in runs}
    if len({s[1:] for s in seen}) != 1:
        raise CompareFailed("the sides did not train on the same batch shape and compute dtype: "
                            + "; ".join(f"{s}: batch {b}, {d}" for s, b, d in sorted(seen)))
    return next(r["batch_shape_fed"] for runs in results.values() for r in runs)


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model name from the text of /proc/cpuinfo ('' when it names none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


def machine_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model, core count, platform and load average of this machine: timings on a
    shared machine are only comparable with its load in view."""
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        text = ""
    return {"cpu": cpu_model(text) or platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "platform": platform.platform(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def summarize_compare(results: dict[str, list[dict[str, Any]]], configs: Sequence[str],
                      machine: dict[str, Any]) -> dict[str, Any]:
    """The comparison's JSON: per-round seconds per update and their median on each side, and
    ratio = official median / ours median (above 1: ours is faster)."""
    batch = check_same_batch(results)
    sides = {}
    for side, runs in results.items():
        seconds = [float(r["seconds_per_update"]) for r in runs]
        sides[side] = {"seconds_per_update": seconds, "median": float(np.median(seconds)),
                       "process_s": [float(r.get("process_s", float("nan"))) for r in runs]}
    official, ours = results["official"][0], results["ours"][0]
    return {"compare": {
        "configs": list(configs),
        "ours": sides["ours"],
        "official": sides["official"],
        "ratio": sides["official"]["median"] / sides["ours"]["median"],
        "rounds": len(results["ours"]),
        "batch_shape_fed": batch,
        "compute_dtype": str(ours.get("compute_dtype")),
        "machine": machine,
        "official_revision": official.get("official_revision"),
        "jax": {"ours": ours.get("jax"), "official": official.get("jax")},
    }}


def compare(configs: Sequence[str], official_src: str | Path, script: str | Path,
            bench_py: str | Path, rounds: int = 2, updates: int = 5, warmup: int = 2,
            run: CompareRun | None = None,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Times the official train update and ours side by side (see the notes above) and returns
    `summarize_compare`'s JSON. `run(cmd) -> stdout` runs one side's process (default
    `run_command`) and raises CompareFailed when it fails."""
    commands = {"official": official_command(script, official_src, configs, updates, warmup),
                "ours": ours_command(bench_py, configs, updates, warmup)}
    machine = machine_info()
    results = run_rounds(commands, rounds, run or run_command, log)
    return summarize_compare(results, configs, machine)


def compare_table(summary: dict[str, Any]) -> str:
    """A short human-readable table of `summarize_compare`'s result."""
    c = summary["compare"]
    rounds = c["rounds"]
    head = "".join(f"{f'round {i + 1}':>10}" for i in range(rounds))
    title = (f"{' '.join(c['configs'])}: batch {c['batch_shape_fed']}, {c['compute_dtype']} on "
             f"{c['machine']['cpu']} ({c['machine']['cores']} cores); seconds per update")
    lines = [title, f"{'':10}{head}{'median':>10}"]
    for side in ("official", "ours"):
        values = "".join(f"{s:10.3f}" for s in c[side]["seconds_per_update"])
        lines.append(f"{side:10}{values}{c[side]['median']:10.3f}")
    faster = "ours" if c["ratio"] > 1 else "official"
    lines.append(f"ratio official/ours: {c['ratio']:.2f} ({faster} is faster)")
    return "\n".join(lines)