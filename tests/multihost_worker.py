"""One process of the two-process learner run that `tests/test_multihost.py` starts:

    python tests/multihost_worker.py --coordinator localhost:PORT --process-id I \
        --num-processes 2 --backend pmap --data DIR

It joins the run with two fake CPU devices (the mesh holds those of every process), trains the
tiny DreamerV3 learner on its share of each global batch in `DIR/batches.npz` (process i takes
rows [i*B/n, (i+1)*B/n)), writes a checkpoint after the first update under `DIR/run`, makes the
second update, then resumes from the checkpoint and makes the second update again. It writes
`DIR/process-I.npz`: the parameters after each update and after the resumed one, the restored
ones, and what the resume restored of this process's own counters.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from dreamer.config import load_config
from dreamer.core.rngs import Rngs
from dreamer.envs import base
from dreamer.replay import Replay
from dreamer.run import state as run_state
from dreamer.run.checkpoint import Checkpointer
from dreamer.run.learner import Learner, setup_distributed

LOCAL_DEVICES = 2
OBS_SPACE = {"vector": base.Space(np.float32, (5,))}
ACT_SPACE = base.continuous_space(2)
INIT_SEED, UPDATE_SEED = 0, 10  # keys jax.random.key(INIT_SEED), key(UPDATE_SEED + update)
FIRST_AGENT_STEPS = 100         # process i saves counters.agent_steps = 100 + i


def batches(path: Path) -> list[dict[str, np.ndarray]]:
    """The global batches of `path` ('<update>/<key>' entries), in update order."""
    with np.load(path) as data:
        out: dict[int, dict[str, np.ndarray]] = {}
        for name in data.files:
            update, key = name.split("/", 1)
            out.setdefault(int(update), {})[key] = data[name]
    return [out[i] for i in sorted(out)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--backend", default="pmap")
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    jax.config.update("jax_disable_most_optimizations", True)  # as the tests' conftest does
    logdir = args.data / "run"
    cfg = load_config(["debug"], {
        "logdir": str(logdir), "parallel.backend": args.backend, "parallel.distributed": True,
        "parallel.coordinator": args.coordinator, "parallel.num_processes": args.num_processes,
        "parallel.process_id": args.process_id})
    setup_distributed(cfg)
    me = jax.process_index()
    print(f"process {me} of {jax.process_count()}: local devices {jax.local_devices()}, "
          f"mesh {jax.devices()}", file=sys.stderr, flush=True)

    learner = Learner(cfg, OBS_SPACE, ACT_SPACE, jax.random.key(INIT_SEED))
    b = learner.batch_size
    mine = [{k: v[me * b:(me + 1) * b] for k, v in batch.items()}
            for batch in batches(args.data / "batches.npz")]
    # The host state a session keeps beside the learner, distinct on each process.
    rngs = Rngs(cfg.seed, me, shared=("init", "update"))
    replay_dir = logdir / "replay" / f"process-{me}"
    replay = Replay(1000, learner.agent.sequence_length, replay_dir)
    counters = run_state.Counters(agent_steps=FIRST_AGENT_STEPS + me)
    checkpoints = Checkpointer(logdir / "checkpoints")

    def params() -> list[np.ndarray]:
        return jax.tree.leaves(jax.device_get(learner.host_state().params))

    out: dict[str, np.ndarray] = {}
    for i, batch in enumerate(mine):
        learner.update(batch, jax.random.key(UPDATE_SEED + i))
        out.update({f"update{i + 1}/{j}": x for j, x in enumerate(params())})
        if i == 0:
            checkpoints.save(1, learner.host_state(), run_state.record(
                cfg, counters, rngs, replay, learner.updates, env_steps=1))
    restored = run_state.restore(checkpoints, learner, replay, rngs, replay_dir, repeat=1)
    assert restored is not None, "no checkpoint to resume from"
    out.update({f"restored/{j}": x for j, x in enumerate(params())})
    out["restored_agent_steps"] = np.int64(restored.agent_steps)
    out["restored_updates"] = np.int64(learner.updates)
    learner.update(mine[1], jax.random.key(UPDATE_SEED + 1))
    learner.check_replicas()
    out.update({f"resumed/{j}": x for j, x in enumerate(params())})
    checkpoints.close()
    np.savez(args.data / f"process-{me}.npz", **out)
    print(f"process {me} done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
