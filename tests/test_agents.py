"""Every agent through the same loop: the agent interface, `--agent` selection, the policy mode
of collection and evaluation, two fake devices with two actor processes, then a resume that
continues counters and replay."""
import json
import types

import jax
import numpy as np
import pytest

from dreamer import cli
from dreamer.agents import AGENTS, MODES, make_agent
from dreamer.agents.dreamerv3.mpc import LatentMPC
from dreamer.config import ConfigError, load_config
from dreamer.envs import make_env
from dreamer.replay import stored_stamps
from dreamer.run import runner
from dreamer.run.clocks import updates_due

# The tiny configs of each agent: `debug` sizes DreamerV3; PETS gets a tiny ensemble and planner.
PETS_TINY = {"env.task": "builtin_reach", "pets.members": 2, "pets.particles": 2,
             "pets.units": 16, "pets.layers": 1, "pets.candidates": 16, "pets.elites": 4,
             "pets.iterations": 2, "pets.horizon": 4, "batch_size": 8, "batch_length": 3}
MUZERO_TINY = {"muzero.unroll": 2, "muzero.td_steps": 2, "batch_length": 5, "batch_size": 8,
               "muzero.latent": 8, "muzero.units": 16, "muzero.layers": 1,
               "muzero.simulations": 2, "muzero.considered": 3, "muzero.bins": 21,
               # its replay options too: reanalyse and prioritized replay through devices and resume
               "muzero.reanalyse": 0.25, "replay.prioritized": True, "replay.online": False}
MBPO_TINY = {"env.task": "builtin_reach", "mbpo.members": 3, "mbpo.elites": 2,
             "mbpo.units": 16, "mbpo.layers": 1, "mbpo.sac_units": 16, "mbpo.sac_layers": 1,
             "mbpo.rollouts": 8, "mbpo.retain": 4, "mbpo.updates": 2, "mbpo.sac_batch": 8,
             "mbpo.real_ratio": 0.25, "mbpo.model_warmup": 10, "batch_size": 8, "batch_length": 2,
             "replay.capacity": 1e4, "run.eval_episodes": 1}
# The tabular agents are tiny as they are; their presets already choose the Dyna maze.
TINY = {"dreamerv3": (["debug"], {}), "pets": (["debug", "pets"], PETS_TINY),
        "dyna_q": (["debug", "dyna_q"], {}),
        "prioritized_sweeping": (["debug", "prioritized_sweeping"], {}),
        "muzero": (["debug", "muzero"], MUZERO_TINY), "mbpo": (["debug", "mbpo"], MBPO_TINY)}
TRAINED = {"pets": lambda cfg: cfg.batch_length - 1,  # steps each sequence trains, if not all
           "muzero": lambda cfg: cfg.muzero.unroll + 1,
           "mbpo": lambda cfg: cfg.batch_length - 1}


def tiny_cfg(name, logdir, steps, **overrides):
    presets, values = TINY[name]
    return load_config(presets, {
        **values, "logdir": str(logdir), "run.steps": steps, "run.prefill": 100,
        "run.train_ratio": 32, "run.eval_every": 0, "run.eval_episodes": 1,
        "run.log_every": 0, "run.checkpoint_every": 0, "logger.console": False,
        "logger.report_every": 0, **overrides})


def test_every_agent_has_a_tiny_config():
    assert set(TINY) == set(AGENTS)


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_the_agent_interface(agent):
    cfg = tiny_cfg(agent, "", 100)
    env = make_env(cfg.env, 0)
    try:
        made = make_agent(cfg, env.obs_space, env.act_space)
    finally:
        env.close()
    assert made.act_dim == env.act_space.shape[-1] if not env.act_space.discrete else True
    assert set(made.obs_keys) <= set(env.obs_space)
    assert made.sequence_length >= 2 and made.axis_name is None
    assert 1 <= made.trained_length <= made.sequence_length
    for name in ("init", "train_step", "policy", "policy_initial", "policy_outputs_initial"):
        assert callable(getattr(made, name)), name


def test_an_unknown_agent_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="'alphazero'; choose one of") as raised:
        runner.run(tiny_cfg("dreamerv3", tmp_path, 100, agent="alphazero"))
    assert all(f"'{name}'" in str(raised.value) for name in AGENTS)
    assert "configs/NAME.yaml" in str(raised.value)  # the fix: an agent is its preset


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_each_agent_trains_on_two_devices_with_actor_processes_and_resumes(agent, tmp_path,
                                                                          capsys):
    cfg = tiny_cfg(agent, tmp_path, 250, **{"parallel.devices": 2, "actors.num": 2})
    first = runner.run(cfg)
    assert np.isfinite(first["eval/score"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = max(line["step"] for line in lines)
    assert steps >= 250
    assert any("train/updates" in line and line["train/updates"] > 0 for line in lines)
    assert all(np.isfinite(v) for line in lines for k, v in line.items()
               if k.startswith("train/loss/"))

    resumed = runner.run(cfg.update({"run.steps": steps + 100}))
    assert np.isfinite(resumed["eval/score"])
    assert f"{steps} env steps" in capsys.readouterr().err
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = max(line["step"] for line in lines)
    updates = max(line.get("train/updates", 0) for line in lines)
    # The learner owes updates for the steps received; it reads at most 2 chunks per actor
    # between checks, so it ends at most that many chunks' worth of updates short.
    trained = TRAINED.get(agent, lambda c: c.batch_length)(cfg)  # per sequence
    per_update = 2 * cfg.batch_size * trained  # trained steps, on 2 devices
    assert 0 <= updates_due(cfg, final, 2, trained) - updates <= 2 * 2 * 16 * 32 // per_update + 1
    stamps = stored_stamps(tmp_path / "replay")
    np.testing.assert_array_equal(np.sort(stamps), np.arange(final))


def spy_on_policy(monkeypatch, name: str) -> list[tuple[int, str]]:
    """Makes `--agent=name` build an agent whose `policy` records (environments, mode) of each
    call (each trace, under jit); returns the list it appends to."""
    calls: list[tuple[int, str]] = []
    base = AGENTS[name]()

    class Spy(base):
        def policy(self, params, carry, obs, key, mode="sample"):
            calls.append((obs["is_first"].shape[0], mode))
            return super().policy(params, carry, obs, key, mode)

    monkeypatch.setitem(AGENTS, name, lambda: Spy)
    return calls


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_evaluation_acts_in_eval_mode_and_collection_in_sample_mode(agent, tmp_path,
                                                                   monkeypatch):
    """Two training environments collect ('sample'), the one evaluation environment and
    dreamer-eval act in 'eval' unless --mode picks another. Too few steps for DreamerV3 and
    PETS to update, and state vectors: the run compiles little besides the policy."""
    calls = spy_on_policy(monkeypatch, agent)
    runner.run(tiny_cfg(agent, tmp_path, 16, **{
        "run.prefill": 0, "run.envs": 2, "env.obs": "vector", "env.time_limit": 4,
        "parallel.devices": 1}))
    assert set(calls) == {(2, "sample"), (1, "eval")}

    calls.clear()
    assert cli.eval_main(["--logdir", str(tmp_path), "--episodes", "1"]) == 0
    assert set(calls) == {(1, "eval")}
    calls.clear()
    assert cli.eval_main(["--logdir", str(tmp_path), "--episodes", "1", "--mode", "mode"]) == 0
    assert set(calls) == {(1, "mode")}


@pytest.mark.parametrize("agent", [*sorted(AGENTS), "latent_mpc"])
def test_an_unknown_policy_mode_is_a_clear_error(agent):
    cfg = tiny_cfg("dreamerv3" if agent == "latent_mpc" else agent, "", 100)
    env = make_env(cfg.env, 0)
    try:
        made = make_agent(cfg, env.obs_space, env.act_space)
        obs = {k: np.zeros((1, *s.shape), s.dtype) for k, s in env.obs_space.items()}
    finally:
        env.close()
    if agent == "latent_mpc":
        made = LatentMPC(made, cfg.mpc)
    obs["is_first"] = np.ones(1, bool)
    names = ", ".join(repr(m) for m in MODES)
    with pytest.raises(ValueError, match=f"unknown policy mode 'greedy': choose one of {names}"):
        made.policy(None, made.policy_initial(1), obs, jax.random.key(0), mode="greedy")


def test_an_agent_that_plans_acts_on_the_learner_device(tmp_path, monkeypatch):
    """PETS acts on the first learner device under `actors.policy_device: auto` (forced here
    with 'learner'; on this CPU-only machine that device is a CPU): training acts and
    evaluation acts with the learner's own parameters there, never with a host copy; 'host'
    takes the host path; an agent that does not plan acts on the host under 'auto'."""
    from dreamer.run.learner import Learner
    from dreamer.run.session import acts_on_device

    assert acts_on_device("auto", types.SimpleNamespace(acts_on_device=True))
    assert not acts_on_device("auto", types.SimpleNamespace(acts_on_device=False))
    assert acts_on_device("learner", None) and not acts_on_device("host", None)
    calls = {"params": 0, "device_params": 0}
    placed = []
    for name in calls:
        original = getattr(Learner, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            out = _original(self, *args, **kwargs)
            if _name == "device_params":
                placed.append({d for x in jax.tree.leaves(out) for d in x.devices()}
                              == {self.devices[0]})
            return out

        monkeypatch.setattr(Learner, name, spy)
    for setting in ("learner", "host"):
        calls.update(params=0, device_params=0)
        cfg = tiny_cfg("pets", tmp_path / setting, 150, **{
            "parallel.devices": 2, "actors.policy_device": setting, "run.eval_every": 100})
        result = runner.run(cfg)
        assert np.isfinite(result["eval/score"])
        acting = 150 - 100  # steps after the random prefill, each acting once, then evaluation
        if setting == "learner":
            assert calls["device_params"] > acting and calls["params"] == 0 and all(placed)
        else:
            assert calls["device_params"] == 0 and calls["params"] > acting
