"""Checkpoints: bit-exact round trip of the train state and meta, keeping the newest K, and
falling back past a damaged newest checkpoint."""
import logging
import shutil
import sys
import types

import chex
import jax
import numpy as np
import pytest

from dreamer.run import checkpoint
from dreamer.run.checkpoint import Checkpointer, CheckpointError, abstract


@pytest.fixture(scope="module")
def state(discrete_case):
    # One real update so that optimiser moments and counters are non-trivial.
    new, _, _ = discrete_case.train_step(discrete_case.fresh_state(), discrete_case.batch,
                                      jax.random.key(1))
    return new


def test_round_trip_is_bit_exact(tmp_path, state):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    meta = {"env_steps": 1234, "updates": 1, "rng": [1, 2], "wandb_id": "abc"}
    ckpt.save(1, state, meta)
    step, restored, restored_meta = ckpt.restore(abstract(state))
    assert step == 1 and restored_meta == meta
    chex.assert_trees_all_equal_structs(restored, state)  # NamedTuples stay NamedTuples
    chex.assert_trees_all_equal(restored, state)
    ckpt.close()


def test_keeps_the_newest_and_skips_a_damaged_one(tmp_path, state):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, state, {"updates": step})
    assert ckpt.steps() == [2, 3]
    # Damage every file of the newest checkpoint's state.
    for path in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="cannot be read"):
        step, _, meta = ckpt.restore(abstract(state))
    assert step == 2 and meta == {"updates": 2}
    ckpt.close()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, state):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.restore(abstract(state)) is None
    ckpt.save(5, state, {"updates": 5})
    shutil.rmtree(tmp_path / "checkpoints" / "5" / "state")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as error:
        ckpt.restore(abstract(state))
    lines = str(error.value).splitlines()  # the folder, one line per step tried, the fix
    assert len(lines) == 3 and lines[1].startswith("  step 5: ") and "Move the folder" in lines[2]
    ckpt.close()


def test_a_half_written_checkpoint_is_not_listed(tmp_path, state):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(1, state, {"updates": 1})
    # What a kill during a save leaves behind: a temporary folder orbax never finalised.
    tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123"
    tmp.mkdir()
    (tmp / "junk").write_bytes(np.zeros(10).tobytes())
    assert Checkpointer(tmp_path / "checkpoints").steps() == [1]
    ckpt.close()


def test_reports_of_abandoned_reads_are_dropped_and_others_kept(monkeypatch, capsys):
    """After a failed restore TensorStore's leftover reads report 'Event loop is closed'
    through the unraisable hook, the except hook and asyncio's logger: all three are dropped,
    every other report still gets through."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: seen.append(report.exc_value))
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "filters", [])
    checkpoint._quiet_abandoned_reads()
    checkpoint._quiet_abandoned_reads()  # idempotent: one filter, hooks wrapped once
    closed, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
    for error in (closed, other):
        sys.unraisablehook(types.SimpleNamespace(exc_value=error))
        sys.excepthook(RuntimeError, error, None)
    assert seen == [other, other]
    record = asyncio_log.makeRecord("asyncio", logging.ERROR, __file__, 1, "%s", (
        "Task exception was never retrieved\nfuture: <Task finished coro=<async_deserialize()>",),
        None)
    kept = asyncio_log.makeRecord("asyncio", logging.ERROR, __file__, 1, "%s", (
        "Task exception was never retrieved\nfuture: <Task finished coro=<mine()>",), None)
    assert len(asyncio_log.filters) == 1
    assert not asyncio_log.filter(record) and asyncio_log.filter(kept)
