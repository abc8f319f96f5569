"""Replay steps in memory: worker streams of preallocated chunks, insert stamps, eviction.

A step is a dict of numpy arrays, e.g. `image` uint8 [H, W, C], `action` float32 [A],
`reward` float32 [], `is_first` bool []; the first step checked fixes keys, shapes and dtypes
(the spec). Each worker stream lives in chunks of `chunk` preallocated steps that name their
predecessor, so a stream position maps to chunk slices that never join two streams or skip
missing steps. Every step carries a stamp: its global insert index (int64), which orders recency
and which sampled batches carry as `step_id`.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STAMP = "_stamp"  # reserved key: the stamps of a chunk file
STEP_ID = "step_id"  # reserved key: the stamps of a sampled batch's steps
PRIORITY = "priority"  # reserved key: a replay update's new priorities of the sampled starts
WEIGHT = "weight"  # reserved key: a prioritized batch's importance-sampling weights
ROWS = "update_rows"  # reserved key: which sampled sequences a replay update writes (bool [B])
RESERVED = (STAMP, STEP_ID, PRIORITY, WEIGHT, ROWS)  # keys a step may not have
NO_PREV = "0" * 32  # the predecessor uuid of a stream's first chunk

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape of one step, dtype)


@dataclasses.dataclass(eq=False)
class Chunk:
    """Up to `size` consecutive steps of one stream: `data[key]` is [size, ...]."""

    uuid: str
    prev: str
    time: int
    data: dict[str, np.ndarray]
    stamp: np.ndarray  # [size] int64
    length: int = 0
    sealed: bool = False  # full or loaded: never written again
    saved: int = 0  # steps in the file at `path`
    path: Path | None = None
    priority: np.ndarray | None = None  # [2, size] float64: p and p^α (prioritized replays)
    dropped: bool = False  # evicted: no longer part of the replay


@dataclasses.dataclass(eq=False)
class Stream:
    """Contiguous steps: `chunks[i]` holds stream positions [starts[i], starts[i] + length)."""

    chunks: list[Chunk] = dataclasses.field(default_factory=list)
    starts: list[int] = dataclasses.field(default_factory=list)
    end: int = 0  # position after the newest step
    tail: str = NO_PREV  # uuid of the newest chunk, even once evicted

    @property
    def held(self) -> int:
        """Steps held: positions [starts[0], end)."""
        return self.end - self.starts[0] if self.chunks else 0

    def holds(self, pos: int) -> bool:
        """Whether position `pos` (and every later one) is still held."""
        return bool(self.chunks) and pos >= self.starts[0]

    def append(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.starts.append(self.end)
        self.end += chunk.length
        self.tail = chunk.uuid

    def pieces(self, pos: int, n: int) -> Iterator[tuple[Chunk, int, int, int]]:
        """Yields (chunk, begin, end, offset): positions [pos, pos + n) as chunk slices."""
        j = bisect.bisect_right(self.starts, pos) - 1
        done = 0
        while done < n:
            chunk = self.chunks[j]
            i = pos + done - self.starts[j]
            k = min(chunk.length, i + n - done)
            yield chunk, i, k, done
            done += k - i
            j += 1

    def stamp_at(self, pos: int) -> int:
        """The stamp of the step at position `pos`."""
        chunk, i, _, _ = next(self.pieces(pos, 1))
        return int(chunk.stamp[i])


Piece = tuple[Chunk, int, int, int]  # (chunk, begin, end, offset), as `Stream.pieces` yields
Start = tuple[Stream, int]  # (stream, first position) of a sequence


class Steps:
    """The streams of a replay; `evict` keeps them to `capacity` steps plus one open chunk per
    worker.

    Not locked: the replay that owns it serialises every call.
    """

    def __init__(self, capacity: int, chunk: int):
        self.capacity, self.chunk = capacity, chunk
        self.spec: Spec | None = None
        self.streams: list[Stream] = []
        self._open: dict[int, Stream] = {}  # worker -> stream it writes to
        self.size = 0  # steps held
        self.next_stamp = 0  # stamp of the next step added
        self._last_time = 0  # creation time of the newest chunk, ns

    def chunks(self) -> list[Chunk]:
        """Every chunk held, stream by stream, each stream's oldest first."""
        return [c for s in self.streams for c in s.chunks]

    def by_age(self) -> list[Stream]:
        """The streams that hold steps, ordered by the creation of their oldest chunk."""
        return sorted((s for s in self.streams if s.chunks), key=lambda s: s.chunks[0].time)

    @property
    def nbytes(self) -> int:
        """Bytes of the step arrays, their stamps and priorities held (preallocated open chunks
        included)."""
        return sum(c.stamp.nbytes + sum(v.nbytes for v in c.data.values())
                   + (0 if c.priority is None else c.priority.nbytes) for c in self.chunks())

    def _check(self, step: dict[str, np.ndarray], what: str) -> None:
        """Fixes the spec at the first step; raises if `step` has other keys or shapes."""
        if self.spec is None:
            self.spec = {k: (np.shape(v), np.asarray(v).dtype) for k, v in step.items()}
        shapes = {k: np.shape(v) for k, v in step.items()}
        expected = {k: shape for k, (shape, _) in self.spec.items()}
        if shapes != expected or not step.keys().isdisjoint(RESERVED):
            raise ValueError(f"{what} shapes {shapes} differ from the stored {expected} "
                             f"(keys {', '.join(map(repr, RESERVED))} are reserved)")

    def add(self, step: dict[str, np.ndarray], worker: int) -> Stream:
        """Appends one step to the stream of `worker` and returns that stream (`evict` drops what
        no longer fits)."""
        self._check(step, "step")
        if (stream := self._open.get(worker)) is None:
            stream = self._open[worker] = self._new_stream()
        if not stream.chunks or stream.chunks[-1].sealed:
            stream.append(self._new_chunk(stream.tail))
        chunk = stream.chunks[-1]
        for key, value in step.items():
            chunk.data[key][chunk.length] = value
        chunk.stamp[chunk.length] = self.next_stamp
        chunk.length += 1
        chunk.sealed = chunk.length == len(chunk.stamp)
        stream.end += 1
        self.next_stamp += 1
        self.size += 1
        return stream

    def extend(self, chunks: list[Chunk]) -> None:
        """Adds sealed chunks, oldest first, after checking each against the spec: a chunk whose
        predecessor it holds continues that stream, any other starts a new one."""
        for chunk in chunks:
            self._check({k: v[0] for k, v in chunk.data.items()}, f"replay chunk {chunk.path}")
        tails: dict[str, Stream] = {}
        for chunk in chunks:
            stream = tails.pop(chunk.prev, None) or self._new_stream()
            stream.append(chunk)
            tails[chunk.uuid] = stream
            self.size += chunk.length
            self.next_stamp = max(self.next_stamp, int(chunk.stamp[-1]) + 1)
            self._last_time = max(self._last_time, chunk.time)

    def evict(self) -> int:
        """Drops the oldest full chunks while more than `capacity` steps are held; returns the
        steps dropped."""
        dropped = 0
        while self.size > self.capacity:
            heads = [s for s in self.streams if s.chunks and s.chunks[0].sealed]
            if not heads:
                break
            stream = min(heads, key=lambda s: s.chunks[0].time)
            chunk = stream.chunks.pop(0)
            stream.starts.pop(0)
            self.size -= chunk.length
            dropped += chunk.length
            chunk.dropped = True
            if chunk.path is not None and chunk.saved != chunk.length:
                # A stale partial file would let a load join its successor across missing steps.
                chunk.path.unlink(missing_ok=True)
            if not stream.chunks and all(s is not stream for s in self._open.values()):
                self.streams.remove(stream)
        return dropped

    def _new_stream(self) -> Stream:
        self.streams.append(stream := Stream())
        return stream

    def _new_chunk(self, prev: str) -> Chunk:
        self._last_time = max(time.time_ns(), self._last_time + 1)
        data = {k: np.empty((self.chunk, *shape), dtype) for k, (shape, dtype) in self.spec.items()}
        return Chunk(uuid.uuid4().hex, prev, self._last_time, data, np.empty(self.chunk, np.int64))
