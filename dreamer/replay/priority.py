"""Prioritized experience replay over sequence starts (Schaul et al. 2016, proportional variant).

The item that has a priority is a sequence start: a step of a worker stream, standing for the
`length` steps from it on. Each chunk keeps its steps' priorities beside its stamps
(`Chunk.priority`, float64 [2, size]: p and p^α), so eviction drops them with the chunk; the
chunk files never hold them (they are written once, priorities change later): each save writes
them to a priority file (`dreamer.replay.files.save_priorities`) that a resume reads back.

- A new step gets the largest priority written so far, 1.0 before any (the paper's Algorithm 1,
  line 6: every new start is likely to be drawn soon).
- A draw picks starts i with P(i) = p_i^α / Σ_k p_k^α over the N valid starts, those with
  `length` steps held in their stream (Eq. 1), with replacement, and weighs each with
  w_i = (N P(i))^-β / max_j w_j over the batch (Sec. 3.4: the max keeps updates from growing).
- An update writes p = priority + eps at the start of each sampled sequence still held (replay
  update key `priority` [B]); eps > 0 keeps every start drawable.

Each draw is one vectorised pass over the N stored p^α (a cumulative sum, then a binary search
per row): O(N); `launch/bench.py replay-sampling` times it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dreamer.config import ConfigError
from dreamer.replay.files import drop_priorities_after, load_priorities, save_priorities
from dreamer.replay.store import PRIORITY, STEP_ID, Chunk, Piece, Start, Stream


@dataclasses.dataclass(frozen=True)
class Prioritized:
    """The options of prioritized draws: priority exponent α (0: uniform), importance-sampling
    exponent β (1: full correction) and the eps added to every written priority."""

    alpha: float = 0.6
    beta: float = 0.4
    eps: float = 1e-6

    def __post_init__(self):
        for key, value, ok, want in (("alpha", self.alpha, self.alpha >= 0, ">= 0"),
                                     ("beta", self.beta, 0 <= self.beta <= 1, "in [0, 1]"),
                                     ("eps", self.eps, self.eps > 0, "> 0")):
            if not (ok and math.isfinite(value)):
                raise ConfigError(f"replay.priority_{key} must be {want}, got {value!r}")


def check_combination(recency: float, online: bool) -> None:
    """Raises ConfigError where prioritized draws meet another way of choosing starts: the
    recency mix and the online queue pick starts outside P(i), which the weights would not
    correct."""
    if recency > 0:
        raise ConfigError(f"replay.prioritized=true draws every start by priority and does not "
                          f"mix in recent starts: set replay.recency=0 (got {recency}) or "
                          "replay.prioritized=false")
    if online:
        raise ConfigError("replay.prioritized=true draws every start by priority and does not "
                          "take queued online sequences first: set replay.online=false or "
                          "replay.prioritized=false")


def prioritized_options(replay: Any) -> Prioritized | None:
    """The prioritized-draw options of a config's `replay` section, None when
    `replay.prioritized` is off; a ConfigError for values or combinations it does not support."""
    if not replay.prioritized:
        return None
    check_combination(replay.recency, replay.online)
    return Prioritized(replay.priority_alpha, replay.priority_beta, replay.priority_eps)


class Priorities:
    """The priorities of a replay's steps: set on insert, drawn from, written back, restored.

    p^α is computed once, when p is written, rather than at every draw (where it would cost
    about as much as the rest of the draw).
    Not locked: the replay that owns it serialises every call.
    """

    def __init__(self, options: Prioritized):
        self.options = options
        self.max = (1.0, 1.0)  # the largest p written so far and its p^α: a new step's
        self.saved_at: int | None = None  # the insert count keying the newest priority file

    def added(self, chunk: Chunk) -> None:
        """Gives the newest step of `chunk` the largest priority so far."""
        if chunk.priority is None:
            chunk.priority = np.empty((2, len(chunk.stamp)), np.float64)
        chunk.priority[:, chunk.length - 1] = self.max

    def fill(self, chunks: list[Chunk]) -> None:
        """Gives every step of `chunks` the largest priority so far."""
        for chunk in chunks:
            chunk.priority = np.repeat(np.array([self.max]).T, len(chunk.stamp), axis=1)

    def loaded(self, directory: Path, chunks: list[Chunk], until: int | None) -> None:
        """After a load of `chunks` from `directory`: their steps get the largest priority until
        `load_state`, and the priority files of saves after `until` inserts are deleted."""
        self.fill(chunks)
        if until is not None:
            drop_priorities_after(directory, int(until))

    def save(self, directory: Path, chunks: list[Chunk], inserts: int, keep: int) -> None:
        """Writes the priority file of the steps `chunks` hold, keyed by `inserts`."""
        save_priorities(directory, chunks, inserts, keep)
        self.saved_at = inserts

    def probabilities(self, streams: list[Stream], counts: np.ndarray) -> np.ndarray:
        """P(i) [N] of the valid starts: the first counts[s] held positions of each stream s,
        stream by stream, each in position order (the order of `starts_of`)."""
        q = _gathered(streams, counts, _scaled)
        return q / q.sum()

    def table(self, streams: list[Stream], length: int) -> dict[str, np.ndarray]:
        """Every step held, by stamp: `step_id` int64 [M], `priority` float64 [M] and
        `probability` [M], P(i) of the starts of `length` steps and 0 for the other steps."""
        counts = np.maximum(np.array([s.held for s in streams], np.int64) - length + 1, 0)
        every = np.array([s.held for s in streams], np.int64)
        stamp, priority = _gathered(streams, every, _stamps), _gathered(streams, every, _raw)
        order = np.argsort(stamp)
        probability = np.zeros(len(stamp))
        if counts.sum():
            starts = _gathered(streams, counts, _stamps)
            probability[np.searchsorted(stamp[order], starts)] = self.probabilities(streams, counts)
        return {STEP_ID: stamp[order], PRIORITY: priority[order], "probability": probability}

    def draw(self, streams: list[Stream], counts: np.ndarray, n: int,
             rng: np.random.Generator) -> tuple[list[Start], np.ndarray]:
        """n starts drawn with probability P(i), with replacement, and their importance-sampling
        weights float32 [n]."""
        q = _gathered(streams, counts, _scaled)
        cdf = np.cumsum(q)
        # u * total may round up to the total itself: the last start then takes it.
        flat = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(q) - 1)
        weight = (len(q) * (q[flat] / cdf[-1])) ** -self.options.beta
        return starts_of(streams, counts, flat), (weight / weight.max()).astype(np.float32)

    def write(self, pieces: list[list[Piece]], priority: np.ndarray) -> None:
        """Writes priority [B] + eps at the start of each sequence that `gather` returned as
        `pieces`; starts evicted since, and non-finite values (a skipped update's), are left."""
        priority = np.asarray(priority, np.float64)
        if priority.shape != (len(pieces),):
            raise ValueError(f"replay update {PRIORITY!r} holds one priority per sampled "
                             f"sequence, [{len(pieces)}], got shape {priority.shape}")
        if (priority < 0).any():
            raise ValueError(f"replay update {PRIORITY!r} must be >= 0, got {priority.min()}")
        p = priority + self.options.eps
        for row, value in zip(pieces, np.stack([p, p ** self.options.alpha], 1)):
            chunk, begin = row[0][:2]
            if not chunk.dropped and math.isfinite(value[0]):
                chunk.priority[:, begin] = value
                self.max = max(self.max, (float(value[0]), float(value[1])))

    def state(self) -> dict[str, Any]:
        """JSON-serialisable: the largest priority and which priority file holds the rest."""
        return {"max": list(self.max), "alpha": self.options.alpha, "saved_at": self.saved_at}

    def load_state(self, state: dict[str, Any], chunks: list[Chunk],
                   directory: Path | None) -> None:
        """Restores `state()` and, from the priority file it names in `directory`, the
        priorities of the steps `chunks` hold. Steps the file lacks, inserted after it was
        written, get the largest priority, as when they were inserted. p^α comes back as it was
        saved, bit for bit, unless α changed since."""
        p, scaled = map(float, state["max"])
        if state["alpha"] != self.options.alpha:
            scaled = p ** self.options.alpha
        self.max, self.saved_at = (p, scaled), state["saved_at"]
        self.fill(chunks)
        if self.saved_at is None or directory is None:
            return
        saved = load_priorities(directory, self.saved_at)
        if saved is None:
            warnings.warn(f"{directory} holds no priorities of the save at {self.saved_at} "
                          "inserts: every step held restarts at the largest priority",
                          stacklevel=3)
            return
        stamps, priority = saved
        if state["alpha"] != self.options.alpha:
            priority = np.stack([priority[0], priority[0] ** self.options.alpha])
        for chunk in chunks if len(stamps) else []:
            own = chunk.stamp[:chunk.length]
            index = np.minimum(np.searchsorted(stamps, own), len(stamps) - 1)
            found = np.flatnonzero(stamps[index] == own)
            chunk.priority[:, found] = priority[:, index[found]]


def _stamps(chunk: Chunk) -> np.ndarray:
    return chunk.stamp


def _raw(chunk: Chunk) -> np.ndarray:
    return chunk.priority[0]


def _scaled(chunk: Chunk) -> np.ndarray:
    return chunk.priority[1]


def _gathered(streams: list[Stream], counts: np.ndarray,
              field: Callable[[Chunk], np.ndarray]) -> np.ndarray:
    """`field` of the chunks (their stamps, p or p^α) at the first counts[s] held positions of
    each stream s, in the order of `Priorities.probabilities`: [sum(counts)]."""
    parts = [np.zeros(0, np.int64 if field is _stamps else np.float64)]
    for stream, m in zip(streams, counts):
        if m:
            pieces = stream.pieces(stream.starts[0], int(m))
            parts += [field(c)[i:k] for c, i, k, _ in pieces]
    return np.concatenate(parts)


def starts_of(streams: list[Stream], counts: np.ndarray, flat: np.ndarray) -> list[Start]:
    """The starts at indices `flat` into the valid starts, numbered stream by stream."""
    ends = np.cumsum(counts)
    which = np.searchsorted(ends, flat, side="right")
    return [(streams[s], streams[s].starts[0] + int(f - ends[s] + counts[s]))
            for s, f in zip(which, flat)]
