import pickle

import pytest
import yaml

from dreamer import yamlio
from dreamer.cli import parse_args
from dreamer.config import (
    Config,
    ConfigError,
    available_agents,
    available_presets,
    default_configs_dir,
    key_choices,
    load_config,
    parse_kwargs,
)
from dreamer.run.clocks import updates_per_frame

SIZES = ["size1m", "size12m", "size25m", "size50m", "size100m", "size200m", "size400m"]
TASKS = ["atari100k", "debug", "demo", "dmc_proprio", "dmc_vision", "gym", "minatar"]
MODIFIERS = ["cpu", "pets_small", "mbpo_inverted_pendulum", "mbpo_hopper", "mbpo_walker2d",
             "mbpo_halfcheetah"]  # applied after a task or agent preset
AGENTS = ["dreamerv3", "pets", "dyna_q", "prioritized_sweeping", "muzero", "mbpo"]  # each agent's own settings


def test_defaults_have_the_types_written_in_defaults_yaml():
    cfg = Config()
    assert cfg.seed == 0 and cfg.logdir == ""
    assert cfg.model.deter == 8192 and cfg["model.deter"] == 8192
    assert cfg.run.steps == 1_000_000 and type(cfg.run.steps) is int  # written 1e6
    assert cfg.replay.capacity == 5_000_000 and type(cfg.replay.capacity) is int
    assert cfg.ac.entropy == pytest.approx(3e-4) and type(cfg.ac.entropy) is float  # written 3e-4
    assert cfg.opt.eps == 1e-20
    assert cfg.model.mults == (2, 3, 4, 4)
    assert cfg.env.size == (64, 64)
    assert cfg.jax.jit is True and cfg.env.sticky is True
    assert isinstance(cfg.model, Config) and cfg["model"] == cfg.model


def test_mapping_views():
    cfg = Config()
    assert "model.deter" in cfg and "model.detr" not in cfg and "model" in cfg
    assert list(cfg)[:2] == ["seed", "logdir"]
    assert cfg.to_dict()["model"]["mults"] == [2, 3, 4, 4]
    flat = cfg.flat()
    assert flat["model.deter"] == 8192 and flat["env.size"] == [64, 64]
    assert len(flat) == sum(len(v) if isinstance(v, Config) else 1 for v in cfg.values())


def test_frozen_and_hashable():
    cfg = Config()
    with pytest.raises(AttributeError, match="immutable"):
        cfg.seed = 1
    with pytest.raises(AttributeError, match="immutable"):
        cfg.model.deter = 1
    with pytest.raises(TypeError):
        cfg["seed"] = 1
    assert hash(cfg) == hash(Config())
    assert cfg == Config() and cfg != cfg.update({"seed": 1})
    assert {cfg: 1}[Config()] == 1
    assert cfg.update({"seed": 1}).seed == 1 and cfg.seed == 0  # update returns a new config


def test_pickle_round_trip():
    cfg = load_config(["debug"], {"seed": 3})
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and hash(again) == hash(cfg) and again.model.mults == (2, 2)
    with pytest.raises(AttributeError):
        again.seed = 1


def test_presets_apply_in_order():
    assert load_config(["size1m", "size12m"]).model.deter == 2048
    assert load_config(["size12m", "size1m"]).model.deter == 512
    # A preset changes only what it names.
    cfg = load_config(["dmc_vision", "size1m"])
    assert cfg.env.task == "dmc_walker_walk" and cfg.run.train_ratio == 256
    assert cfg.model.deter == 512 and cfg.model.stoch == 32
    # Overrides come after every preset.
    assert load_config(["debug"], {"model.deter": 64}).model.deter == 64


def test_size_presets_match_dreamerv3():
    expected = {  # deter, hidden, classes, depth, units (DreamerV3 2024 code)
        "size1m": (512, 64, 4, 4, 64), "size12m": (2048, 256, 16, 16, 256),
        "size25m": (3072, 384, 24, 24, 384), "size50m": (4096, 512, 32, 32, 512),
        "size100m": (6144, 768, 48, 48, 768), "size200m": (8192, 1024, 64, 64, 1024),
        "size400m": (12288, 1536, 96, 96, 1536),
    }
    for name, values in expected.items():
        m = load_config([name]).model
        assert (m.deter, m.hidden, m.classes, m.depth, m.units) == values, name
    assert load_config(["size200m"]) == load_config([])


def test_the_agents_own_preset_applies_first_and_others_start_from_plain_defaults():
    dreamer = load_config([])
    assert (dreamer.replay.online, dreamer.replay.context, dreamer.logger.report_every) == (
        True, True, 2000)
    plain = Config()
    assert (plain.replay.online, plain.replay.context, plain.logger.report_every) == (
        False, False, 0)
    pets = load_config([], {"agent": "pets"})  # its preset, unnamed: applied after the defaults
    assert pets == load_config(["pets"]) and pets.batch_size == 128
    assert not pets.replay.context and not pets.replay.online
    # Before the named presets when unnamed; where named otherwise.
    assert load_config(["dmc_proprio"], {"agent": "pets"}).run.train_ratio == 1024
    assert load_config(["dmc_proprio", "pets"]).run.train_ratio == 256
    assert load_config(["dmc_proprio"]).replay.context


@pytest.mark.parametrize("task", TASKS)
def test_every_preset_combines_with_every_size(task):
    assert set(available_presets()) == set(SIZES + TASKS + MODIFIERS + AGENTS)
    for size in SIZES:
        cfg = load_config([task, size])
        assert cfg.model.deter == load_config([size]).model.deter
        assert cfg.env.task == load_config([task]).env.task


def test_debug_preset_is_consistent():
    cfg = load_config(["debug"])
    assert cfg.env.size[0] >> len(cfg.model.mults) == 4  # the decoder's 4x4 starting resolution
    assert cfg.model.deter % cfg.model.blocks == 0
    assert cfg.run.prefill < cfg.run.steps


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("run.steps", "1e6", 1_000_000),  # int key, exponent notation
        ("run.steps", "2.5e5", 250_000),  # integral float for an int key
        ("run.steps", 1e6, 1_000_000),
        ("run.steps", "1_000", 1000),
        ("seed", "-3", -3),
        ("opt.model_lr", "3e-4", 3e-4),  # float key (PyYAML alone would read a string)
        ("opt.model_lr", "1", 1.0),  # int accepted for a float key
        ("ac.entropy", 0, 0.0),
        ("jax.jit", "false", False),
        ("jax.jit", "True", True),
        ("env.sticky", False, False),
        ("env.size", "32,32", (32, 32)),  # comma list
        ("env.size", "[48, 48]", (48, 48)),  # YAML list
        ("env.size", [16, 16], (16, 16)),
        ("model.mults", "2", (2,)),
        ("model.mults", "[1,2]", (1, 2)),
        ("env.task", "gym_CartPole-v1", "gym_CartPole-v1"),
        ("env.task", "1e6", "1e6"),  # strings stay as written
        ("logdir", "", ""),
    ],
)
def test_override_types(key, text, expected):
    value = Config().update({key: text})[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("run.steps", "1.5", "int"),
        ("run.steps", 2.5, "int"),
        ("run.steps", "abc", "int"),
        ("run.steps", True, "int"),
        ("opt.model_lr", "fast", "float"),
        ("jax.jit", "yes", "bool"),  # only true/false are booleans
        ("jax.jit", 1, "bool"),
        ("env.task", 3, "str"),
        ("env.size", "32,x", "list of int"),
        ("env.size", 32, "list of int"),
        ("model.mults", [1.5], "list of int"),
    ],
)
def test_wrong_type_names_key_value_and_type(key, value, expected):
    with pytest.raises(ConfigError) as info:
        Config().update({key: value})
    message = str(info.value)
    assert repr(key) in message and f"expected {expected}" in message
    assert str(value) in message


def test_unknown_key_suggests_close_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.detr'.*'model.deter'"):
        Config().update({"model.detr": 5})
    with pytest.raises(ConfigError, match=r"'model.deter'"):  # a key without its section
        Config().update({"deter": 5})
    with pytest.raises(ConfigError, match=r"'run.steps'"):
        Config().update({"run.steps.x": 5})
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz'.*seed, logdir"):
        Config().update({"zzz": 5})
    with pytest.raises(ConfigError, match=r"unknown config key 'model.model'"):
        Config().update({"model": {"model": {"deter": 5}}})
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        load_config([], {"model.detr": 5})


def test_sections_and_values_do_not_mix():
    with pytest.raises(ConfigError, match="'model' is a section"):
        Config().update({"model": 5})
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        Config().update({"seed": {"x": 1}})
    assert Config().update({"model": {"deter": 5}}).model.deter == 5


def test_section_update_keeps_section_prefix():
    model = Config().model.update({"deter": 7})
    assert model.deter == 7 and model.hidden == 1024
    with pytest.raises(ConfigError, match="'model.detr'"):
        Config().model.update({"detr": 7})


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError) as info:
        load_config(["dmc_visoin"])
    message = str(info.value)
    assert "'dmc_visoin'" in message and "did you mean 'dmc_vision'" in message
    for name in available_presets():
        assert name in message


def test_preset_errors_name_the_preset(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("defaults", "dreamerv3"):
        (configs / f"{name}.yaml").write_text((default_configs_dir() / f"{name}.yaml").read_text())
    (configs / "broken.yaml").write_text("model:\n  detr: 3\n")
    (configs / "badtype.yaml").write_text("env:\n  sticky: no\n")
    assert available_presets(configs) == ["badtype", "broken", "dreamerv3"]
    with pytest.raises(ConfigError, match=r"model.detr.*preset 'broken'.*model.deter"):
        load_config(["broken"], configs_dir=configs)
    with pytest.raises(ConfigError, match=r"env.sticky.*bool.*preset 'badtype'"):
        load_config(["badtype"], configs_dir=configs)


def test_preset_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("run.steps: 5e3\nmodel: {deter: 16}\n")
    cfg = load_config(["debug", str(path)])
    assert cfg.run.steps == 5000 and cfg.model.deter == 16


def test_save_load_round_trip(tmp_path):
    cfg = load_config(["debug"], {"env.task": "1e6", "logdir": "yes", "opt.eps": 1e-8,
                                  "ac.entropy": 1e30})
    path = tmp_path / "config.yaml"
    cfg.save(path)
    assert yaml.safe_load(path.read_text())["model"]["mults"] == [2, 2]
    assert Config.load(path) == cfg
    # A partial file loads on top of the defaults and is validated.
    path.write_text("seed: 4\n")
    assert Config.load(path) == Config().update({"seed": 4})
    path.write_text("seed: four\n")
    with pytest.raises(ConfigError, match="'seed'"):
        Config.load(path)


# The order of sections that runs wrote before the agents' sections moved to their presets.
OLD_ORDER = ["seed", "logdir", "agent", "jax", "env", "run", "logger", "replay", "batch_size",
             "batch_length", "parallel", "actors", "model", "ac", "opt", "pets", "mpc", "dyna"]


def test_a_saved_config_holds_every_section_and_an_older_one_loads(tmp_path):
    cfg = load_config(["pets"], {"pets.units": 64, "model.deter": 32})
    path = tmp_path / "config.yaml"
    cfg.save(path)
    assert set(yaml.safe_load(path.read_text())) == {*OLD_ORDER, "muzero", "mbpo"}  # added since
    assert Config.load(path) == cfg
    tree = cfg.to_dict()
    path.write_text(yamlio.dump({k: tree[k] for k in OLD_ORDER}))
    assert Config.load(path) == cfg


def test_parse_args_grammar(tmp_path):
    cfg, extra = parse_args([
        "--configs", "debug", "size1m", "--run.steps=1e6", "--env.size=32,32", "--seed", "1",
        "--logdir", str(tmp_path), "--jax.jit=false", "--ac.entropy", "-1e-3",
        "--model.mults=[1,2]",
    ])
    assert cfg.model.deter == 512  # size1m after debug
    assert cfg.batch_size == 4  # from debug
    assert cfg.run.steps == 1_000_000 and cfg.env.size == (32, 32) and cfg.seed == 1
    assert cfg.logdir == str(tmp_path) and cfg.jax.jit is False and cfg.ac.entropy == -1e-3
    assert cfg.model.mults == (1, 2)
    assert extra["configs"] == ["debug", "size1m"]
    assert extra.overrides["run.steps"] == "1e6"
    assert parse_args(["--configs=debug,size1m"])[0] == load_config(["debug", "size1m"])
    assert parse_args([])[0] == load_config([])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model.detr=5"], "did you mean 'model.deter'"),
        (["--configs", "nope"], "available presets"),
        (["--configs"], "--configs needs a value"),
        (["--seed"], "--seed needs a value"),
        (["--seed", "--run.steps=3"], "--seed needs a value"),
        (["--sed=1"], "unknown option '--sed'; did you mean --seed?"),
        (["debug"], "unexpected argument 'debug'"),
        (["--run.steps=fast"], "expected int"),
        (["--model=3"], "'model' is a section"),
    ],
)
def test_parse_args_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(argv)


def test_help_lists_presets_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--configs", "debug", "-h"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--configs" in out
    for name in available_presets():
        assert name in out



def test_agent_on_the_command_line_applies_its_preset():
    cfg, _ = parse_args(["--agent=pets"])
    assert cfg == load_config([], {"agent": "pets"}) and cfg.batch_size == 128
    assert not cfg.replay.context and cfg.logger.report_every == 0  # not DreamerV3's settings
    cfg, _ = parse_args(["--configs", "dmc_proprio", "--agent", "pets", "--batch_size=8"])
    assert cfg.run.train_ratio == 1024 and cfg.batch_size == 8 and cfg.env.obs == "vector"
    with pytest.raises(ConfigError, match=r"\(in command line\)"):
        parse_args(["--run.steps=fast"])


def test_a_bare_boolean_switch_sets_it_true():
    cfg, info = parse_args(["--logger.wandb", "--jax.jit", "false", "--run.steps=10"])
    assert cfg.logger.wandb is True and cfg.jax.jit is False and cfg.run.steps == 10
    assert info.overrides["logger.wandb"] == "true"


# The 2024 code's benchmark settings (dreamerv3/configs.yaml at e3f0224): train ratio per agent
# step, action repeat, batch 16 x 64, model size, environments stepped together (its default 16
# unless the preset sets them); and the updates per simulator frame they give.
OFFICIAL_2024 = {
    "dmc_proprio": {"train_ratio": 1024, "action_repeat": 1, "deter": 512, "envs": 16,
                    "per_frame": 1.0},
    "dmc_vision": {"train_ratio": 256, "action_repeat": 1, "deter": 8192, "envs": 16,
                   "per_frame": 0.25},
    "atari100k": {"train_ratio": 256, "action_repeat": 4, "deter": 8192, "envs": 1,
                  "per_frame": 0.0625},
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_2024))
def test_benchmark_presets_train_at_the_2024_codes_update_density(preset):
    official = OFFICIAL_2024[preset]
    cfg = load_config([preset])
    assert (cfg.batch_size, cfg.batch_length) == (16, 64)
    assert cfg.run.train_ratio == official["train_ratio"]
    assert cfg.env.action_repeat == official["action_repeat"]
    assert cfg.model.deter == official["deter"]
    assert cfg.run.envs == official["envs"]
    expected = official["train_ratio"] / (16 * 64 * official["action_repeat"])
    assert updates_per_frame(cfg) == pytest.approx(expected) == official["per_frame"]
    # The global batch grows with the devices; the ratio then gives fewer, larger updates.
    assert updates_per_frame(cfg, devices=4) == pytest.approx(expected / 4)
    # No random prefill: the policy acts from the first step (2024 code).
    assert cfg.run.prefill == 0


@pytest.mark.parametrize("task", ["dmc_proprio", "gym", "dmc_vision"])
def test_cpu_preset_keeps_the_task_and_sets_a_cpu_budget(task):
    """`--configs TASK cpu`: the task's environment, with our 2-core model and train ratio."""
    base, cfg = load_config([task]), load_config([task, "cpu"])
    assert (cfg.env.task, cfg.env.obs, cfg.run.steps) == (base.env.task, base.env.obs,
                                                          base.run.steps)
    assert (cfg.model.deter, cfg.batch_length, cfg.env.action_repeat) == (256, 32, 2)
    assert cfg.run.envs == 1
    assert updates_per_frame(cfg) == pytest.approx(128 / (16 * 32 * 2))


def test_choice_keys_reject_other_values_when_the_config_is_made():
    with pytest.raises(ConfigError, match=r"'model.norm': 'batch'; choose one of 'rms', 'layer'"):
        load_config([], {"model.norm": "batch"})
    with pytest.raises(ConfigError, match=r"'ac.actor_grad'.*choose one of"):
        Config().update({"ac.actor_grad": "backprop"})
    with pytest.raises(ConfigError, match=r"'agent': 'alphazero'; choose one of 'dreamerv3', "
                                          r"'dyna_q', 'mbpo', 'muzero', 'pets'.*configs/NAME.yaml"):
        Config({"agent": "alphazero"})
    with pytest.raises(ConfigError, match=r"'dyna.backup': 'full'; choose one of 'sample'"):
        parse_args(["--dyna.backup=full"])
    for key, choices in key_choices().items():
        assert Config()[key] in choices, key  # every default is a valid choice
        for value in choices:
            assert Config({key: value})[key] == value


def test_gym_kwargs_are_name_value_items_read_as_yaml():
    cfg = load_config([], {"env.gym_kwargs": "map_name=8x8,is_slippery=false, max_steps = 5"})
    assert cfg.env.gym_kwargs == ("map_name=8x8", "is_slippery=false", "max_steps = 5")
    assert parse_kwargs("env.gym_kwargs", cfg.env.gym_kwargs) == {
        "map_name": "8x8", "is_slippery": False, "max_steps": 5}
    assert parse_kwargs("env.gym_kwargs", Config().env.gym_kwargs) == {}
    for bad, match in [("is_slippery", "write name=value"), ("8x8=map", "write name=value"),
                       ("a=1,a=2", "sets 'a' twice"), ("a=[1", "invalid value in item")]:
        with pytest.raises(ConfigError, match=rf"'env.gym_kwargs'.*{match}|{match}.*'env.gym_kwargs'"):
            load_config([], {"env.gym_kwargs": bad})
    with pytest.raises(ConfigError, match="write name=value"):
        Config().update({"env": {"gym_kwargs": [3]}})


def test_choices_agree_with_the_code_that_reads_them():
    import jax
    import jax.numpy as jnp

    from dreamer.agents import AGENTS
    from dreamer.agents.dreamerv3.agent import compute_dtype
    from dreamer.agents.dreamerv3.behavior import ACTOR_GRADS
    from dreamer.agents.dyna import BACKUPS
    from dreamer.agents.muzero.agent import BOOTSTRAPS
    from dreamer.config import CHOICES
    from dreamer.core import planners
    from dreamer.core.nets import ACTS, NORMS, Norm
    from dreamer.core.parallel import BACKENDS
    from dreamer.envs.base import OBS_MODES
    from dreamer.envs.pgx import OPPONENTS

    choices = key_choices()
    assert set(choices) >= set(CHOICES) and choices["env.obs"] == OBS_MODES
    assert choices["parallel.backend"] == BACKENDS and choices["env.opponent"] == OPPONENTS
    for name in choices["jax.compute_dtype"]:
        compute_dtype(name, "cpu")
    # The agents are their presets; every one registered, and only those.
    assert sorted(choices["agent"]) == sorted(available_agents()) == sorted(AGENTS)
    # The agents' own keys, whose choices their presets give.
    assert choices["model.act"] == choices["pets.act"] == tuple(ACTS)
    assert choices["mbpo.act"] == choices["mbpo.sac_act"] == tuple(ACTS)
    assert choices["model.norm"] == NORMS
    for name in NORMS:
        Norm(name).init_with_output(jax.random.key(0), jnp.ones((1, 4)))
    assert choices["ac.actor_grad"] == ACTOR_GRADS
    assert choices["pets.planner"] == choices["mpc.planner"] == planners.PLANNERS
    for name in planners.PLANNERS:
        assert callable(getattr(planners, name))
    assert choices["dyna.backup"] == BACKUPS
    assert choices["muzero.bootstrap"] == BOOTSTRAPS


def test_mbpo_task_presets_hold_the_official_settings():
    """jannerm/mbpo examples/config/<task>/0.py: schedules, updates per env step, entropies."""
    official = {"mbpo_inverted_pendulum": ((1, 15, 1, 1), 10, -0.05, 250),
                "mbpo_hopper": ((20, 150, 1, 15), 20, -1.0, 1000),
                "mbpo_walker2d": ((20, 150, 1, 1), 20, -3.0, 1000),
                "mbpo_halfcheetah": ((20, 150, 1, 1), 40, -3.0, 1000)}
    for name, (schedule, updates, entropy, epoch) in official.items():
        cfg = load_config(["mbpo", name])
        assert cfg.agent == "mbpo" and cfg.env.task.startswith("gym_")
        assert tuple(cfg.mbpo.rollout_schedule) == schedule and cfg.mbpo.updates == updates
        assert cfg.mbpo.target_entropy == entropy and cfg.mbpo.epoch == epoch
        # One train step per env step, 400 rollouts per env step kept for one epoch.
        assert cfg.run.train_ratio == cfg.batch_size * (cfg.batch_length - 1)
        assert cfg.mbpo.rollouts == 400 and cfg.mbpo.retain == epoch
        assert cfg.mbpo.real_ratio == 0.05 and cfg.mbpo.members == 7 and cfg.mbpo.elites == 5


def test_pets_small_sizes_only_the_pets_section():
    cfg, small = load_config(["pets"]), load_config(["pets", "pets_small"])
    assert small.agent == "pets" and small.pets.units < cfg.pets.units
    assert small.pets.particles % small.pets.members == 0
    assert small.pets.elites < small.pets.candidates
    differ = {k for k, v in small.flat().items() if cfg.flat()[k] != v}
    assert differ == {"pets.units", "pets.candidates", "pets.iterations", "pets.particles"}
