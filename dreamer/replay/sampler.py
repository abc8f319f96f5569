"""Which sequences a replay draws (uniform and recency starts, the online queue), the copy of
sequences out of the chunks and the write-back of per-step values into them.

A sequence is (stream, pos): the `length` steps at stream positions [pos, pos + length). It may
run into the stream's next episode, whose first step has `is_first=True`: the world model resets
its recurrent state there. A gathered batch also carries each step's stamp as `step_id`.
"""

from __future__ import annotations

import collections

import numpy as np

from dreamer.replay.store import STEP_ID, Chunk, Spec, Stream

Piece = tuple[Chunk, int, int, int]  # (chunk, begin, end, offset), as `Stream.pieces` yields
Start = tuple[Stream, int]  # (stream, first position) of a sequence


class Sampler:
    """Draws the start positions of sequences of `length` steps.

    Args (as `Replay` takes them):
      recency: fraction of each batch drawn from the `recency_window` newest valid starts.
      online: queue each stream's consecutive, non-overlapping sequences as they complete;
        training draws take queued sequences first.
      seed: seed of the training draws' generator `rng`.
    """

    def __init__(self, length: int, recency: float, recency_window: int, online: bool,
                 seed: int | np.random.SeedSequence):
        self.length, self.recency, self.recency_window = length, recency, recency_window
        self.online = online
        self.rng = np.random.default_rng(seed)
        self.queue: collections.deque[Start] = collections.deque()

    def push(self, stream: Stream) -> None:
        """Queues the newest sequence of `stream` when its last step completes one (online)."""
        if self.online and stream.end % self.length == 0:
            self.queue.append((stream, stream.end - self.length))

    def starts(self, streams: list[Stream], batch: int,
               rng: np.random.Generator | None = None) -> tuple[list[Start], int]:
        """`batch` sequence starts from `streams` (oldest first), and how many came from the queue.

        Training draws (no `rng`) first take queued online sequences, oldest first. Of the rest,
        the last round(recency * batch) start uniformly among the `recency_window` newest valid
        starts, the others uniformly among all valid starts. With `rng`, draws use it and leave
        the queue alone.
        """
        fresh = rng is None
        rng = self.rng if rng is None else rng
        sizes = np.array([s.held for s in streams], np.int64)
        counts = np.maximum(sizes - self.length + 1, 0)  # valid starts per stream: [S]
        if counts.sum() == 0:
            longest = max(sizes, default=0)
            raise ValueError(f"Replay needs {self.length} consecutive steps of one worker stream "
                             f"to sample, the longest stream holds {longest}")
        out = self._pop_online(batch) if fresh and self.online else []
        online = len(out)
        recent = min(round(self.recency * batch), batch - len(out))
        out += self._draw(streams, counts, batch - len(out) - recent, rng)
        if recent:
            out += self._draw(streams, self._recent(streams, counts), recent, rng)
        return out, online

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
               length: int) -> None:
    """Writes `values[key]` [batch, n, ...] into the last n steps of each `length`-step sequence
    whose chunk slices `gather` returned as `pieces` (one row of slices per sequence)."""
    for key, value in values.items():
        if spec is None or key not in spec:
            raise KeyError(f"replay has no key {key!r} to update")
        n = value.shape[1]
        if n > length:
            raise ValueError(f"{key}: {n} steps per sequence, sequences hold {length}")
        skip = length - n  # leading steps of each sequence left as they are
        for row, slices in zip(value, pieces):
            for chunk, i, k, offset in slices:
                lo = max(i, i + skip - offset)
                if lo < k:
                    chunk.data[key][lo:k] = row[offset + lo - i - skip:offset + k - i - skip]
