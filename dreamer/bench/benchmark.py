"""Benchmarks behind `launch/bench.py`: parameter counts, train-step speed on one or N devices,
environment throughput of actor processes, an agent's policy speed and replay memory
(`dreamer.bench.compare` times the train step side by side with the official DreamerV3 code,
`dreamer.bench.profiling` splits it by function).

Every command returns a JSON-serialisable dict; the launcher prints it as the last line.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents import make_agent
from dreamer.agents.dreamerv3 import DreamerV3
from dreamer.agents.dreamerv3 import agent as dreamerv3_agent
from dreamer.bench import kernels
from dreamer.config import Config, load_config
from dreamer.core.nets import count_params
from dreamer.envs import Space
from dreamer.run import multistep

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
            agent = DreamerV3(cfg, obs, WALKER_ACT)
            shapes = jax.eval_shape(agent.init, jax.random.PRNGKey(0)).params
            out[size][kind] = dreamerv3_agent.param_counts(shapes)["total"]
    return out


SPACES = ("task", "walker")


def spaces_of(cfg: Config, spaces: str | None = None) -> tuple[dict[str, Space], Space]:
    """Observation and action spaces: of the configured task (makes and closes one env), or
    with `spaces='walker'` DMC walker's (`WALKER_OBS` by `env.obs`, images of `env.size`,
    `WALKER_ACT`) with no environment made, for machines without the simulator."""
    if spaces == "walker":
        obs = {}
        if cfg.env.obs in ("vector", "both"):
            obs.update(WALKER_OBS["proprio"])
        if cfg.env.obs in ("image", "both"):
            obs["image"] = Space(np.uint8, (*cfg.env.size, 3))
        return obs, WALKER_ACT
    if spaces not in (None, "task"):
        raise ValueError(f"unknown spaces {spaces!r}: choose one of {', '.join(SPACES)}")
    from dreamer.envs import make_env

    env = make_env(cfg.env, 0)
    try:
        return dict(env.obs_space), env.act_space
    finally:
        env.close()


def compute_dtype(agent: Any) -> str:
    """The dtype the agent's networks compute in (`jax.compute_dtype` resolved by DreamerV3;
    the other agents compute in float32)."""
    return str(agent.wm.rssm.dtype) if isinstance(agent, DreamerV3) else "float32"


def random_batch(obs_space: dict[str, Space], act_space: Space, agent: Any, b: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic replay batch [B, L, ...] of `agent.sequence_length` steps with the replay's
    dtypes, some episode starts, step ids and the agent's stored policy outputs (with replay
    context, DreamerV3's model states). Discrete actions are one-hot, as the replay stores them;
    with `replay.prioritized` the rows carry importance weights."""
    rng = np.random.default_rng(seed)
    t, act_dim = agent.sequence_length, agent.act_dim
    batch = {}
    for key, space in obs_space.items():
        if space.dtype == np.uint8:
            batch[key] = rng.integers(0, 256, (b, t, *space.shape), dtype=np.uint8)
        else:
            batch[key] = rng.normal(size=(b, t, *space.shape)).astype(np.float32)
    if act_space.discrete:
        batch["action"] = np.eye(act_dim, dtype=np.float32)[rng.integers(0, act_dim, (b, t))]
    else:
        batch["action"] = rng.uniform(-1, 1, (b, t, act_dim)).astype(np.float32)
    batch["reward"] = rng.normal(size=(b, t)).astype(np.float32)
    batch["is_first"] = rng.random((b, t)) < 0.01
    batch["is_last"] = np.roll(batch["is_first"], -1, 1)
    batch["is_terminal"] = np.zeros((b, t), bool)
    batch["step_id"] = np.arange(b * t, dtype=np.int32).reshape(b, t)
    for key, value in agent.policy_outputs_initial(b * t).items():
        batch[key] = value.reshape((b, t, *value.shape[1:]))
    if agent.cfg.replay.prioritized:
        batch["weight"] = np.ones((b,), np.float32)
    return batch


def finite(metrics: dict[str, Any]) -> bool:
    """Whether the update was kept and every metric is finite (the agents name their losses
    differently; each reports `nonfinite`)."""
    values = [np.asarray(v) for v in metrics.values()]
    return not float(metrics.get("nonfinite", 0.0)) and all(np.isfinite(v).all() for v in values)


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


def compile_train_step(cfg: Config, layout: str | None = None,
                       spaces: str | None = None) -> dict[str, Any]:
    """The jitted train step compiled for a synthetic batch, with its initial state, the batch,
    the compile time and XLA's FLOP count; `time_train_step` runs it. Separate so that several
    configurations can compile at once (compilation runs on the host) and be timed one by one.
    `layout` builds the networks as for that platform ('gpu': batched block matmuls and, with
    `jax.compute_dtype: auto`, bfloat16) whatever the backend compiles for; default: the
    backend's own. `spaces`: see `spaces_of`."""
    obs_space, act_space = spaces_of(cfg, spaces)
    agent = make_agent(cfg, obs_space, act_space, platform=layout)
    batch = jax.device_put(random_batch(obs_space, act_space, agent, cfg.batch_size))
    state = agent.init(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = jax.jit(agent.train_step, donate_argnums=0).lower(
        state, batch, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - start
    count = kernels.of_compiled(compiled)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return {"cfg": cfg, "agent": agent, "state": state, "batch": batch, "compiled": compiled,
            "compile_s": compile_s, "flops": flops, "kernels": count}


def launch_floor(calls: int = 200) -> float:
    """Median seconds of an empty jitted call on the default device (dispatch, one tiny kernel
    and the wait for its result): what every separately launched call costs at least."""
    f = jax.jit(lambda x: x + 1)
    x = jax.device_put(jnp.zeros((), jnp.float32))
    jax.block_until_ready(f(x))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def kernel_counts(cfg: Config, layout: str | None = None,
                  spaces: str | None = None) -> dict[str, Any]:
    """Kernels and while-loop iterations one update launches (`dreamer.bench.kernels`), from the
    optimized HLO of the compiled train step, with the loops that launch most."""
    prepared = compile_train_step(cfg, layout, spaces)
    return {**kernels.summary(prepared["kernels"]), "layout": layout or jax.default_backend(),
            "agent": cfg.agent, "compute_dtype": compute_dtype(prepared["agent"]),
            "batched_blocks": (prepared["agent"].wm.rssm.batched_blocks
                               if isinstance(prepared["agent"], DreamerV3) else None),
            "compile_s": prepared["compile_s"], "jax": jax.__version__}


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
    dtype = compute_dtype(agent)  # for DreamerV3 what `jax.compute_dtype` resolved to
    peak = peak or matmul_peak(jnp.dtype(dtype))
    floor = launch_floor()
    count = prepared["kernels"]
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
        "kernels_per_update": count.kernels,
        "loop_iterations_per_update": count.loop_iterations,
        "launch_floor_s": floor,
        "update_over_launch_floor": median / floor,
        "seconds_per_kernel": median / max(count.kernels, 1),
        "agent": cfg.agent,
        "params": count_params(state.params),
        "batch": [cfg.batch_size, cfg.batch_length],
        "batch_shape_fed": [cfg.batch_size, agent.sequence_length],
        "compute_dtype": str(dtype),
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "loss_finite": finite(metrics),
    }


def train_step(cfg: Config, updates: int = 5, warmup: int = 2, layout: str | None = None,
               spaces: str | None = None) -> dict[str, Any]:
    """Median seconds per update of the jitted train step on a synthetic batch."""
    return time_train_step(compile_train_step(cfg, layout, spaces), updates, warmup)


def updates_per_call(cfg: Config, counts: list[int], calls: int = 3, warmup: int = 1,
                     layout: str | None = None, spaces: str | None = None) -> dict[str, Any]:
    """Seconds per update when one jitted call runs k updates (`multistep.scan_steps` over k
    batches already on the device; k = 1 is the plain train step), for each k in `counts`:
    the median over `calls` calls after `warmup`, divided by k."""
    obs_space, act_space = spaces_of(cfg, spaces)
    agent = make_agent(cfg, obs_space, act_space, platform=layout)
    batch = random_batch(obs_space, act_space, agent, cfg.batch_size)
    state = agent.init(jax.random.PRNGKey(0))
    out = {}
    for k in counts:
        if k == 1:
            fn, batches = agent.train_step, jax.device_put(batch)
        else:
            fn = multistep.scan_steps(agent.train_step)
            batches = jax.device_put({key: np.stack([v] * k) for key, v in batch.items()})
        start = time.perf_counter()
        lowered = jax.jit(fn, donate_argnums=0).lower(state, batches, _keys(0, k))
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        times = []
        for i in range(warmup + calls):
            start = time.perf_counter()
            state, metrics, _ = compiled(state, batches, _keys(i, k))
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        median = float(np.median(times[warmup:]))
        count = kernels.of_compiled(compiled)
        out[str(k)] = {"seconds_per_update": median / k, "updates_per_s": k / median,
                       "seconds_per_call": median, "compile_s": compile_s,
                       "kernels_per_update": count.kernels / k,
                       "loop_iterations_per_update": count.loop_iterations / k}
    return {"per_call": out, "calls_timed": calls, "batch": [cfg.batch_size, cfg.batch_length],
            "agent": cfg.agent, "compute_dtype": compute_dtype(agent),
            "device": str(jax.devices()[0].device_kind),
            "layout": layout or jax.default_backend()}


def _keys(seed: int, k: int) -> jax.Array:
    """The key of one update (k = 1) or the keys [k] of k updates in one call."""
    key = jax.random.PRNGKey(seed)
    return key if k == 1 else jax.random.split(key, k)


def train_step_parallel(cfg: Config, devices: int, updates: int = 5,
                        warmup: int = 2) -> dict[str, Any]:
    """Median seconds per data-parallel update on `devices` devices (`batch_size` sequences
    on each), with per-device and total replayed steps per second."""
    from dreamer.core.parallel import AXIS, DataParallel, select_devices

    obs_space, act_space = spaces_of(cfg)
    chosen = select_devices(devices)
    agent = make_agent(cfg, obs_space, act_space, axis_name=AXIS)
    parallel = DataParallel(agent.train_step, chosen, cfg.parallel.backend)
    with jax.default_device(jax.devices("cpu")[0]):
        state = parallel.replicate(jax.jit(agent.init)(jax.random.PRNGKey(0)))
    batch = parallel.shard(random_batch(obs_space, act_space, agent,
                                        cfg.batch_size * len(chosen)))
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
        "agent": cfg.agent,
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
        "loss_finite": finite(metrics),
    }


def actors(cfg: Config, counts: list[int], seconds: float = 20.0) -> dict[str, Any]:
    """Environment steps per second of 1..N actor processes acting randomly (no learner).

    Each count starts a fresh pool, waits until every actor has delivered its first steps
    (start-up excluded), then counts the steps delivered during `seconds`."""
    from dreamer.run.actor_pools import ActorPool

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


def policy(cfg: Config, envs: int = 1, calls: int = 20, warmup: int = 2) -> dict[str, Any]:
    """Actions per second of the configured agent's jitted policy, alone (no environment, no
    learner): `envs` observations per call (zeros, not first steps) with freshly initialised
    params, timed over `calls` calls after `warmup` (the first compiles). For a planner
    (PETS) this is the search's speed at the configured settings."""
    from dreamer.agents import make_agent
    from dreamer.run.acting import AgentPolicy

    obs_space, act_space = spaces_of(cfg)
    agent = make_agent(cfg, obs_space, act_space)
    params = jax.jit(agent.init)(jax.random.key(0)).params
    counter = iter(range(1 << 30))
    act = AgentPolicy(agent, envs, lambda: jax.random.key(next(counter)))
    obs = {k: np.zeros((envs, *s.shape), s.dtype) for k, s in obs_space.items()
           if k in agent.obs_keys}
    obs["is_first"] = np.zeros(envs, bool)
    for _ in range(warmup):
        act(params, obs)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        act(params, obs)
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    return {"agent": cfg.agent, "task": cfg.env.task, "envs": envs, "calls": calls,
            "seconds_per_call": {"median": median, "min": float(np.min(seconds)),
                                 "max": float(np.max(seconds))},
            "actions_per_s": envs / median, "cpu_cores": os.cpu_count(),
            "backend": jax.default_backend()}


def random_scores(cfg: Config, episodes: int = 100) -> dict[str, Any]:
    """Mean, std, min and max of the scores of a uniformly random policy over `episodes`
    episodes of the configured task (env seed `cfg.seed`; actions drawn from it too): the floor
    a learning curve is read against."""
    from dreamer.envs import make_env

    env = make_env(cfg.env, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    space = env.act_space
    scores = []
    try:
        for _ in range(episodes):
            step, score = env.reset(), 0.0
            while not step["is_last"]:
                if space.discrete:
                    action = np.int32(rng.integers(space.n))
                else:
                    action = rng.uniform(space.low, space.high, space.shape).astype(space.dtype)
                step = env.step(action)
                score += float(step["reward"])
            scores.append(score)
    finally:
        env.close()
    return {"task": cfg.env.task, "episodes": episodes, "mean": float(np.mean(scores)),
            "std": float(np.std(scores)), "min": float(np.min(scores)),
            "max": float(np.max(scores))}


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
    patch = min(8, h, w)  # a moving white square, so that consecutive frames differ
    rng = np.random.default_rng(0)

    def step(i: int) -> dict[str, np.ndarray]:
        image = background.astype(np.uint8)
        y, x = (i * 3) % (h - patch + 1), (i * 5) % (w - patch + 1)
        image[y:y + patch, x:x + patch] = (255, 255, 255)
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
