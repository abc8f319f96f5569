"""Every random stream of a run, split once from the run seed by name.

A stream is named (`update`, `policy`, `eval`, `report`, `replay`, `prefill`, `init`, `env`,
`actor`, ...) and optionally indexed (`env` 3, `actor` 1 incarnation 2). Its seed is the run seed
with the name's CRC32 and the indices as a NumPy `SeedSequence` spawn key, so no two streams of
one run, and no streams of two runs with different seeds, share a seed (no `seed + 1`
arithmetic, which makes seed 1's first stream seed 0's second). `Rngs` holds the streams that
advance during a run (JAX keys that are split as they are used, NumPy generators) and saves and
restores them as one JSON-serialisable record.

In a multi-host run each process draws its own streams (its environments, replay sampling and
acting differ from the other processes'), except the `shared` ones that must agree everywhere
(the train state's initialisation and the update keys). Process 0 draws what a single-process
run draws.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def seed_sequence(seed: int, name: str, *index: int) -> np.random.SeedSequence:
    """The seed of stream `name` (with `index`) of run `seed`."""
    return np.random.SeedSequence(int(seed),
                                  spawn_key=(zlib.crc32(name.encode()), *map(int, index)))


def int_seed(seed: int, name: str, *index: int) -> int:
    """A 31-bit integer seed of stream `name` (for environments, which take an int)."""
    return int(seed_sequence(seed, name, *index).generate_state(1, np.uint32)[0] >> 1)


def jax_key(seed: int, name: str, *index: int) -> jax.Array:
    """A raw JAX PRNG key (uint32 [2]) of stream `name`."""
    return jax.numpy.asarray(seed_sequence(seed, name, *index).generate_state(2, np.uint32))


class Rngs:
    """The advancing random streams of one run, created on first use from the run seed.

    `key(name)` returns the next JAX key of a stream (splitting its state), `numpy(name)` its
    NumPy generator (the same object every call). `state()` / `load_state()` save and restore
    every stream used so far. `process` (this process's index in a multi-host run) gives every
    stream but the `shared` ones a seed of its own.
    """

    def __init__(self, seed: int, process: int = 0, shared: tuple[str, ...] = ()):
        self.seed = int(seed)
        self.process, self.shared = int(process), tuple(shared)
        self._keys: dict[str, jax.Array] = {}
        self._numpy: dict[str, np.random.Generator] = {}

    def _seed_name(self, name: str) -> str:
        """The name a stream's seed derives from: `name`, or `name@process` for a process's own
        stream (a distinct name, so that no index of one process meets another's)."""
        return name if self.process == 0 or name in self.shared else f"{name}@{self.process}"

    def key(self, name: str) -> jax.Array:
        """The next key of JAX stream `name`."""
        current = self._keys.get(name)
        if current is None:
            current = jax_key(self.seed, self._seed_name(name))
        self._keys[name], out = jax.random.split(current)
        return out

    def key_stream(self, name: str) -> Callable[[], jax.Array]:
        """A function returning the next key of stream `name` on each call."""
        return lambda: self.key(name)

    def numpy(self, name: str) -> np.random.Generator:
        """The NumPy generator of stream `name`."""
        if name not in self._numpy:
            self._numpy[name] = np.random.default_rng(
                seed_sequence(self.seed, self._seed_name(name)))
        return self._numpy[name]

    def int_seed(self, name: str, *index: int) -> int:
        """An integer seed of stream `name` of this run (stateless)."""
        return int_seed(self.seed, self._seed_name(name), *index)

    def state(self) -> dict[str, Any]:
        return {"seed": self.seed,
                "keys": {k: np.asarray(jax.device_get(v)).tolist() for k, v in self._keys.items()},
                "numpy": {k: g.bit_generator.state for k, g in self._numpy.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"random streams saved for seed {state['seed']}, not {self.seed}")
        self._keys = {k: jax.numpy.asarray(v, jax.numpy.uint32) for k, v in state["keys"].items()}
        for name, bit_state in state["numpy"].items():
            self.numpy(name).bit_generator.state = bit_state
