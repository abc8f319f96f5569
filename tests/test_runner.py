"""End-to-end: the training loop on the tiny `debug` preset writes what the README promises."""
import json

import numpy as np

from dreamer import runner
from dreamer.config import Config, load_config


def test_debug_run_writes_logdir(tmp_path):
    cfg = load_config(["debug"], {
        "logdir": str(tmp_path), "run.steps": 300, "run.prefill": 100, "run.eval_every": 200,
        "run.log_every": 0, "run.train_ratio": 16})
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
    updates = max(line.get("train/updates", 0) for line in lines)
    # (300 - 100) agent steps after prefill * ratio 16 / (4 x 8 replayed steps per update)
    assert 95 <= updates <= 105
    assert Config.load(tmp_path / "config.yaml").run.steps == 300
    assert sorted((tmp_path / "replay").glob("*.npz"))


def test_env_action_conversion():
    assert runner.to_env_action(np.array([0.0, 1.0, 0.0]), discrete=True) == 1
    np.testing.assert_allclose(
        runner.to_env_action(np.array([1.5, -0.2]), discrete=False), [1.0, -0.2])
