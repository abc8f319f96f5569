"""Setup checks (`dreamer-doctor`): each finds one thing that would stop or slow a run and says
how to fix it. `dreamer-train` runs the quick ones at start-up (`preflight`).

A check returns `Check(name, status, detail, fix)`: status `ok`, `warn` (runs, but not as well as
it could) or `fail` (a run would stop). Checks that start subprocesses (renderers) are slow-ish,
a few seconds each, and only the doctor runs them all.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dreamer.config import Config, ConfigError

RENDER_PACKAGES = {"egl": "libegl1 libegl-mesa0 libgl1-mesa-dri", "osmesa": "libosmesa6"}
GIB = 2**30


@dataclasses.dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.status]
        text = f"[{mark}] {self.name}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    return int(version.split(".")[0])


def check_versions() -> list[Check]:
    """Known-bad combinations of installed packages."""
    out = []
    mujoco, dmc = _version("mujoco"), _version("dm-control")
    if mujoco and dmc and dmc.startswith("1.0.50") and _major(mujoco) >= 4:
        out.append(Check("versions", "fail",
                         f"mujoco {mujoco} with dm-control {dmc}: dm-control suite tasks fail to "
                         "load (flex_vertedge)", 'pip install "mujoco<4"'))
    jax, jaxlib = _version("jax"), _version("jaxlib")
    if jax and jaxlib and jax != jaxlib:
        out.append(Check("versions", "warn", f"jax {jax} but jaxlib {jaxlib}",
                         f'pip install "jax=={jax}" "jaxlib=={jax}"'))
    if not out:
        out.append(Check("versions", "ok", f"jax {jax}, jaxlib {jaxlib}, mujoco {mujoco}, "
                                           f"dm-control {dmc}"))
    return out


def _accelerator_present() -> str:
    """'gpu' or 'tpu' when this machine has one (seen without JAX), else ''."""
    if shutil.which("nvidia-smi") or Path("/dev/nvidiactl").exists():
        return "gpu"
    if any(Path("/dev").glob("accel*")) or os.environ.get("COLAB_TPU_ADDR") \
            or os.environ.get("TPU_NAME"):
        return "tpu"
    return ""


def check_jax() -> list[Check]:
    """The JAX backend and its devices, and whether an accelerator goes unused."""
    import jax

    devices = jax.devices()
    backend = jax.default_backend()
    kinds = sorted({d.device_kind for d in devices})
    detail = f"backend {backend}, {len(devices)} device(s): {', '.join(kinds)}"
    present = _accelerator_present()
    if backend == "cpu" and present == "gpu":
        return [Check("jax", "warn", detail + "; this machine has an NVIDIA GPU that JAX does "
                      "not use (a CPU-only jaxlib)",
                      f'pip install "jax[cuda12]=={jax.__version__}"')]
    if backend == "cpu" and present == "tpu":
        return [Check("jax", "warn", detail + "; this machine has a TPU that JAX does not use",
                      f'pip install "jax[tpu]=={jax.__version__}"')]
    return [Check("jax", "ok", detail)]


_RENDER_PROBE = """
from dm_control import suite
env = suite.load("cartpole", "balance")
env.reset()
frame = env.physics.render(16, 16)
assert frame.shape == (16, 16, 3)
"""


def probe_renderer(backend: str, timeout: float = 120.0) -> str:
    """Renders one dm_control frame with MUJOCO_GL=`backend` in a subprocess; '' on success,
    else the error's last line."""
    env = {**os.environ, "MUJOCO_GL": backend}
    if backend == "osmesa":
        env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    try:
        proc = subprocess.run([sys.executable, "-c", _RENDER_PROBE], env=env, check=False,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode == 0:
        return ""
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def check_renderer(backends: tuple[str, ...] = ("egl", "osmesa")) -> list[Check]:
    """Headless MuJoCo rendering (needed for dmc_* pixel tasks): tries each backend."""
    chosen = os.environ.get("MUJOCO_GL", "")
    errors = {b: probe_renderer(b) for b in backends}
    working = [b for b, e in errors.items() if not e]
    tried = "; ".join(f"{b}: {e or 'works'}" for b, e in errors.items())
    if not working:
        return [Check("renderer", "fail", f"no headless MuJoCo renderer works ({tried})",
                      "sudo apt-get install -y " + RENDER_PACKAGES["egl"]
                      + f" (for MUJOCO_GL=egl), or {RENDER_PACKAGES['osmesa']} (osmesa)")]
    if chosen and chosen not in working:
        return [Check("renderer", "fail", f"MUJOCO_GL={chosen} does not work ({tried})",
                      f"export MUJOCO_GL={working[0]}")]
    return [Check("renderer", "ok", f"{tried}; in use: MUJOCO_GL={chosen or working[0]}")]


def check_wandb(cfg: Config) -> list[Check]:
    """The W&B mode a run would use and whether it can log online."""
    from dreamer.logging import wandb_mode

    try:
        mode = wandb_mode(cfg.logger.mode)
    except ValueError as e:
        return [Check("wandb", "fail", str(e), "--logger.mode=auto")]
    if _version("wandb") is None:
        return [Check("wandb", "warn" if cfg.logger.wandb else "ok", "wandb is not installed",
                      "pip install wandb")]
    use = "on (--logger.wandb)" if cfg.logger.wandb else "off (enable with --logger.wandb)"
    if cfg.logger.mode in ("auto", "online") and mode == "offline":
        return [Check("wandb", "ok", f"{use}; no W&B credentials, so runs are written offline "
                      "under the logdir", "wandb login (then runs log online; upload offline "
                      "runs with: wandb sync LOGDIR/wandb/offline-run-*)")]
    return [Check("wandb", "ok", f"{use}; mode {mode}")]


def replay_bytes_per_step(cfg: Config) -> int:
    """Bytes one stored step takes in replay memory (image, vector, action, scalars, and the
    stored model state with replay context: float32 deter and int32 latent classes)."""
    h, w = cfg.env.size
    image = h * w * (1 if cfg.env.gray else 3) if cfg.env.obs in ("image", "both") else 0
    vector = 4 * 256 if cfg.env.obs in ("vector", "both") else 0  # up to 256 float32 features
    context = 4 * (cfg.model.deter + cfg.model.stoch) if cfg.replay.context else 0
    # action (<= 32 floats), reward, flags, stamp
    return image + vector + context + 4 * 32 + 4 + 3 + 8


def replay_steps(cfg: Config) -> int:
    """Steps the replay will hold at most: capacity, or fewer when the run is shorter."""
    return int(min(cfg.replay.capacity, cfg.run.steps / cfg.env.action_repeat))


def check_memory(cfg: Config, logdir: str | Path | None = None) -> list[Check]:
    """Replay memory against RAM, and its files against free disk."""
    import psutil

    steps, per_step = replay_steps(cfg), replay_bytes_per_step(cfg)
    need = steps * per_step
    memory = psutil.virtual_memory()
    what = (f"replay holds up to {steps:,} steps x {per_step:,} bytes = {need / GIB:.1f} GiB "
            f"(replay.capacity {int(cfg.replay.capacity):,}, run.steps {int(cfg.run.steps):,})")
    fits = int(memory.total * 0.5 / per_step)
    out = []
    if need > memory.total:
        out.append(Check("memory", "fail", f"{what}; this machine has {memory.total / GIB:.1f} "
                         "GiB of RAM", f"--replay.capacity={fits} (half the RAM)"))
    elif need > memory.available:
        out.append(Check("memory", "warn", f"{what}; {memory.available / GIB:.1f} GiB of "
                         f"{memory.total / GIB:.1f} GiB RAM is free now",
                         f"free memory, or --replay.capacity={fits}"))
    else:
        out.append(Check("memory", "ok", f"{what}; {memory.available / GIB:.1f} GiB RAM free"))
    where = Path(logdir or cfg.logdir or "runs")
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    # Chunk files are compressed; rendered frames shrink to roughly a third or less.
    disk = need / 3
    if free < disk:
        out.append(Check("disk", "warn", f"about {disk / GIB:.1f} GiB of replay files expected "
                         f"under the logdir, {free / GIB:.1f} GiB free at {where}",
                         "--logdir on a larger disk, or a smaller --replay.capacity"))
    else:
        out.append(Check("disk", "ok", f"{free / GIB:.1f} GiB free at {where}"))
    return out


def run_checks(cfg: Config, renderer: bool = True) -> list[Check]:
    checks = [*check_versions(), *check_jax()]
    if renderer:
        checks += check_renderer()
    return [*checks, *check_wandb(cfg), *check_memory(cfg)]


def preflight(cfg: Config) -> list[Check]:
    """The quick checks `dreamer-train` runs before building anything; raises ConfigError with
    every failure's message and fix."""
    checks = [*check_versions(), *check_memory(cfg)]
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise ConfigError("setup check failed:\n" + "\n".join(c.line() for c in failed)
                          + "\n(run dreamer-doctor for all checks)")
    return checks
