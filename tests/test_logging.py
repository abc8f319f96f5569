import io
import json

import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.logging import (
    ConsoleOutput,
    JSONLOutput,
    Logger,
    Output,
    format_duration,
    format_steps,
    make_logger,
    scalars,
)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scalars_converts_and_skips():
    metrics = {
        "int": 3, "float": 0.5, "bool": True, "np": np.float32(1.5), "np_int": np.int64(7),
        "jax": jnp.asarray(2.5), "bf16": jnp.asarray(1.5, jnp.bfloat16), "zero_d": np.array(4.0),
        "vector": np.zeros(3), "one_elem": np.zeros(1), "image": jnp.zeros((8, 8, 3)),
        "text": "hello", "none": None, "complex": 1j,
    }
    out = scalars(metrics)
    assert out == {"int": 3.0, "float": 0.5, "bool": 1.0, "np": 1.5, "np_int": 7.0, "jax": 2.5,
                   "bf16": 1.5, "zero_d": 4.0}
    assert all(type(v) is float for v in out.values())


def test_jsonl_appends_one_object_per_write(tmp_path):
    logdir = tmp_path / "run"  # created on demand
    output = JSONLOutput(logdir)
    output.write(10, {"episode/score": np.float32(1.5), "episode/length": 100,
                      "image": np.zeros((4, 4))})
    output.write(np.int64(20), {"train/loss/model": jnp.asarray(0.25)})
    # Each write is flushed: readable before close.
    records = read_jsonl(logdir / "metrics.jsonl")
    assert records == [
        {"step": 10, "episode/score": 1.5, "episode/length": 100.0},
        {"step": 20, "train/loss/model": 0.25},
    ]
    assert type(records[0]["step"]) is int and type(records[0]["episode/length"]) is float
    output.close()
    # A resumed run appends to the same file.
    output = JSONLOutput(logdir)
    output.write(30, {"fps/env": 12.0})
    output.close()
    assert [r["step"] for r in read_jsonl(logdir / "metrics.jsonl")] == [10, 20, 30]
    with pytest.raises(ValueError, match="closed"):
        output.write(40, {})
    # A kill in the middle of a write leaves a cut last line: a resumed run's lines start on a
    # new line, so the cut line alone is unreadable (and skipped by the plotting reader).
    with (logdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 40, "fps/en')
    output = JSONLOutput(logdir)
    output.write(50, {"fps/env": 13.0})
    output.close()
    lines = (logdir / "metrics.jsonl").read_text().splitlines()
    assert lines[-2] == '{"step": 40, "fps/en' and json.loads(lines[-1])["step"] == 50


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (950, "950"), (1000, "1k"), (12_345, "12.3k"), (50_000, "50k"),
     (999_949, "999.9k"), (999_999, "1M"), (1_500_000, "1.5M"), (2_000_000_000, "2B")],
)
def test_format_steps(n, text):
    assert format_steps(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (59.6, "1m00s"), (725, "12m05s"), (3 * 3600 + 7 * 60, "3h07m"),
     (2 * 86400 + 4 * 3600 + 59, "2d04h"), (float("inf"), "?"), (float("nan"), "?"), (-1, "?")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_console_line_contents_and_eta():
    clock = FakeClock()
    console = ConsoleOutput(50_000, clock=clock)
    # Before any time passes the rate is unknown.
    assert console.line(0, {}) == "0/50k (0%) | eta ?"
    clock.now += 100.0  # 12.3k steps in 100 s: 123 steps/s, 37.7k steps left
    line = console.line(12_300, {"fps/env": 123.4, "episode/score": 12.3456,
                                 "train/loss/total": 0.456789, "train/loss/actor": 9.0})
    assert line == "12.3k/50k (25%) | fps 123 | score 12.35 | loss 0.4568 | eta 5m07s"
    # The last score persists; a plain train/loss is shown when there is no total loss.
    clock.now += 100.0
    line = console.line(24_600, {"train/loss": 1.0})
    assert line == "24.6k/50k (49%) | score 12.35 | loss 1 | eta 3m27s"
    assert console.line(50_000, {}).endswith("(100%) | score 12.35 | eta 0s")


def test_console_eta_counts_from_start_step():
    clock = FakeClock()
    console = ConsoleOutput(10_000, start_step=5_000, clock=clock)
    clock.now += 10.0
    assert console.line(6_000, {}).endswith("eta 40s")  # 100 steps/s since resuming at 5k


def test_console_prints_to_stdout(capsys):
    console = ConsoleOutput(1000)
    console.write(500, {"episode/score": 3.0})
    console.close()
    out = capsys.readouterr().out
    assert out.startswith("500/1k (50%) | score 3 | eta ") and out.endswith("\n")
    assert out.count("\n") == 1


def test_logger_fans_out_and_closes(tmp_path):
    class Recorder:
        def __init__(self):
            self.writes, self.closed = [], False

        def write(self, step, metrics):
            self.writes.append((step, dict(metrics)))

        def close(self):
            self.closed = True

    recorder = Recorder()
    assert isinstance(recorder, Output)
    stream = io.StringIO()
    with Logger([JSONLOutput(tmp_path), ConsoleOutput(100, stream=stream), recorder]) as logger:
        logger.write(np.int32(7), {"episode/score": 2.0})
    assert recorder.writes == [(7, {"episode/score": 2.0})] and recorder.closed
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 7, "episode/score": 2.0}]
    assert stream.getvalue().startswith("7/100 (7%) | score 2 |")


def test_make_logger(tmp_path, capsys):
    logger = make_logger(tmp_path, total_steps=2000)
    logger.write(1000, {"fps/env": 50.0})
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1000, "fps/env": 50.0}]
    assert capsys.readouterr().out.startswith("1k/2k (50%) | fps 50 |")
    quiet = make_logger(tmp_path, total_steps=2000, console=False)
    quiet.write(2000, {})
    quiet.close()
    assert capsys.readouterr().out == ""


def test_videos_are_uint8_frames_with_batches_stacked_as_rows():
    from dreamer.logging import videos

    batch = np.zeros((2, 5, 4, 6, 3), np.uint8)
    batch[1] = 7
    out = videos({"a": batch, "b": batch[0], "loss": 1.0, "floats": batch.astype(np.float32)})
    assert set(out) == {"a", "b"}
    assert out["a"].shape == (5, 8, 6, 3) and (out["a"][:, 4:] == 7).all()


def test_wandb_mode_auto_follows_env_and_credentials(monkeypatch, tmp_path):
    from dreamer.logging import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password x\n")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled" and wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="logger.mode"):
        wandb_mode("cloud")
