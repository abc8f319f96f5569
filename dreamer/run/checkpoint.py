"""Checkpoints of a run under `logdir/checkpoints`: the train state pytree (orbax, bit-exact) and
a JSON record of everything else a resume needs (counters, RNG state, config, W&B run id).

orbax writes each checkpoint into a temporary folder and renames it when complete, so a process
killed mid-save leaves no half-written step among `steps()`. A step whose files are damaged or
foreign is skipped in favour of the previous one, with a warning; a folder holding no readable
checkpoint at all is a `CheckpointError` that names the folder, gives one line per checkpoint
tried (step, exception type, the message's first line without TensorStore's specs) and what to
do. The full errors, with tracebacks, are printed only when the environment variable
`DREAMER_DEBUG` is set; without it the "Event loop is closed" reports that TensorStore's reads
still in flight raise after a failed restore are dropped.

In a multi-host run every process calls each method of `Checkpointer`, in the same order (orbax
waits for all of them at each save). The state is written as host arrays, which orbax writes from
process 0 only, as it does the JSON record: the processes hold identical copies of the state, so
a checkpoint is written once. Every process reads it back, so the checkpoint folder must be on a
filesystem that all hosts share.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


# Config keys that shape the train state or the replayed data: a checkpoint continues only
# under the same values. Loss scales, learning rates, ratios and the like may change on resume.
STRUCTURE_KEYS = (
    "agent", "env.task", "env.obs", "env.size", "env.gray", "env.gym_kwargs",
    *(f"model.{k}" for k in ("deter", "hidden", "stoch", "classes", "blocks", "depth", "mults",
                             "kernel", "units", "enc_layers", "dec_layers", "head_layers",
                             "img_layers", "obs_layers", "dyn_layers", "bspace", "bins", "norm")),
    "ac.layers", "replay.context",  # the replay's steps hold the model states or not
    "pets.members", "pets.units", "pets.layers",
)
# Optimiser settings whose on/off switch adds or removes optimiser state.
SWITCH_KEYS = ("opt.agc", "opt.beta1", "opt.warmup")


def incompatible_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> current' for each structural key whose value differs (flat dicts)."""
    out = []
    for key in STRUCTURE_KEYS:
        if key in saved and _plain(saved[key]) != _plain(current[key]):
            out.append(f"{key}: {_plain(saved[key])} -> {_plain(current[key])}")
    for key in SWITCH_KEYS:
        if key in saved and (saved[key] > 0) != (current[key] > 0):
            out.append(f"{key}: {saved[key]} -> {current[key]} (switches it on or off)")
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def debugging() -> bool:
    """Whether `DREAMER_DEBUG` asks for full errors (set and not empty or 0)."""
    return os.environ.get("DREAMER_DEBUG", "") not in ("", "0")


def describe(error: BaseException, limit: int = 240) -> str:
    """'Type: first line of the message', without the specs TensorStore appends in brackets,
    cut to `limit` characters."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    for mark in (" [source locations=", " [tensorstore_spec"):
        line = line.split(mark)[0]
    if len(line) > limit:
        line = line[:limit - 1] + "…"
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _is_closed_loop(error: BaseException | None) -> bool:
    """Whether `error` is the 'Event loop is closed' that TensorStore's reads raise when they
    finish after orbax gave up on a damaged checkpoint."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


class _DropAbandonedReads(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for orbax's reads of a damaged
    checkpoint: the first failure is reported, the others' tasks are collected later."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message and "deserialize" in message)


def _quiet_abandoned_reads() -> None:
    """From now on, drop the reports of reads a failed restore left behind (tens of tracebacks,
    arriving while the run goes on or exits, through three routes: the unraisable hook, the
    except hook that TensorStore's callbacks print through, asyncio's logger). Every other
    report goes where it went before. Idempotent."""
    if getattr(sys.unraisablehook, "_drops_closed_loop_reports", False):
        return
    unraisable_before, except_before = sys.unraisablehook, sys.excepthook

    def unraisable(report: Any) -> None:
        if not _is_closed_loop(report.exc_value):
            unraisable_before(report)

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not _is_closed_loop(value):
            except_before(kind, value, tb)

    unraisable._drops_closed_loop_reports = True  # type: ignore[attr-defined]
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    logging.getLogger("asyncio").addFilter(_DropAbandonedReads())


def abstract(tree: Any, device: jax.Device | None = None) -> Any:
    """Shapes, dtypes and shardings of `tree`: the target orbax restores into (so optax
    NamedTuples come back as NamedTuples, not lists). With `device`, `tree` may hold shapes
    only (e.g. from `jax.eval_shape`), and the target places every leaf on `device`."""
    if device is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
    """Saves and restores (state, meta) pairs, keeping the newest `keep`."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def steps(self) -> list[int]:
        """Completed checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes checkpoint `step` (blocking until it is complete on disk); one already at
        `step` is replaced. `state` is copied to host arrays first: orbax refuses a process's
        own device arrays in a multi-host run, and writes host arrays once, from process 0."""
        state = jax.device_get(state)
        if step in self.steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def latest_meta(self) -> dict[str, Any] | None:
        """The meta record of the newest checkpoint whose record is readable (None if none), read
        without the state: enough to check a config against the checkpoint before building."""
        for step in reversed(self.steps()):
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))
            except Exception:  # noqa: BLE001, S112 (`restore` reports damaged checkpoints)
                continue
            return dict(out["meta"])
        return None

    def restore(self, target: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """The newest readable checkpoint as (step, state, meta), restored into `target`'s
        structure (an abstract tree from `abstract`); None when there is none at all."""
        steps = self.steps()
        if not steps:
            return None
        if not debugging():
            _quiet_abandoned_reads()  # before the first read: reports may precede the error
        failures = []
        for step in reversed(steps):
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 (damaged or foreign: fall back to an older one)
                if debugging():
                    traceback.print_exc()
                failures.append(f"step {step}: {describe(e)}")
                continue
            if failures:
                warnings.warn(f"checkpoints in {self.directory} cannot be read ("
                              + "; ".join(failures) + f"); resumed from step {step}",
                              stacklevel=2)
            return step, out["state"], dict(out["meta"])
        raise CheckpointError(
            f"no readable checkpoint in {self.directory}:\n  " + "\n  ".join(failures)
            + "\nMove the folder away to start afresh, or point --logdir elsewhere "
            "(DREAMER_DEBUG=1 prints the full errors).")

    def close(self) -> None:
        self._manager.close()
