"""Replay chunk files: one compressed `.npz` per chunk, written atomically, read back as chunks.

A chunk file is `{time:020d}-{uuid}-{prev}-{length}.npz` (creation time in ns, so name order is
creation order; `prev` is the predecessor's uuid, 32 zeros for a stream's first chunk) holding
one [length, ...] array per step key and `_stamp` int64 [length]: global insert indices, which
order recency. A chunk saved while still filling is written again, under its longer name, once
it holds more steps; a directory's files of one uuid are read through the longest.

A prioritized replay also writes `priorities/{inserts:020d}.npz` at each save: `_stamp` [M]
and `priority` float64 [2, M] (p and p^α) of every step held, keyed by the insert count at the
save, since priorities change after the chunk files are written. Chunk loads read only the
directory's own `*.npz`, not this folder.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dreamer.replay.store import PRIORITY, STAMP, Chunk

_NAME = re.compile(r"^(\d{20})-([0-9a-f]{32})-([0-9a-f]{32})-([1-9]\d*)\.npz$")
_READ_ERRORS = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)

_Entry = tuple[int, str, str, int, Path]  # (time, uuid, prev, length, path) of a chunk file
PRIORITIES = "priorities"  # the folder of the priority files


def save_chunks(directory: Path, held: list[Chunk]) -> int:
    """Writes every chunk of `held` whose steps are not all on disk yet, and deletes the files of
    chunks older than every chunk held (evicted ones, which a load would never read), so the
    directory stays about as large as the capacity. Returns files written."""
    directory.mkdir(parents=True, exist_ok=True)
    todo = [c for c in held if c.saved != c.length]
    for c in sorted(todo, key=lambda c: c.time):
        path = directory / f"{c.time:020d}-{c.uuid}-{c.prev}-{c.length}.npz"
        _write(path, {k: v[:c.length] for k, v in c.data.items()}, c.stamp[:c.length])
        if c.path is not None and c.path != path:
            c.path.unlink(missing_ok=True)
        c.path, c.saved = path, c.length
    if held:
        oldest, uuids = min(c.time for c in held), {c.uuid for c in held}
        for uid, (time_ns, *_, path) in _chunk_files(directory).items():
            if time_ns < oldest and uid not in uuids:
                path.unlink(missing_ok=True)
    return len(todo)


def load_chunks(directory: Path, capacity: int, until: int | None = None) -> list[Chunk]:
    """The newest chunks of `directory` that hold at most `capacity` steps together, oldest first.

    With `until`, steps stamped `until` or later are dropped first, and their files deleted or
    rewritten shorter."""
    files = sorted(_chunk_files(directory).values())
    if until is not None:
        files = [e for e in (_cut(e, until) for e in files) if e is not None]
    newest = files[::-1]
    keep = int(np.searchsorted(np.cumsum([e[3] for e in newest]), capacity, "right"))
    return [_read(*entry) for entry in reversed(newest[:keep])]


def stored_stamps(directory: str | Path) -> np.ndarray:
    """Insert indices of every step in the chunk files of `directory` (each chunk's longest
    file), sorted: a replay saved without loss or duplication holds 0, 1, ..., inserts - 1."""
    stamps = [np.zeros(0, np.int64)]
    for entry in _chunk_files(Path(directory)).values():
        with np.load(entry[4]) as archive:
            stamps.append(archive[STAMP].astype(np.int64))
    return np.sort(np.concatenate(stamps))


def save_priorities(directory: Path, held: list[Chunk], inserts: int, keep: int) -> None:
    """Writes the priorities of every step of `held` (chunks with `priority`) to the priority
    file keyed by `inserts`, and deletes all but the newest `keep` priority files."""
    folder = directory / PRIORITIES
    folder.mkdir(parents=True, exist_ok=True)
    stamp = np.concatenate([np.zeros(0, np.int64), *(c.stamp[:c.length] for c in held)])
    priority = np.concatenate([np.zeros((2, 0)), *(c.priority[:, :c.length] for c in held)], 1)
    order = np.argsort(stamp)
    _write(folder / f"{inserts:020d}.npz", {PRIORITY: priority[:, order]}, stamp[order])
    for old in sorted(folder.glob("*.npz"))[:-keep]:
        old.unlink(missing_ok=True)


def load_priorities(directory: Path, inserts: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(stamps [M] increasing, priorities [2, M]) of the priority file keyed by `inserts`; None
    when there is none."""
    path = directory / PRIORITIES / f"{inserts:020d}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            return archive[STAMP].astype(np.int64), archive[PRIORITY].astype(np.float64)
    except _READ_ERRORS as e:
        raise ValueError(f"corrupt replay priority file {path} ({e!r}); delete it to resume "
                         "with every held step at the largest priority") from e


def drop_priorities_after(directory: Path, until: int) -> None:
    """Deletes the priority files of saves after `until` inserts (after the checkpoint a load
    resumes, like the chunk files `load_chunks` cuts)."""
    for path in (directory / PRIORITIES).glob("*.npz"):
        if path.stem.isdigit() and int(path.stem) > until:
            path.unlink(missing_ok=True)


def _chunk_files(directory: Path) -> dict[str, _Entry]:
    """uuid -> (time, uuid, prev, length, path) of each chunk's longest file; skips temp files."""
    files: dict[str, _Entry] = {}
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
    """Writes a chunk file atomically (via a temporary name that a load never reads)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, **{STAMP: stamp})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cut(entry: _Entry, until: int) -> _Entry | None:
    """The chunk file `entry` without its steps stamped `until` or later: unchanged when it has
    none, rewritten shorter when it has some, deleted (None) when all are."""
    time_ns, uid, prev, length, path = entry
    try:
        with np.load(path) as archive:
            stamp = archive[STAMP]
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


def _read(time_ns: int, uid: str, prev: str, length: int, path: Path) -> Chunk:
    """The sealed chunk that the file at `path` holds; raises, naming the file, if it is corrupt
    or does not hold `length` steps."""
    try:
        with np.load(path) as archive:
            data = {k: archive[k] for k in archive.files}
    except _READ_ERRORS as e:
        raise ValueError(f"corrupt replay chunk {path} ({e!r}); delete or move the file "
                         "out of the replay directory and load again") from e
    stamp = data.pop(STAMP, None)
    if stamp is None or any(v.shape[:1] != (length,) for v in (stamp, *data.values())):
        raise ValueError(f"replay chunk {path} lacks {STAMP!r} or does not hold {length} "
                         "steps; delete or move the file out of the replay directory")
    return Chunk(uid, prev, time_ns, data, stamp.astype(np.int64), length,
                 sealed=True, saved=length, path=path)
