"""Model-based RL in JAX: DreamerV3 and PETS on shared replay, environments, training loop."""
from dreamer.agents.dreamerv3 import DreamerV3, TrainState
from dreamer.config import Config, ConfigError, load_config
from dreamer.envs import Env, EnvError, Space, make_env
from dreamer.replay import Replay

__all__ = ["Config", "ConfigError", "DreamerV3", "Env", "EnvError", "Replay", "Space", "TrainState",
           "load_config", "make_env"]
