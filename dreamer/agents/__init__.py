"""The agent interface, and the agents that implement it, selected by `--agent=NAME`.

The training loops, the learner, the actor processes, checkpoints, evaluation and `dreamer-eval`
know an agent only through `Agent` below; everything else about it is its own business (its
config section, networks and losses). `AGENTS` maps each name to a factory that imports the
agent's module only when it is chosen.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from dreamer.agents.modes import MODES, check_mode
from dreamer.config import ConfigError

__all__ = ["AGENTS", "MODES", "Agent", "check_agent", "check_mode", "make_agent"]


class Agent(Protocol):
    """What the shared parts use of an agent.

    - `init(key) -> state`: one pytree holding everything that changes between updates; its
      `params` field is what the policy acts with.
    - `train_step(state, batch, key) -> (state, metrics, replay_updates)`: pure and written per
      device; reductions over `axis_name` only when it is set, so N devices holding B/N
      sequences each compute the update of one device holding B. `batch` holds
      [B, sequence_length, ...] arrays of the replay (the `obs_keys`, `action`, `reward`,
      `is_first`, `is_last`, `is_terminal`, the policy's stored `outputs` and `step_id`, each
      step's global insert index, which is unique and fixed for the run); with
      `replay.prioritized` also `weight` [B], each sequence's importance-sampling weight.
      `metrics['nonfinite']` is 1 when the update was skipped (the state is returned unchanged).
      `replay_updates` ({key: [B, n, ...]}, often empty) replace the stored policy outputs of
      each sequence's last n steps; the reserved key `priority` [B] is instead each
      sequence's new priority (e.g. its largest |TD error|), used under `replay.prioritized`,
      and the reserved key `update_rows` (bool [B]) limits the per-step values to the
      sequences it marks.
    - `policy(params, carry, obs, key, mode) -> (carry, action [N, A], outputs)`: one acting
      step for N environments; actions are one-hot for discrete spaces. `outputs`
      ({key: [N, ...]}) are stored in the replay beside the step. `mode` is one of `MODES`
      (`dreamer.agents.modes`): 'sample' explores and collects the training data, 'eval' is
      the policy the agent's paper evaluates with (evaluation during training and
      `dreamer-eval`), 'mode' is greedy; any other mode is a ValueError.
    - `policy_initial(n)`: the carry before the first step; `policy_outputs_initial(n)`: the
      outputs stored with steps that the policy did not choose (random prefill).
    - Optional `report(params, batch, key) -> {name: array}`: videos or figures for the logger.
    """

    act_dim: int
    obs_keys: tuple[str, ...]     # observation keys the agent reads
    sequence_length: int          # steps per replayed sequence (what the replay samples)
    trained_length: int           # of those, the steps the train ratio counts as trained
    acts_on_device: bool          # the policy belongs on the learner's accelerator (it plans)
    axis_name: str | None

    def init(self, key: jax.Array) -> Any: ...

    def train_step(self, state: Any, batch: dict[str, jax.Array], key: jax.Array
                   ) -> tuple[Any, dict[str, jax.Array], dict[str, jax.Array]]: ...

    def policy_initial(self, n: int) -> Any: ...

    def policy_outputs_initial(self, n: int) -> dict[str, np.ndarray]: ...

    def policy(self, params: Any, carry: Any, obs: dict[str, jax.Array], key: jax.Array,
               mode: str = "sample") -> tuple[Any, jax.Array, dict[str, jax.Array]]: ...


def _dreamerv3() -> Callable[..., Agent]:
    from dreamer.agents.dreamerv3 import DreamerV3

    return DreamerV3


def _pets() -> Callable[..., Agent]:
    from dreamer.agents.pets import PETS

    return PETS


def _dyna_q() -> Callable[..., Agent]:
    from dreamer.agents.dyna import DynaQ

    return DynaQ


def _prioritized_sweeping() -> Callable[..., Agent]:
    from dreamer.agents.dyna import PrioritizedSweeping

    return PrioritizedSweeping


def _muzero() -> Callable[..., Agent]:
    from dreamer.agents.muzero import MuZero

    return MuZero


def _mbpo() -> Callable[..., Agent]:
    from dreamer.agents.mbpo import MBPO

    return MBPO


AGENTS: dict[str, Callable[[], Callable[..., Agent]]] = {
    "dreamerv3": _dreamerv3, "pets": _pets, "dyna_q": _dyna_q,
    "prioritized_sweeping": _prioritized_sweeping, "muzero": _muzero, "mbpo": _mbpo}


def check_agent(name: str) -> None:
    """Raises ConfigError unless `name` is a known agent."""
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}: --agent must be one of {', '.join(AGENTS)}")


def make_agent(cfg: Any, obs_space: dict, act_space: Any, axis_name: str | None = None,
               platform: str | None = None) -> Agent:
    """The agent `cfg.agent` for these spaces; `axis_name` names the device axis of the train
    step, `platform` where it computes ('cpu' for acting on the host)."""
    check_agent(cfg.agent)
    return AGENTS[cfg.agent]()(cfg, obs_space, act_space, axis_name=axis_name,
                               platform=platform)
