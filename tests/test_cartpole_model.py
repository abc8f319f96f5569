"""The CartPole world-model command (launch/cartpole_model.py) end to end with tiny settings: its
files, its JSON line against its own parts, and clear errors for bad options."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("cartpole_model", ROOT / "launch" / "cartpole_model.py")
command = importlib.util.module_from_spec(spec)
spec.loader.exec_module(command)

TINY = ["--steps", "300", "--epochs", "2", "--batch", "32", "--k", "4", "--episodes", "2",
        "--pets.units=16", "--pets.horizon=3", "--pets.candidates=8", "--pets.elites=2",
        "--pets.iterations=1"]


def test_the_command_writes_its_figures_table_and_json(tmp_path, capsys):
    assert command.main([*TINY, "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {p.name for p in tmp_path.iterdir()} == {"transitions.png", "prediction.png",
                                                    "cartpole_model.md"}
    assert report["transitions"] == 300
    assert report["train_transitions"] + report["held_out"] == 300
    assert sorted(report["k_step"], key=int) == ["1", "2", "3", "4"]
    windows = [report["k_step"][str(k)]["windows"] for k in range(1, 5)]
    assert windows[0] == report["held_out"] and windows == sorted(windows, reverse=True)
    for policy in ("planner", "random"):
        returns = report[policy]["returns"]
        assert len(returns) == 2 and all(1 <= r <= 500 for r in returns)
        assert report[policy]["mean"] == pytest.approx(np.mean(returns))
        assert sum(report[policy]["ended"].values()) == 2
    assert report["synthetic"]["reward"]["real_mean"] == 1.0  # CartPole pays 1 a step
    table = (tmp_path / "cartpole_model.md").read_text()
    assert f"| planner | 2 | {report['planner']['mean']:.1f} ± " in table


def test_wasserstein_of_equal_samples_by_hand():
    assert command.wasserstein(np.array([0.0, 3.0, 1.0]), np.array([2.0, 1.0, 2.0])) == (
        pytest.approx((1 + 1 + 1) / 3))


@pytest.mark.parametrize("argv, message", [
    (["--pets.members=5"], "other than pets.members"),
    (["--run.steps=10"], "only keys of the pets section"),
    (["--holdout", "1.5"], "expected a fraction in (0, 1)"),
    (["--steps", "300", "--batch", "1000"], "lower it"),
    (["--pets.planner=bogus"], "pets.planner"),
])
def test_bad_options_name_the_problem(argv, message, tmp_path, capsys):
    assert command.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_help_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as info:
        command.main(["--help"])
    assert info.value.code == 0 and "python launch/cartpole_model.py" in capsys.readouterr().out
