"""Learning curves and score tables from metrics.jsonl files, checked against hand-computed
values; the plotting command end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dreamer.bench import plotting

ROOT = Path(__file__).resolve().parent.parent


def write_run(logdir: Path, points: list[tuple[int, float]], cut_last: bool = False) -> Path:
    logdir.mkdir(parents=True)
    lines = [json.dumps({"step": s, "eval/score": v, "fps/env": 1.0}) for s, v in points]
    lines.insert(1, json.dumps({"step": 5, "train/loss": 3.0}))  # other keys are ignored
    text = "\n".join(lines) + "\n"
    if cut_last:
        text += '{"step": 99'  # a line cut short by a kill
    (logdir / "metrics.jsonl").write_text(text)
    return logdir


def test_series_binning_aggregation_and_table(tmp_path):
    a = write_run(tmp_path / "a", [(1000, 1.0), (2000, 3.0), (2000, 5.0), (3000, 6.0)],
                  cut_last=True)
    b = write_run(tmp_path / "b", [(900, 2.0), (2100, 4.0)])
    steps, values = plotting.read_series(a, "eval/score")
    np.testing.assert_array_equal(steps, [1000, 2000, 3000])
    np.testing.assert_array_equal(values, [1.0, 5.0, 6.0])  # a step logged twice: the later wins
    series = [plotting.read_series(a, "eval/score"), plotting.read_series(b, "eval/score")]
    assert plotting.binned(*series[1], 1000) == {1000: 2.0, 3000: 4.0}
    curve = plotting.aggregate("m", series, 1000)
    np.testing.assert_array_equal(curve.steps, [1000, 2000, 3000])
    np.testing.assert_allclose(curve.mean, [1.5, 5.0, 5.0])
    np.testing.assert_allclose(curve.std, [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(curve.counts, [2, 1, 2])
    np.testing.assert_allclose([curve.low[2], curve.high[2]], [4.0, 6.0])
    text = plotting.table({"m": series}, [1000, 3000], 1000)
    assert "| m | 1.5 ± 0.5 (n=2) | 5.0 ± 1.0 (n=2) |" in text
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plotting.read_series(tmp_path / "missing", "eval/score")


def test_summary_reference_columns_and_reference_curves(tmp_path):
    series = [(np.array([100, 200]), np.array([1.0, 3.0])), (np.array([200]), np.array([5.0]))]
    assert plotting.summary(series, 200, 100) == (4.0, 1.0, 2)
    assert plotting.summary(series, 100, 100) == (1.0, 0.0, 1)
    assert plotting.summary(series, 300, 100) is None
    text = plotting.table({"a": series, "b": series[:1]}, [100, 200], 100,
                          reference={"a": [7.0, None]}, reference_label="paper", rows="task")
    assert text.splitlines()[:2] == ["| task | 100 steps | paper | 200 steps | paper |",
                                     "|---|---|---|---|---|"]
    assert "| a | 1.0 ± 0.0 (n=1) | 7.0 | 4.0 ± 1.0 (n=2) | – |" in text
    assert "| b | 1.0 ± 0.0 (n=1) | – | 3.0 ± 0.0 (n=1) | – |" in text  # no reference for b
    ours = plotting.aggregate("ours", series, 100)
    published = plotting.Curve("paper", 5, np.array([100, 300]), np.array([2.0, 6.0]),
                               np.full(2, np.nan), np.array([1.0, 4.0]), np.array([3.0, 8.0]),
                               np.array([5, 5]))
    out = tmp_path / "with_reference.png"
    plotting.plot([ours], "eval/score", out, "task", references=[published], xmax=200)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_writes_png_and_table(tmp_path):
    for seed in range(3):
        write_run(tmp_path / f"runs/demo-{seed}", [(1000 * k, k + seed) for k in range(1, 5)])
    write_run(tmp_path / "other", [(1000, 0.0), (4000, 1.0)])
    out = tmp_path / "curve.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "plot.py"), f"demo={tmp_path}/runs/demo-*",
         str(tmp_path / "other"), "--budgets", "2000,4000", "--out", str(out)],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| demo | 3.0 ± 0.8 (n=3) | 5.0 ± 0.8 (n=3) |" in proc.stdout
    assert "| other | – | 1.0 ± 0.0 (n=1) |" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, str(ROOT / "launch" / "plot.py"), str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr
