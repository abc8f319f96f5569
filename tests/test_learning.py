"""Learning test: from 16x16 pixels, the agent learns to follow the ball in `builtin_track`.

A uniformly random policy scores about 4.0 per episode and following the ball about 22.3
(`tests/test_envs.py` checks both). The run is seeded and XLA on CPU is deterministic, so the
score is the same on every run on a given machine; the threshold leaves a wide margin for other
CPUs, whose float rounding can change the trajectory.
"""
import jax
import pytest

from dreamer import runner
from dreamer.config import load_config

RANDOM_SCORE = 4.0
THRESHOLD = 2.5 * RANDOM_SCORE


@pytest.fixture
def _optimised_compiles():
    """This test runs thousands of updates, so it wants XLA's optimisations back."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.usefixtures("_optimised_compiles")
def test_agent_learns_builtin_track_from_pixels(tmp_path):
    cfg = load_config(["demo"], {
        "logdir": str(tmp_path), "seed": 0, "parallel.devices": 1, "run.steps": 4000,
        "run.eval_every": 0,
        "run.eval_episodes": 20, "run.log_every": 3600})
    result = runner.run(cfg)
    print(f"builtin_track eval score after 4000 steps: {result['eval/score']:.2f}")
    assert result["eval/score"] >= THRESHOLD, result
