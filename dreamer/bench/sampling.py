"""The cost of drawing from the replay: milliseconds per `Replay.sample` call with uniform and with
prioritized draws at a given number of held steps (`launch/bench.py replay-sampling`).

Prioritized draws pass over every valid start's priority once per call (`dreamer.replay.priority`),
so their cost grows with the steps held; the copy of the batch out of the chunks is the same for
both. Steps are small (a 16-float vector, reward and flags), so that the copy does not hide the
draw.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from dreamer.replay import Prioritized, Replay


def _filled(size: int, length: int, chunk: int, workers: int,
            prioritized: Prioritized | None) -> Replay:
    replay = Replay(size, length, chunk=chunk, seed=0, prioritized=prioritized)
    vector = np.zeros(16, np.float32)
    for i in range(size):
        replay.add({"vector": vector, "reward": np.float32(i), "is_first": np.bool_(i < workers),
                    "is_last": np.bool_(False), "is_terminal": np.bool_(False)}, worker=i % workers)
    return replay


def replay_sampling(sizes: tuple[int, ...] = (100_000, 1_000_000), batch: int = 256,
                    length: int = 64, chunk: int = 1024, workers: int = 4,
                    calls: int = 20) -> dict[str, Any]:
    """Median (and least) milliseconds per `sample(batch, ref=True)` call, and the median per
    priority write-back, for each number of held steps in `sizes`, uniform and prioritized;
    priorities are rewritten after every call, as a training loop does."""
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"batch": batch, "length": length, "chunk": chunk, "calls": calls}
    for size in sizes:
        row = {}
        for name, options in (("uniform", None), ("prioritized", Prioritized())):
            replay = _filled(size, length, chunk, workers, options)
            sample, update = [], []
            for _ in range(calls):
                start = time.perf_counter()
                _, ref = replay.sample(batch, ref=True)
                sample.append(time.perf_counter() - start)
                start = time.perf_counter()
                replay.update(ref, {"priority": rng.exponential(1.0, batch)})
                update.append(time.perf_counter() - start)
            row[f"{name}_sample_ms"] = 1000 * float(np.median(sample))
            row[f"{name}_sample_min_ms"] = 1000 * float(np.min(sample))
            row[f"{name}_update_ms"] = 1000 * float(np.median(update))
        out[f"steps_{size}"] = row
    return out
