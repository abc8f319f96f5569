"""Model-based RL in JAX: DreamerV3 and PETS on shared replay, environments, training loop."""
from dreamer.agent import Agent, TrainState
from dreamer.config import Config, ConfigError, load_config
from dreamer.envs import Env, EnvError, Space, make_env
from dreamer.replay import Replay

__all__ = ["Agent", "Config", "ConfigError", "Env", "EnvError", "Replay", "Space", "TrainState",
           "load_config", "make_env"]
