"""The benchmark commands run on the tiny config (their figures are measured by launch/bench.py,
not asserted here)."""
import importlib.util
import json
from pathlib import Path

import jax

from dreamer.bench import benchmark
from dreamer.config import load_config


def test_train_step_benchmark_runs_the_agents_sequences():
    cfg = load_config(["debug"])
    prepared = benchmark.compile_train_step(cfg)
    first = benchmark.time_train_step(prepared, updates=1, warmup=1)
    # A second timing continues from the state the first left (the old one was donated).
    second = benchmark.time_train_step(prepared, updates=1, warmup=0, peak=1e9)
    for out in first, second:
        assert out["loss_finite"] and out["seconds_per_update"] > 0
        assert out["batch"] == [cfg.batch_size, cfg.batch_length] and out["flops_per_update"] > 0
        assert out["batch_shape_fed"] == [cfg.batch_size, prepared["agent"].sequence_length]
    # On the CPU `auto` computes in float32, and the peak is measured in that dtype.
    assert first["compute_dtype"] == first["matmul_peak_dtype"] == "float32"
    assert second["fraction_of_peak"] == second["flops_per_s"] / 1e9


def test_train_step_benchmark_times_the_configured_agent():
    """Not DreamerV3 whatever the config: MuZero's own update, with one-hot actions and the
    importance weights of prioritized replay in its synthetic batch."""
    cfg = load_config(["muzero"], {"env.task": "builtin_catch", "muzero.unroll": 2,
                                   "muzero.td_steps": 2, "batch_length": 5, "batch_size": 4,
                                   "muzero.latent": 8, "muzero.units": 16, "muzero.layers": 1,
                                   "muzero.bins": 21, "replay.prioritized": True})
    prepared = benchmark.compile_train_step(cfg)
    assert type(prepared["agent"]).__name__ == "MuZero"
    actions = prepared["batch"]["action"]
    assert (actions.sum(-1) == 1).all() and ((actions == 0) | (actions == 1)).all()
    out = benchmark.time_train_step(prepared, updates=1, warmup=1, peak=1e9)
    assert out["agent"] == "muzero" and out["loss_finite"] and out["compute_dtype"] == "float32"
    assert out["params"] == sum(x.size for x in jax.tree.leaves(prepared["state"].params))
    # An agent whose losses have other names (PETS: loss/nll, ...) reports on its update too.
    pets = load_config(["pets"], {"env.task": "builtin_reach", "pets.members": 2,
                                  "pets.units": 8, "pets.layers": 1, "batch_size": 4})
    out = benchmark.time_train_step(benchmark.compile_train_step(pets), updates=1, warmup=0,
                                    peak=1e9)
    assert out["agent"] == "pets" and out["loss_finite"]


def test_random_scores_are_a_seeded_random_policys_episodes():
    """Catch: 4 balls of ±1 each, so every episode scores in [-4, 4]; the same seed gives the
    same episodes, another seed others."""
    cfg = load_config(["debug"], {"env.task": "builtin_catch"})
    out = benchmark.random_scores(cfg, episodes=5)
    assert out["episodes"] == 5 and -4 <= out["min"] <= out["mean"] <= out["max"] <= 4
    assert benchmark.random_scores(cfg, episodes=5) == out
    other = benchmark.random_scores(load_config(["debug"], {"env.task": "builtin_catch",
                                                             "seed": 1}), episodes=20)
    assert other != benchmark.random_scores(cfg, episodes=20)


def test_replay_memory_runs_for_small_images(tmp_path):
    """The replay benchmark for frames down to the size of its moving square and below; the
    array bytes per step are at least one step's own bytes (image, action, reward, flags and
    the insert stamp)."""
    for size in ((8, 8), (4, 4)):
        out = benchmark.replay_memory(capacity=128, size=size, action_dim=2, chunk=32,
                                      directory=tmp_path)
        one_step = size[0] * size[1] * 3 + 2 * 4 + 4 + 3 + 8
        assert out["steps_stored"] == 128
        assert out["bytes_per_step_arrays"] >= one_step


def test_policy_benchmark_counts_every_environments_actions():
    """A planner's policy speed: actions per second is envs over the median call."""
    cfg = load_config(["pets"], {"env.task": "builtin_reach", "pets.candidates": 8,
                                 "pets.elites": 4, "pets.iterations": 1, "pets.horizon": 3,
                                 "pets.units": 8})
    out = benchmark.policy(cfg, envs=3, calls=2, warmup=1)
    assert out["agent"] == "pets" and out["envs"] == 3 and out["calls"] == 2
    assert out["actions_per_s"] == 3 / out["seconds_per_call"]["median"]
    assert out["seconds_per_call"]["min"] <= out["seconds_per_call"]["median"]


def test_policy_command_of_the_launcher(capsys):
    """`launch/bench.py policy` for DreamerV3's policy; a bad option exits 2."""
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("bench", root / "launch" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["policy", "--configs", "debug", "--env.task=builtin_reach",
                       "--env.obs=vector", "--calls", "1", "--warmup", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["policy"]["agent"] == "dreamerv3" and out["policy"]["actions_per_s"] > 0
    assert bench.main(["policy", "--envs", "0"]) == 2


def test_updates_per_call_and_kernel_counts_on_the_tiny_config():
    """k updates per call report seconds and kernels per update for each k; the kernel count
    of the gpu layout builds the block GRU as batched matmuls."""
    cfg = load_config(["debug"])
    out = benchmark.updates_per_call(cfg, [1, 2], calls=1, warmup=0)
    assert set(out["per_call"]) == {"1", "2"}
    for k, row in out["per_call"].items():
        assert row["seconds_per_update"] * int(k) == row["seconds_per_call"]
        assert row["kernels_per_update"] > row["loop_iterations_per_update"] > 0
    counts = benchmark.kernel_counts(cfg, layout="gpu")
    assert counts["batched_blocks"] and counts["layout"] == "gpu"
    assert counts["kernels"] > counts["kernels_outside_loops"] > 0
    assert counts["loop_iterations"] >= cfg.batch_length


def test_walker_spaces_need_no_environment():
    """`--spaces walker` builds DMC walker's spaces from `env.obs` alone (no simulator), the
    same spaces the walker task makes; an unknown choice names the choices."""
    import pytest

    for obs, keys in (("vector", {"vector"}), ("image", {"image"}), ("both", {"vector", "image"})):
        cfg = load_config(["debug"], {"env.task": "dmc_walker_walk", "env.obs": obs})
        spaces, act = benchmark.spaces_of(cfg, "walker")
        assert set(spaces) == keys and act == benchmark.WALKER_ACT
    made, made_act = benchmark.spaces_of(cfg)
    assert {k: (v.dtype, v.shape) for k, v in made.items()} == {
        k: (v.dtype, v.shape) for k, v in spaces.items()}
    assert (made_act.dtype, made_act.shape) == (act.dtype, act.shape)
    with pytest.raises(ValueError, match="walker"):
        benchmark.spaces_of(cfg, "cheetah")


def test_replay_sampling_command_of_the_launcher(capsys):
    """`launch/bench.py replay-sampling` at small sizes: a time per call for both draws."""
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("bench", root / "launch" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["replay-sampling", "--sizes", "300", "600", "--batch", "8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["replay_sampling"]
    assert out["batch"] == 8
    for size in (300, 600):
        row = out[f"steps_{size}"]
        assert 0 < row["prioritized_sample_min_ms"] <= row["prioritized_sample_ms"]
        assert row["uniform_sample_ms"] > 0 and row["prioritized_update_ms"] > 0
