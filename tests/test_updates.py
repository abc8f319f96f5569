"""The parts every agent's train step shares: the sequence-length check, the skip of a
non-finite update and EMA targets."""
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.core import updates


def test_sequence_length_check_names_the_lengths_and_their_source():
    batch = {"is_first": np.zeros((4, 6), bool)}
    updates.check_sequence_length(batch, 6, "pets")
    with pytest.raises(ValueError, match=r"hold 6 steps, dreamerv3 trains on 5 \(batch_length "
                                         r"\+ replay context\)"):
        updates.check_sequence_length(batch, 5, "dreamerv3", "batch_length + replay context")


@pytest.mark.parametrize("bad", ["loss", "grads", "none"])
def test_a_non_finite_loss_or_gradient_keeps_the_old_state_whole(bad):
    old = {"w": jnp.zeros(3), "step": jnp.array(1)}
    new = {"w": jnp.ones(3), "step": jnp.array(2)}
    loss = jnp.array(jnp.nan if bad == "loss" else 0.5)
    grads = {"w": jnp.array([0.1, jnp.inf if bad == "grads" else 0.2, 0.3])}
    state, finite = updates.keep_if_finite(new, old, loss, grads)
    expect = new if bad == "none" else old
    assert bool(finite) == (bad == "none")
    np.testing.assert_array_equal(state["w"], expect["w"])
    assert int(state["step"]) == int(expect["step"])
    assert float(updates.nonfinite_metric(finite)) == (0.0 if bad == "none" else 1.0)


def test_ema_moves_a_fraction_of_the_way():
    target, online = {"a": jnp.array([0.0, 10.0])}, {"a": jnp.array([1.0, 0.0])}
    np.testing.assert_allclose(updates.ema(target, online, 0.02)["a"], [0.02, 9.8], rtol=1e-6)
    np.testing.assert_array_equal(updates.ema(target, online, 1.0)["a"], online["a"])
    np.testing.assert_array_equal(updates.ema(target, online, 0.0)["a"], target["a"])
