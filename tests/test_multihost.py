"""Multi-host learner on one machine: two processes with two fake CPU devices each
(`tests/multihost_worker.py`, joined by `jax.distributed` over localhost, collectives through
gloo) must compute the updates of one process with four devices on the same global batches,
write a checkpoint once and resume from it on both processes."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import multihost_worker as worker
import numpy as np
import pytest
from conftest import DEVICES, agent_batch

from dreamer.run.learner import Learner

WORKER = Path(worker.__file__)
PROCESSES, UPDATES = 2, 2
TIMEOUT_S = 300  # both processes together; they finish in about a minute on two cores
BACKEND = "pmap"  # the default; jax.pmap over the devices of several processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else ["(no output)"]
    return "\n".join(text[-lines:])


def launch(data: Path, backend: str) -> list[tuple[subprocess.Popen, Path]]:
    """The worker processes, each writing its output to data/process-<i>.log."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    coordinator = f"localhost:{free_port()}"
    procs = []
    for i in range(PROCESSES):
        log = data / f"process-{i}.log"
        with open(log, "w") as f:
            procs.append((subprocess.Popen(
                [sys.executable, str(WORKER), "--coordinator", coordinator, "--process-id", str(i),
                 "--num-processes", str(PROCESSES), "--backend", backend, "--data", str(data)],
                stdout=f, stderr=subprocess.STDOUT, env=env), log))
    return procs


def wait(procs: list[tuple[subprocess.Popen, Path]], deadline: float) -> None:
    """Waits for every process until `deadline`. When one fails or time runs out, kills all of
    them (the others would wait for it in a collective) and fails with each one's output."""
    failed = None
    while failed is None and any(proc.poll() is None for proc, _ in procs):
        if any(proc.poll() not in (None, 0) for proc, _ in procs):
            failed = "a process exited with an error"
        elif time.monotonic() > deadline:
            failed = f"timed out after {TIMEOUT_S} s"
        else:
            time.sleep(0.2)
    if failed is None and all(proc.returncode == 0 for proc, _ in procs):
        return
    for proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = "\n".join(f"--- process {i} (exit code {proc.returncode}), last lines:\n{tail(log)}"
                       for i, (proc, log) in enumerate(procs))
    pytest.fail(f"the learner processes failed ({failed or 'a process exited with an error'}):"
                f"\n{report}", pytrace=False)


@pytest.mark.slow
def test_two_processes_equal_one_and_resume(tmp_path, tiny_cfg):
    assert DEVICES == PROCESSES * worker.LOCAL_DEVICES == len(jax.devices())
    cfg = tiny_cfg.update({"parallel.devices": DEVICES, "parallel.backend": BACKEND})
    learner = Learner(cfg, worker.OBS_SPACE, worker.ACT_SPACE, jax.random.key(worker.INIT_SEED))
    global_batches = [agent_batch(learner.agent, worker.OBS_SPACE, worker.ACT_SPACE,
                                  batch=learner.batch_size, seed=i) for i in range(UPDATES)]
    np.savez(tmp_path / "batches.npz", **{f"{i}/{k}": v for i, batch in enumerate(global_batches)
                                          for k, v in batch.items()})
    procs = launch(tmp_path, BACKEND)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # The reference, one process with all four devices, while the workers start.
        expected = []
        for i, batch in enumerate(global_batches):
            learner.update(batch, jax.random.key(worker.UPDATE_SEED + i))
            expected.append(jax.tree.leaves(jax.device_get(learner.host_state().params)))
    finally:
        wait(procs, deadline)

    outputs = [dict(np.load(tmp_path / f"process-{i}.npz")) for i in range(PROCESSES)]
    for i, out in enumerate(outputs):
        for update, want in enumerate(expected, 1):
            got = [out[f"update{update}/{j}"] for j in range(len(want))]
            chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
        # Resumed from the checkpoint of update 1, with this process's own counters.
        restored = [out[f"restored/{j}"] for j in range(len(expected[0]))]
        chex.assert_trees_all_equal(restored, [out[f"update1/{j}"] for j in range(len(restored))])
        assert int(out["restored_updates"]) == 1
        assert int(out["restored_agent_steps"]) == worker.FIRST_AGENT_STEPS + i
        # The repeated second update is the first one's, bit for bit.
        for j in range(len(restored)):
            np.testing.assert_array_equal(out[f"resumed/{j}"], out[f"update2/{j}"])
    for j in range(len(expected[0])):  # and every process holds the same parameters
        np.testing.assert_array_equal(outputs[1][f"update2/{j}"], outputs[0][f"update2/{j}"])

    # One checkpoint, written once: the state by process 0 alone, one record with every
    # process's counters.
    checkpoint = tmp_path / "run" / "checkpoints" / "1"
    written = {p.name for p in (checkpoint / "state").glob("ocdbt.process_*")}
    assert written == {"ocdbt.process_0"}, written
    meta = json.loads((checkpoint / "meta" / "metadata").read_text())
    assert [p["counters"]["agent_steps"] for p in meta["processes"]] == [
        worker.FIRST_AGENT_STEPS + i for i in range(PROCESSES)]
