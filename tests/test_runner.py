"""End-to-end: the training loop on the tiny `debug` preset writes what the README promises."""
import dataclasses
import json
import threading

import numpy as np
import pytest

from dreamer.config import Config, load_config
from dreamer.run import acting, monitor, runner
from dreamer.run.checkpoint import Checkpointer
from dreamer.run.session import Session
from dreamer.run.state import Counters


def test_debug_run_writes_logdir(tmp_path):
    cfg = load_config(["debug"], {
        "logdir": str(tmp_path), "run.steps": 300, "run.prefill": 100, "run.eval_every": 100,
        "run.log_every": 0, "run.train_ratio": 16, "parallel.devices": 1})
    result = runner.run(cfg)
    assert np.isfinite(result["eval/score"]) and result["eval/length"] == 28

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(line["step"], int) for line in lines)
    keys = set().union(*lines)
    for key in ("episode/score", "episode/length", "eval/score", "train/loss/image",
                "train/loss/reward", "train/loss/policy", "train/loss/value", "fps/env",
                "fps/train", "train/updates"):
        assert key in keys, key
    assert max(line["step"] for line in lines) == 300
    # Where the loop's time went: each phase's share of a log period, together at most all.
    phases = ("act", "env", "insert", "sample", "update")
    for line in lines:
        shares = [line[f"loop/{p}_fraction"] for p in phases if f"loop/{p}_fraction" in line]
        assert all(share >= 0 for share in shares) and sum(shares) <= 1 + 1e-6
    assert all(f"loop/{p}_fraction" in keys for p in phases)
    # One evaluation per 100 steps; the one at the last step is also the final one.
    assert [line["step"] for line in lines if "eval/score" in line] == [100, 200, 300]
    updates = max(line.get("train/updates", 0) for line in lines)
    # (300 - 100) agent steps after prefill * ratio 16 / (4 x 8 replayed steps per update)
    assert 95 <= updates <= 105
    # The saved config is the whole run's, every agent's sections included, and loads back.
    saved = Config.load(tmp_path / "config.yaml")
    assert saved == cfg and {"model", "mpc", "pets", "dyna"} <= set(saved)
    assert sorted((tmp_path / "replay").glob("*.npz"))


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_debug_run_on_two_devices(tmp_path, backend):
    """Two fake CPU devices: each update takes batch_size sequences per device."""
    cfg = load_config(["debug"], {
        "logdir": str(tmp_path), "run.steps": 200, "run.prefill": 100, "run.eval_every": 0,
        "run.log_every": 0, "run.train_ratio": 32, "parallel.devices": 2,
        "parallel.backend": backend})
    result = runner.run(cfg)
    assert np.isfinite(result["eval/score"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    updates = max(line.get("train/updates", 0) for line in lines)
    # 100 agent steps after prefill * ratio 32 / (2 devices x 4 x 8 replayed steps per update)
    assert 49 <= updates <= 51
    assert all(np.isfinite(line["train/loss/total"]) for line in lines if "train/loss/total" in line)


def test_env_action_conversion():
    assert acting.to_env_action(np.array([0.0, 1.0, 0.0]), discrete=True) == 1
    np.testing.assert_allclose(
        acting.to_env_action(np.array([1.5, -0.2]), discrete=False), [1.0, -0.2])


def test_update_metrics_count_skips_and_stop_after_the_limit():
    tracker = monitor.UpdateMetrics(limit=3)
    averages = monitor.Averages()
    for bad in (0, 1, 1, 0, 1, 1):
        tracker.add({"nonfinite": np.float32(bad), "loss/total": np.float32(np.nan if bad else 2)})
    assert tracker.flush(averages) == {"train/nonfinite_skips": 4.0}
    assert averages.flush() == {"train/loss/total": 2.0}  # skipped updates are not averaged
    tracker.add({"nonfinite": np.float32(1), "loss/total": np.float32(np.nan)})
    with pytest.raises(monitor.NonFiniteError, match="last 3 updates had a non-finite loss"):
        tracker.flush(averages)


def test_update_metrics_count_skips_in_the_counters():
    counters = Counters(nonfinite_skips=2)
    tracker = monitor.UpdateMetrics(limit=0, counters=counters)
    for bad in (1, 0, 1):
        tracker.add({"nonfinite": np.float32(bad), "loss/total": np.float32(1)})
    assert tracker.flush(monitor.Averages()) == {"train/nonfinite_skips": 4.0}
    assert counters.nonfinite_skips == 4


def test_the_counters_are_what_a_checkpoint_saves(tmp_path):
    """`Session.counters` is the one copy of the host counters: the loop, the monitor's schedule
    and the update metrics change it in place, so between checkpoints it already holds the
    evaluation and report counts, and a checkpoint saves exactly what it shows."""
    cfg = load_config(["debug"], {
        "logdir": str(tmp_path), "run.steps": 200, "run.prefill": 100, "run.eval_every": 100,
        "run.log_every": 1e6, "run.checkpoint_every": 0, "run.train_ratio": 16,
        "logger.report_every": 20, "logger.console": False, "parallel.devices": 1})
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    s = Session(cfg, tmp_path, checkpoints)
    try:
        runner._train(s)
        assert checkpoints.latest_meta() is None  # checkpoint_every 0: none written yet
        counters, updates = s.counters, s.learner.updates
        assert counters.agent_steps == 200 and counters.episodes > 0
        assert counters.last_eval == 200  # evaluations at 100 and 200 env steps
        assert 0 < counters.last_report <= updates < counters.last_report + 20
        assert counters.nonfinite_skips == 0 and s.monitor.pending.counters is counters
        s.save()
        assert checkpoints.latest_meta()["counters"] == dataclasses.asdict(s.counters)
    finally:
        s.close()  # saves once more
    reader = Checkpointer(tmp_path / "checkpoints")
    try:
        assert reader.latest_meta()["counters"] == dataclasses.asdict(s.counters)
    finally:
        reader.close()


def test_a_stop_request_ends_training_with_a_checkpoint(tmp_path):
    """`run(stop=...)`: the loops check the event (set by dreamer-train's SIGTERM handler, whose
    own KeyboardInterrupt Python may swallow in a callback) and stop as on Ctrl-C, saving."""
    cfg = load_config(["debug"], {"logdir": str(tmp_path), "run.steps": 1e6,
                                  "parallel.devices": 1, "run.eval_every": 0,
                                  "logger.console": False})
    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, stop=stop)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["0"]


def test_acting_params_lag_the_learner_by_at_most_max_lag(tiny_cfg, vector_obs_space,
                                                          continuous_act_space):
    """`Learner.params(max_lag)` copies the parameters to the host only when its last copy is
    more than `max_lag` updates old (0: after every update)."""
    import jax

    from dreamer.run.learner import Learner

    learner = Learner(tiny_cfg, vector_obs_space, continuous_act_space, jax.random.key(0))
    assert learner.on_host
    first = learner.params(2)
    for _ in range(2):
        learner.updates += 1
        assert learner.params(2) is first  # 1 and 2 updates behind: the same copy
    learner.updates += 1
    assert learner.params(2) is not first  # 3 behind: copied again
    newest = learner.params(0)
    assert learner.params(0) is newest
    learner.updates += 1
    assert learner.params(0) is not newest
