"""Typed, frozen configuration built from `configs/defaults.yaml`, the agent presets, YAML presets
and overrides.

Every key and its type come from the defaults: the type of a key is the type of its default value
(int, float, bool, str, or a list of one of those). `configs/defaults.yaml` holds the shared keys.
An agent preset is `configs/<name>.yaml` that sets `agent: <name>`; the agents are exactly these.
A top-level section of it that defaults.yaml lacks is the agent's own: part of every config,
whatever the agent, with the preset's values as its defaults, and its optional `choices` mapping
names the values some of those keys may take. Agents that share a section (dyna_q and
prioritized_sweeping: `dyna`) each list the keys they read; a key both list has one default.
The rest of an agent preset (`agent`, shared settings) overrides the defaults when its agent is
chosen. Any other `configs/<name>.yaml` is a preset: a partial tree of overrides. `load_config`
applies the defaults, the chosen agent's preset, the presets in order, then explicit overrides;
`dreamer.cli.parse_args` does the same from a command line.

Every file is read as YAML 1.2 (`dreamer.yamlio`): `3e-4` is a float, `1e6` an int, and only
`true`/`false` are booleans.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from dreamer import yamlio
from dreamer.schema import (
    ConfigError,
    Schema,
    apply,
    parse_kwargs,
    schema_from,
    unknown_key,
    validated,
)

__all__ = [
    "CHOICES",
    "Config",
    "ConfigError",
    "available_agents",
    "available_presets",
    "default_configs_dir",
    "key_choices",
    "load_config",
    "parse_kwargs",
]


# Shared keys that take one of a few names: a value outside these is an error when the config is
# made, not later inside the code that reads it. The modules that act on a key name their choices
# from here (tests/test_config.py checks that they agree). An agent's own keys have their choices
# in its preset; `agent` takes the agent presets' names.
CHOICES: dict[str, tuple[str, ...]] = {
    "jax.compute_dtype": ("auto", "float32", "bfloat16"),
    "env.obs": ("image", "vector", "both"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "parallel.backend": ("pmap", "shard_map"),
}


# ---------------------------------------------------------------------------------------------
# Reading YAML files


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
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
# The config object


class Config(Mapping[str, Any]):
    """An immutable, hashable, validated configuration tree.

    `cfg.model.deter` and `cfg['model.deter']` read a value; `cfg.model` is a `Config` section.
    Lists are stored as tuples. `Config()` holds the defaults; `Config({'run.steps': 10})` the
    defaults with overrides (dotted keys or nested mappings), like `cfg.update`.
    """

    __slots__ = ("_data", "_hash", "_prefix", "_root", "_schema")

    def __init__(self, values: Mapping[str, Any] | None = None, *,
                 configs_dir: str | Path | None = None) -> None:
        base = _base(configs_dir_of(configs_dir))
        tree = copy.deepcopy(base.defaults)
        if values:
            apply(tree, base.schema, values, prefix="", root=base.schema, source="")
        self._init(tree, base.schema, base.schema, "")

    def _init(self, tree: Mapping[str, Any], schema: Schema, root: Schema, prefix: str) -> None:
        data = {}
        for name, sub in schema.items():
            if isinstance(sub, dict):
                data[name] = Config._make(tree[name], sub, root, f"{prefix}{name}.")
            else:
                value = tree[name]
                data[name] = tuple(value) if isinstance(value, list) else value
        set_ = object.__setattr__
        set_(self, "_data", data)
        set_(self, "_schema", schema)
        set_(self, "_root", root)
        set_(self, "_prefix", prefix)
        set_(self, "_hash", None)

    @classmethod
    def _make(cls, tree: Mapping[str, Any], schema: Schema, root: Schema, prefix: str) -> Config:
        self = object.__new__(cls)
        self._init(tree, schema, root, prefix)
        return self

    # -- reading ---------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(str(unknown_key(self._prefix + name, self._root, ""))) from None

    def __getitem__(self, key: str) -> Any:
        node: Any = self
        for part in key.split("."):
            if not isinstance(node, Config) or part not in node._data:
                raise KeyError(str(unknown_key(self._prefix + key, self._root, "")))
            node = node._data[part]
        return node

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, AttributeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # -- immutability, equality, hashing, pickling -------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is immutable: cannot set {self._prefix + name!r}; "
                             "use cfg.update({...}) for a changed copy")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Config is immutable: cannot delete {self._prefix + name!r}")

    def _frozen(self) -> tuple[tuple[str, Any], ...]:
        return tuple((k, v._frozen() if isinstance(v, Config) else v)
                     for k, v in self._data.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self._prefix == other._prefix and self._frozen() == other._frozen()

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash((self._prefix, self._frozen())))
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        return Config._make, (self._tree(), self._schema, self._root, self._prefix)

    def __repr__(self) -> str:
        name = f"Config[{self._prefix[:-1]}]" if self._prefix else "Config"
        return f"{name}({self.to_dict()!r})"

    # -- conversion --------------------------------------------------------------------------------

    def _tree(self) -> dict[str, Any]:
        return {k: v._tree() if isinstance(v, Config) else v for k, v in self._data.items()}

    def to_dict(self) -> dict[str, Any]:
        """A nested plain dict (lists as lists), e.g. for YAML or experiment trackers."""
        return {k: v.to_dict() if isinstance(v, Config) else list(v) if isinstance(v, tuple)
                else v for k, v in self._data.items()}

    def flat(self) -> dict[str, Any]:
        """A flat dict from dotted keys (relative to this section) to values."""
        out: dict[str, Any] = {}
        for k, v in self._data.items():
            if isinstance(v, Config):
                out.update({f"{k}.{sk}": sv for sk, sv in v.flat().items()})
            else:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def update(self, values: Mapping[str, Any], *, source: str = "") -> Config:
        """A new validated config with `values` applied (dotted keys or nested mappings).

        Keys are relative to this section. Strings for non-string keys are parsed like
        command-line values ('1e6', 'true', '32,32'). `source` names the origin in error messages.
        """
        tree = self._tree()
        apply(tree, self._schema, values, prefix=self._prefix, root=self._root, source=source)
        return Config._make(tree, self._schema, self._root, self._prefix)

    def save(self, path: str | Path) -> None:
        """Writes the config as YAML (readable by `Config.load`)."""
        Path(path).write_text(yamlio.dump(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path, *, configs_dir: str | Path | None = None) -> Config:
        """Reads a YAML config (full or partial) on top of the defaults, validating every key."""
        path = Path(path)
        return cls(configs_dir=configs_dir).update(_read_yaml(path, "config"),
                                                   source=f"config file {str(path)!r}")


# ---------------------------------------------------------------------------------------------
# The defaults and the agent presets


def default_configs_dir() -> Path:
    """The `configs/` directory of the repository that holds this package."""
    return Path(__file__).resolve().parent.parent / "configs"


def configs_dir_of(configs_dir: str | Path | None) -> Path:
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


class _Base(NamedTuple):
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


def _read_base(directory: Path) -> _Base:
    """The schema and defaults of `directory`: defaults.yaml, then the agent presets' sections."""
    defaults = _read_yaml(directory / "defaults.yaml", "defaults")
    sections: dict[str, tuple[Any, str]] = {}
    choices: dict[str, tuple[Any, str]] = {}
    agents: dict[str, dict[str, Any]] = {}
    for name in available_presets(directory):
        tree = _read_yaml(directory / f"{name}.yaml", "preset")
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
    return _Base(schema, validated(tree, schema), agents)


_AGENT_NOTE = "each agent has a preset configs/NAME.yaml that sets agent: NAME"


@functools.lru_cache(maxsize=4)
def _cached_base(directory: Path, stamps: tuple[tuple[str, int, int], ...]) -> _Base:
    del stamps  # part of the cache key only: a changed file is read again
    return _read_base(directory)


def _base(directory: Path) -> _Base:
    # Every config starts here, and reading every preset takes tens of milliseconds; kept until
    # a file of the directory changes size or modification time.
    stats = [(p.name, p.stat()) for p in sorted(directory.glob("*.yaml"))]
    return _cached_base(directory.resolve(),
                        tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats))


def available_agents(configs_dir: str | Path | None = None) -> list[str]:
    """Names of the agents: the presets `configs/<name>.yaml` that set `agent: <name>`."""
    return list(_base(configs_dir_of(configs_dir)).agents)


def key_choices(configs_dir: str | Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Every key that takes one of a few values, with those values: `CHOICES`, the agent
    presets' `choices`, and `agent`'s agents."""
    schema = _base(configs_dir_of(configs_dir)).schema
    return {key: leaf.choices for key, leaf in _leaves(schema) if leaf.choices is not None}


# ---------------------------------------------------------------------------------------------
# Presets and the command line


def _preset_path(name: str, configs_dir: Path) -> Path:
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)  # a preset file outside configs/
    presets = available_presets(configs_dir)
    if name in presets:
        return configs_dir / f"{name}.yaml"
    close = difflib.get_close_matches(name, presets, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ConfigError(f"unknown preset {name!r}; {hint}available presets: {', '.join(presets)}")


def _preset_overrides(name: str, directory: Path, base: _Base) -> Mapping[str, Any]:
    """What preset `name` (in `directory`, or a file's path) sets; of an agent preset, the
    settings beside its own sections."""
    path = _preset_path(name, directory)
    if path.stem in base.agents and path.resolve() == (directory / path.name).resolve():
        return base.agents[path.stem]
    return _read_yaml(path, "preset")


def load_config(presets: Sequence[str] = (), overrides: Mapping[str, Any] | None = None,
                configs_dir: str | Path | None = None, *, source: str = "overrides") -> Config:
    """Defaults, then the agent's own preset, then each preset in order (later wins), then
    `overrides` (dotted keys; `source` names them in errors).

    The agent is the one that the presets and overrides choose (`agent`, default dreamerv3); its
    own preset `configs/<agent>.yaml` holds its sections, which every config has whatever the
    agent, and the shared settings it changes (DreamerV3's replay context, online queue and
    report videos), which apply only when it is chosen: right after the defaults, or where it is
    named among the presets."""
    if isinstance(presets, str):
        presets = [presets]
    directory = configs_dir_of(configs_dir)
    base = _base(directory)
    named = [(name, _preset_overrides(name, directory, base)) for name in presets]

    def build(first: list[tuple[str, Mapping[str, Any]]]) -> Config:
        cfg = Config(configs_dir=directory)
        for name, tree in [*first, *named]:
            cfg = cfg.update(tree, source=f"preset {name!r}")
        return cfg.update(overrides, source=source) if overrides else cfg

    cfg = build([])
    if cfg.agent in presets:
        return cfg
    return build([(cfg.agent, base.agents[cfg.agent])])
