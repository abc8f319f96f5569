"""Random streams: split once by name from the run seed, never shared, saved and restored."""
import itertools

import jax
import numpy as np
import pytest

from dreamer.core.rngs import Rngs, int_seed, jax_key, seed_sequence

NAMES = ("init", "update", "policy", "eval", "report", "replay", "prefill", "eval_env",
         "actor0.0/policy", "actor1.0/policy", "actor0.1/policy", "actor0.0/prefill")


def first_draws(seed: int) -> dict[tuple, bytes]:
    """The first 128 bits each stream of run `seed` yields: JAX key streams, NumPy generators,
    and the integer seeds of environments (env i of start s, actor envs)."""
    rngs = Rngs(seed)
    out = {}
    for name in NAMES:
        out[("key", name)] = np.asarray(jax.random.key_data(jax.random.wrap_key_data(
            rngs.key(name)))).tobytes()
        out[("numpy", name)] = rngs.numpy(name).bytes(16)
    for index, start in itertools.product(range(4), range(3)):
        out[("env", index, start)] = int(rngs.int_seed("env", index, start)).to_bytes(8, "little")
    return out


def test_no_two_streams_of_seeds_0_to_9_coincide():
    seen: dict[bytes, tuple] = {}
    for seed in range(10):
        for stream, value in first_draws(seed).items():
            assert value not in seen, f"seed {seed} {stream} repeats {seen.get(value)}"
            seen[value] = (seed, *stream)
    assert len(seen) == 10 * (2 * len(NAMES) + 12)


def test_streams_are_reproducible_and_independent_of_use_order():
    a, b = Rngs(3), Rngs(3)
    first = [a.key("update"), a.key("policy"), a.key("update")]
    b.key("policy")  # another stream used first changes nothing
    second = [b.key("update"), jax_key(3, "policy"), b.key("update")]
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[2], second[2])
    assert not np.array_equal(first[0], first[2])  # a stream advances
    assert int_seed(3, "env", 1) == Rngs(3).int_seed("env", 1) < 2**31
    assert seed_sequence(3, "env", 1).entropy == 3


def test_state_round_trip_continues_every_stream():
    rngs = Rngs(5)
    for name in ("update", "policy"):
        rngs.key(name)
    rngs.numpy("replay").random(7)
    saved = rngs.state()
    expected = (rngs.key("update"), rngs.key("policy"), rngs.numpy("replay").random(3))
    restored = Rngs(5)
    restored.load_state(saved)
    got = (restored.key("update"), restored.key("policy"), restored.numpy("replay").random(3))
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(have))
    with pytest.raises(ValueError, match="seed 5, not 6"):
        Rngs(6).load_state(saved)
