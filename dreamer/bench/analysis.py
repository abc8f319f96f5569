"""Looking into a trained run: load its newest checkpoint and replay, and ask the world model
for reconstructions, open-loop imagination under chosen actions, and reward predictions.

Used by `dreamer-eval` and the notebooks; every function returns arrays (no plotting).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dreamer.agents import Agent, make_agent
from dreamer.agents.dreamerv3 import world_model
from dreamer.config import Config, ConfigError
from dreamer.envs import make_env
from dreamer.replay import Replay
from dreamer.run.checkpoint import Checkpointer, CheckpointError, abstract


@dataclasses.dataclass
class TrainedRun:
    """A training logdir's config, agent and newest train state."""

    logdir: Path
    cfg: Config
    agent: Agent
    state: Any
    env_steps: int  # the checkpoint's env steps

    _compiled: dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        return self.state.params

    def compiled(self, name: str, build: Callable[[world_model.WorldModelNets], Callable]
                 ) -> Callable:
        """`build(nets)`, a jitted function of the params and arrays, made once per run, so
        repeated calls with the same shapes reuse one compilation."""
        if name not in self._compiled:
            self._compiled[name] = build(self.agent.wm)
        return self._compiled[name]


def load_run(logdir: str | Path) -> TrainedRun:
    """The newest readable checkpoint of a training logdir, restored on the CPU."""
    logdir = Path(logdir)
    if not (logdir / "config.yaml").is_file():
        raise ConfigError(f"{logdir} holds no config.yaml; pass the --logdir of a training run")
    cfg = Config.load(logdir / "config.yaml")
    env = make_env(cfg.env, 0)
    try:
        agent = make_agent(cfg, env.obs_space, env.act_space)
    finally:
        env.close()
    checkpoints = Checkpointer(logdir / "checkpoints")
    try:
        shapes = jax.eval_shape(agent.init, jax.random.PRNGKey(0))  # nothing computed
        found = checkpoints.restore(abstract(shapes, jax.devices("cpu")[0]))
    finally:
        checkpoints.close()
    if found is None:
        raise CheckpointError(f"no checkpoint in {logdir / 'checkpoints'}; train first "
                              f"(dreamer-train --logdir {logdir})")
    step, state, _ = found
    return TrainedRun(logdir, cfg, agent, state, step)


def replay_sample(run: TrainedRun, batch: int = 4, length: int | None = None, seed: int = 0,
                  max_steps: int = 20_000) -> dict[str, np.ndarray]:
    """`batch` sequences of `length` steps (default: the training length) from the newest
    `max_steps` steps of the run's replay (read only)."""
    length = length or run.cfg.batch_length
    replay = Replay(max_steps, length, run.logdir / "replay", run.cfg.replay.chunk, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if replay.load() == 0:
            raise ConfigError(f"{run.logdir / 'replay'} holds no steps")
    return replay.sample(batch)


def imagine(run: TrainedRun, batch: dict[str, np.ndarray], context: int,
            actions: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The model observes the first `context` frames of each sequence, then imagines the rest
    under `actions` [B, T - context, A] (default: the recorded ones).

    Returns `real` and `model` frames uint8 [B, T, H, W, C] (the model's first `context` frames
    are reconstructions), `recon` (reconstructions of all T frames) and `reward` [B, T - context],
    the rewards the model expects along its imagination."""
    if actions is None:
        actions = batch["action"][:, context - 1:-1]
    fn = run.compiled("imagine", _imagine)
    recon, dreamed, reward = jax.device_get(fn(
        run.params["wm"], batch, np.asarray(actions, np.float32), jax.random.PRNGKey(seed),
        context=context))
    model = np.concatenate([recon[:, :context], dreamed], 1)
    return {"real": batch["image"], "model": _to_uint8(model), "recon": _to_uint8(recon),
            "reward": reward}


def reward_predictions(run: TrainedRun, batch: dict[str, np.ndarray], seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) rewards [B, T] along replayed sequences, from posterior states."""
    fn = run.compiled("rewards", _rewards)
    return np.asarray(fn(run.params["wm"], batch, jax.random.PRNGKey(seed))), batch["reward"]


def _imagine(nets: world_model.WorldModelNets):
    def fn(params, batch, actions, key, context):
        states, imagined = world_model.open_loop_prediction(nets, params, batch, key, context,
                                                            actions)
        return (world_model.decode_images(nets, params, states),
                world_model.decode_images(nets, params, imagined),
                world_model.predict_rewards(nets, params, imagined))

    return jax.jit(fn, static_argnames="context")


def _rewards(nets: world_model.WorldModelNets):
    def fn(params, batch, key):
        states = world_model.posterior(nets, params, batch, key)
        return world_model.predict_rewards(nets, params, states)

    return jax.jit(fn)


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.round(frames * 255).astype(np.uint8)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16) -> Path:
    """Frames uint8 [T, H, W, C] -> an .mp4 or .gif file; returns the path."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
        return path
    with warnings.catch_warnings():  # ffmpeg runs as a subprocess, started right after fork
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        imageio.mimsave(path, list(frames), fps=fps, macro_block_size=1)
    return path


def side_by_side(*videos: np.ndarray) -> np.ndarray:
    """Videos [B, T, H, W, C] -> one video [T, B*H, n*W, C]: columns side by side, rows of B."""
    joined = np.concatenate(videos, axis=3)
    b, t, h, w, c = joined.shape
    return joined.transpose(1, 0, 2, 3, 4).reshape(t, b * h, w, c)
