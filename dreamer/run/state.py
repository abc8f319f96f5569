"""A run's resumable host state: its counters, and the checkpoint record that holds them beside
the learner's train state, the random streams and the replay's state.

In a multi-host run each process has its own counters, random streams and replay (the train
state is common to all): the record that process 0 writes holds those of every process under
`processes`, in process order, and each process resumes from its own entry.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dreamer.config import Config
from dreamer.core.parallel import gather_json
from dreamer.core.rngs import Rngs
from dreamer.replay import Replay
from dreamer.run.checkpoint import Checkpointer, CheckpointError, abstract
from dreamer.run.learner import Learner


@dataclasses.dataclass
class Counters:
    """The host state a resume continues from. The session and its monitor read and write these
    fields in place as the run goes on, and each checkpoint saves them whole (beside the
    learner's update count, the random streams and the replay's own state)."""

    agent_steps: int = 0
    episodes: int = 0
    starts: int = 0               # earlier starts of this run (0: the first)
    trained_seconds: float = 0.0  # counted up to the last metric write or save
    nonfinite_skips: int = 0      # updates skipped for a non-finite loss or gradient
    last_eval: int = 0            # env steps at the last evaluation
    last_report: int = 0          # updates at the last report
    wandb_id: str = ""

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Counters:
        """The counters of a checkpoint's record (also of one written with flat keys)."""
        saved = meta.get("counters", meta)
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


def finite(tree: Any) -> bool:
    """Whether every floating-point leaf of `tree` holds only finite values."""
    return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def record(cfg: Config, counters: Counters, rngs: Rngs, replay: Replay, updates: int,
           env_steps: int) -> dict[str, Any]:
    """The JSON record a checkpoint holds beside the train state (read back by `restore`); in a
    multi-host run, with every process's own part under `processes` (a collective: every
    process calls it)."""
    own = {"counters": dataclasses.asdict(counters), "rngs": rngs.state(),
           "replay": replay.state()}
    out = {"env_steps": env_steps, "updates": updates, **own, "config": cfg.to_dict(),
           "saved_at": time.time()}
    if jax.process_count() > 1:
        out["processes"] = gather_json(own)
    return out


def _own_part(meta: dict[str, Any], directory: Path) -> dict[str, Any]:
    """`meta` with this process's counters, random streams and replay state."""
    parts = meta.get("processes", [meta])
    if len(parts) != jax.process_count():
        raise CheckpointError(
            f"the checkpoint in {directory} was written by {len(parts)} process(es), and this "
            f"run has {jax.process_count()}: resume with parallel.num_processes={len(parts)}, "
            "or train in a new --logdir.")
    return {**meta, **parts[jax.process_index()]}


def restore(checkpoints: Checkpointer, learner: Learner, replay: Replay, rngs: Rngs,
            replay_dir: Path, repeat: int) -> Counters | None:
    """Continues from the newest readable checkpoint: loads the train state, the random streams
    and the replay (its steps up to the checkpoint's) and returns the counters, with this start
    counted. None when there is no checkpoint; steps in `replay_dir` that no checkpoint
    describes are then moved aside. In a multi-host run every process must find the same
    checkpoint (a collective: every process calls it)."""
    found = checkpoints.restore(abstract(learner.host_state()))
    steps = gather_json(None if found is None else found[0])
    if len(set(steps)) > 1:
        raise CheckpointError(
            f"the processes found different checkpoints in {checkpoints.directory} (steps by "
            f"process: {steps}): the logdir must be on a filesystem that every host shares.")
    if found is None:
        if replay_dir.is_dir() and any(replay_dir.glob("*.npz")):
            aside = replay_dir.with_name(f"replay-without-checkpoint-{time.time_ns()}")
            replay_dir.rename(aside)
            warnings.warn(f"{replay_dir} held steps but there is no checkpoint to resume; "
                          f"moved them to {aside} and starting afresh", stacklevel=2)
        return None
    step, state, meta = found
    meta = _own_part(meta, checkpoints.directory)
    learner.load_state(state, meta["updates"])
    counters = Counters.from_meta(meta)
    counters.starts += 1
    rngs.load_state(meta["rngs"])
    loaded = replay.load(until=meta["replay"]["inserts"])
    replay.load_state(meta["replay"])
    print(f"dreamer: resumed {checkpoints.directory / str(step)}: "
          f"{counters.agent_steps * repeat} env steps, {learner.updates} updates, "
          f"{loaded} replay steps", file=sys.stderr)
    return counters
