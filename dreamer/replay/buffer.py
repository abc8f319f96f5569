"""Host-side replay: per-stream chunked storage, uniform, recency or prioritized sampling,
`.npz` files.

A step is a dict of numpy arrays, e.g. `image` uint8 [H, W, C], `action` float32 [A],
`reward` float32 [], `is_first` bool []; the first added step fixes keys, shapes and dtypes.
`Replay` joins the parts: steps in memory as worker streams of chunks (dreamer.replay.store),
the draws of sequences and the write-back of per-step values (dreamer.replay.sampler), the
priorities of prioritized draws (dreamer.replay.priority), and the files of a replay directory
(dreamer.replay.files).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from dreamer.replay.files import load_chunks, save_chunks, stored_stamps
from dreamer.replay.priority import Prioritized
from dreamer.replay.sampler import Sampler, gather, write_back
from dreamer.replay.store import WEIGHT, Piece, Steps

__all__ = ["Replay", "stored_stamps"]


class Replay:
    """Replay of fixed-length sequences from interleaved worker streams.

    Args:
      capacity: steps kept; beyond it the oldest full chunks are dropped (memory holds at most
        `capacity` steps plus one open chunk per worker).
      length: steps T per sampled sequence. chunk: steps per chunk and file.
      directory: where `save` and `load` keep chunk files (None: no persistence).
      recency: fraction of each batch drawn from the `recency_window` newest valid starts.
      online: queue each stream's consecutive, non-overlapping sequences as they complete;
        training samples take queued sequences first (each new sequence is trained on once),
        then draw the rest as configured (2024 code).
      seed: seed of the sampling generator; same seed and same inserts give the same samples.
      prioritized: draw every start by priority (`dreamer.replay.priority`); None: as above.
        It takes neither recency nor online (a ConfigError).

    `sample(..., ref=True)` also returns where the sequences came from, and `update` writes
    values (e.g. a learner's fresh policy outputs, new priorities) back into those steps.
    """

    def __init__(self, capacity: int, length: int, directory: str | Path | None = None,
                 chunk: int = 1024, recency: float = 0.0, recency_window: int = 10000,
                 online: bool = False, seed: int | np.random.SeedSequence = 0, *,
                 prioritized: Prioritized | None = None):
        if min(capacity, length, chunk, recency_window) < 1:
            raise ValueError("capacity, length, chunk and recency_window must be >= 1")
        if not 0.0 <= recency <= 1.0:
            raise ValueError(f"recency must lie in [0, 1], got {recency}")
        self.capacity, self.length, self.chunk = int(capacity), int(length), int(chunk)
        self.recency, self.recency_window = float(recency), int(recency_window)
        self.directory = None if directory is None else Path(directory)
        self.online = bool(online)
        self._steps = Steps(self.capacity, self.chunk)
        self._sampler = Sampler(self.length, self.recency, self.recency_window, self.online, seed,
                                prioritized)
        self._priorities = self._sampler.priorities
        self._counts = {"inserts": 0, "samples": 0, "evicted": 0, "loaded": 0, "online": 0,
                        "updated": 0}
        # add, sample, save and load may be called from different threads (actor receivers).
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self._steps.size

    @property
    def ready(self) -> bool:
        """Whether some stream holds a whole sequence, so that `sample` can draw."""
        with self._lock:
            return any(s.held >= self.length for s in self._steps.streams)

    @property
    def stats(self) -> dict[str, float]:
        counts = {f"replay/{k}": float(v) for k, v in self._counts.items()}
        return {"replay/size": float(self._steps.size),
                "replay/streams": float(len(self._steps.streams)),
                "replay/chunks": float(len(self._steps.chunks())), **counts}

    @property
    def nbytes(self) -> int:
        """Bytes of the step arrays held in memory (preallocated open chunks included)."""
        with self._lock:
            return self._steps.nbytes

    def add(self, step: dict[str, np.ndarray], worker: int = 0) -> None:
        """Appends one env step to the stream of `worker`; values have the first step's shapes."""
        with self._lock:
            self._sampler.push(self._steps.add(step, worker))
            self._counts["inserts"] += 1
            self._counts["evicted"] += self._steps.evict()

    def sample(self, batch: int, rng: np.random.Generator | None = None, ref: bool = False):
        """Draws `batch` sequences: key -> [batch, length, ...] with the stored dtypes, plus
        `step_id` int32 [batch, length], the global insert index of each step (see `gather`),
        and, prioritized, the importance-sampling `weight` float32 [batch].

        Training draws (no `rng`) first take queued online sequences, oldest first. Of the
        rest, the last round(recency * batch) rows start uniformly among the `recency_window`
        newest valid starts, the others uniformly among all valid starts; prioritized, every
        start is drawn by priority. With `rng` (e.g. for reports that must not change the
        training batches) draws use it and leave the online queue alone. With `ref`, returns
        (batch, ref) for `update`.
        """
        with self._lock:
            starts, online, weight = self._sampler.starts(self._steps.by_age(), batch, rng)
            self._counts["online"] += online
            out, pieces = gather(starts, self.length, self._steps.spec)
            if weight is not None:
                out[WEIGHT] = weight
            self._counts["samples"] += batch
            return (out, pieces) if ref else out

    def update(self, ref: list[list[Piece]], values: dict[str, np.ndarray]) -> None:
        """Writes `values[key]` [batch, n, ...] into the last n steps of each sequence that the
        `sample` call with this `ref` drew (the learner's replay context, 2024 code). Steps
        evicted since are skipped. A chunk file already written keeps the values it was written
        with; steps saved later carry the new ones. `values['priority']` [batch] is instead
        each sequence's new start priority (dropped unless prioritized)."""
        with self._lock:
            write_back(ref, values, self._steps.spec, self.length, self._priorities)
            self._counts["updated"] += len(ref)

    def save(self, keep: int = 3) -> int:
        """Writes every chunk whose steps are not all on disk yet, and deletes the files of
        chunks older than every chunk held (evicted ones, which `load` would never read), so the
        directory stays about as large as the capacity; prioritized, also the priorities of every
        step held (the newest `keep` such files stay). Returns chunk files written."""
        with self._lock:
            written = save_chunks(self._directory(), chunks := self._steps.chunks())
            if self._priorities is not None:
                self._priorities.save(self._directory(), chunks, self._steps.next_stamp, keep)
            return written

    def load(self, until: int | None = None) -> int:
        """Reads the newest chunk files of `directory` (at most `capacity` steps), oldest first.

        Chunks whose predecessor is loaded continue its stream; steps added afterwards start new
        streams. With `until` (the `inserts` count that `state()` recorded at a checkpoint), steps
        inserted later, saved after that checkpoint, are dropped and their files deleted or cut,
        so the replay matches the checkpoint exactly. Returns the steps loaded.
        """
        with self._lock:
            directory = self._directory()
            if self._steps.size:
                raise ValueError("load() fills an empty Replay; call it before adding steps")
            if not directory.is_dir():
                return 0
            self._steps.extend(load_chunks(directory, self.capacity, until))
            if until is not None:
                self._steps.next_stamp = max(self._steps.next_stamp, int(until))
            if self._priorities is not None:
                self._priorities.loaded(directory, self._steps.chunks(), until)
            self._counts["loaded"] += self._steps.size
            return self._steps.size

    def state(self) -> dict:
        """What a resume needs besides the chunk files: insert count, counters, the sampling
        generator's state, the online queue and the largest priority, with the insert count
        of the last `save`'s priorities (JSON-serialisable)."""
        with self._lock:
            return {"inserts": self._steps.next_stamp, "counts": dict(self._counts),
                    **self._sampler.state()}

    def load_state(self, state: dict) -> None:
        """Restores counters, the sampling generator, the online queue and the priorities from
        `state()` (after `load`)."""
        with self._lock:
            self._counts.update({k: int(v) for k, v in state["counts"].items()
                                 if k != "loaded"})  # `loaded` counts this process's load
            self._sampler.load_state(state, self._steps.streams, self.directory)

    def priorities(self) -> dict[str, np.ndarray]:
        """Prioritized: `Priorities.table` of every step held (stamp, priority, P(start))."""
        with self._lock:
            if self._priorities is None:
                raise ValueError("this Replay draws without priorities (prioritized=None)")
            return self._priorities.table(self._steps.by_age(), self.length)

    def _directory(self) -> Path:
        if self.directory is None:
            raise ValueError("Replay has no directory; pass directory= to save or load")
        return self.directory
