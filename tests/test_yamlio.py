import math

import pytest

from dreamer import yamlio


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3e-4", 3e-4),            # PyYAML alone reads a string
        ("1e6", 1_000_000),        # integral exponent notation is an int
        ("5E+5", 500_000),
        ("2.5e5", 250_000.0),      # with a decimal point: a float
        ("1_000", 1000),
        ("-3", -3),
        ("0.5", 0.5),
        (".inf", math.inf),
        ("-.inf", -math.inf),
        ("true", True),
        ("False", False),
        ("yes", "yes"),            # YAML 1.1's booleans stay strings
        ("on", "on"),
        ("2024-01-02", "2024-01-02"),  # no timestamps
        ("8x8", "8x8"),
        ("[1, 2.5, a]", [1, 2.5, "a"]),
    ],
)
def test_load_reads_yaml_1_2_scalars(text, expected):
    value = yamlio.load(text)
    assert value == expected and type(value) is type(expected)


def test_load_reads_nan_and_raises_on_invalid_yaml():
    assert math.isnan(yamlio.load(".nan"))
    with pytest.raises(yamlio.YAMLError):
        yamlio.load("a: [1")


def test_dump_quotes_what_would_not_load_back_as_the_same_string():
    tree = {"b": ["1e6", "true", "yes", "", "2024-01-02", "plain"], "a": 1e-20, "n": 1_000_000}
    text = yamlio.dump(tree)
    assert yamlio.load(text) == tree
    assert text.index("b:") < text.index("a:")  # keys keep their order
    assert "'1e6'" in text and "'true'" in text and "plain" in text
