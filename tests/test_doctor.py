"""Setup checks: each problem is found and comes with its fix; training stops early on them."""
import pytest

from dreamer import cli, doctor
from dreamer.config import ConfigError, load_config


def test_replay_larger_than_ram_fails_with_a_capacity_that_fits(tmp_path, capsys):
    cfg = load_config(["dmc_vision"], {"replay.capacity": 1e9, "run.steps": 1e10})
    memory = next(c for c in doctor.check_memory(cfg, tmp_path) if c.name == "memory")
    assert memory.status == "fail" and "--replay.capacity=" in memory.fix
    fits = int(memory.fix.split("=")[1].split()[0])
    assert 0 < fits * doctor.replay_bytes_per_step(cfg) < 2**40
    with pytest.raises(ConfigError, match=r"memory: replay holds up to 1,000,000,000 steps"):
        doctor.preflight(cfg)
    # dreamer-train runs the same check before it creates anything.
    logdir = tmp_path / "run"
    assert cli.train_main(["--configs", "debug", "--replay.capacity=1e12", "--run.steps=1e12",
                           f"--logdir={logdir}"]) == 2
    assert "--replay.capacity=" in capsys.readouterr().err and not logdir.exists()


def test_short_runs_need_only_their_steps():
    cfg = load_config(["dmc_vision"], {"replay.capacity": 1e9, "run.steps": 1e4,
                                       "env.action_repeat": 2})
    assert doctor.replay_steps(cfg) == 5000
    assert doctor.replay_bytes_per_step(cfg) >= 64 * 64 * 3


def test_known_bad_versions(monkeypatch):
    versions = {"mujoco": "4.0.1", "dm-control": "1.0.50", "jax": "0.10.2", "jaxlib": "0.10.1"}
    monkeypatch.setattr(doctor, "_version", versions.get)
    checks = {c.status: c for c in doctor.check_versions()}
    assert 'mujoco<4' in checks["fail"].fix and "flex_vertedge" in checks["fail"].detail
    assert "jaxlib 0.10.1" in checks["warn"].detail


def test_missing_renderer_names_the_packages(monkeypatch):
    monkeypatch.setattr(doctor, "probe_renderer", lambda backend: "cannot load libEGL.so.1")
    (check,) = doctor.check_renderer()
    assert check.status == "fail" and "libegl1" in check.fix and "libosmesa6" in check.fix
    monkeypatch.setattr(doctor, "probe_renderer", lambda b: "" if b == "osmesa" else "no EGL")
    monkeypatch.setenv("MUJOCO_GL", "egl")
    (check,) = doctor.check_renderer()
    assert check.status == "fail" and check.fix == "export MUJOCO_GL=osmesa"


def test_unused_accelerator_names_the_jax_build(monkeypatch):
    monkeypatch.setattr(doctor, "_accelerator_present", lambda: "gpu")
    (check,) = doctor.check_jax()
    assert check.status == "warn" and "jax[cuda12]" in check.fix
    monkeypatch.setattr(doctor, "_accelerator_present", lambda: "tpu")
    assert "jax[tpu]" in doctor.check_jax()[0].fix


def test_wandb_mode_and_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    (check,) = doctor.check_wandb(load_config(["debug"], {"logger.wandb": True}))
    assert "offline" in check.detail and "wandb login" in check.fix
    with pytest.raises(ConfigError, match="'logger.mode': 'cloud'; choose one of 'auto'"):
        load_config(["debug"], {"logger.mode": "cloud"})  # refused before the doctor sees it


def test_doctor_command_on_this_machine(capsys):
    code = cli.doctor_main(["--configs", "debug"])
    out = capsys.readouterr().out
    for name in ("versions", "jax", "renderer", "wandb", "memory", "disk"):
        assert f"] {name}:" in out, name
    assert code == (1 if "[FAIL]" in out else 0)
