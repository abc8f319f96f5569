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
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from dreamer import xla_flags, yamlio

__all__ = [
    "Config",
    "ConfigError",
    "available_presets",
    "default_configs_dir",
    "load_config",
    "parse_kwargs",
]


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type, or an unknown preset."""


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


def _check_choice(key: str, value: Any) -> Any:
    """`value` when it is one of `key`'s choices and has `key`'s form (`FORMATS`)."""
    choices = CHOICES.get(key)
    if choices is not None and value not in choices:
        names = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"invalid value for config key {key!r}: {value!r}; choose one of {names}")
    if key in FORMATS:
        FORMATS[key](key, value)
    return value


def parse_kwargs(key: str, items: Sequence[Any]) -> dict[str, Any]:
    """Keyword arguments from `name=value` items, each value read as YAML 1.2 (`false` a bool,
    `8` an int, `8x8` a string); a ConfigError names `key` and the item that is not of that form."""
    out: dict[str, Any] = {}
    for item in items:
        name, equals, text = item.partition("=") if isinstance(item, str) else ("", "", "")
        name = name.strip()
        if not equals or not name.isidentifier():
            raise ConfigError(f"invalid item {item!r} in config key {key!r}: write name=value, "
                              f"e.g. {key}=[map_name=8x8,is_slippery=false]")
        if name in out:
            raise ConfigError(f"config key {key!r} sets {name!r} twice: keep one of the items")
        try:
            out[name] = yamlio.load(text.strip())
        except yamlio.YAMLError as e:
            raise ConfigError(f"invalid value in item {item!r} of config key {key!r}: "
                              f"{e}") from None
    return out


def _check_xla_flags(key: str, value: str) -> tuple[str, ...]:
    """The flags of a `jax.xla_flags` value (`dreamer.xla_flags.parse`); a ConfigError names
    `key` and its choices."""
    try:
        return xla_flags.parse(value)
    except ValueError as e:
        choices = ", ".join(repr(c) for c in xla_flags.SETTINGS)
        raise ConfigError(f"invalid value for config key {key!r}: {value!r}; choose one of "
                          f"{choices} or a string of XLA flags such as "
                          f"'--xla_gpu_autotune_level=0' ({e})") from None


# Keys whose values need a form beyond their type: checked when the config is made, by the
# function that the code acting on the key also reads them with.
FORMATS: dict[str, Callable[[str, Any], Any]] = {"env.gym_kwargs": parse_kwargs,
                                                 "jax.xla_flags": _check_xla_flags}


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
# Schema: the type of every key, read from the defaults


class _Leaf(NamedTuple):
    type: type  # bool, int, float, str or list
    elem: type | None = None  # element type of a list; None for an empty default list


_Schema = dict[str, "_Leaf | _Schema"]
_RESERVED = {"flat", "get", "items", "keys", "load", "save", "to_dict", "update", "values"}
_SCALARS = (bool, int, float, str)


def _scalar_type(value: Any) -> type | None:
    for t in _SCALARS:  # bool first: bool is a subclass of int
        if isinstance(value, t):
            return t
    return None


def _leaf_for(key: str, value: Any) -> _Leaf:
    if isinstance(value, list):
        types = {_scalar_type(v) for v in value}
        if None in types:
            raise ConfigError(f"default of {key!r} must be a list of scalars, not {value!r}")
        if types == {int, float}:
            types = {float}
        if len(types) > 1:
            raise ConfigError(f"default of {key!r} mixes element types: {value!r}")
        return _Leaf(list, types.pop() if types else None)
    t = _scalar_type(value)
    if t is None:
        raise ConfigError(f"default of {key!r} must be a scalar, list or section, not {value!r}")
    return _Leaf(t)


def _schema_from(tree: Mapping[str, Any], prefix: str = "") -> _Schema:
    schema: _Schema = {}
    for name, value in tree.items():
        key = prefix + str(name)
        if (not isinstance(name, str) or not name.isidentifier() or name.startswith("_")
                or name in _RESERVED):
            raise ConfigError(f"default key {key!r} must be an identifier without a leading "
                              f"underscore and not one of {sorted(_RESERVED)}")
        if isinstance(value, dict):
            schema[name] = _schema_from(value, key + ".")
        else:
            schema[name] = _leaf_for(key, value)
    return schema


def _dotted_keys(schema: _Schema, prefix: str = "", sections: bool = False) -> list[str]:
    keys = []
    for name, sub in schema.items():
        if isinstance(sub, dict):
            keys += [prefix + name] if sections else []
            keys += _dotted_keys(sub, f"{prefix}{name}.", sections)
        else:
            keys.append(prefix + name)
    return keys


# ---------------------------------------------------------------------------------------------
# Values: coercion to the schema's types


def _describe(leaf: _Leaf) -> str:
    names = {bool: "bool (true or false)", int: "int", float: "float", str: "str", None: "scalar"}
    if leaf.type is list:
        return f"list of {names[leaf.elem].split(' ')[0]}"
    return names[leaf.type]


def _coerce_scalar(value: Any, t: type | None) -> Any:
    """Returns `value` as type `t`, or raises TypeError."""
    if t is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(value, str):  # a number or bool written as text, e.g. on the command line
        try:
            value = yamlio.load(value)
        except yamlio.YAMLError:
            raise TypeError from None
    if t is None and _scalar_type(value) is not None:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if t is bool and isinstance(value, bool):
            return value
        raise TypeError
    if t is float:
        return float(value)
    if t is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
    raise TypeError


def _split_list(text: str) -> list[Any]:
    text = text.strip()
    if text.startswith("["):
        try:
            return yamlio.load(text)
        except yamlio.YAMLError:
            raise TypeError from None
    return [item.strip() for item in text.split(",")] if text else []


def _coerce(key: str, value: Any, leaf: _Leaf) -> Any:
    """Returns `value` as `leaf`'s type (lists as tuples), or raises ConfigError."""
    try:
        if leaf.type is not list:
            return _coerce_scalar(value, leaf.type)
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise TypeError
        return tuple(_coerce_scalar(v, leaf.elem) for v in items)
    except TypeError:
        raise ConfigError(
            f"invalid value for config key {key!r}: expected {_describe(leaf)}, got {value!r}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Applying a partial tree of overrides to a full tree


def _unknown_key(key: str, root: _Schema, source: str) -> ConfigError:
    keys = _dotted_keys(root)
    sections = [k for k in _dotted_keys(root, sections=True) if k not in keys]
    close = difflib.get_close_matches(key, keys + sections, n=3, cutoff=0.6)
    leaves = {k: k.rsplit(".", 1)[-1] for k in keys}  # also match the last part alone: --deter
    near = difflib.get_close_matches(key.rsplit(".", 1)[-1], set(leaves.values()), cutoff=0.8)
    close = list(dict.fromkeys(close + [k for k, leaf in leaves.items() if leaf in near]))[:4]
    where = f" (in {source})" if source else ""
    if close:
        others = f" (other close keys: {', '.join(map(repr, close[1:]))})" if close[1:] else ""
        return ConfigError(f"unknown config key {key!r}{where}; did you mean {close[0]!r}?{others}")
    section, prefix = root, ""
    for part in key.split(".")[:-1]:
        if not isinstance(section.get(part), dict):
            break
        section, prefix = section[part], f"{prefix}{part}."
    names = ", ".join(prefix + k for k in section)
    return ConfigError(f"unknown config key {key!r}{where}; valid keys here: {names}")


def _apply(tree: dict[str, Any], schema: _Schema, updates: Mapping[str, Any], *,
           prefix: str, root: _Schema, source: str) -> None:
    """Writes `updates` (dotted keys or nested mappings) into `tree`, validating each value.

    `tree` and `schema` are those of the section at dotted `prefix`; `root` is the whole schema.
    """
    where = f" (in {source})" if source else ""
    for name, value in updates.items():
        name = str(name)
        key = prefix + name
        *path, last = name.split(".")
        section, subtree = schema, tree
        for part in path:
            if not isinstance(section.get(part), dict):
                raise _unknown_key(key, root, source)
            section, subtree = section[part], subtree[part]
        node = section.get(last)
        if node is None:
            raise _unknown_key(key, root, source)
        if isinstance(node, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key {key!r} is a section, not a value{where}; set its keys instead, "
                    f"e.g. {key}.{next(iter(node))} (keys: {', '.join(node)})")
            _apply(subtree[last], node, value, prefix=key + ".", root=root, source=source)
        elif isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} is a value, not a section{where}; "
                              f"expected {_describe(node)}, got {dict(value)!r}")
        else:
            try:
                subtree[last] = _check_choice(key, _coerce(key, value, node))
            except ConfigError as e:
                raise ConfigError(f"{e}{where}") from None


def _validated(tree: Mapping[str, Any], schema: _Schema, prefix: str = "") -> dict[str, Any]:
    """A full tree of coerced values; used on the defaults themselves."""
    out: dict[str, Any] = {}
    for name, sub in schema.items():
        if isinstance(sub, dict):
            out[name] = _validated(tree[name], sub, f"{prefix}{name}.")
        else:
            out[name] = _check_choice(prefix + name, _coerce(prefix + name, tree[name], sub))
    return out


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
            _apply(tree, schema, values, prefix="", root=schema, source="")
        self._init(tree, schema, schema, "")

    def _init(self, tree: Mapping[str, Any], schema: _Schema, root: _Schema, prefix: str) -> None:
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
    def _make(cls, tree: Mapping[str, Any], schema: _Schema, root: _Schema, prefix: str) -> Config:
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
            raise AttributeError(str(_unknown_key(self._prefix + name, self._root, ""))) from None

    def __getitem__(self, key: str) -> Any:
        node: Any = self
        for part in key.split("."):
            if not isinstance(node, Config) or part not in node._data:
                raise KeyError(str(_unknown_key(self._prefix + key, self._root, "")))
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
        _apply(tree, self._schema, values, prefix=self._prefix, root=self._root, source=source)
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


def _defaults(configs_dir: str | Path | None) -> tuple[_Schema, dict[str, Any]]:
    tree = _read_yaml(configs_dir_of(configs_dir) / "defaults.yaml", "defaults")
    schema = _schema_from(tree)
    return schema, _validated(tree, schema)


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
