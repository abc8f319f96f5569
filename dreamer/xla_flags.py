"""XLA flags that cut launch overhead on GPUs, and the one place that sets them: `XLA_FLAGS`.

On a GPU, DreamerV3's small-model update is bound by kernel launches and by while-loop iterations
(each `lax.scan` step) that sync with the host, not by arithmetic. `GPU_FLAGS` names the XLA
flags aimed at that, each with its reason. The config key `jax.xla_flags` picks what is added:

  auto   `GPU_FLAGS` when the default backend will be a GPU (`gpu_expected`), nothing otherwise
  none   nothing
  other  a string of XLA flags (`--name=value ...`), added as given on every platform

XLA reads `XLA_FLAGS` once, when JAX creates its backend (the first device query or jit; not
`import jax`), so `apply` runs in the entry points before any JAX call. Flags already in
`XLA_FLAGS` win: a flag whose name is set there is not added again. XLA parses every flag on
every backend and aborts the process on one it does not know; tests/test_xla_flags.py checks
each of `GPU_FLAGS` against the installed jaxlib, so an upgrade that drops one fails there.
"""

from __future__ import annotations

import os
import pkgutil
import re
from collections.abc import MutableMapping, Sequence
from importlib import metadata
from typing import NamedTuple

__all__ = ["GPU_FLAGS", "SETTINGS", "Flag", "apply", "flag_name", "gpu_expected", "merge",
           "parse", "requested"]

SETTINGS = ("auto", "none")  # or a string of XLA flags


class Flag(NamedTuple):
    flag: str
    reason: str


GPU_FLAGS: tuple[Flag, ...] = (
    # `+` adds to XLA's default command types (FUSION, CUBLAS, CUBLASLT, CUDNN, CUSTOM_CALL and
    # DYNAMIC_SLICE_FUSION in jaxlib 0.10.2) instead of replacing the list, so types that a
    # later XLA adds or renames in its defaults are kept.
    Flag("--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL",
         "record while loops (each lax.scan) and conditionals into CUDA graphs with the kernels "
         "around them, so that a loop runs without a launch and a host sync per iteration "
         "(CUDA graph conditional nodes: CUDA 12.3 or newer)"),
    Flag("--xla_gpu_graph_min_graph_size=1",
         "make a CUDA graph of every run of capturable work, even a lone while loop between "
         "operations that cannot be captured (XLA's default needs 5 in a row)"),
    Flag("--xla_gpu_enable_while_loop_double_buffering=true",
         "unroll while loops by two: half the iterations, so half the loop-condition checks "
         "(each a host sync when the loop runs outside a CUDA graph)"),
    Flag("--xla_gpu_enable_latency_hiding_scheduler=true",
         "schedule asynchronous work (copies, collectives) to overlap computation instead of "
         "waiting for it"),
)

_FLAG = re.compile(r"--[A-Za-z_][A-Za-z0-9_]*(=\S*)?")
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
# JAX's CUDA and ROCm plugins: jax_plugins.xla_cuda12, jax_plugins.xla_cuda13, ...
_GPU_PLUGIN = re.compile(r"(xla_)?(cuda|rocm)\d*")
# A visible GPU: NVIDIA's device files, which JAX itself checks before it starts CUDA (Linux,
# containers, WSL2), and AMD's KFD driver, which ROCm opens.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def parse(setting: str) -> tuple[str, ...]:
    """The flags of a `jax.xla_flags` string of XLA flags (`--name` or `--name=value`, separated
    by spaces); () for 'auto' and 'none'. ValueError names the first item that is not a flag."""
    if setting in SETTINGS:
        return ()
    items = tuple(setting.split())
    if not items:
        raise ValueError("the string holds no flags")
    for item in items:
        if not _FLAG.fullmatch(item):
            raise ValueError(f"{item!r} is not an XLA flag written --name or --name=value")
    return items


def flag_name(flag: str) -> str:
    """`xla_foo` of `--xla_foo=1`."""
    return flag.lstrip("-").split("=", 1)[0]


def requested(setting: str, gpu: bool) -> tuple[str, ...]:
    """The flags `setting` asks for: `GPU_FLAGS` for 'auto' when `gpu`, nothing for 'none', the
    flags of any other string (see `parse`)."""
    if setting == "auto":
        return tuple(f.flag for f in GPU_FLAGS) if gpu else ()
    return parse(setting)


def _missing(current: str, flags: Sequence[str]) -> tuple[str, ...]:
    """Those of `flags` whose name `current` (an `XLA_FLAGS` value) does not set, each name once."""
    taken = {flag_name(item) for item in current.split() if item.startswith("-")}
    missing = []
    for flag in flags:
        if flag_name(flag) not in taken:
            taken.add(flag_name(flag))
            missing.append(flag)
    return tuple(missing)


def merge(current: str, flags: Sequence[str]) -> str:
    """`current` (an `XLA_FLAGS` value, kept as it is) followed by each of `flags` whose name it
    does not set yet, each name once: the flags in `current` win."""
    return " ".join(part for part in (current.strip(), *_missing(current, flags)) if part)


def _gpu_plugin_installed() -> bool:
    """Whether a CUDA or ROCm plugin of JAX is installed, found as JAX finds its plugins (the
    `jax_plugins` namespace package and entry points) without importing any."""
    names = {e.value.rsplit(".", 1)[-1] for e in metadata.entry_points(group="jax_plugins")}
    try:
        import jax_plugins  # a namespace package: importing it runs no plugin code
    except ImportError:
        pass
    else:
        names |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
    return any(_GPU_PLUGIN.fullmatch(name) for name in names)


def _jax_platforms() -> str:
    """JAX's `jax_platforms` setting (also read from $JAX_PLATFORMS); reading it starts nothing."""
    import jax

    return jax.config.jax_platforms or ""


def _gpu_visible() -> bool:
    return any(os.path.exists(f) for f in _GPU_DEVICE_FILES)


def gpu_expected(platform: str = "") -> bool:
    """Whether JAX's default backend will be a GPU, decided without starting a backend.

    `platform` (a `jax.platform` value), else JAX's `jax_platforms` setting (also read from
    $JAX_PLATFORMS), decides when given: its first entry is gpu, cuda or rocm. When neither is
    given, a GPU is expected when a CUDA or ROCm plugin of JAX is installed and a GPU device file
    is visible; a machine without both gets nothing from 'auto'.
    """
    first = (platform or _jax_platforms()).split(",", 1)[0].strip().lower()
    if first:
        return first in _GPU_PLATFORMS
    return _gpu_plugin_installed() and _gpu_visible()


def apply(setting: str, platform: str = "",
          environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    """Adds the flags `setting` (a `jax.xla_flags` value) asks for to `XLA_FLAGS` in `environ`
    (default: this process's environment) and returns those added; flags whose name `XLA_FLAGS`
    already sets are skipped, and `environ` is left untouched when nothing is added.

    Call it before JAX starts its backend: XLA reads `XLA_FLAGS` then, and never again.
    """
    environ = os.environ if environ is None else environ
    flags = requested(setting, setting == "auto" and gpu_expected(platform))
    current = environ.get("XLA_FLAGS", "")
    added = _missing(current, flags)
    if added:
        environ["XLA_FLAGS"] = merge(current, added)
    return added
