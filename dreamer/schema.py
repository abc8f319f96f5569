"""The config's schema and the checks every value passes on its way into a config.

A schema is read from a tree of defaults (`schema_from`): the type of a key is the type of its
default value (int, float, bool, str, or a list of one of those), and a key may also have a few
named choices. `apply` writes a partial tree of overrides (dotted keys or nested mappings) into a
full tree, coercing each value to its key's type (`'1e6'` to 1000000 for an int key, `'32,32'` to
a list) and checking its choices and form (`FORMATS`); an unknown key is an error that names the
closest known keys. `dreamer.config` builds its `Config` on these.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from dreamer import xla_flags, yamlio

__all__ = [
    "FORMATS",
    "ConfigError",
    "Leaf",
    "Schema",
    "apply",
    "dotted_keys",
    "parse_kwargs",
    "schema_from",
    "unknown_key",
    "validated",
]


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type, or an unknown preset."""


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
# Schema: the type of every key, read from the defaults


class Leaf(NamedTuple):
    type: type  # bool, int, float, str or list
    elem: type | None = None  # element type of a list; None for an empty default list
    choices: tuple[Any, ...] | None = None  # the values the key may take; None: any of its type
    note: str = ""  # added to the error of a value outside the choices: where they come from


Schema = dict[str, "Leaf | Schema"]
_RESERVED = {"flat", "get", "items", "keys", "load", "save", "to_dict", "update", "values"}
_SCALARS = (bool, int, float, str)


def _scalar_type(value: Any) -> type | None:
    for t in _SCALARS:  # bool first: bool is a subclass of int
        if isinstance(value, t):
            return t
    return None


def _leaf_for(key: str, value: Any) -> Leaf:
    if isinstance(value, list):
        types = {_scalar_type(v) for v in value}
        if None in types:
            raise ConfigError(f"default of {key!r} must be a list of scalars, not {value!r}")
        if types == {int, float}:
            types = {float}
        if len(types) > 1:
            raise ConfigError(f"default of {key!r} mixes element types: {value!r}")
        return Leaf(list, types.pop() if types else None)
    t = _scalar_type(value)
    if t is None:
        raise ConfigError(f"default of {key!r} must be a scalar, list or section, not {value!r}")
    return Leaf(t)


def _sections(tree: Mapping[str, Any], prefix: str) -> Schema:
    schema: Schema = {}
    for name, value in tree.items():
        key = prefix + str(name)
        if (not isinstance(name, str) or not name.isidentifier() or name.startswith("_")
                or name in _RESERVED):
            raise ConfigError(f"default key {key!r} must be an identifier without a leading "
                              f"underscore and not one of {sorted(_RESERVED)}")
        if isinstance(value, dict):
            schema[name] = _sections(value, key + ".")
        else:
            schema[name] = _leaf_for(key, value)
    return schema


def schema_from(tree: Mapping[str, Any],
                choices: Mapping[str, Sequence[Any]] | None = None) -> Schema:
    """The schema of a tree of defaults; `choices` maps dotted keys of the tree to the values
    each may take."""
    schema = _sections(tree, "")
    for key, values in (choices or {}).items():
        *path, last = key.split(".")
        section: Any = schema
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        leaf = section.get(last) if isinstance(section, dict) else None
        if not isinstance(leaf, Leaf):
            raise ConfigError(f"choices given for {key!r}, which is not a key of the defaults")
        section[last] = leaf._replace(choices=tuple(values))
    return schema


def dotted_keys(schema: Schema, prefix: str = "", sections: bool = False) -> list[str]:
    """Every key of `schema` as a dotted name; with `sections`, also every section's."""
    keys = []
    for name, sub in schema.items():
        if isinstance(sub, dict):
            keys += [prefix + name] if sections else []
            keys += dotted_keys(sub, f"{prefix}{name}.", sections)
        else:
            keys.append(prefix + name)
    return keys


# ---------------------------------------------------------------------------------------------
# Values: coercion to the schema's types


def _describe(leaf: Leaf) -> str:
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


def _checked(key: str, value: Any, leaf: Leaf) -> Any:
    """`value` as `leaf`'s type (lists as tuples), one of its choices and of `key`'s form
    (`FORMATS`); otherwise a ConfigError."""
    try:
        if leaf.type is not list:
            value = _coerce_scalar(value, leaf.type)
        else:
            items = _split_list(value) if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise TypeError
            value = tuple(_coerce_scalar(v, leaf.elem) for v in items)
    except TypeError:
        raise ConfigError(
            f"invalid value for config key {key!r}: expected {_describe(leaf)}, got {value!r}"
        ) from None
    if leaf.choices is not None and value not in leaf.choices:
        names = ", ".join(repr(c) for c in leaf.choices)
        note = f" ({leaf.note})" if leaf.note else ""
        raise ConfigError(f"invalid value for config key {key!r}: {value!r}; choose one of "
                          f"{names}{note}")
    if key in FORMATS:
        FORMATS[key](key, value)
    return value


# ---------------------------------------------------------------------------------------------
# Applying a partial tree of overrides to a full tree


def unknown_key(key: str, root: Schema, source: str) -> ConfigError:
    """The error for an unknown dotted `key` of schema `root`: the closest keys, or the keys of
    the deepest section it names."""
    keys = dotted_keys(root)
    sections = [k for k in dotted_keys(root, sections=True) if k not in keys]
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


def apply(tree: dict[str, Any], schema: Schema, updates: Mapping[str, Any], *,
          prefix: str, root: Schema, source: str) -> None:
    """Writes `updates` (dotted keys or nested mappings) into `tree`, validating each value.

    `tree` and `schema` are those of the section at dotted `prefix`; `root` is the whole schema.
    `source` names the origin of `updates` in error messages.
    """
    where = f" (in {source})" if source else ""
    for name, value in updates.items():
        name = str(name)
        key = prefix + name
        *path, last = name.split(".")
        section, subtree = schema, tree
        for part in path:
            if not isinstance(section.get(part), dict):
                raise unknown_key(key, root, source)
            section, subtree = section[part], subtree[part]
        node = section.get(last)
        if node is None:
            raise unknown_key(key, root, source)
        if isinstance(node, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key {key!r} is a section, not a value{where}; set its keys instead, "
                    f"e.g. {key}.{next(iter(node))} (keys: {', '.join(node)})")
            apply(subtree[last], node, value, prefix=key + ".", root=root, source=source)
        elif isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} is a value, not a section{where}; "
                              f"expected {_describe(node)}, got {dict(value)!r}")
        else:
            try:
                subtree[last] = _checked(key, value, node)
            except ConfigError as e:
                raise ConfigError(f"{e}{where}") from None


def validated(tree: Mapping[str, Any], schema: Schema, prefix: str = "") -> dict[str, Any]:
    """A full tree of checked values; used on the defaults themselves."""
    out: dict[str, Any] = {}
    for name, sub in schema.items():
        if isinstance(sub, dict):
            out[name] = validated(tree[name], sub, f"{prefix}{name}.")
        else:
            out[name] = _checked(prefix + name, tree[name], sub)
    return out
