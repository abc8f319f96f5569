"""The train-step profile: attribution of XLA events to our functions (pure parts by hand), and
one traced step of the tiny config whose shares cover the world model and the actor-critic."""
import jax
import jax.numpy as jnp
import pytest

from dreamer.agents.dreamerv3 import world_model
from dreamer.bench import benchmark, profiling
from dreamer.config import load_config

HLO = """
ENTRY %main {
  %dot.1 = f32[4,4]{1,0} dot(%a, %b), metadata={op_name="jit(f)/jvp(scope:world_model.loss)/scope:rssm.observe/dot_general"}
  %fusion.2 = f32[4]{0} fusion(%dot.1), kind=kLoop, calls=%c, metadata={op_name="jit(f)/transpose(jvp(scope:behavior.actor_critic_loss))/mul"}
  %while.3 = (f32[4]) while(%t), condition=%c, body=%b, metadata={op_name="jit(f)/while"}
  ROOT %add.4 = f32[4]{0} add(%x, %y), metadata={op_name="jit(f)/add"}
}
"""


def test_instructions_are_attributed_to_scoped_functions_and_direction():
    ops = profiling.hlo_instructions(HLO)
    assert ops["dot.1"][0] == "dot" and ops["while.3"][0] == "while" and ops["add.4"][0] == "add"
    assert profiling.part_of(ops["dot.1"][1]) == "fwd world_model.loss/rssm.observe"
    assert profiling.part_of(ops["fusion.2"][1]) == "bwd behavior.actor_critic_loss"
    assert profiling.part_of(ops["add.4"][1]) == "fwd other"
    events = [{"ph": "X", "name": "dot.1", "dur": 3e6}, {"ph": "X", "name": "fusion.2", "dur": 1e6},
              {"ph": "X", "name": "while.3", "dur": 9e6},  # a container: its body counts
              {"ph": "X", "name": "add.4", "dur": 2e6}, {"ph": "X", "name": "Execute", "dur": 5e6},
              {"ph": "i", "name": "dot.1"}]
    out = profiling.attribute(events, ops, steps=2)
    assert out["op_seconds"] == pytest.approx(3.0)  # (3 + 1 + 2) s over 2 steps
    assert out["parts"] == pytest.approx({"fwd world_model.loss/rssm.observe": 0.5,
                                          "bwd behavior.actor_critic_loss": 1 / 6,
                                          "fwd other": 1 / 3})
    assert out["opcodes"] == pytest.approx({"dot": 0.5, "add": 1 / 3, "fusion": 1 / 6})
    assert profiling.summary(out["parts"]) == pytest.approx(
        {"world_model.loss": 0.5, "other": 1 / 3, "behavior.actor_critic_loss": 1 / 6})


def test_named_scopes_wrap_while_inside_and_restore_after():
    original = world_model.loss
    before = jax.config.jax_compilation_cache_include_metadata_in_key
    with profiling.named_scopes():
        assert world_model.loss is not original and world_model.loss.__wrapped__ is original
        # A persistent compilation cache keys the scoped program apart from the plain one.
        assert jax.config.jax_compilation_cache_include_metadata_in_key
        text = jax.jit(lambda x: world_model.kl_losses(x, x, 1.0)[0].sum()).lower(
            jnp.zeros((2, 3, 4))).as_text(debug_info=True)
        assert "scope:world_model.kl_losses" in text
    assert world_model.loss is original
    assert jax.config.jax_compilation_cache_include_metadata_in_key == before


def test_profile_of_the_tiny_train_step_covers_model_and_behaviour():
    cfg = load_config(["debug"])
    with profiling.named_scopes():
        prepared = benchmark.compile_train_step(cfg)
    out = profiling.profile_train_step(prepared, steps=1, warmup=1)
    assert out["op_seconds"] > 0 and sum(out["parts"].values()) == pytest.approx(1.0)
    assert out["summary"]["world_model.loss"] > 0
    assert out["summary"]["behavior.actor_critic_loss"] > 0
    assert any(p.startswith("bwd ") for p in out["parts"])
    assert any("rssm.imagine" in p for p in out["parts"])
