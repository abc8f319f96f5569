"""Typed, frozen configuration built from `configs/defaults.yaml`, YAML presets and overrides.

Every key and its type come from `configs/defaults.yaml`: the type of a key is the type of its
default value (int, float, bool, str, or a list of one of those). A preset is any other
`configs/<name>.yaml`: a partial tree of overrides. `load_config` applies the defaults, then the
presets in order, then explicit overrides; `dreamer.cli.parse_args` does the same from a command
line.

Every file is read as YAML 1.2 (`dreamer.yamlio`): `3e-4` is a float, `1e6` an int, and only
`true`/`false` are booleans.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    "Config",
    "ConfigError",
    "available_presets",
    "default_configs_dir",
    "load_config",
    "parse_kwargs",
]


# Keys that take one of a few names: a value outside these is an error when the config is made,
# not later inside the code that reads it. The modules that act on a key name their choices
# from here (tests/test_config.py checks that they agree).
CHOICES: dict[str, tuple[str, ...]] = {
    "agent": ("dreamerv3", "pets", "dyna_q", "prioritized_sweeping"),
    "jax.compute_dtype": ("auto", "float32", "bfloat16"),
    "env.obs": ("image", "vector", "both"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "parallel.backend": ("pmap", "shard_map"),
    "model.act": ("silu", "gelu", "relu", "elu", "tanh", "mish"),
    "model.norm": ("rms", "layer", "none"),
    "ac.actor_grad": ("reinforce", "dynamics"),
    "pets.act": ("silu", "gelu", "relu", "elu", "tanh", "mish"),
    "pets.planner": ("cem", "mppi"),
    "mpc.planner": ("cem", "mppi"),
    "dyna.backup": ("sample", "expected"),
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
        schema, tree = _defaults(configs_dir)
        if values:
            apply(tree, schema, values, prefix="", root=schema, source="")
        self._init(tree, schema, schema, "")

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
# Presets and the command line


def default_configs_dir() -> Path:
    """The `configs/` directory of the repository that holds this package."""
    return Path(__file__).resolve().parent.parent / "configs"


def configs_dir_of(configs_dir: str | Path | None) -> Path:
    path = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    if not (path / "defaults.yaml").is_file():
        raise ConfigError(f"no defaults.yaml in configs directory {str(path)!r}")
    return path


def _defaults(configs_dir: str | Path | None) -> tuple[Schema, dict[str, Any]]:
    tree = _read_yaml(configs_dir_of(configs_dir) / "defaults.yaml", "defaults")
    schema = schema_from(tree, CHOICES)
    return schema, validated(tree, schema)


def available_presets(configs_dir: str | Path | None = None) -> list[str]:
    """Names of the presets: every `configs/<name>.yaml` except `defaults.yaml`."""
    names = [p.stem for p in configs_dir_of(configs_dir).glob("*.yaml") if p.stem != "defaults"]
    # Natural order, so that size1m < size12m < size100m.
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t
                                        for t in re.split(r"(\d+)", n)])


def _preset_path(name: str, configs_dir: Path) -> Path:
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)  # a preset file outside configs/
    presets = available_presets(configs_dir)
    if name in presets:
        return configs_dir / f"{name}.yaml"
    close = difflib.get_close_matches(name, presets, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ConfigError(f"unknown preset {name!r}; {hint}available presets: {', '.join(presets)}")


def load_config(presets: Sequence[str] = (), overrides: Mapping[str, Any] | None = None,
                configs_dir: str | Path | None = None) -> Config:
    """Defaults, then the agent's own preset, then each preset in order (later wins), then
    `overrides` (dotted keys).

    The agent is the one that the presets and overrides choose (`agent`, default dreamerv3); its
    own preset is `configs/<agent>.yaml` and holds the settings that only it uses (DreamerV3's
    replay context, online queue and report videos), so that every other agent starts from the
    plain defaults. Named among the presets, it applies where it is named instead."""
    if isinstance(presets, str):
        presets = [presets]
    directory = configs_dir_of(configs_dir)

    def build(names: Sequence[str]) -> Config:
        cfg = Config(configs_dir=directory)
        for name in names:
            path = _preset_path(name, directory)
            cfg = cfg.update(_read_yaml(path, "preset"), source=f"preset {name!r}")
        if overrides:
            cfg = cfg.update(overrides, source="overrides")
        return cfg

    cfg = build(presets)
    agent = cfg.agent
    if agent in presets or not (directory / f"{agent}.yaml").is_file():
        return cfg
    cfg = build([agent, *presets])
    if cfg.agent != agent:
        raise ConfigError(f"preset {agent!r} sets agent {cfg.agent!r}: an agent's own preset "
                          f"must keep its agent")
    return cfg
