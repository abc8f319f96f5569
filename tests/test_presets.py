"""The configs directory read into a schema, defaults and overrides: agent presets and their
sections (on small made-up directories; tests/test_config.py covers the real one)."""
import pytest

from dreamer.config import Config, ConfigError, load_config
from dreamer.presets import available_agents, key_choices


def _configs_dir(path, **presets):
    path.mkdir()
    (path / "defaults.yaml").write_text("seed: 0\nagent: a\nrun:\n  steps: 10\n")
    for name, text in presets.items():
        (path / f"{name}.yaml").write_text(text)
    return path


def test_an_agent_presets_sections_are_in_every_config(tmp_path):
    configs = _configs_dir(
        tmp_path / "configs",
        a="agent: a\nrun: {steps: 20}\nnet: {units: 8, act: relu}\n"
          "choices: {net.act: [relu, tanh]}\n",
        b="agent: b\ntab: {lr: 0.1, n: 5}\n",
        c="agent: c\ntab: {lr: 0.1, theta: 0.01}\n",  # shares b's section
        small="net: {units: 4}\n",
        other="agent: b\n")  # not an agent preset: its name is not its agent
    assert available_agents(configs) == ["a", "b", "c"]
    assert Config(configs_dir=configs).to_dict() == {
        "seed": 0, "agent": "a", "run": {"steps": 10}, "net": {"units": 8, "act": "relu"},
        "tab": {"lr": 0.1, "n": 5, "theta": 0.01}}
    assert key_choices(configs) == {"agent": ("a", "b", "c"), "net.act": ("relu", "tanh")}
    # The rest of an agent preset applies only when its agent is chosen.
    assert load_config([], configs_dir=configs).run.steps == 20
    assert load_config(["other"], {"tab.theta": 0.5}, configs_dir=configs).run.steps == 10
    assert load_config(["other"], configs_dir=configs).net.units == 8  # any agent's keys
    # Named among the presets, an agent preset does not reset its own sections.
    assert load_config(["small", "a"], configs_dir=configs).net.units == 4
    with pytest.raises(ConfigError, match=r"'net.act': 'gelu'; choose one of 'relu', 'tanh'"):
        load_config([], {"net.act": "gelu"}, configs_dir=configs)
    with pytest.raises(ConfigError, match=r"'agent': 'other'; choose one of 'a', 'b', 'c'"):
        load_config(["other"], {"agent": "other"}, configs_dir=configs)


@pytest.mark.parametrize(("presets", "match"), [
    ({"a": "agent: a\ntab: {lr: 0.1}\n", "b": "agent: b\ntab: {lr: 0.2}\n"},
     r"agent presets 'a' and 'b' give 'tab.lr' different defaults \(0.1 and 0.2\)"),
    ({"a": "agent: a\nt: {x: s}\nchoices: {t.x: [s]}\n",
      "b": "agent: b\nt: {x: s}\nchoices: {t.x: [s, u]}\n"},
     r"'a' and 'b' give 't.x' different choices"),
    ({"a": "agent: a\nextra: 3\n"}, r"agent preset 'a' sets 'extra'.*sections"),
    ({"a": "agent: a\nt: {x: 1}\nchoices: {run.steps: [10]}\n"},
     r"agent preset 'a': 'choices' maps keys of its own sections \(t\)"),
    ({"a": "agent: a\nt: {x: s}\nchoices: {t.x: [u]}\n"}, r"'t.x': 's'; choose one of 'u'"),
    ({"b": "agent: b\n"}, r"'agent': 'a'; choose one of 'b'"),
    ({"other": "agent: b\n"}, r"needs an agent key in defaults.yaml and an agent preset"),
])
def test_agent_preset_errors(tmp_path, presets, match):
    with pytest.raises(ConfigError, match=match):
        Config(configs_dir=_configs_dir(tmp_path / "configs", **presets))
