"""The learner: the train state on the learner devices, updates on replayed batches, and the
policy parameters that acting reads (on the CPU, versioned by update count).

In a multi-host run (`parallel.distributed`) every process holds a learner over the devices of
all processes: it feeds its own devices from its own replay, and all processes compute the same
update. What leaves the devices (parameters for acting, the state for a checkpoint) is read from
this process's own devices and placed on its own CPU.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from dreamer.agents import make_agent
from dreamer.config import Config
from dreamer.core.parallel import AXIS, DataParallel, initialize_distributed, select_devices
from dreamer.run import interrupts


def setup_distributed(cfg: Config) -> None:
    """Joins the multi-host run when `parallel.distributed` is on (before any JAX call; see
    `dreamer.core.parallel.initialize_distributed`)."""
    p = cfg.parallel
    if p.distributed:
        initialize_distributed(p.coordinator, p.num_processes, p.process_id)


class Learner:
    """Runs the agent's `train_step` data-parallel over `parallel.devices` devices.

    Each update consumes `batch_size` sequences per local device (`self.batch_size` in all on
    this host). With `jax.jit=false` the step runs eagerly on one device, for debugging.
    """

    def __init__(self, cfg: Config, obs_space: dict, act_space: Any, key: jax.Array):
        self.cfg = cfg
        self.agent = make_agent(cfg, obs_space, act_space)
        self._cpu = jax.local_devices(backend="cpu")[0]  # this process's, also multi-host
        if not cfg.jax.jit:
            self.devices = [jax.local_devices()[0]]
            self._parallel = None
            self.state = self.agent.init(key)
        else:
            self.devices = select_devices(cfg.parallel.devices)
            parallel_agent = make_agent(cfg, obs_space, act_space, axis_name=AXIS)
            self._parallel = DataParallel(parallel_agent.train_step, self.devices,
                                          cfg.parallel.backend)
            with jax.default_device(self._cpu):
                state = jax.jit(self.agent.init)(key)
            self.state = self._parallel.replicate(state)
            self._parallel.assert_replicas_equal(self.state, "initial train state")
        local = [d for d in self.devices if d.process_index == jax.process_index()]
        self.batch_size = cfg.batch_size * len(local)
        self.updates = 0
        self._params: tuple[int, Any] | None = None
        self._device_params: tuple[int, Any] | None = None
        self._report = None

    def place(self, batch: dict[str, np.ndarray]) -> Any:
        """Host batch [self.batch_size, T, ...] -> split over the learner devices."""
        return batch if self._parallel is None else self._parallel.shard(batch)

    def update(self, batch: Any, key: jax.Array) -> tuple[dict[str, jax.Array], Any]:
        """One update on a host batch [self.batch_size, L, ...] or one already `place`d;
        returns (metrics, replay updates) without waiting for them (the next batch is sampled
        while the devices compute); `local_rows` turns the replay updates into host rows."""
        if isinstance(batch["is_first"], np.ndarray):
            batch = self.place(batch)
        # The step donates the state's buffers: a stop signal waits until the new one is bound.
        with interrupts.deferred():
            if self._parallel is None:
                self.state, metrics, rows = self.agent.train_step(self.state, batch, key)
            else:
                self.state, metrics, rows = self._parallel(self.state, batch, key)
            self.updates += 1
        return metrics, rows

    def local_rows(self, rows: Any) -> dict[str, np.ndarray]:
        """Replay updates of `update` -> host arrays [self.batch_size, ...] in batch order."""
        if self._parallel is None:
            return jax.device_get(rows)
        return self._parallel.local_rows(rows)

    @property
    def on_host(self) -> bool:
        """Whether the learner devices are the host's CPU."""
        return all(d.platform == "cpu" for d in self.devices)

    def params(self, max_lag: int = 0) -> Any:
        """The parameters on the CPU for acting, at most `max_lag` updates behind the learner:
        copied from the learner devices only when the last copy is older than that (0: the
        current parameters, copied at most once per update). A copy waits for the update in
        flight, so a lag lets the host act while an accelerator computes."""
        if self._params is None or self.updates - self._params[0] > max_lag:
            params = self.state.params
            if self._parallel is not None:
                params = self._parallel.unreplicate(params)
            self._params = (self.updates, jax.device_put(params, self._cpu))
        return self._params[1]

    def device_params(self) -> Any:
        """The current parameters on the first learner device, for a policy that acts there
        (`actors.policy_device`): no copy through the host; one per update."""
        if self._device_params is None or self._device_params[0] != self.updates:
            params = self.state.params
            if self._parallel is not None:
                params = jax.tree.map(lambda x: x.addressable_shards[0].data[0], params)
            self._device_params = (self.updates, params)
        return self._device_params[1]

    def host_state(self) -> Any:
        """The train state (one replica) on the CPU: what a checkpoint holds."""
        state = self.state
        if self._parallel is not None:
            state = self._parallel.unreplicate(state)
        return jax.device_put(state, self._cpu)

    def load_state(self, state: Any, updates: int) -> None:
        """Continues from a restored `host_state()` after `updates` updates; every device gets
        the same copy, which is checked bit for bit."""
        if self._parallel is None:
            self.state = state
        else:
            self.state = self._parallel.replicate(state)
            self._parallel.assert_replicas_equal(self.state, "restored train state")
        self.updates = int(updates)
        self._params = self._device_params = None

    def report(self, batch: dict[str, np.ndarray], key: jax.Array) -> dict[str, np.ndarray]:
        """The agent's `report` (e.g. open-loop and reconstruction videos) of a host batch,
        computed on the first learner device; host arrays. Empty for agents without one."""
        if not hasattr(self.agent, "report"):
            return {}
        if self._report is None:
            fn = self.agent.report
            self._report = jax.jit(fn) if self.cfg.jax.jit else fn
        params = self.state.params
        if self._parallel is not None:
            params = self._parallel.unreplicate(params)
        return jax.device_get(self._report(params, batch, key))

    def check_replicas(self) -> None:
        if self._parallel is not None:
            self._parallel.assert_replicas_equal(self.state)
