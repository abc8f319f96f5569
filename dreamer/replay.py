"""Host-side replay: per-stream chunked storage, uniform and recency sampling, `.npz` files.

A step is a dict of numpy arrays, e.g. `image` uint8 [H, W, C], `action` float32 [A],
`reward` float32 [], `is_first` bool []; the first added step fixes keys, shapes and dtypes.
Each worker stream lives in chunks of `chunk` preallocated steps that name their predecessor,
so a sequence may span chunks of one stream but never joins two streams or skips missing steps.
It may run into the stream's next episode, whose first step has `is_first=True`: the world
model resets its recurrent state there. On disk a chunk is a compressed
`{time:020d}-{uuid}-{prev}-{length}.npz` (creation time in ns, so name order is creation order;
`prev` is the predecessor's uuid, 32 zeros for a stream's first chunk) holding one [length, ...]
array per step key and `_stamp` int64 [length]: global insert indices, which order recency.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import os
import re
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_STAMP = "_stamp"
_NO_PREV = "0" * 32
_NAME = re.compile(r"^(\d{20})-([0-9a-f]{32})-([0-9a-f]{32})-([1-9]\d*)\.npz$")
_READ_ERRORS = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)

_Spec = dict[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape of one step, dtype)


@dataclasses.dataclass(eq=False)
class _Chunk:
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


@dataclasses.dataclass(eq=False)
class _Stream:
    """Contiguous steps: `chunks[i]` holds stream positions [starts[i], starts[i] + length)."""

    chunks: list[_Chunk] = dataclasses.field(default_factory=list)
    starts: list[int] = dataclasses.field(default_factory=list)
    end: int = 0  # position after the newest step
    tail: str = _NO_PREV  # uuid of the newest chunk, even once evicted

    def append(self, chunk: _Chunk) -> None:
        self.chunks.append(chunk)
        self.starts.append(self.end)
        self.end += chunk.length
        self.tail = chunk.uuid

    def pieces(self, pos: int, n: int) -> Iterator[tuple[_Chunk, int, int, int]]:
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

    `sample(..., ref=True)` also returns where the sequences came from, and `update` writes
    values (e.g. a learner's fresh policy outputs) back into those steps.
    """

    def __init__(self, capacity: int, length: int, directory: str | Path | None = None,
                 chunk: int = 1024, recency: float = 0.0, recency_window: int = 10000,
                 online: bool = False, seed: int | np.random.SeedSequence = 0):
        if min(capacity, length, chunk, recency_window) < 1:
            raise ValueError("capacity, length, chunk and recency_window must be >= 1")
        if not 0.0 <= recency <= 1.0:
            raise ValueError(f"recency must lie in [0, 1], got {recency}")
        self.capacity, self.length, self.chunk = int(capacity), int(length), int(chunk)
        self.recency, self.recency_window = float(recency), int(recency_window)
        self.directory = None if directory is None else Path(directory)
        self._rng = np.random.default_rng(seed)
        self._spec: _Spec | None = None
        self._streams: list[_Stream] = []
        self._open: dict[int, _Stream] = {}  # worker -> stream it writes to
        self._size = self._next_stamp = self._last_time = 0
        self.online = bool(online)
        self._queue: collections.deque[tuple[_Stream, int]] = collections.deque()
        self._counts = {"inserts": 0, "samples": 0, "evicted": 0, "loaded": 0, "online": 0,
                        "updated": 0}
        # add, sample, save and load may be called from different threads (actor receivers).
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self._size

    @property
    def ready(self) -> bool:
        """Whether some stream holds a whole sequence, so that `sample` can draw."""
        with self._lock:
            return any(s.chunks and s.end - s.starts[0] >= self.length for s in self._streams)

    @property
    def stats(self) -> dict[str, float]:
        counts = {f"replay/{k}": float(v) for k, v in self._counts.items()}
        return {"replay/size": float(self._size), "replay/streams": float(len(self._streams)),
                "replay/chunks": float(sum(len(s.chunks) for s in self._streams)), **counts}

    def add(self, step: dict[str, np.ndarray], worker: int = 0) -> None:
        """Appends one env step to the stream of `worker`; values have the first step's shapes."""
        with self._lock:
            self._check(step, "step")
            if (stream := self._open.get(worker)) is None:
                stream = self._open[worker] = self._new_stream()
            if not stream.chunks or stream.chunks[-1].sealed:
                stream.append(self._new_chunk(stream.tail))
            chunk = stream.chunks[-1]
            for key, value in step.items():
                chunk.data[key][chunk.length] = value
            chunk.stamp[chunk.length] = self._next_stamp
            chunk.length += 1
            chunk.sealed = chunk.length == len(chunk.stamp)
            stream.end += 1
            if self.online and stream.end % self.length == 0:
                self._queue.append((stream, stream.end - self.length))
            self._next_stamp += 1
            self._size += 1
            self._counts["inserts"] += 1
            self._evict()

    def sample(self, batch: int, rng: np.random.Generator | None = None, ref: bool = False):
        """Draws `batch` sequences: key -> [batch, length, ...] with the stored dtypes.

        Training draws (no `rng`) first take queued online sequences, oldest first. Of the
        rest, the last round(recency * batch) rows start uniformly among the `recency_window`
        newest valid starts, the others uniformly among all valid starts. With `rng` (e.g. for
        reports that must not change the training batches) draws use it and leave the online
        queue alone. With `ref`, returns (batch, ref) for `update`.
        """
        fresh = rng is None
        rng = self._rng if rng is None else rng
        with self._lock:
            streams = sorted((s for s in self._streams if s.chunks), key=lambda s: s.chunks[0].time)
            sizes = np.array([s.end - s.starts[0] for s in streams], np.int64)
            counts = np.maximum(sizes - self.length + 1, 0)  # valid starts per stream: [S]
            if self._spec is None or counts.sum() == 0:
                longest = max(sizes, default=0)
                raise ValueError(f"Replay needs {self.length} consecutive steps of one worker stream "
                                 f"to sample, the longest stream holds {longest}")
            starts = self._pop_online(batch) if fresh and self.online else []
            self._counts["online"] += len(starts)
            recent = min(round(self.recency * batch), batch - len(starts))
            starts += self._draw(streams, counts, batch - len(starts) - recent, rng)
            if recent:
                starts += self._draw(streams, self._recent(streams, counts), recent, rng)
            out = {k: np.empty((batch, self.length, *shape), dtype)
                   for k, (shape, dtype) in self._spec.items()}
            pieces = []
            for b, (stream, pos) in enumerate(starts):
                pieces.append(list(stream.pieces(pos, self.length)))
                for chunk, i, k, offset in pieces[-1]:
                    for key, value in out.items():
                        value[b, offset:offset + k - i] = chunk.data[key][i:k]
            self._counts["samples"] += batch
            return (out, pieces) if ref else out

    def update(self, ref: list, values: dict[str, np.ndarray]) -> None:
        """Writes `values[key]` [batch, n, ...] into the last n steps of each sequence that the
        `sample` call with this `ref` drew (the learner's replay context, 2024 code). Steps
        evicted since are skipped. A chunk file already written keeps the values it was written
        with; steps saved later carry the new ones."""
        with self._lock:
            for key, value in values.items():
                if self._spec is None or key not in self._spec:
                    raise KeyError(f"replay has no key {key!r} to update")
                n = value.shape[1]
                if n > self.length:
                    raise ValueError(f"{key}: {n} steps per sequence, sequences hold {self.length}")
                for row, pieces in zip(value, ref):
                    for chunk, i, k, offset in pieces:
                        lo = max(i, i + (self.length - n) - offset)
                        if lo < k:
                            chunk.data[key][lo:k] = row[offset + lo - i - (self.length - n):
                                                        offset + k - i - (self.length - n)]
            self._counts["updated"] += len(ref)

    def _pop_online(self, batch: int) -> list[tuple[_Stream, int]]:
        """Up to `batch` queued online sequences whose steps are all still held."""
        out = []
        while self._queue and len(out) < batch:
            stream, pos = self._queue.popleft()
            if stream.chunks and pos >= stream.starts[0]:
                out.append((stream, pos))
        return out

    def save(self) -> int:
        """Writes every chunk whose steps are not all on disk yet, and deletes the files of
        chunks older than every chunk held (evicted ones, which `load` would never read), so the
        directory stays about as large as the capacity. Returns files written."""
        with self._lock:
            directory = self._directory()
            directory.mkdir(parents=True, exist_ok=True)
            todo = [c for s in self._streams for c in s.chunks if c.saved != c.length]
            for c in sorted(todo, key=lambda c: c.time):
                path = directory / f"{c.time:020d}-{c.uuid}-{c.prev}-{c.length}.npz"
                _write(path, {k: v[:c.length] for k, v in c.data.items()}, c.stamp[:c.length])
                if c.path is not None and c.path != path:
                    c.path.unlink(missing_ok=True)
                c.path, c.saved = path, c.length
            held = [c for s in self._streams for c in s.chunks]
            if held:
                oldest, uuids = min(c.time for c in held), {c.uuid for c in held}
                for uid, (time_ns, *_, path) in _chunk_files(directory).items():
                    if time_ns < oldest and uid not in uuids:
                        path.unlink(missing_ok=True)
            return len(todo)

    def load(self, until: int | None = None) -> int:
        """Reads the newest chunk files of `directory` (at most `capacity` steps), oldest first.

        Chunks whose predecessor is loaded continue its stream; steps added afterwards start new
        streams. With `until` (the `inserts` count that `state()` recorded at a checkpoint), steps
        inserted later, saved after that checkpoint, are dropped and their files deleted or cut,
        so the replay matches the checkpoint exactly. Returns the steps loaded.
        """
        with self._lock:
            directory = self._directory()
            if self._size:
                raise ValueError("load() fills an empty Replay; call it before adding steps")
            if not directory.is_dir():
                return 0
            files = sorted(_chunk_files(directory).values())
            if until is not None:
                files = [e for e in (_cut(e, until) for e in files) if e is not None]
            newest = files[::-1]
            keep = int(np.searchsorted(np.cumsum([e[3] for e in newest]), self.capacity, "right"))
            chunks = [_read(*entry) for entry in reversed(newest[:keep])]
            for chunk in chunks:
                self._check({k: v[0] for k, v in chunk.data.items()}, f"replay chunk {chunk.path}")
            tails: dict[str, _Stream] = {}
            for chunk in chunks:
                stream = tails.pop(chunk.prev, None) or self._new_stream()
                stream.append(chunk)
                tails[chunk.uuid] = stream
                self._size += chunk.length
                self._next_stamp = max(self._next_stamp, int(chunk.stamp[-1]) + 1)
                self._last_time = max(self._last_time, chunk.time)
            if until is not None:
                self._next_stamp = max(self._next_stamp, int(until))
            self._counts["loaded"] += self._size
            return self._size

    @property
    def nbytes(self) -> int:
        """Bytes of the step arrays held in memory (preallocated open chunks included)."""
        with self._lock:
            return sum(v.nbytes + c.stamp.nbytes for s in self._streams for c in s.chunks
                       for v in c.data.values())

    def state(self) -> dict:
        """What a resume needs besides the chunk files: insert count, counters and the
        sampling generator's state (JSON-serialisable)."""
        with self._lock:
            queue = [int(next(s.pieces(pos, 1))[0].stamp[next(s.pieces(pos, 1))[1]])
                     for s, pos in self._queue if s.chunks and pos >= s.starts[0]]
            return {"inserts": self._next_stamp, "counts": dict(self._counts),
                    "rng": self._rng.bit_generator.state, "online": queue}

    def load_state(self, state: dict) -> None:
        """Restores counters and the sampling generator from `state()` (after `load`)."""
        with self._lock:
            self._counts.update({k: int(v) for k, v in state["counts"].items()
                                 if k != "loaded"})  # `loaded` counts this process's load
            self._rng.bit_generator.state = state["rng"]
            wanted = set(state.get("online", []))
            found: dict[int, tuple[_Stream, int]] = {}
            for stream in self._streams:
                for start, chunk in zip(stream.starts, stream.chunks):
                    for index in np.flatnonzero(np.isin(chunk.stamp[:chunk.length], list(wanted))):
                        if stream.end - (start + index) >= self.length:
                            found[int(chunk.stamp[index])] = (stream, start + int(index))
            self._queue = collections.deque(found[s] for s in state.get("online", [])
                                            if s in found)

    def _directory(self) -> Path:
        if self.directory is None:
            raise ValueError("Replay has no directory; pass directory= to save or load")
        return self.directory

    def _check(self, step: dict[str, np.ndarray], what: str) -> None:
        """Fixes the spec at the first step; raises if `step` has other keys or shapes."""
        if self._spec is None:
            self._spec = {k: (np.shape(v), np.asarray(v).dtype) for k, v in step.items()}
        shapes = {k: np.shape(v) for k, v in step.items()}
        expected = {k: shape for k, (shape, _) in self._spec.items()}
        if shapes != expected or _STAMP in step:
            raise ValueError(f"{what} shapes {shapes} differ from the stored {expected} "
                             f"(key {_STAMP!r} is reserved)")

    def _new_stream(self) -> _Stream:
        self._streams.append(stream := _Stream())
        return stream

    def _new_chunk(self, prev: str) -> _Chunk:
        self._last_time = max(time.time_ns(), self._last_time + 1)
        data = {k: np.empty((self.chunk, *shape), dtype)
                for k, (shape, dtype) in self._spec.items()}
        return _Chunk(uuid.uuid4().hex, prev, self._last_time, data, np.empty(self.chunk, np.int64))

    def _evict(self) -> None:
        """Drops the oldest full chunks while more than `capacity` steps are stored."""
        while self._size > self.capacity:
            heads = [s for s in self._streams if s.chunks and s.chunks[0].sealed]
            if not heads:
                return
            stream = min(heads, key=lambda s: s.chunks[0].time)
            chunk = stream.chunks.pop(0)
            stream.starts.pop(0)
            self._size -= chunk.length
            self._counts["evicted"] += chunk.length
            if chunk.path is not None and chunk.saved != chunk.length:
                # A stale partial file would let `load` join its successor across missing steps.
                chunk.path.unlink(missing_ok=True)
            if not stream.chunks and all(s is not stream for s in self._open.values()):
                self._streams.remove(stream)

    def _draw(self, streams: list[_Stream], counts: np.ndarray, n: int,
              rng: np.random.Generator) -> list:
        """n (stream, start) uniform over the last counts[i] valid starts of each stream i."""
        cum = np.cumsum(counts)
        draws = rng.integers(0, cum[-1], size=n)
        index = np.searchsorted(cum, draws, side="right")
        return [(streams[i], streams[i].end - self.length + 1 - int(cum[i] - r))
                for i, r in zip(index, draws)]

    def _recent(self, streams: list[_Stream], counts: np.ndarray) -> np.ndarray:
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


def _chunk_files(directory: Path) -> dict[str, tuple[int, str, str, int, Path]]:
    """uuid -> (time, uuid, prev, length, path) of each chunk's longest file; skips temp files."""
    files: dict[str, tuple[int, str, str, int, Path]] = {}
    for path in sorted(directory.glob("*.npz")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path} is not named {{time}}-{{uuid}}-{{prev}}-{{length}}.npz; "
                             "move it out of the replay directory")
        entry = (int(match[1]), match[2], match[3], int(match[4]), path)
        if match[2] not in files or entry[3] > files[match[2]][3]:
            files[match[2]] = entry
    return files


def _write(path: Path, arrays: dict[str, np.ndarray], stamp: np.ndarray) -> None:
    """Writes a chunk file atomically (via a temporary name that `load` never reads)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, **{_STAMP: stamp})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cut(entry: tuple[int, str, str, int, Path], until: int
         ) -> tuple[int, str, str, int, Path] | None:
    """The chunk file `entry` without its steps stamped `until` or later: unchanged when it has
    none, rewritten shorter when it has some, deleted (None) when all are."""
    time_ns, uid, prev, length, path = entry
    try:
        with np.load(path) as archive:
            stamp = archive[_STAMP]
    except _READ_ERRORS:
        return entry  # `_read` reports it
    keep = int(np.searchsorted(stamp, until, "left"))
    if keep == length:
        return entry
    if keep > 0:
        chunk = _read(*entry)
        short = path.with_name(f"{time_ns:020d}-{uid}-{prev}-{keep}.npz")
        _write(short, {k: v[:keep] for k, v in chunk.data.items()}, chunk.stamp[:keep])
    path.unlink()
    return (time_ns, uid, prev, keep, short) if keep > 0 else None


def _read(time_ns: int, uid: str, prev: str, length: int, path: Path) -> _Chunk:
    try:
        with np.load(path) as archive:
            data = {k: archive[k] for k in archive.files}
    except _READ_ERRORS as e:
        raise ValueError(f"corrupt replay chunk {path} ({e!r}); delete or move the file "
                         "out of the replay directory and load again") from e
    stamp = data.pop(_STAMP, None)
    if stamp is None or any(v.shape[:1] != (length,) for v in (stamp, *data.values())):
        raise ValueError(f"replay chunk {path} lacks {_STAMP!r} or does not hold {length} "
                         "steps; delete or move the file out of the replay directory")
    return _Chunk(uid, prev, time_ns, data, stamp.astype(np.int64), length,
                  sealed=True, saved=length, path=path)



def stored_stamps(directory: str | Path) -> np.ndarray:
    """Insert indices of every step in the chunk files of `directory` (each chunk's longest
    file), sorted: a replay saved without loss or duplication holds 0, 1, ..., inserts - 1."""
    stamps = [np.zeros(0, np.int64)]
    for entry in _chunk_files(Path(directory)).values():
        with np.load(entry[4]) as archive:
            stamps.append(archive[_STAMP].astype(np.int64))
    return np.sort(np.concatenate(stamps))
