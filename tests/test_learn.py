"""The learning-suite runner (launch/learn.py): its command line, the report against the published
curves, and end to end on the `debug` preset: two seeds trained side by side, skipped when rerun,
resumed to a larger budget, and a failing run reported with its log."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dreamer.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
LEARN = ROOT / "launch" / "learn.py"
PNG = b"\x89PNG\r\n\x1a\n"

spec = importlib.util.spec_from_file_location("learn", LEARN)
learn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learn)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_command_line_and_defaults():
    suite = learn.plan(
        ["--tasks", "a,b", "--seeds=0,1", "--configs", "debug", "size1m", "--report-only",
         "--root", "runs/x", "--", "--run.eval_every=50"])
    assert suite.root == Path("runs/x")
    assert suite.train_args == ["--configs", "debug", "size1m", "--run.eval_every=50"]
    assert (suite.tasks, suite.seeds, suite.presets) == (["a", "b"], [0, 1], ["debug", "size1m"])
    steps = int(load_config(["debug", "size1m"]).run.steps)  # --steps defaults to the presets'
    assert (suite.steps, suite.width) == (steps, 50)
    assert suite.budgets == learn.default_budgets(steps, 50)
    assert suite.benchmark is None and suite.report_only
    # Seed by seed: a suite stopped early has covered every task.
    assert [str(r.logdir) for r in learn.runs_of(suite)][:3] == [
        "runs/x/a/seed_0", "runs/x/b/seed_0", "runs/x/a/seed_1"]
    # The budget's quarters, rounded down to the bin grid.
    assert learn.default_budgets(50_000, 5_000) == [10_000, 25_000, 35_000, 50_000]
    assert learn.default_budgets(300, 100) == [100, 200, 300]
    assert learn.benchmark_of(["dmc_vision", "size1m"], "") == "dmc_vision"
    assert learn.benchmark_of(["dmc_vision"], "atari100k") == "atari100k"
    # Without --configs the suite trains the demo preset, as dreamer-train would.
    assert learn.plan(["--root", "r"]).train_args == ["--configs", "demo"]


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "a"], "give --root DIR"),
    (["--root", "r", "--task", "a"], "unknown option '--task'"),
    (["--root", "r", "--steps"], "--steps needs a value"),
    (["--root", "r", "--jobs", "0"], "--jobs '0': expected an integer of at least 1"),
    (["--root", "r", "--", "--seed=3", "--logdir=x"],
     "--seed (use --seeds), --logdir (use --root)"),
    (["--root", "r", "--configs", "debug", "nopreset"], "nopreset"),
    (["--root", "r", "--benchmark", "dmc"], "benchmarks: atari100k, dmc_proprio, dmc_vision"),
])
def test_wrong_command_lines_are_named(argv, message, capsys):
    assert learn.main(argv) == 2
    assert message in capsys.readouterr().err


def test_report_only_against_the_published_curves(tmp_path, capsys):
    root = tmp_path / "suite"
    for seed in (0, 1):
        logdir = root / "dmc_cartpole_balance" / f"seed_{seed}"
        logdir.mkdir(parents=True)
        lines = [{"step": 5_000 * k, "eval/score": 100.0 * k + 10 * seed} for k in (1, 2, 3, 4)]
        # Seed 1 was killed after 0.5 h at 15K, resumed from its checkpoint at 10K (0.3 h) and
        # trained on: the later line of a step wins.
        lines += [{"step": 15_000, "time/hours": 0.5}, {"step": 10_000, "time/hours": 0.3},
                  {"step": 20_000, "time/hours": 0.75 + seed}][: 3 if seed else 1]
        (logdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    argv = ["--root", str(root), "--tasks", "dmc_cartpole_balance,dmc_walker_stand",
            "--seeds", "0,1", "--steps", "2e4", "--configs", "dmc_proprio", "--report-only",
            "--", "--run.eval_every=5000"]
    assert learn.main(argv) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    # The two runs that evaluated at the budget count as skipped; nothing was trained now.
    assert (result["benchmark"], result["runs"], result["finished"], result["skipped"]) == (
        "dmc_proprio", 4, 0, 2)
    # dmc_proprio,dmc_cartpole_balance,10000,316.3,... and 20000,226.7,...; walker_stand: 132.4
    assert result["scores"]["dmc_cartpole_balance"]["10000"] == {
        "mean": 205.0, "std": 5.0, "n": 2, "published": 316.3}
    assert result["scores"]["dmc_cartpole_balance"]["20000"]["published"] == 226.7
    assert result["scores"]["dmc_walker_stand"]["10000"] == {
        "mean": None, "std": None, "n": 0, "published": 132.4}
    row = "| dmc_cartpole_balance | 105.0 ± 5.0 (n=2) | 316.3 | 205.0 ± 5.0 (n=2) | 316.3 |"
    assert row in out and row in (root / "scores.md").read_text()
    assert result["plots"] == [str(root / "curve_dmc_cartpole_balance.png")]
    assert Path(result["plots"][0]).read_bytes()[:8] == PNG
    assert result["hours"] == {"dmc_cartpole_balance": {
        "0": {"steps": 15_000, "hours": 0.5}, "1": {"steps": 20_000, "hours": 1.75}}}
    row = "| dmc_cartpole_balance | 0.50 h (15,000) | 1.75 h (20,000) |"
    assert row in out and "| dmc_walker_stand | – | – |" in (root / "scores.md").read_text()


def test_suite_trains_skips_finished_runs_and_resumes(tmp_path):
    root = tmp_path / "suite"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           # Compiling dominates these tiny runs: compile with few optimisations, and once for
           # all runs of the test through a persistent cache (the suite's, where it has one).
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
           "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                       str(tmp_path / "jax-cache")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def suite(steps, tasks="builtin_catch"):
        return subprocess.run(
            [sys.executable, str(LEARN), "--root", str(root), "--tasks", tasks, "--seeds", "0,1",
             "--steps", str(steps), "--configs", "debug", "--jobs", "2", "--",
             "--run.eval_every=50", "--run.checkpoint_every=0", "--parallel.devices=1"],
            check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)

    proc = suite(200)
    assert proc.returncode == 0, proc.stderr
    result = last_json(proc.stdout)
    assert {k: result[k] for k in ("runs", "finished", "failed", "skipped", "benchmark")} == {
        "runs": 2, "finished": 2, "failed": [], "skipped": 0, "benchmark": None}
    assert list(result["scores"]["builtin_catch"]) == ["50", "100", "150", "200"]
    assert result["scores"]["builtin_catch"]["200"]["n"] == 2
    assert "| builtin_catch |" in proc.stdout and "(n=2)" in (root / "scores.md").read_text()
    assert result["plots"] == [str(root / "curve_builtin_catch.png")]
    assert (root / "curve_builtin_catch.png").read_bytes()[:8] == PNG
    assert [result["hours"]["builtin_catch"][s]["steps"] for s in ("0", "1")] == [200, 200]
    logdirs = [root / "builtin_catch" / f"seed_{seed}" for seed in (0, 1)]
    for seed, logdir in enumerate(logdirs):
        cfg = Config.load(logdir / "config.yaml")
        assert (cfg.seed, cfg.run.steps, cfg.env.task) == (seed, 200, "builtin_catch")
        assert "dreamer-train: logging to" in (logdir / "train.log").read_text()
    before = {p: (p / "metrics.jsonl").read_text() for p in logdirs}
    logs = {p: (p / "train.log").read_text() for p in logdirs}

    again = suite(200)
    assert again.returncode == 0, again.stderr
    assert last_json(again.stdout)["skipped"] == 2
    assert "2 of 2 runs already finished" in again.stderr
    assert all((p / "metrics.jsonl").read_text() == before[p] for p in logdirs)
    assert all((p / "train.log").read_text() == logs[p] for p in logdirs)  # nothing started

    # A larger budget continues the same runs; a task that cannot start fails alone.
    more = suite(300, "builtin_catch,builtin_nope")
    assert more.returncode == 1
    result = last_json(more.stdout)
    assert (result["runs"], result["finished"], result["skipped"]) == (4, 2, 0)
    failed = sorted((f["task"], f["seed"], f["exit"]) for f in result["failed"])
    assert failed == [("builtin_nope", 0, 2), ("builtin_nope", 1, 2)]
    for failure in result["failed"]:
        assert "Unknown environment task 'builtin_nope'" in Path(failure["log"]).read_text()
        assert "FAILED (exit 2 after" in more.stderr and failure["log"] in more.stderr
    assert result["scores"]["builtin_catch"]["300"]["n"] == 2
    for logdir in logdirs:
        metrics = (logdir / "metrics.jsonl").read_text()
        assert metrics.startswith(before[logdir])  # earlier lines kept
        assert json.loads(metrics.splitlines()[-1])["step"] == 300
        assert f"resumed {logdir / 'checkpoints' / '200'}" in (logdir / "train.log").read_text()
