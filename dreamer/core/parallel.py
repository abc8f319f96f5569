"""Device parallelism lives here: the axis name, the data-parallel wrapper of the per-device
train step (`jax.pmap` or `jax.shard_map` over a 1-D mesh), replicate / shard / unreplicate,
a batch prefetcher, and the multi-host switch with the few values processes exchange.

The step is written per device (`DreamerV3(axis_name=AXIS)`): it averages gradients and metrics with
`mean_over` and gathers return statistics, so N devices holding B sequences each compute the
update of one device holding all N*B. The state is kept as N identical replicas stacked along a
leading device axis that the mesh shards, with both backends. shard_map runs with
`check_vma=False`: the step's own `pmean` is then the only reduction. (With the check on, the
gradients of device-invariant inputs come back already summed over devices, and a further pmean
would scale them by N; the tests catch that with plain SGD.)

Several processes (`initialize_distributed`; one per host, or several on one machine) form one
mesh of all their devices. Each process runs the same program: it feeds the sequences of its own
devices (`shard`), holds the replicas of its own devices, and reads results from them; the step's
reductions cross the processes. Every process must call the step, and anything else that
communicates, the same number of times in the same order.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamer.config import CHOICES, ConfigError

AXIS = "devices"
BACKENDS = CHOICES["parallel.backend"]


def mean_over(tree: Any, axis_name: str | None) -> Any:
    """Average every leaf over the device axis when running under it; identity otherwise."""
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)


def sum_over(tree: Any, axis_name: str | None) -> Any:
    """Sum every leaf over the device axis when running under it; identity otherwise."""
    if axis_name is None:
        return tree
    return jax.lax.psum(tree, axis_name)


def gather_over(tree: Any, axis_name: str | None) -> Any:
    """Every device's rows of each leaf [B, ...] concatenated in device order, [N*B, ...], when
    running under the device axis; identity otherwise. The device order is the host batch's."""
    if axis_name is None:
        return tree
    return jax.lax.all_gather(tree, axis_name, tiled=True)


def row_keys(key: jax.Array, rows: int, axis_name: str | None) -> jax.Array:
    """One key per row of the batch, derived from the row's index in the global batch, so that
    N devices holding B/N rows each draw exactly what one device holding all B rows draws."""
    index = jax.numpy.arange(rows)
    if axis_name is not None:
        index = index + jax.lax.axis_index(axis_name) * rows
    return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def initialize_distributed(coordinator: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Join a multi-host run (TPU pod slice, multi-node GPU, or several processes on one machine)
    before any other JAX call.

    With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI); otherwise pass the
    coordinator's `host:port` (process 0's address; the port must be free there), the number of
    processes and this process's index. On the CPU backend the processes' collectives go through
    gloo over TCP (`jax_cpu_collectives_implementation`, whose default in the pinned jax is
    "gloo"), so that several CPU processes on one machine can stand in for several hosts.
    """
    kwargs: dict[str, Any] = {}
    if coordinator:
        kwargs["coordinator_address"] = coordinator
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)


def select_devices(count: int = 0) -> list[jax.Device]:
    """The first `count` devices of the default backend (0: all of them), across all hosts.
    Every process must hold the same number of them: each feeds the sequences of its own."""
    devices = jax.devices()
    if count > len(devices):
        platform = devices[0].platform
        hint = (" For fake CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{count} before starting Python." if platform == "cpu" else "")
        raise ConfigError(f"parallel.devices={count} but only {len(devices)} {platform} "
                         f"device(s) are available.{hint}")
    chosen = devices[:count] if count else devices
    held = [sum(d.process_index == p for d in chosen) for p in range(jax.process_count())]
    if len(set(held)) > 1:
        raise ConfigError(f"parallel.devices={count} gives the {jax.process_count()} processes "
                          f"{held} devices: each needs the same number (0 uses all devices).")
    return chosen


def process_zero_value(value: int) -> int:
    """Process 0's `value` on every process (itself in a single-process run): for decisions that
    all processes must take together, such as when to write a checkpoint."""
    if jax.process_count() == 1:
        return int(value)
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def gather_json(value: Any) -> list[Any]:
    """A JSON-serialisable `value` of every process, in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.int32(data.size))
    # Padded to a power of two, so that the gather compiles for a few lengths only.
    padded = np.zeros(1 << int(sizes.max() - 1).bit_length(), np.uint8)
    padded[:data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes, strict=True)]


def assert_processes_equal(tree: Any, what: str = "state") -> None:
    """Raises unless every process holds the same `tree` (host arrays or single copies),
    compared bit for bit by one checksum per leaf."""
    if jax.process_count() == 1:
        return
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    sums = np.array([zlib.crc32(np.ascontiguousarray(x).tobytes()) for _, x in leaves],
                    np.uint32)
    every = multihost_utils.process_allgather(sums)
    for p in range(1, len(every)):
        differs = np.flatnonzero(every[p] != every[0])
        if differs.size:
            raise AssertionError(f"{what} differs between process 0 and process {p} at "
                                 f"{jax.tree_util.keystr(leaves[differs[0]][0])}")


class DataParallel:
    """Runs `step(state, batch, key) -> (state, metrics)` on every device of a 1-D mesh.

    `state` is replicated (leading device axis), `batch` is split along its first axis (each
    device gets B/N sequences), `key` is shared, metrics come back averaged (one copy).
    """

    def __init__(self, step: Callable, devices: Sequence[jax.Device], backend: str = "pmap",
                 donate: bool = True):
        if backend not in BACKENDS:
            raise ConfigError(f"unknown parallel.backend {backend!r}: use one of {BACKENDS}")
        self.devices = list(devices)
        self.size = len(self.devices)
        self.backend = backend
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.sharding = NamedSharding(self.mesh, P(AXIS))
        donate_args = (0,) if donate else ()
        if backend == "pmap":
            self._step = jax.pmap(step, AXIS, in_axes=(0, 0, None), devices=self.devices,
                                  donate_argnums=donate_args)
        else:
            def per_device(state, batch, key):
                state, batch = jax.tree.map(lambda x: x[0], (state, batch))
                state, metrics, rows = step(state, batch, key)
                return jax.tree.map(lambda x: x[None], (state, rows)) + (metrics,)

            self._step = jax.jit(jax.shard_map(
                per_device, mesh=self.mesh, in_specs=(P(AXIS), P(AXIS), P()),
                out_specs=(P(AXIS), P(AXIS), P()), check_vma=False),
                donate_argnums=donate_args)

    def __call__(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, Any, Any]:
        """(state, metrics, rows): `rows` are the step's per-sequence outputs, [N, B/N, ...]
        split over the devices like the batch (see `local_rows`)."""
        if self.backend == "pmap":
            state, metrics, rows = self._step(state, batch, key)
            return state, jax.tree.map(lambda x: x[0], metrics), rows
        state, rows, metrics = self._step(state, batch, key)
        return state, metrics, rows

    def local_rows(self, rows: Any) -> Any:
        """Per-sequence outputs [N, B/N, ...] -> this host's rows [local B, ...] as host arrays,
        in the order of the host batch given to `shard`."""
        def get(x):
            shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
            data = np.concatenate([np.asarray(s.data) for s in shards])
            return data.reshape((-1, *data.shape[2:]))
        return jax.tree.map(get, rows)

    def replicate(self, tree: Any) -> Any:
        """One copy of `tree` on every device, stacked along a leading device axis."""
        def put(x):
            x = np.asarray(x)
            shards = [jax.device_put(x[None], d) for d in self.sharding.addressable_devices]
            return jax.make_array_from_single_device_arrays(
                (self.size, *x.shape), self.sharding, shards)
        return jax.tree.map(put, jax.device_get(tree))

    def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host batch [B, ...] (this host's sequences) -> [N, B/N, ...] split over the devices."""
        local = len(self.sharding.addressable_devices)

        def put(x):
            if x.shape[0] % local:
                raise ValueError(f"a batch of {x.shape[0]} sequences does not split over "
                                 f"{local} devices")
            x = x.reshape((local, x.shape[0] // local, *x.shape[1:]))
            return jax.make_array_from_process_local_data(self.sharding, x)
        return jax.tree.map(put, batch)

    def unreplicate(self, tree: Any) -> Any:
        """The first device's copy of a replicated tree, as host arrays."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0]), tree)

    def assert_replicas_equal(self, tree: Any, what: str = "state") -> None:
        """Raises if any device holds a copy that differs (bitwise) from the first: the devices
        of this process directly, those of other processes by checksums."""
        for path, x in jax.tree_util.tree_leaves_with_path(tree):
            shards = [np.asarray(s.data) for s in x.addressable_shards]
            for i, other in enumerate(shards[1:], 1):
                if not np.array_equal(shards[0], other, equal_nan=True):
                    raise AssertionError(
                        f"{what} differs between device 0 and device {i} at "
                        f"{jax.tree_util.keystr(path)}")
        assert_processes_equal(self.unreplicate(tree), what)


class Prefetcher:
    """Samples and places the next `depth` batches on the devices in a background thread, so
    the learner does not wait on host-to-device copies. `wait_fraction` is the share of time
    `next` spent blocked since the last call to `reset_wait`."""

    def __init__(self, sample: Callable[[], Any], place: Callable[[Any], Any], depth: int = 2):
        self._sample, self._place = sample, place
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._waited = 0.0
        self._since = time.perf_counter()
        self._thread = threading.Thread(target=self._work, daemon=True, name="prefetch")
        self._thread.start()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._place(self._sample())
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except Exception as e:  # noqa: BLE001 (re-raised in `next`)
            self._error = e

    def next(self) -> Any:
        start = time.perf_counter()
        while True:
            try:
                batch = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if self._error is not None:
                    raise RuntimeError("batch prefetching failed") from self._error
                if not self._thread.is_alive():
                    raise RuntimeError("batch prefetching stopped")
        self._waited += time.perf_counter() - start
        return batch

    def wait_fraction(self) -> float:
        """Share of wall-clock time spent waiting in `next` since the last call."""
        now = time.perf_counter()
        fraction = self._waited / max(now - self._since, 1e-9)
        self._waited, self._since = 0.0, now
        return fraction

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

