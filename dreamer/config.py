"""Typed, frozen configuration built from the configs directory's defaults and presets, and
overrides.

Every key and its type come from the defaults (`dreamer.presets`): `configs/defaults.yaml` for the
shared keys, each agent preset `configs/<agent>.yaml` for its own sections. The type of a key is
the type of its default value (int, float, bool, str, or a list of one of those), and some keys
take one of a few values. `load_config` applies the defaults, the chosen agent's preset, the
presets in order, then explicit overrides; `dreamer.cli.parse_args` does the same from a command
line. Every file is read as YAML 1.2 (`dreamer.yamlio`): `3e-4` is a float, `1e6` an int, and only
`true`/`false` are booleans.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dreamer import yamlio
from dreamer.presets import (
    CHOICES,
    available_agents,
    available_presets,
    base_of,
    configs_dir_of,
    default_configs_dir,
    key_choices,
    preset_overrides,
    read_yaml,
)
from dreamer.schema import ConfigError, Schema, apply, parse_kwargs, unknown_key

__all__ = [
    "CHOICES",
    "Config",
    "ConfigError",
    "available_agents",
    "available_presets",
    "configs_dir_of",
    "default_configs_dir",
    "key_choices",
    "load_config",
    "parse_kwargs",
]


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
        known = base_of(configs_dir_of(configs_dir))
        tree = copy.deepcopy(known.defaults)
        if values:
            apply(tree, known.schema, values, prefix="", root=known.schema, source="")
        self._init(tree, known.schema, known.schema, "")

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
        return cls(configs_dir=configs_dir).update(read_yaml(path, "config"),
                                                   source=f"config file {str(path)!r}")


# ---------------------------------------------------------------------------------------------
# Loading


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
    known = base_of(directory)
    named = [(name, preset_overrides(name, directory, known)) for name in presets]

    def build(first: list[tuple[str, Mapping[str, Any]]]) -> Config:
        cfg = Config(configs_dir=directory)
        for name, tree in [*first, *named]:
            cfg = cfg.update(tree, source=f"preset {name!r}")
        return cfg.update(overrides, source=source) if overrides else cfg

    cfg = build([])
    if cfg.agent in presets:
        return cfg
    return build([(cfg.agent, known.agents[cfg.agent])])
