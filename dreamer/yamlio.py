"""YAML with YAML 1.2's numbers and booleans: what the configs, presets and saved runs are read
and written with.

PyYAML follows YAML 1.1, where `3e-4` is a string and `yes`/`on` are booleans. Here `3e-4` is a
float, exponent notation without a decimal point and with a non-negative exponent (`1e6`, `5e5`)
is an int, so step counts can be written compactly; only `true`/`false` are booleans (not
yes/no/on/off), and dates stay strings. `dump` quotes every string that `load` would not read
back as the same string, so a dumped tree loads back equal.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import yaml

__all__ = ["YAMLError", "dump", "load"]

YAMLError = yaml.YAMLError


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans and numbers, and no timestamps."""


_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_DROPPED = {_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9][0-9_]*$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_INTEGRAL_EXP = re.compile(r"^[-+]?[0-9][0-9_]*[eE]\+?[0-9]+$")


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    return int(loader.construct_scalar(node).replace("_", ""))


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> int | float:
    text = loader.construct_scalar(node).replace("_", "")
    if _INTEGRAL_EXP.match(text):
        return int(Decimal(text))  # 1e6 -> 1000000, exactly
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


_Loader.add_constructor(_BOOL, _construct_bool)
_Loader.add_constructor(_INT, _construct_int)
_Loader.add_constructor(_FLOAT, _construct_float)


def load(text: str) -> Any:
    """The value of a YAML document, read with YAML 1.2's numbers and booleans; raises
    `YAMLError` on invalid YAML."""
    return yaml.load(text, Loader=_Loader)  # safe: _Loader derives from SafeLoader


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string `load` would not read back as a string."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    try:
        plain = isinstance(load(value), str)
    except yaml.YAMLError:
        plain = False
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if plain else "'")


_Dumper.add_representer(str, _represent_str)


def dump(tree: Any) -> str:
    """`tree` as YAML text that `load` reads back equal (keys in their order)."""
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False)
