"""Benchmarks behind `launch/bench.py`: parameter counts, train-step speed on one or N devices,
environment throughput of actor processes, replay memory, and the train-step speed side by side
with the official DreamerV3 code.

Every command returns a JSON-serialisable dict; the launcher prints it as the last line.
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

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agent import Agent, compute_dtype
from dreamer.config import Config, load_config
from dreamer.envs import Space

SIZES = ("size1m", "size12m", "size25m", "size50m", "size100m", "size200m", "size400m")
# DMC walker spaces: 24-D proprioception, 64x64 RGB, 6-D continuous action.
WALKER_OBS = {"proprio": {"vector": Space(np.float32, (24,))},
              "vision": {"image": Space(np.uint8, (64, 64, 3))}}
WALKER_ACT = Space(np.float32, (6,), -1.0, 1.0)


def param_counts() -> dict[str, Any]:
    """Trainable parameters per size preset for DMC walker spaces (no memory is allocated)."""
    out = {}
    for size in SIZES:
        cfg = load_config([size])
        out[size] = {}
        for kind, obs in WALKER_OBS.items():
            agent = Agent(cfg, obs, WALKER_ACT)
            shapes = jax.eval_shape(agent.init_params, jax.random.PRNGKey(0))
            out[size][kind] = agent.param_counts(shapes)["total"]
    return out


def spaces_of(cfg: Config) -> tuple[dict[str, Space], Space]:
    """Observation and action spaces of the configured task (makes and closes one env)."""
    from dreamer.envs import make_env

    env = make_env(cfg.env, 0)
    try:
        return dict(env.obs_space), env.act_space
    finally:
        env.close()


def random_batch(obs_space: dict[str, Space], agent: Agent, b: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic replay batch [B, L, ...] of `agent.sequence_length` steps with the replay's
    dtypes, some episode starts and, with replay context, stored model states."""
    rng = np.random.default_rng(seed)
    t, act_dim = agent.sequence_length, agent.act_dim
    batch = {}
    for key, space in obs_space.items():
        if space.dtype == np.uint8:
            batch[key] = rng.integers(0, 256, (b, t, *space.shape), dtype=np.uint8)
        else:
            batch[key] = rng.normal(size=(b, t, *space.shape)).astype(np.float32)
    batch["action"] = rng.uniform(-1, 1, (b, t, act_dim)).astype(np.float32)
    batch["reward"] = rng.normal(size=(b, t)).astype(np.float32)
    batch["is_first"] = rng.random((b, t)) < 0.01
    batch["is_last"] = np.roll(batch["is_first"], -1, 1)
    batch["is_terminal"] = np.zeros((b, t), bool)
    for key, value in agent.policy_outputs_initial(b * t).items():
        batch[key] = value.reshape((b, t, *value.shape[1:]))
    return batch


def matmul_peak(dtype: Any = jnp.float32, n: int | None = None, repeats: int = 5) -> float:
    """Measured matmul FLOP/s of the default device in `dtype` (median of `repeats`); n x n
    operands, n = 2048 on the CPU and 8192 on accelerators unless given."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    x = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times))


def compile_train_step(cfg: Config) -> dict[str, Any]:
    """The jitted train step compiled for a synthetic batch, with its initial state, the batch,
    the compile time and XLA's FLOP count; `time_train_step` runs it. Separate so that several
    configurations can compile at once (compilation runs on the host) and be timed one by one."""
    obs_space, act_space = spaces_of(cfg)
    agent = Agent(cfg, obs_space, act_space)
    batch = jax.device_put(random_batch(obs_space, agent, cfg.batch_size))
    state = agent.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = jax.jit(agent.train_step, donate_argnums=0).lower(
        state, batch, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return {"cfg": cfg, "agent": agent, "state": state, "batch": batch, "compiled": compiled,
            "compile_s": compile_s, "flops": flops}


def time_train_step(prepared: dict[str, Any], updates: int = 5, warmup: int = 2,
                    peak: float | None = None) -> dict[str, Any]:
    """Median seconds per update of a `compile_train_step` result over `updates` updates after
    `warmup`, with the fraction of the measured matmul peak in the compute dtype (`peak`
    FLOP/s when given)."""
    cfg, agent, compiled = prepared["cfg"], prepared["agent"], prepared["compiled"]
    state, batch, flops = prepared["state"], prepared["batch"], prepared["flops"]
    times = []
    for i in range(warmup + updates):
        start = time.perf_counter()
        state, metrics, _ = compiled(state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    prepared["state"] = state  # the old one was donated; a second call continues from here
    median = float(np.median(times[warmup:]))
    dtype = compute_dtype(cfg.jax.compute_dtype, cfg.jax.platform or None)
    peak = peak or matmul_peak(dtype)
    return {
        "seconds_per_update": median,
        "updates_per_s": 1 / median,
        "updates_timed": updates,
        "seconds_min_max": [float(min(times[warmup:])), float(max(times[warmup:]))],
        "replayed_steps_per_s": cfg.batch_size * cfg.batch_length / median,
        "flops_per_update": flops,
        "flops_per_s": flops / median,
        "matmul_peak_flops_per_s": peak,
        "matmul_peak_dtype": str(dtype),
        "fraction_of_peak": flops / median / peak,
        "compile_s": prepared["compile_s"],
        "params": agent.param_counts(state.params)["total"],
        "batch": [cfg.batch_size, cfg.batch_length],
        "batch_shape_fed": [cfg.batch_size, agent.sequence_length],
        "compute_dtype": str(dtype),
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "loss_finite": bool(np.isfinite(float(metrics["loss/total"]))),
    }


def train_step(cfg: Config, updates: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Median seconds per update of the jitted train step on a synthetic batch."""
    return time_train_step(compile_train_step(cfg), updates, warmup)


def train_step_parallel(cfg: Config, devices: int, updates: int = 5,
                        warmup: int = 2) -> dict[str, Any]:
    """Median seconds per data-parallel update on `devices` devices (`batch_size` sequences
    on each), with per-device and total replayed steps per second."""
    from dreamer.parallel import AXIS, DataParallel, select_devices

    obs_space, act_space = spaces_of(cfg)
    chosen = select_devices(devices)
    agent = Agent(cfg, obs_space, act_space, axis_name=AXIS)
    parallel = DataParallel(agent.train_step, chosen, cfg.parallel.backend)
    with jax.default_device(jax.devices("cpu")[0]):
        state = parallel.replicate(jax.jit(agent.init)(jax.random.PRNGKey(0)))
    batch = parallel.shard(random_batch(obs_space, agent, cfg.batch_size * len(chosen)))
    times = []
    for i in range(warmup + updates):
        start = time.perf_counter()
        state, metrics, _ = parallel(state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    parallel.assert_replicas_equal(state)
    median = float(np.median(times[warmup:]))
    per_device = cfg.batch_size * cfg.batch_length / median
    return {
        "devices": len(chosen),
        "backend": cfg.parallel.backend,
        "seconds_per_update": median,
        "first_update_s": times[0],
        "updates_timed": updates,
        "replayed_steps_per_s_per_device": per_device,
        "replayed_steps_per_s": per_device * len(chosen),
        "batch_per_device": [cfg.batch_size, cfg.batch_length],
        "device": str(chosen[0].device_kind),
        "platform": chosen[0].platform,
        "cpu_cores": os.cpu_count(),
        "loss_finite": bool(np.isfinite(float(metrics["loss/total"]))),
    }


def actors(cfg: Config, counts: list[int], seconds: float = 20.0) -> dict[str, Any]:
    """Environment steps per second of 1..N actor processes acting randomly (no learner).

    Each count starts a fresh pool, waits until every actor has delivered its first steps
    (start-up excluded), then counts the steps delivered during `seconds`."""
    from dreamer.actors import ActorPool

    repeat = cfg.env.action_repeat
    runs = {}
    for n in counts:
        pool = ActorPool(cfg, n)
        try:
            started: set[int] = set()
            deadline = time.monotonic() + 300
            while len(started) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"actors did not start within 300 s: {pool.errors}")
                started |= {m[1].actor for m in pool.poll(timeout=0.5) if m[0] == "steps"}
            steps, start = 0, time.monotonic()
            while (now := time.monotonic()) - start < seconds:
                for kind, message in pool.poll(timeout=0.1):
                    if kind == "steps":
                        steps += len(message.data["is_first"])
            runs[n] = steps * repeat / (now - start)
        finally:
            pool.close()
    base = runs[counts[0]] / counts[0]
    return {
        "task": cfg.env.task, "obs": cfg.env.obs, "size": list(cfg.env.size),
        "envs_per_actor": cfg.actors.envs, "seconds": seconds, "cpu_cores": os.cpu_count(),
        "env_steps_per_s": {str(n): r for n, r in runs.items()},
        "scaling_efficiency": {str(n): r / (n * base) for n, r in runs.items()},
        "speedup_vs_first": {str(n): r / runs[counts[0]] for n, r in runs.items()},
    }


def replay_memory(capacity: int = 50_000, size: tuple[int, int] = (64, 64), action_dim: int = 6,
                  chunk: int = 1024, directory: str | None = None) -> dict[str, Any]:
    """Bytes per stored step of a replay of `size` RGB frames (DMC layout: image, action,
    reward and flags): array bytes, process memory growth, and bytes on disk after `save`.

    The replay is filled to `capacity` and then with as many steps again, to show that memory
    stays bounded by the capacity. Frames are smooth gradients with a moving square, which
    compress about as well as rendered frames; random noise would not compress at all."""
    import tempfile

    import psutil

    from dreamer.replay import Replay

    process = psutil.Process()
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([yy * 255 // h, xx * 255 // w, (yy + xx) * 127 // (h + w)], -1)
    rng = np.random.default_rng(0)

    def step(i: int) -> dict[str, np.ndarray]:
        image = background.astype(np.uint8)
        y, x = (i * 3) % (h - 8), (i * 5) % (w - 8)
        image[y:y + 8, x:x + 8] = (255, 255, 255)
        return {"image": image, "action": rng.uniform(-1, 1, action_dim).astype(np.float32),
                "reward": np.float32(rng.uniform()), "is_first": np.bool_(i % 500 == 0),
                "is_last": np.bool_(i % 500 == 499), "is_terminal": np.bool_(False)}

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        replay = Replay(capacity, 64, tmp, chunk)
        before = process.memory_info().rss
        for i in range(capacity):
            replay.add(step(i))
        at_capacity = process.memory_info().rss
        array_bytes = replay.nbytes
        start = time.perf_counter()
        replay.save()
        save_s = time.perf_counter() - start
        disk = sum(p.stat().st_size for p in Path(tmp).glob("*.npz"))
        for i in range(capacity, 2 * capacity):
            replay.add(step(i))
        twice = process.memory_info().rss
        stored = len(replay)
    return {
        "capacity": capacity, "image": [h, w, 3], "chunk": chunk, "steps_stored": stored,
        "bytes_per_step_arrays": array_bytes / capacity,
        "bytes_per_step_rss": (at_capacity - before) / capacity,
        "bytes_per_step_disk": disk / capacity,
        "rss_growth_from_capacity_to_2x_capacity_mib": (twice - at_capacity) / 2**20,
        "save_s_per_1k_steps": save_s / capacity * 1000,
    }


# --- the train step side by side with the official code ------------------------------------
#
# `compare` times the official DreamerV3 train update (github.com/danijar/dreamerv3, through
# tools/official-bench/run.sh) and ours (`launch/bench.py train-step`) on the same machine, one
# after the other, each side in a fresh process per round, alternating official, ours,
# official, ours, ... so that slow drifts in the machine's load fall on both sides alike.
#
# Both sides train on the same batch: the official bench feeds batch_size x (batch_length +
# replay_context) = 16 x (64 + 1) steps, whose first step only seeds the model state (consec=0);
# ours, with `replay.context`, feeds `agent.sequence_length` = batch_length + 1 = 65 steps whose
# first step supplies the starting state in the same way. Both report that shape as
# `batch_shape_fed`, and `check_same_batch` refuses a comparison where it or the compute dtype
# differ. Both compute in float32 on the CPU: the official bench forces `jax.platform=cpu` and
# `jax.compute_dtype=float32`, and ours is given the same. Each side reports the median seconds
# per update over `updates` timed updates after compiling and `warmup` untimed ones, blocking
# until the update's results are ready; the official timing is its `Agent.train` call
# (the jitted update and its host-side bookkeeping), ours the compiled train step.

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


def tail(text: str, lines: int = 30) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_command(cmd: Sequence[str]) -> str:
    """Runs `cmd` in a fresh process on JAX's CPU backend and returns its stdout; CompareFailed
    with the tail of its stderr when it exits non-zero."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
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
