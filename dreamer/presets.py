"""The configs directory: `defaults.yaml`, the agent presets and the other presets, read into
the schema, defaults and overrides that `dreamer.config` builds its configs from.

`defaults.yaml` holds the shared keys. An agent preset is `<name>.yaml` that sets
`agent: <name>`; the agents are exactly these. A top-level section of it that defaults.yaml lacks
is the agent's own: part of every config's schema, whatever the agent, with the preset's values
as its defaults; its optional `choices` maps keys of its own sections to the values each may take.
Agents that share a section (dyna_q and prioritized_sweeping: `dyna`) each list the keys they
read; a key that both list has one default and one list of choices. The rest of an agent preset
(`agent`, shared settings) is what applies when its agent is chosen. Any other `<name>.yaml` is a
preset: a partial tree of overrides.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from dreamer import yamlio
from dreamer.schema import ConfigError, Schema, schema_from, validated

__all__ = [
    "CHOICES",
    "Base",
    "available_agents",
    "available_presets",
    "base_of",
    "configs_dir_of",
    "default_configs_dir",
    "key_choices",
    "preset_overrides",
    "read_yaml",
]


# Shared keys that take one of a few names: a value outside these is an error when the config is
# made, not later inside the code that reads it. The modules that act on a key name their choices
# from here (tests/test_config.py checks that they agree). An agent's own keys have their choices
# in its preset; `agent` takes the agent presets' names.
CHOICES: dict[str, tuple[str, ...]] = {
    "jax.compute_dtype": ("auto", "float32", "bfloat16"),
    "env.obs": ("image", "vector", "both"),
    "env.opponent": ("random", "greedy"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "parallel.backend": ("pmap", "shard_map"),
    "actors.policy_device": ("auto", "host", "learner"),
}


# ---------------------------------------------------------------------------------------------
# Reading YAML files


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """The mapping in YAML file `path`; a ConfigError names the file as `what`."""
    try:
        tree = yamlio.load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {e}") from e
    except yamlio.YAMLError as e:
        raise ConfigError(f"invalid YAML in {what} {str(path)!r}: {e}") from e
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping of keys, not {tree!r}")
    return tree


# ---------------------------------------------------------------------------------------------
# The defaults and the agent presets


def default_configs_dir() -> Path:
    """The `configs/` directory of the repository that holds this package."""
    return Path(__file__).resolve().parent.parent / "configs"


def configs_dir_of(configs_dir: str | Path | None) -> Path:
    """`configs_dir` (default: `default_configs_dir()`), which must hold a defaults.yaml."""
    path = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    if not (path / "defaults.yaml").is_file():
        raise ConfigError(f"no defaults.yaml in configs directory {str(path)!r}")
    return path


def available_presets(configs_dir: str | Path | None = None) -> list[str]:
    """Names of the presets: every `configs/<name>.yaml` except `defaults.yaml`."""
    names = [p.stem for p in configs_dir_of(configs_dir).glob("*.yaml") if p.stem != "defaults"]
    # Natural order, so that size1m < size12m < size100m.
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t
                                        for t in re.split(r"(\d+)", n)])


class Base(NamedTuple):
    """What every config of one configs directory starts from (never changed once read)."""

    schema: Schema
    defaults: dict[str, Any]  # every key's default, checked
    agents: dict[str, dict[str, Any]]  # each agent preset less its own sections and choices


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _gather(found: dict[str, tuple[Any, str]], items: Iterable[tuple[str, Any]], preset: str,
            what: str) -> None:
    """Adds `preset`'s (dotted key, value) items to `found`; a key that an earlier agent preset
    gave (a section that agents share) must have the same value."""
    for key, value in items:
        earlier, other = found.setdefault(key, (value, preset))
        if earlier != value:
            raise ConfigError(f"agent presets {other!r} and {preset!r} give {key!r} different "
                              f"{what} ({earlier!r} and {value!r}): agents that share a section "
                              f"share its {what}")


def _agent_parts(name: str, tree: dict[str, Any], defaults: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An agent preset's own sections, the choices it gives, and the rest (its overrides)."""
    own = {k: v for k, v in tree.items() if k not in defaults and k != "choices"}
    for key, value in own.items():
        if not isinstance(value, dict):
            raise ConfigError(f"agent preset {name!r} sets {key!r}, which is not a key of the "
                              f"defaults: an agent's own settings are sections (mappings)")
    choices = tree.get("choices", {})
    for key, values in (choices.items() if isinstance(choices, dict) else [("", None)]):
        if str(key).split(".")[0] not in own or not isinstance(values, list):
            raise ConfigError(f"agent preset {name!r}: 'choices' maps keys of its own sections "
                              f"({', '.join(own) or 'none'}) to lists of values, not "
                              f"{key!r}: {values!r}")
    return own, choices, {k: v for k, v in tree.items() if k in defaults}


def _read_base(directory: Path) -> Base:
    """The schema and defaults of `directory`: defaults.yaml, then the agent presets' sections."""
    defaults = read_yaml(directory / "defaults.yaml", "defaults")
    sections: dict[str, tuple[Any, str]] = {}
    choices: dict[str, tuple[Any, str]] = {}
    agents: dict[str, dict[str, Any]] = {}
    for name in available_presets(directory):
        tree = read_yaml(directory / f"{name}.yaml", "preset")
        if tree.get("agent") == name:
            own, given, agents[name] = _agent_parts(name, tree, defaults)
            _gather(sections, _leaves(own), name, "defaults")
            _gather(choices, given.items(), name, "choices")
    if "agent" not in defaults or not agents:
        raise ConfigError(f"configs directory {str(directory)!r} needs an agent key in "
                          f"defaults.yaml and an agent preset: NAME.yaml that sets agent: NAME")
    tree = dict(defaults)
    for key, (value, _) in sections.items():
        *path, last = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"agent presets give {key!r} and a value above it")
        node[last] = value
    shared = {k: v for k, v in CHOICES.items() if k in dict(_leaves(defaults))}
    schema = schema_from(tree, {**shared, **{k: v for k, (v, _) in choices.items()}})
    schema["agent"] = schema["agent"]._replace(choices=tuple(agents), note=_AGENT_NOTE)
    return Base(schema, validated(tree, schema), agents)


_AGENT_NOTE = "each agent has a preset configs/NAME.yaml that sets agent: NAME"


@functools.lru_cache(maxsize=4)
def _cached_base(directory: Path, stamps: tuple[tuple[str, int, int], ...]) -> Base:
    del stamps  # part of the cache key only: a changed file is read again
    return _read_base(directory)


def base_of(directory: Path) -> Base:
    """What every config of `directory` starts from. Every config is made from it and reading
    every preset takes tens of milliseconds, so it is kept until a file of the directory changes
    size or modification time."""
    stats = [(p.name, p.stat()) for p in sorted(directory.glob("*.yaml"))]
    return _cached_base(directory.resolve(),
                        tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats))


def available_agents(configs_dir: str | Path | None = None) -> list[str]:
    """Names of the agents: the presets `configs/<name>.yaml` that set `agent: <name>`."""
    return list(base_of(configs_dir_of(configs_dir)).agents)


def key_choices(configs_dir: str | Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every key that takes one of a few values, with those values: `CHOICES`, the agent
    presets' `choices`, and `agent`'s agents."""
    schema = base_of(configs_dir_of(configs_dir)).schema
    return {key: leaf.choices for key, leaf in _leaves(schema) if leaf.choices is not None}


# ---------------------------------------------------------------------------------------------
# Presets


def _preset_path(name: str, configs_dir: Path) -> Path:
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)  # a preset file outside configs/
    presets = available_presets(configs_dir)
    if name in presets:
        return configs_dir / f"{name}.yaml"
    close = difflib.get_close_matches(name, presets, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ConfigError(f"unknown preset {name!r}; {hint}available presets: {', '.join(presets)}")


def preset_overrides(name: str, directory: Path, known: Base) -> Mapping[str, Any]:
    """What preset `name` (in `directory`, or a file's path) sets; of an agent preset, the
    settings beside its own sections."""
    path = _preset_path(name, directory)
    if path.stem in known.agents and path.resolve() == (directory / path.name).resolve():
        return known.agents[path.stem]
    return read_yaml(path, "preset")
