"""XLA flags for GPUs: what each `jax.xla_flags` setting adds, how it merges with XLA_FLAGS, and
that every curated flag exists in the installed jaxlib (XLA aborts on one it does not know)."""
import importlib.util
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreamer import xla_flags
from dreamer.config import Config, ConfigError, load_config

CURATED = [f.flag for f in xla_flags.GPU_FLAGS]
ROOT = Path(__file__).resolve().parent.parent


def test_every_curated_flag_has_a_reason_and_a_distinct_name():
    names = [xla_flags.flag_name(f.flag) for f in xla_flags.GPU_FLAGS]
    assert len(set(names)) == len(names)
    for flag in xla_flags.GPU_FLAGS:
        assert flag.flag.startswith("--xla_gpu_") and "=" in flag.flag and flag.reason
    assert "+WHILE,+CONDITIONAL" in CURATED[0]


def test_flags_set_by_the_user_win_and_no_name_is_repeated():
    user = "--xla_gpu_graph_min_graph_size=3 --xla_dump_to=/tmp/d"
    merged = xla_flags.merge(user, CURATED)
    items = merged.split()
    assert merged.startswith(user)
    assert "--xla_gpu_graph_min_graph_size=3" in items
    assert "--xla_gpu_graph_min_graph_size=1" not in items
    names = [xla_flags.flag_name(i) for i in items]
    assert len(names) == len(set(names)) == len(CURATED) + 1
    assert xla_flags.merge(merged, CURATED) == merged  # merging again adds nothing
    assert xla_flags.merge("", ["--xla_a=1", "--xla_a=2"]) == "--xla_a=1"


def test_apply_adds_the_gpu_set_on_a_gpu_and_keeps_the_users_flags():
    environ = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    added = xla_flags.apply("auto", "gpu", environ)
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in added
    assert set(added) == set(CURATED) - {"--xla_gpu_enable_latency_hiding_scheduler=true"}
    assert environ["XLA_FLAGS"].split() == [
        "--xla_gpu_enable_latency_hiding_scheduler=false", *added]
    assert xla_flags.apply("auto", "gpu", environ) == ()  # a second call changes nothing


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_auto_adds_nothing_off_the_gpu(platform):
    environ = {}
    assert xla_flags.apply("auto", platform, environ) == ()
    assert environ == {}
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    xla_flags.apply("auto", platform, environ)
    assert environ == {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}


def test_auto_without_a_platform_decides_without_starting_a_backend(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jax_platforms", lambda: "")
    for plugin, visible in [(True, True), (True, False), (False, True)]:
        monkeypatch.setattr(xla_flags, "_gpu_plugin_installed", lambda plugin=plugin: plugin)
        monkeypatch.setattr(xla_flags, "_gpu_visible", lambda visible=visible: visible)
        assert xla_flags.gpu_expected("") == (plugin and visible)
    monkeypatch.setattr(xla_flags, "_jax_platforms", lambda: "cuda,cpu")  # $JAX_PLATFORMS
    assert xla_flags.gpu_expected("")
    assert not xla_flags.gpu_expected("cpu")  # jax.platform wins
    assert xla_flags.gpu_expected("rocm") and not xla_flags.gpu_expected("cpu,cuda")


def test_a_cuda_plugin_is_found_as_jax_finds_it_without_importing_it(tmp_path, monkeypatch):
    plugin = tmp_path / "jax_plugins" / "xla_cuda13"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("raise RuntimeError('a plugin was imported')\n")
    monkeypatch.delitem(sys.modules, "jax_plugins", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert xla_flags._gpu_plugin_installed()


def test_none_adds_nothing_and_a_string_is_added_as_given():
    environ = {}
    assert xla_flags.apply("none", "gpu", environ) == () and environ == {}
    given = "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"
    assert xla_flags.apply(given, "cpu", environ) == tuple(given.split())
    assert environ["XLA_FLAGS"] == given
    environ = {"XLA_FLAGS": "--xla_gpu_autotune_level=2"}
    xla_flags.apply(given, "", environ)
    assert environ["XLA_FLAGS"] == "--xla_gpu_autotune_level=2 --xla_gpu_enable_triton_gemm=false"


def test_the_config_key_takes_auto_none_or_flags():
    assert Config().jax.xla_flags == "auto"
    for value in ("none", "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false"):
        assert load_config([], {"jax.xla_flags": value}).jax.xla_flags == value
    for bad, why in [("fast", "'fast' is not an XLA flag"), ("", "holds no flags"),
                     ("xla_gpu_autotune_level=0", "is not an XLA flag"),
                     ("--xla_dump_to /tmp", "'/tmp' is not an XLA flag")]:
        with pytest.raises(ConfigError, match=rf"'jax.xla_flags'.*choose one of 'auto', 'none'.*"
                                              rf"{why}"):
            load_config([], {"jax.xla_flags": bad})
    with pytest.raises(ConfigError, match="'jax.xla_flags'.*expected str"):
        Config().update({"jax.xla_flags": 3})


def _libraries() -> list[Path]:
    """The shared libraries of the installed jaxlib and of any JAX plugin (e.g. CUDA)."""
    folders = list(importlib.util.find_spec("jaxlib").submodule_search_locations)
    plugins = importlib.util.find_spec("jax_plugins")
    if plugins is not None:
        folders += list(plugins.submodule_search_locations)
    return [p for folder in folders for p in Path(folder).rglob("*.so*") if p.is_file()]


def test_every_curated_flag_is_compiled_into_the_installed_jaxlib():
    # A flag XLA registers is a NUL-terminated string in the library; retired DebugOptions
    # fields (e.g. xla_gpu_graph_level) survive only inside the proto descriptor, without NULs.
    missing = {xla_flags.flag_name(f) for f in CURATED}
    for path in sorted(_libraries(), key=lambda p: -p.stat().st_size):
        if not missing:
            break
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
            missing = {name for name in missing if m.find(f"\0{name}\0".encode()) < 0}
    assert not missing, f"flags missing from the installed jaxlib: {sorted(missing)}"


def _run(code: str, xla: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": xla, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)


def test_a_cpu_process_with_the_gpu_flags_starts():
    """XLA parses every flag, and the command types' names, on every backend."""
    code = "import jax; jax.numpy.ones(1).block_until_ready()"
    proc = _run(code, " ".join(CURATED))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _run(code, "--xla_gpu_no_such_flag=true").returncode != 0  # XLA aborts on a typo


def test_flags_applied_after_import_take_effect():
    """XLA reads XLA_FLAGS when JAX starts its backend, after `import jax` and our modules."""
    code = ("import jax\n"
            "from dreamer import cli, xla_flags\n"
            "xla_flags.apply('--xla_force_host_platform_device_count=3', 'cpu')\n"
            "assert jax.device_count() == 3, jax.devices()\n")
    proc = _run(code, "")
    assert proc.returncode == 0, proc.stderr[-2000:]
