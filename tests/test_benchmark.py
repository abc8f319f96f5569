"""The benchmark commands run on the tiny config (their figures are measured by launch/bench.py,
not asserted here)."""
from dreamer import benchmark
from dreamer.config import load_config


def test_train_step_benchmark_runs_the_agents_sequences():
    cfg = load_config(["debug"])
    out = benchmark.train_step(cfg, updates=1, warmup=1)
    assert out["loss_finite"] and out["seconds_per_update"] > 0
    assert out["batch"] == [cfg.batch_size, cfg.batch_length] and out["flops_per_update"] > 0
