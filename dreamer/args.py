"""The command-line grammar of every entry point: dreamer-train, dreamer-eval, dreamer-doctor and
the launch/ scripts declare their options as `Option`s and read their command line with `parse`.

The grammar is `GRAMMAR`, which every command's help repeats.
"""
from __future__ import annotations

import difflib
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from dreamer.config import Config, ConfigError

GRAMMAR = (
    "Every option is written --NAME VALUE or --NAME=VALUE; the value is the next argument unless "
    "that starts with --. An option of several values takes them separated by spaces or commas "
    "(--configs a b, --seeds 0,1,2) up to the next argument that starts with --; given twice, "
    "its values add up, while any other option keeps the last. A switch alone means true (it "
    "also takes true or false). Commands that build a config take every config key (those of "
    "configs/defaults.yaml and of the agent presets' sections) as an option, dotted by "
    "section: --run.steps=1e4, --seed 1, --logger.wandb. A lone -- ends the options: what "
    "follows is passed on. -h or --help prints the help.")
HELP = ("-h", "--help")


class UsageError(ConfigError):
    """A command line that does not follow the grammar or names an option the command lacks."""


@dataclass(frozen=True)
class Option:
    """An option `--name` of a command.

    `parse` turns each value's text into the value (a ValueError says what was expected); `many`
    takes one or more values as a list; `switch` is a boolean that may stand alone. `default` is
    the value when the option is not given; a `required` one must be given. `metavar` names the
    value in messages.
    """

    name: str
    default: Any = None
    parse: Callable[[str], Any] = str
    many: bool = False
    switch: bool = False
    required: bool = False
    metavar: str = "VALUE"


@dataclass(frozen=True)
class Args:
    """A parsed command line: each option's value (`args['name']`), config overrides as given
    (dotted key to text), the positional arguments, and the arguments after `--`."""

    values: dict[str, Any]
    overrides: dict[str, str]
    positional: list[str]
    rest: list[str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def boolean(text: str) -> bool:
    """`true` or `false`."""
    if text.lower() not in ("true", "false"):
        raise ValueError("expected true or false")
    return text.lower() == "true"


def integer(low: int | None = None) -> Callable[[str], int]:
    """A parser of integers (also written like 5e4), at least `low` when given."""
    def parse(text: str) -> int:
        try:
            real = float(text)
        except ValueError:
            raise ValueError("expected an integer") from None
        if not real.is_integer():
            raise ValueError("expected an integer")
        value = int(text) if text.strip().isdigit() else int(real)  # long digit strings exactly
        if low is not None and value < low:
            raise ValueError(f"expected an integer of at least {low}")
        return value
    return parse


def number(low: float | None = None) -> Callable[[str], float]:
    """A parser of real numbers, at least `low` when given."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number") from None
        if low is not None and not value >= low:
            raise ValueError(f"expected a number of at least {low:g}")
        return value
    return parse


def choice(*names: str) -> Callable[[str], str]:
    """A parser that accepts one of `names`."""
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return text
    return parse


def show_help(usage: str) -> NoReturn:
    """Prints the command's usage and the grammar, then exits with status 0."""
    grammar = textwrap.fill(GRAMMAR, 96, break_long_words=False, break_on_hyphens=False)
    sys.stdout.write(f"{usage.strip()}\n\n{grammar}\n")
    raise SystemExit(0)


def _unknown(name: str, options: dict[str, Option], config: Config | None) -> UsageError:
    """The error of an option the command lacks, naming the close ones and the valid ones."""
    known = [f"--{o}" for o in options]
    keys = config.flat() if config is not None else {}
    close = difflib.get_close_matches(name, [*options, *keys], 1)
    hint = f"; did you mean --{close[0]}?" if close else ""
    also = " and any config key as --KEY=VALUE" if config is not None else ""
    valid = ", ".join(known) if known else "none"
    return UsageError(f"unknown option '--{name}'{hint} (options: {valid}{also}; see --help)")


def _values(option: Option, texts: list[str]) -> Any:
    """The value of an option from the texts given after it."""
    if option.switch and not texts:
        return True
    if option.many:
        texts = [part for text in texts for part in text.split(",") if part]
    if not texts:
        raise UsageError(f"--{option.name} needs a value")
    parse = boolean if option.switch else option.parse
    values = []
    for text in texts:
        try:
            values.append(parse(text))
        except ValueError as e:
            raise UsageError(f"--{option.name} {text!r}: {e}") from None
    return values if option.many else values[0]


def parse(argv: Sequence[str], options: Sequence[Option], usage: str, *,
          config: Config | None = None, positional: bool = False, rest: bool = False) -> Args:
    """Reads a command line in the grammar (see `GRAMMAR`).

    `options` are the command's own. With `config` (the defaults), an option that is not one of
    them is a config override: any dotted name, or a top-level key or section of the config; a
    boolean key alone means true. The config checks the overrides when it applies them, naming
    the keys close to an unknown one. `positional` accepts arguments that are no option's values;
    `rest` accepts `--` and what follows it. `-h` or `--help` before any `--` prints `usage` and
    the grammar and exits with status 0. Raises UsageError for anything else.
    """
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    own, after = argv[:end], argv[end + 1:]
    if any(arg in HELP for arg in own):
        show_help(usage)
    if end < len(argv) and not rest:
        raise UsageError("unexpected argument '--': this command passes nothing on")
    declared = {o.name: o for o in options}
    flat = config.flat() if config is not None else {}
    switches = {key for key, value in flat.items() if isinstance(value, bool)}
    values = {o.name: list(o.default) if o.many else o.default for o in options}
    given: set[str] = set()
    overrides: dict[str, str] = {}
    loose: list[str] = []
    i = 0
    while i < len(own):
        arg = own[i]
        i += 1
        if not arg.startswith("--"):
            if not positional:
                raise UsageError(f"unexpected argument {arg!r}; options are written --NAME VALUE "
                                 "(see --help)")
            loose.append(arg)
            continue
        name, eq, text = arg[2:].partition("=")
        option = declared.get(name)
        if option is None and (config is None or ("." not in name and name not in config)):
            raise _unknown(name, declared, config)
        texts = [text] if eq else []
        many = option is not None and option.many
        while not eq and i < len(own) and not own[i].startswith("--") and (many or not texts):
            texts.append(own[i])
            i += 1
        if option is None:
            if not texts and name not in switches:
                raise UsageError(f"--{name} needs a value")
            overrides[name] = texts[0] if texts else "true"
        elif option.many and name in given:
            values[name] += _values(option, texts)
        else:
            values[name] = _values(option, texts)
        given.add(name)
    missing = [o for o in options if o.required and o.name not in given]
    if missing:
        raise UsageError("give " + " and ".join(f"--{o.name} {o.metavar}" for o in missing))
    return Args(values, overrides, loose, after)
