import pytest

from dreamer.schema import ConfigError, Leaf, apply, dotted_keys, schema_from, validated

DEFAULTS = {"seed": 0, "lr": 1e-3, "name": "a", "sizes": [1, 2], "tags": [],
            "net": {"act": "silu", "layers": 2}}


def test_schema_from_reads_types_and_choices():
    schema = schema_from(DEFAULTS, {"net.act": ["silu", "relu"]})
    assert schema["seed"] == Leaf(int) and schema["lr"] == Leaf(float)
    assert schema["sizes"] == Leaf(list, int) and schema["tags"] == Leaf(list, None)
    assert schema["net"]["act"] == Leaf(str, choices=("silu", "relu"))
    assert dotted_keys(schema) == ["seed", "lr", "name", "sizes", "tags", "net.act", "net.layers"]
    assert "net" in dotted_keys(schema, sections=True)
    with pytest.raises(ConfigError, match="choices given for 'net.ac'"):
        schema_from(DEFAULTS, {"net.ac": ["silu"]})
    with pytest.raises(ConfigError, match="default key 'update'"):
        schema_from({"update": 1})
    with pytest.raises(ConfigError, match="mixes element types"):
        schema_from({"x": [1, "a"]})


def test_apply_coerces_and_checks_choices():
    schema = schema_from(DEFAULTS, {"net.act": ["silu", "relu"]})
    tree = validated(DEFAULTS, schema)
    apply(tree, schema, {"seed": "1e3", "sizes": "3,4", "net": {"act": "relu"}}, prefix="",
          root=schema, source="")
    assert tree["seed"] == 1000 and tree["sizes"] == (3, 4) and tree["net"]["act"] == "relu"
    with pytest.raises(ConfigError, match=r"'net.act': 'gelu'; choose one of 'silu', 'relu' "
                                          r"\(in test\)"):
        apply(tree, schema, {"net.act": "gelu"}, prefix="", root=schema, source="test")
    with pytest.raises(ConfigError, match="did you mean 'net.layers'"):
        apply(tree, schema, {"net.layer": 3}, prefix="", root=schema, source="")
    with pytest.raises(ConfigError, match="'net.act'.*choose one of 'silu' \\(see here\\)"):
        note = {**schema, "net": {**schema["net"],
                                  "act": Leaf(str, choices=("silu",), note="see here")}}
        validated({**DEFAULTS, "net": {"act": "relu", "layers": 2}}, note)
