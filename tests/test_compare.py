"""The side-by-side comparison with the official code (`launch/bench.py compare`), run with a fake
command runner (no official code, no compilation)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dreamer.bench import compare as side_by_side

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench", ROOT / "launch" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def fake_side(official: list[float], ours: list[float], batch=(16, 65)):
    """A command runner that answers like the two benchmarks (log lines, then the JSON line),
    seconds per update taken in turn from `official` and `ours`; it records the commands."""
    calls, official, ours = [], iter(official), iter(ours)

    def run(cmd):
        calls.append(list(cmd))
        if cmd[0].endswith("run.sh"):
            result = {"seconds_per_update": next(official), "batch_shape_fed": list(batch),
                      "compute_dtype": "float32", "jax": "0.4.official",
                      "official_revision": "abc123"}
        else:
            result = {"train_step": {"seconds_per_update": next(ours), "batch_shape_fed": [16, 65],
                                     "compute_dtype": "float32", "jax": "0.4.ours"},
                      "configs": ["dmc_proprio", "size1m"]}
        return "compiling...\n{not json\n" + json.dumps(result) + "\nbye\n"

    return run, calls


def test_compare_alternates_the_sides_and_reports_medians_and_ratio():
    run, calls = fake_side([3.0, 5.0, 4.0], [1.0, 3.0, 2.0])
    out = side_by_side.compare(["dmc_proprio", "size1m"], "/src", "/tools/run.sh", "/repo/bench.py",
                            rounds=3, updates=4, warmup=1, run=run)["compare"]
    assert [c[0] for c in calls] == ["/tools/run.sh", sys.executable] * 3
    assert calls[0] == ["/tools/run.sh", "--src", "/src", "--configs", "dmc_proprio", "size1m",
                        "--updates", "4", "--warmup", "1"]
    assert calls[1][1:] == ["/repo/bench.py", "train-step", "--configs", "dmc_proprio",
                            "size1m", "--updates", "4", "--warmup", "1",
                            "--jax.compute_dtype=float32", "--jax.platform=cpu"]
    assert out["official"]["seconds_per_update"] == [3.0, 5.0, 4.0]
    assert out["ours"]["seconds_per_update"] == [1.0, 3.0, 2.0]
    assert (out["official"]["median"], out["ours"]["median"], out["ratio"]) == (4.0, 2.0, 2.0)
    assert out["rounds"] == 3 and out["configs"] == ["dmc_proprio", "size1m"]
    assert out["batch_shape_fed"] == [16, 65] and out["compute_dtype"] == "float32"
    assert out["jax"] == {"ours": "0.4.ours", "official": "0.4.official"}
    assert out["official_revision"] == "abc123"
    assert set(out["machine"]) >= {"cpu", "cores", "platform"}
    assert "ratio official/ours: 2.00 (ours is faster)" in side_by_side.compare_table({"compare": out})


def test_last_json_takes_the_last_object_line():
    assert side_by_side.last_json('{"a": 1}\nlog\n{"a": 2}\n[3]\n{broken\n') == {"a": 2}
    with pytest.raises(ValueError):
        side_by_side.last_json("no result\n[1, 2]\n")
    assert side_by_side.side_result('{"train_step": {"seconds_per_update": 2}}')[
        "seconds_per_update"] == 2
    with pytest.raises(ValueError):
        side_by_side.side_result('{"loss": 1}')


def test_a_failing_side_is_named_with_the_tail_of_its_stderr():
    code = ("import sys; print('early', file=sys.stderr); "
            "print('Traceback: no module named ninjax', file=sys.stderr); sys.exit(3)")
    failing = [sys.executable, "-c", code]
    with pytest.raises(side_by_side.CompareFailed) as e:
        side_by_side.run_rounds({"official": failing, "ours": ["unused"]}, 2, side_by_side.run_command)
    assert "official side (round 1 of 2) failed" in str(e.value) and "status 3" in str(e.value)
    assert e.value.stderr_tail.endswith("no module named ninjax")

    with pytest.raises(side_by_side.CompareFailed, match="ours side .* no usable result"):
        side_by_side.run_rounds({"ours": ["x"]}, 1, lambda cmd: "Killed\n")

    run, _ = fake_side([1.0], [1.0], batch=(16, 64))  # the official side fed no context step
    with pytest.raises(side_by_side.CompareFailed, match="same batch shape"):
        side_by_side.compare(["c"], "/src", "/run.sh", "/bench.py", rounds=1, run=run)


def test_compare_setup_problems_name_the_fix(tmp_path):
    script = tmp_path / "run.sh"
    assert "--official-bench" in side_by_side.compare_setup_problem(tmp_path, script)
    script.write_text("#!/bin/sh\n")
    assert "does not exist; pass --official-src" in side_by_side.compare_setup_problem(
        tmp_path / "missing", script)
    assert "neither a checkout" in side_by_side.compare_setup_problem(tmp_path, script)
    (tmp_path / "dreamerv3").mkdir()
    (tmp_path / "dreamerv3" / "agent.py").write_text("")
    assert side_by_side.compare_setup_problem(tmp_path, script) is None
    bare = tmp_path / "repo"
    (bare / "objects").mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    assert side_by_side.compare_setup_problem(bare, script) is None
    assert side_by_side.official_bench_script(ROOT) == (
        ROOT.parent / "shared" / "tools" / "official-bench" / "run.sh").resolve()
    assert side_by_side.official_bench_script(ROOT, "x/run.sh") == Path("x/run.sh")
    assert side_by_side.cpu_model("processor\t: 0\nmodel name\t: Some CPU @ 2GHz\n") == (
        "Some CPU @ 2GHz")


def test_compare_command_line(tmp_path, monkeypatch, capsys):
    script, src = tmp_path / "run.sh", tmp_path / "dreamerv3-src"
    script.write_text("#!/bin/sh\n")
    (src / "dreamerv3").mkdir(parents=True)
    (src / "dreamerv3" / "agent.py").write_text("")
    args = ["compare", "--official-src", str(src), "--official-bench", str(script),
            "--configs", "dmc_proprio", "size1m"]

    assert bench.main(["compare", "--configs", "size1m", "--rounds", "0",
                       "--official-src", str(src)]) == 2
    assert "--rounds '0': expected an integer of at least 1" in capsys.readouterr().err
    assert bench.main([*args[:2], str(tmp_path / "missing"), *args[3:]]) == 2
    assert "missing does not exist; pass --official-src DIR" in capsys.readouterr().err

    run, calls = fake_side([2.0, 3.0], [1.0, 1.0])
    monkeypatch.setattr(side_by_side, "run_command", run)
    assert bench.main([*args, "--rounds", "2", "--updates", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["compare"]
    assert out["ratio"] == 2.5 and len(calls) == 4 and "--updates" in calls[0]

    def broken(cmd):
        raise side_by_side.CompareFailed(f"{cmd[0]} exited with status 1", "ImportError: elements")

    monkeypatch.setattr(side_by_side, "run_command", broken)
    assert bench.main(args) == 1
    err = capsys.readouterr().err
    assert "official side (round 1 of 2) failed" in err and "ImportError: elements" in err
