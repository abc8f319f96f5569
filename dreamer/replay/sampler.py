"""Which sequences a replay draws (uniform and recency starts, the online queue, or by priority),
the copy of sequences out of the chunks and the write-back of per-step values into them.

A sequence is (stream, pos): the `length` steps at stream positions [pos, pos + length). It may
run into the stream's next episode, whose first step has `is_first=True`: the world model resets
its recurrent state there. A gathered batch also carries each step's stamp as `step_id`.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from dreamer.replay.priority import Priorities, Prioritized, check_combination
from dreamer.replay.store import PRIORITY, ROWS, STEP_ID, Piece, Spec, Start, Stream


def valid_counts(streams: list[Stream], length: int) -> np.ndarray:
    """How many sequences of `length` steps start in each stream: [S]; raises when none does."""
    sizes = np.array([s.held for s in streams], np.int64)
    counts = np.maximum(sizes - length + 1, 0)
    if counts.sum() == 0:
        longest = max(sizes, default=0)
        raise ValueError(f"Replay needs {length} consecutive steps of one worker stream "
                         f"to sample, the longest stream holds {longest}")
    return counts


class Sampler:
    """Draws the start positions of sequences of `length` steps.

    Args (as `Replay` takes them):
      recency: fraction of each batch drawn from the `recency_window` newest valid starts.
      online: queue each stream's consecutive, non-overlapping sequences as they complete;
        training draws take queued sequences first.
      seed: seed of the training draws' generator `rng`.
      prioritized: draw every start by priority instead (`dreamer.replay.priority`; neither
        recency nor online, a ConfigError); `priorities` holds them.
    """

    def __init__(self, length: int, recency: float, recency_window: int, online: bool,
                 seed: int | np.random.SeedSequence, prioritized: Prioritized | None = None):
        if prioritized is not None:
            check_combination(recency, online)
        self.length, self.recency, self.recency_window = length, recency, recency_window
        self.online = online
        self.rng = np.random.default_rng(seed)
        self.queue: collections.deque[Start] = collections.deque()
        self.priorities = None if prioritized is None else Priorities(prioritized)

    def push(self, stream: Stream) -> None:
        """Queues the newest sequence of `stream` when its last step completes one (online);
        gives the newest step the largest priority so far (prioritized)."""
        if self.online and stream.end % self.length == 0:
            self.queue.append((stream, stream.end - self.length))
        if self.priorities is not None:
            self.priorities.added(stream.chunks[-1])

    def starts(self, streams: list[Stream], batch: int, rng: np.random.Generator | None = None
               ) -> tuple[list[Start], int, np.ndarray | None]:
        """`batch` sequence starts from `streams` (oldest first), how many came from the queue,
        and the importance-sampling weights [batch] of prioritized draws (None otherwise).

        Prioritized draws take every start by priority. Otherwise training draws (no `rng`)
        first take queued online sequences, oldest first. Of the rest, the last
        round(recency * batch) start uniformly among the `recency_window` newest valid starts,
        the others uniformly among all valid starts. With `rng`, draws use it and leave the
        queue alone.
        """
        fresh = rng is None
        rng = self.rng if rng is None else rng
        counts = valid_counts(streams, self.length)  # [S]
        if self.priorities is not None:
            chosen, weight = self.priorities.draw(streams, counts, batch, rng)
            return chosen, 0, weight
        out = self._pop_online(batch) if fresh and self.online else []
        online = len(out)
        recent = min(round(self.recency * batch), batch - len(out))
        out += self._draw(streams, counts, batch - len(out) - recent, rng)
        if recent:
            out += self._draw(streams, self._recent(streams, counts), recent, rng)
        return out, online, None

    def state(self) -> dict[str, Any]:
        """The generator's state, the queue (`queued`) and, prioritized, `Priorities.state`."""
        out = {"rng": self.rng.bit_generator.state, "online": self.queued()}
        if self.priorities is not None:
            out["priority"] = self.priorities.state()
        return out

    def load_state(self, state: dict[str, Any], streams: list[Stream],
                   directory: Path | None) -> None:
        """Restores `state()` once `streams` hold the loaded steps (priority files from
        `directory`)."""
        self.rng.bit_generator.state = state["rng"]
        self.requeue(streams, state.get("online", []))
        if self.priorities is not None and "priority" in state:
            chunks = [c for s in streams for c in s.chunks]
            self.priorities.load_state(state["priority"], chunks, directory)

    def queued(self) -> list[int]:
        """Stamps of the first steps of the queued sequences still held, in queue order."""
        return [s.stamp_at(pos) for s, pos in self.queue if s.holds(pos)]

    def requeue(self, streams: list[Stream], stamps: list[int]) -> None:
        """Replaces the queue by the sequences that start at `stamps` (as `queued` gave them)
        and are whole in `streams`."""
        wanted = set(stamps)
        found: dict[int, Start] = {}
        for stream in streams:
            for start, chunk in zip(stream.starts, stream.chunks):
                for index in np.flatnonzero(np.isin(chunk.stamp[:chunk.length], list(wanted))):
                    if stream.end - (start + index) >= self.length:
                        found[int(chunk.stamp[index])] = (stream, start + int(index))
        self.queue = collections.deque(found[s] for s in stamps if s in found)

    def _pop_online(self, batch: int) -> list[Start]:
        """Up to `batch` queued online sequences whose steps are all still held."""
        out = []
        while self.queue and len(out) < batch:
            stream, pos = self.queue.popleft()
            if stream.holds(pos):
                out.append((stream, pos))
        return out

    def _draw(self, streams: list[Stream], counts: np.ndarray, n: int,
              rng: np.random.Generator) -> list[Start]:
        """n starts uniform over the last counts[i] valid starts of each stream i."""
        cum = np.cumsum(counts)
        draws = rng.integers(0, cum[-1], size=n)
        index = np.searchsorted(cum, draws, side="right")
        return [(streams[i], streams[i].end - self.length + 1 - int(cum[i] - r))
                for i, r in zip(index, draws)]

    def _recent(self, streams: list[Stream], counts: np.ndarray) -> np.ndarray:
        """Per stream, how many of its last valid starts are among the window's newest: [S]."""
        window = self.recency_window
        tails = []  # per stream: insert indices of its m newest valid starts, [m] increasing
        for s, m in zip(streams, np.minimum(counts, window)):
            parts = [c.stamp[i:k] for c, i, k, _ in s.pieces(s.end - self.length + 1 - m, m)]
            tails.append(np.concatenate([np.zeros(0, np.int64), *parts]))
        pooled = np.concatenate(tails)
        if len(pooled) <= window:
            return np.array([len(t) for t in tails], np.int64)
        cut = np.partition(pooled, len(pooled) - window)[len(pooled) - window]
        return np.array([len(t) - np.searchsorted(t, cut) for t in tails], np.int64)


def gather(starts: list[Start], length: int, spec: Spec
           ) -> tuple[dict[str, np.ndarray], list[list[Piece]]]:
    """The sequences at `starts`: key -> [batch, length, ...] with the stored dtypes, plus
    `step_id` int32 [batch, length], and per row the chunk slices it was copied from (for
    `write_back`).

    `step_id` is each step's stamp, its global insert index: unique among the steps a run
    stores, increasing along a sequence (consecutive when one worker inserts), and fixed for
    the run, since the chunk files keep the stamps across save, load and resume. Agents may key per-transition values by it (PETS's
    bootstrap weights and its normaliser's record of transitions counted). int32, as JAX holds
    it: unique for the first 2^31 inserts.
    """
    b = len(starts)
    out = {k: np.empty((b, length, *shape), dtype) for k, (shape, dtype) in spec.items()}
    step_id = np.empty((b, length), np.int32)
    pieces = []
    for row, (stream, pos) in enumerate(starts):
        pieces.append(list(stream.pieces(pos, length)))
        for chunk, i, k, offset in pieces[-1]:
            for key, value in out.items():
                value[row, offset:offset + k - i] = chunk.data[key][i:k]
            step_id[row, offset:offset + k - i] = chunk.stamp[i:k]
    return {**out, STEP_ID: step_id}, pieces


def write_back(pieces: list[list[Piece]], values: dict[str, np.ndarray], spec: Spec | None,
               length: int, priorities: Priorities | None = None) -> None:
    """Writes `values[key]` [batch, n, ...] into the last n steps of each `length`-step sequence
    whose chunk slices `gather` returned as `pieces` (one row of slices per sequence), and
    `values['priority']` [batch] as the priority of each sequence's start (`Priorities.write`;
    dropped without `priorities`). `values['update_rows']` (bool [batch]), where given, limits
    the per-step values to the sequences it marks, so that rows left as they were cannot write
    old values over the new ones of an overlapping sequence."""
    values = dict(values)
    rows = np.asarray(values.pop(ROWS, np.ones(len(pieces), bool)), bool)
    for key, value in values.items():
        if key == PRIORITY:
            if priorities is not None:
                priorities.write(pieces, value)
            continue
        if spec is None or key not in spec:
            raise KeyError(f"replay has no key {key!r} to update")
        n = value.shape[1]
        if n > length:
            raise ValueError(f"{key}: {n} steps per sequence, sequences hold {length}")
        skip = length - n  # leading steps of each sequence left as they are
        for row, slices, write in zip(value, pieces, rows):
            if not write:
                continue
            for chunk, i, k, offset in slices:
                lo = max(i, i + skip - offset)
                if lo < k:
                    chunk.data[key][lo:k] = row[offset + lo - i - skip:offset + k - i - skip]
