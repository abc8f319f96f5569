"""Checkpoint and resume of whole runs: counters, replay contents and RNG continue where they were
saved; incompatible configs, damaged checkpoints and SIGKILL are handled."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dreamer import cli
from dreamer.bench import analysis
from dreamer.config import Config, ConfigError, load_config
from dreamer.replay import stored_stamps
from dreamer.run import runner
from dreamer.run.checkpoint import Checkpointer
from dreamer.run.clocks import updates_due

ROOT = Path(__file__).resolve().parent.parent
PREFILL, RATIO, STEPS_PER_UPDATE = 100, 16, 4 * 8  # debug: batch 4 x length 8 on one device


def debug_cfg(logdir, steps, **overrides):
    return load_config(["debug"], {
        "logdir": str(logdir), "run.steps": steps, "run.prefill": PREFILL,
        "run.train_ratio": RATIO, "run.eval_every": 0, "run.log_every": 0,
        "run.checkpoint_every": 0, "logger.console": False, "logger.report_every": 0,
        "parallel.devices": 1, **overrides})


def expected_updates(agent_steps: int) -> int:
    return int((agent_steps - PREFILL) * RATIO / STEPS_PER_UPDATE) + 1


def stored_context(directory: Path) -> dict[str, np.ndarray]:
    """The `context_*` arrays and insert stamps of every step in a replay folder, by stamp."""
    parts: dict[str, list[np.ndarray]] = {}
    for path in sorted(directory.glob("*.npz")):
        with np.load(path) as archive:
            for key in archive.files:
                if key.startswith("context_") or key == "_stamp":
                    parts.setdefault(key, []).append(archive[key])
    data = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(data["_stamp"])
    return {k: v[order] for k, v in data.items()}


def latest_meta(logdir: Path) -> dict:
    ckpt = Checkpointer(logdir / "checkpoints")
    try:
        return ckpt.latest_meta()
    finally:
        ckpt.close()


def test_resume_continues_counters_replay_and_falls_back_past_damage(tmp_path):
    logdir = tmp_path / "run"
    runner.run(debug_cfg(logdir, 300))
    first = latest_meta(logdir)
    assert (first["env_steps"], first["updates"]) == (300, expected_updates(300))
    assert first["replay"]["inserts"] == 300
    np.testing.assert_array_equal(stored_stamps(logdir / "replay"), np.arange(300))

    # The same command with more steps continues: counters, replay and RNG state.
    runner.run(debug_cfg(logdir, 400))
    second = latest_meta(logdir)
    assert (second["env_steps"], second["updates"]) == (400, expected_updates(400))
    assert second["counters"]["episodes"] > first["counters"]["episodes"]
    assert second["counters"]["starts"] == 1
    np.testing.assert_array_equal(stored_stamps(logdir / "replay"), np.arange(400))  # none lost or twice
    lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    resumed = [x for x in lines if x["step"] > 300]
    assert min(x["train/updates"] for x in resumed) >= first["updates"]
    assert resumed[-1]["replay/loaded"] == 300
    # Replay context: every step stores a model state; the policy's steps (after the random
    # prefill) non-zero ones; updates wrote fresh states back, before and after the resume.
    context = stored_context(logdir / "replay")
    assert set(context) == {"context_deter", "context_stoch", "_stamp"}
    assert len(context["_stamp"]) == 400
    active = np.abs(context["context_deter"]).sum(-1) > 0
    assert active[context["_stamp"] >= PREFILL].all() and not active[:PREFILL].all()
    assert second["replay"]["counts"]["updated"] > first["replay"]["counts"]["updated"] > 0
    assert second["rngs"]["seed"] == 0 and {"update", "policy"} <= set(second["rngs"]["keys"])

    # A change to a key that shapes the model is refused before anything is touched.
    config_before = (logdir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"env\.size: \[16, 16\] -> \[8, 8\]; model\.deter: 32 -> 64"):
        runner.run(debug_cfg(logdir, 500, **{"model.deter": 64, "env.size": [8, 8]}))
    assert (logdir / "config.yaml").read_text() == config_before

    # A damaged newest checkpoint: resume from the previous one, with a warning, and the replay
    # is cut back to what that checkpoint had seen.
    for path in (logdir / "checkpoints" / "400" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="cannot be read"):
        runner.run(debug_cfg(logdir, 450))
    third = latest_meta(logdir)
    assert (third["env_steps"], third["updates"]) == (450, expected_updates(450))
    assert third["counters"]["starts"] == 1  # continued from the first run's checkpoint
    np.testing.assert_array_equal(stored_stamps(logdir / "replay"), np.arange(450))


def test_a_checkpoint_with_flat_counters_resumes(tmp_path, capsys):
    """Checkpoints written before the counters were one record (flat keys in the JSON record)
    resume with the same counters."""
    logdir = tmp_path / "run"
    runner.run(debug_cfg(logdir, 150))
    record = logdir / "checkpoints" / "150" / "meta" / "metadata"
    meta = json.loads(record.read_text())
    counters = meta.pop("counters")
    record.write_text(json.dumps({**meta, **counters}))
    runner.run(debug_cfg(logdir, 180))
    assert "resumed" in capsys.readouterr().err
    final = latest_meta(logdir)["counters"]
    assert final["starts"] == 1 and final["episodes"] >= counters["episodes"]
    assert final["wandb_id"] == counters["wandb_id"]


def test_replay_without_a_checkpoint_is_moved_aside(tmp_path):
    logdir = tmp_path / "run"
    runner.run(debug_cfg(logdir, 120))
    shutil.rmtree(logdir / "checkpoints")
    with pytest.warns(UserWarning, match="no checkpoint to resume"):
        runner.run(debug_cfg(logdir, 120))
    assert len(list(logdir.glob("replay-without-checkpoint-*/*.npz"))) > 0
    np.testing.assert_array_equal(stored_stamps(logdir / "replay"), np.arange(120))


def test_dreamer_eval_and_analysis_of_the_newest_checkpoint(tmp_path, capsys):
    logdir = tmp_path / "run"
    runner.run(debug_cfg(logdir, 120))
    for video in ("first.gif", "first.mp4"):
        assert cli.eval_main(["--logdir", str(logdir), "--episodes", "2", "--mode", "mode",
                              "--video", str(tmp_path / video)]) == 0
        assert (tmp_path / video).stat().st_size > 0
    out = capsys.readouterr().out
    assert "over 2 episodes, mode actions; checkpoint at 120 env steps" in out
    assert cli.eval_main(["--logdir", str(tmp_path / "nothing")]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err

    # The notebooks' tools on the same run.
    run = analysis.load_run(logdir)
    assert run.env_steps == 120
    batch = analysis.replay_sample(run, batch=2, length=8)
    assert batch["image"].shape == (2, 8, 16, 16, 3)
    act_dim = batch["action"].shape[-1]
    chosen = np.zeros((2, 5, act_dim), np.float32)
    chosen[..., 0] = 1.0  # always the first action
    out = analysis.imagine(run, batch, context=3, actions=chosen)
    assert out["model"].shape == out["recon"].shape == (2, 8, 16, 16, 3)
    np.testing.assert_array_equal(out["model"][:, :3], out["recon"][:, :3])
    assert out["reward"].shape == (2, 5)
    other = chosen[..., ::-1].copy()
    assert not np.array_equal(analysis.imagine(run, batch, 3, other)["model"][:, 3:],
                              out["model"][:, 3:])  # the imagination follows the actions
    assert run.compiled("imagine", None)._cache_size() == 1  # both calls shared one compile
    predicted, true = analysis.reward_predictions(run, batch)
    assert predicted.shape == true.shape == (2, 8) and np.isfinite(predicted).all()
    assert analysis.side_by_side(out["real"], out["model"]).shape == (8, 32, 32, 3)

    shutil.rmtree(logdir / "checkpoints")
    assert cli.eval_main(["--logdir", str(logdir)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert cli.eval_main(["--logdir", str(logdir), "--video", "clip.avi"]) == 2
    assert "must end in .mp4 or .gif" in capsys.readouterr().err


def test_a_foreign_checkpoint_folder_is_a_clear_error(tmp_path):
    logdir = tmp_path / "run"
    (logdir / "checkpoints" / "100").mkdir(parents=True)
    (logdir / "checkpoints" / "100" / "state").write_text("not a checkpoint")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "train.py"), "--configs", "debug",
         "--parallel.devices=1", "--run.steps=200", f"--logdir={logdir}"],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no readable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_a_damaged_only_checkpoint_says_so_in_a_line_and_deletes_nothing(tmp_path):
    """The only checkpoint's data files cut short: exit 2 with one line for the checkpoint and
    the fix, not the TensorStore specs and tracebacks of every array; DREAMER_DEBUG shows them."""
    logdir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "launch" / "train.py"), "--configs", "dyna_q",
               "--run.steps=200", f"--logdir={logdir}"]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, timeout=300)
    data = [path for path in (logdir / "checkpoints").rglob("d/*") if path.is_file()]
    assert data
    for path in data:
        path.write_bytes(path.read_bytes()[:10])
    files = sorted((logdir / "checkpoints").rglob("*"))
    # Without the suite's compilation cache: on some CPUs XLA logs a line for each cached
    # program it cannot load, and this run's stderr must hold our message alone.
    quiet = ("DREAMER_DEBUG", "JAX_COMPILATION_CACHE_DIR")
    proc = subprocess.run([*command[:-2], "--run.steps=400", command[-1]], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in quiet})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) <= 5 and max(map(len, lines)) < 400, proc.stderr
    assert "no readable checkpoint in" in proc.stderr and "step 200: ValueError" in proc.stderr
    assert "Move the folder away" in lines[-1] and "Traceback" not in proc.stderr
    assert sorted((logdir / "checkpoints").rglob("*")) == files  # nothing deleted or moved
    debug = subprocess.run([*command[:-2], "--run.steps=400", command[-1]], check=False,
                           capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "DREAMER_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert len(debug.stderr.splitlines()) > 3 * len(lines)


PETS_ARGS = ["pets", "--env.task=builtin_reach", "--pets.members=2", "--pets.particles=2",
             "--pets.units=16", "--pets.layers=1", "--pets.candidates=16", "--pets.elites=4",
             "--pets.iterations=2", "--pets.horizon=4", "--batch_size=8", "--batch_length=3"]


DYNA_ARGS = ["dyna_q"]  # its preset's tables and task are tiny already
SWEEPING_ARGS = ["prioritized_sweeping"]
MUZERO_ARGS = ["muzero", "--muzero.unroll=2", "--muzero.td_steps=2", "--batch_length=5",
               "--batch_size=8", "--muzero.latent=8", "--muzero.units=16", "--muzero.layers=1",
               "--muzero.simulations=2", "--muzero.considered=3", "--muzero.bins=21",
               "--muzero.reanalyse=0.25", "--replay.prioritized", "--replay.online=false",
               "--run.prefill=100"]


MBPO_ARGS = ["mbpo", "--env.task=builtin_reach", "--mbpo.members=3", "--mbpo.elites=2",
             "--mbpo.units=16", "--mbpo.layers=1", "--mbpo.sac_units=16", "--mbpo.sac_layers=1",
             "--mbpo.rollouts=8", "--mbpo.retain=4", "--mbpo.updates=2", "--mbpo.sac_batch=8",
             "--mbpo.real_ratio=0.25", "--mbpo.model_warmup=10", "--batch_size=8",
             "--batch_length=2", "--replay.capacity=1e4", "--run.prefill=100", "--run.train_ratio=32"]


@pytest.mark.parametrize("agent_args", [[], PETS_ARGS, DYNA_ARGS, SWEEPING_ARGS, MUZERO_ARGS,
                                        MBPO_ARGS],
                         ids=["dreamerv3", "pets", "dyna_q", "prioritized_sweeping", "muzero",
                              "mbpo"])
def test_sigkill_and_resume(tmp_path, agent_args):
    """Killed at a random moment after two checkpoints, the same command resumes from the last
    complete one: counters match, no step is lost or stored twice."""
    logdir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "launch" / "train.py"), "--configs", "debug",
               *agent_args, "--parallel.devices=1", "--run.eval_every=0", "--run.log_every=1",
               "--run.checkpoint_every=2", "--logger.report_every=0", f"--logdir={logdir}"]
    proc = subprocess.Popen([*command, "--run.steps=1e6"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list((logdir / "checkpoints").glob("[0-9]*"))) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        time.sleep(random.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = latest_meta(logdir)
    assert saved is not None and saved["env_steps"] > 0
    total = saved["env_steps"] + 60
    done = subprocess.run([*command, f"--run.steps={total}"], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed {logdir.absolute() / 'checkpoints' / str(saved['env_steps'])}" in done.stderr
    assert f"{saved['env_steps']} env steps, {saved['updates']} updates" in done.stderr
    final = latest_meta(logdir)
    debug = Config.load(logdir / "config.yaml")
    assert final["env_steps"] == total
    trained = {"pets": debug.batch_length - 1, "mbpo": debug.batch_length - 1,
               "muzero": debug.muzero.unroll + 1}.get(debug.agent, debug.batch_length)
    assert final["updates"] == updates_due(debug, total, 1, trained)
    np.testing.assert_array_equal(stored_stamps(logdir / "replay"), np.arange(total))


def test_prioritized_sweeping_resumes_with_its_queue(tmp_path, monkeypatch):
    """The train state a resumed run starts from is the one the last checkpoint saved, bit for
    bit, the priority queue included (Taxi: a reward every step keeps pairs queued)."""
    saved, restored = [], []
    save, restore = Checkpointer.save, Checkpointer.restore

    def saving(self, step, state, meta):
        saved.append(jax.device_get(state))
        save(self, step, state, meta)

    def restoring(self, target):
        restored.append(restore(self, target))
        return restored[-1]

    monkeypatch.setattr(Checkpointer, "save", saving)
    monkeypatch.setattr(Checkpointer, "restore", restoring)
    logdir = tmp_path / "run"

    def cfg(steps):
        return load_config(["debug", "prioritized_sweeping"], {
            "logdir": str(logdir), "env.task": "gym_Taxi-v4", "run.steps": steps,
            "run.eval_every": 0, "run.log_every": 0, "run.checkpoint_every": 0,
            "logger.console": False, "logger.report_every": 0, "parallel.devices": 1})

    runner.run(cfg(150))
    assert len(saved) == 1 and restored == [None]
    queue = np.asarray(saved[0].priority)
    assert (queue > 0).sum() > 1 and (np.asarray(saved[0].params["q"]) != 0).any()
    runner.run(cfg(190))
    step, state, _ = restored[-1]
    assert step == 150
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), saved[0])
    assert latest_meta(logdir)["env_steps"] == 190
    assert not np.array_equal(np.asarray(saved[-1].priority), queue)  # and it went on learning


def test_wandb_offline_run_with_videos_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logdir = tmp_path / "run"
    wandb = {"logger.wandb": True, "logger.mode": "offline", "logger.report_every": 10,
             "run.eval_every": 120, "logger.tags": ["test"]}
    runner.run(debug_cfg(logdir, 140, **wandb))
    runner.run(debug_cfg(logdir, 160, **wandb))
    runs = sorted((logdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = latest_meta(logdir)["counters"]["wandb_id"]
    assert all(run.name.endswith(run_id) for run in runs)  # the resumed run is the same run
    media = runs[0] / "files" / "media" / "videos"
    for name in ("report/openloop_", "report/recon_", "eval/video_"):
        assert list(media.glob(f"{name}*.mp4")), name
    record = (runs[0] / f"run-{run_id}.wandb").read_bytes()
    for text in (b"builtin_catch", b"train/loss/total", b"report/openloop_mse", b"env_step"):
        assert text in record, text
