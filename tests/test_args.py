"""The command-line grammar every entry point shares (dreamer.args), and each entry point's help."""
import importlib.util
from pathlib import Path

import pytest

from dreamer import cli
from dreamer.args import GRAMMAR, Option, UsageError, choice, integer, number, parse
from dreamer.cli import parse_args
from dreamer.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = (
    Option("root", required=True, metavar="DIR"),
    Option("seeds", (0,), integer(0), many=True),
    Option("jobs", 1, integer(1)),
    Option("report-only", False, switch=True),
)


def script(name: str):
    """A launch/ script as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_spellings_of_every_option():
    spaced = parse(["--root", "r", "--seeds", "1", "2", "--jobs", "3", "--report-only", "true"],
                   OPTIONS, "")
    joined = parse(["--root=r", "--seeds=1,2", "--jobs=3", "--report-only=true"], OPTIONS, "")
    assert spaced.values == joined.values == {
        "root": "r", "seeds": [1, 2], "jobs": 3, "report-only": True}


def test_defaults_lists_repeats_and_switches():
    assert parse(["--root", "r"], OPTIONS, "").values == {
        "root": "r", "seeds": [0], "jobs": 1, "report-only": False}
    # Several values: spaces, commas or both, up to the next option; repeated, they add up.
    args = parse(["--seeds", "0,1", "2", "--root", "r", "--seeds=3", "--jobs", "2", "--jobs=4",
                  "--report-only"], OPTIONS, "")
    assert args["seeds"] == [0, 1, 2, 3] and args["jobs"] == 4 and args["report-only"] is True
    assert parse(["--report-only", "false", "--root", "r"], OPTIONS, "")["report-only"] is False


@pytest.mark.parametrize("argv, message", [
    (["--root", "r", "--job", "2"],
     ("unknown option '--job'; did you mean --jobs? (options: --root, --seeds, --jobs, "
      "--report-only; see --help)")),
    (["--root", "r", "--jobs"], "--jobs needs a value"),
    (["--root", "r", "--jobs", "--seeds", "1"], "--jobs needs a value"),
    (["--root", "r", "--seeds"], "--seeds needs a value"),
    (["--root", "r", "--jobs", "0"], "--jobs '0': expected an integer of at least 1"),
    (["--root", "r", "--seeds", "1,x"], "--seeds 'x': expected an integer"),
    (["--root", "r", "--report-only=maybe"], "--report-only 'maybe': expected true or false"),
    (["--seeds", "1"], "give --root DIR"),
    (["--root", "r", "stray"], "unexpected argument 'stray'"),
    (["--root", "r", "--", "x"], "unexpected argument '--'"),
])
def test_wrong_command_lines_are_named(argv, message):
    with pytest.raises(UsageError) as info:
        parse(argv, OPTIONS, "")
    assert message in str(info.value)
    assert isinstance(info.value, ConfigError)  # one error type for a bad command line


def test_positional_arguments_and_what_follows_the_double_dash():
    args = parse(["a", "--jobs", "2", "b", "--root", "r", "--", "--jobs", "-h", "c"], OPTIONS, "",
                 positional=True, rest=True)
    assert args.positional == ["a", "b"] and args["jobs"] == 2
    assert args.rest == ["--jobs", "-h", "c"]  # passed on untouched


def test_value_parsers():
    assert integer()("5e4") == 50_000 and integer()("-3") == -3
    assert integer()("123456789012345678901") == 123456789012345678901
    assert number(0)("2.5") == 2.5 and choice("a", "b")("b") == "b"
    for parser, text in (integer(), "1.5"), (integer(1), "0"), (number(0), "-1"), (
            number(), "x"), (choice("a", "b"), "c"):
        with pytest.raises(ValueError, match="expected"):
            parser(text)


def test_config_overrides_pass_through():
    args = parse(["--jobs", "2", "--run.steps=1e4", "--seed", "3", "--logger.wandb",
                  "--model.deter", "64", "--root", "r"], OPTIONS, "", config=Config())
    assert args.overrides == {"run.steps": "1e4", "seed": "3", "logger.wandb": "true",
                              "model.deter": "64"}
    assert args["jobs"] == 2
    # Without a config, a config key is an unknown option.
    with pytest.raises(UsageError, match="unknown option '--run.steps'"):
        parse(["--root", "r", "--run.steps=1"], OPTIONS, "")
    # A non-boolean key needs its value.
    with pytest.raises(UsageError, match="--seed needs a value"):
        parse(["--root", "r", "--seed"], OPTIONS, "", config=Config())
    # The config names the keys close to an unknown dotted one.
    with pytest.raises(ConfigError, match="did you mean 'model.deter'"):
        parse_args(["--model.detr=64"])
    cfg, args = parse_args(["--configs", "debug", "--jobs", "2", "--run.steps", "10"],
                           options=[Option("jobs", 1, integer(1))])
    assert (cfg.run.steps, cfg.batch_size, args["jobs"]) == (10, 4, 2)


def test_help_prints_usage_and_the_grammar(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--jobs", "x", "--help"], OPTIONS, "usage: thing --root DIR")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: thing --root DIR\n") and GRAMMAR in " ".join(out.split())


@pytest.mark.parametrize("entry, argv, usage", [
    (cli.train_main, ["--help"], "usage: bash launch/train.sh"),
    (cli.doctor_main, ["--configs", "debug", "-h"], "usage: dreamer-doctor"),
    (cli.eval_main, ["--help"], "usage: dreamer-eval --logdir DIR"),
    (lambda argv: script("learn").main(argv), ["--help"], "python launch/learn.py --root DIR"),
    (lambda argv: script("bench").main(argv), ["--help"], "python launch/bench.py params"),
    (lambda argv: script("bench").main(argv), ["train-step", "-h"], "launch/bench.py train-step"),
    (lambda argv: script("plot").main(argv), ["--help"], "python launch/plot.py RUN"),
    (lambda argv: script("kill_resume").main(argv), ["--help", "--", "--logdir=x"],
     "python launch/kill_resume.py"),
], ids=["dreamer-train", "dreamer-doctor", "dreamer-eval", "learn", "bench", "bench-command",
        "plot", "kill_resume"])
def test_every_entry_point_prints_its_help(entry, argv, usage, capsys):
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert usage in out and GRAMMAR in " ".join(out.split())
