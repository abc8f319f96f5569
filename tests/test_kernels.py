"""Counting launched kernels and while-loop iterations in optimized HLO text, on hand-written
modules whose counts are worked out by hand, and on programs compiled here."""
import jax
import jax.numpy as jnp
import pytest

from dreamer.bench import kernels

# A loop of 7 iterations whose body launches an add and a fusion (the fused exponential is
# inside the fusion's launch) and whose condition launches a compare; a copy after it.
LOOP = """HloModule jit_f, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_computation (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  %e = f32[4]{0} exponential(f32[4]{0} %param_0)
  ROOT %n = f32[4]{0} negate(f32[4]{0} %e)
}

%body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %t), index=0
  %x = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %t), index=1
  %one = s32[] constant(1)
  %i2 = s32[] add(s32[] %i, s32[] %one)
  %f = f32[4]{0} fusion(f32[4]{0} %x), kind=kLoop, calls=%fused_computation
  ROOT %r = (s32[], f32[4]{0}) tuple(s32[] %i2, f32[4]{0} %f)
}

%cond (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %t), index=0
  %n = s32[] constant(7)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main.9 (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(s32[] %zero, f32[4]{0} %a)
  %w = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %init), condition=%cond, body=%body, \
metadata={op_name="jit(f)/while"}, backend_config={"known_trip_count":{"n":"7"}}
  %out = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %w), index=1
  ROOT %c = f32[4]{0} copy(f32[4]{0} %out)
}
"""


def test_a_loop_counts_its_body_and_condition_once_per_iteration():
    c = kernels.count(LOOP)
    assert (c.kernels, c.loop_iterations, c.outside_loops) == (7 * 3 + 1, 7, 1)
    [loop] = c.loops
    assert (loop.trip_count, loop.body_kernels, loop.scope) == (7, 3, "jit(f)/while")
    assert c.by_opcode == {"add": 7, "fusion": 7, "compare": 7, "copy": 1}


def test_without_the_annotation_the_trip_count_comes_from_the_condition():
    text = LOOP.replace(', backend_config={"known_trip_count":{"n":"7"}}', "")
    assert kernels.count(text).loop_iterations == 7


def test_names_without_percent_signs_parse_alike():
    """Newer XLA prints instruction and computation names without the leading '%'."""
    c = kernels.count(LOOP.replace("%", ""))
    assert (c.kernels, c.loop_iterations) == (22, 7)


def test_nested_loops_multiply_and_a_conditional_counts_its_costlier_branch():
    inner = (LOOP.replace("%body", "%ibody").replace("%cond", "%icond")
             .replace("%fused_computation", "%ifused").replace('"n":"7"', '"n":"3"')
             .replace("constant(7)", "constant(3)"))
    # The inner module's computations, then an outer loop of 5 whose body runs the inner loop
    # (3 x 3 launches) and a conditional whose branches launch 1 and 2 kernels.
    inner_comps = inner[inner.index("%ifused"):inner.index("ENTRY")]
    outer = LOOP[:LOOP.index("ENTRY")] + inner_comps + """
%small (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(f32[4]{0} %p)
}

%large (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %n = f32[4]{0} negate(f32[4]{0} %p)
  ROOT %m = f32[4]{0} multiply(f32[4]{0} %n, f32[4]{0} %n)
}

%obody (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %w = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %t), condition=%icond, body=%ibody, \
backend_config={"known_trip_count":{"n":"3"}}
  %x = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %w), index=1
  %p = pred[] constant(true)
  %y = f32[4]{0} conditional(pred[] %p, f32[4]{0} %x, f32[4]{0} %x), \
true_computation=%small, false_computation=%large
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %t), index=0
  ROOT %r = (s32[], f32[4]{0}) tuple(s32[] %i, f32[4]{0} %y)
}

%ocond (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %t), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(s32[] %zero, f32[4]{0} %a)
  %w = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %init), condition=%ocond, body=%obody, \
backend_config={"known_trip_count":{"n":"5"}}
  ROOT %out = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %w), index=1
}
"""
    c = kernels.count(outer)
    per_outer = 3 * 3 + (2 + 1) + 1  # inner loop, conditional (costlier branch + predicate), cond
    assert c.kernels == 5 * per_outer
    assert c.loop_iterations == 5 * (1 + 3)
    assert sorted((loop.trip_count, loop.calls) for loop in c.loops) == [(3, 5), (5, 1)]


def test_text_without_an_entry_computation_is_refused():
    with pytest.raises(ValueError, match="ENTRY"):
        kernels.count("HloModule m\n")


def test_a_compiled_scan_runs_one_loop_iteration_per_step():
    """On a program compiled here: a scan of 50 steps is one loop of 50 iterations, and the
    kernels count its body once per step."""
    def f(x):
        def step(c, _):
            c = jnp.tanh(c @ c) + jnp.sin(c).sum()
            return c, c.mean()
        return jax.lax.scan(step, x, None, length=50)

    compiled = jax.jit(f).lower(jnp.ones((8, 8))).compile()
    c = kernels.of_compiled(compiled)
    [loop] = [loop for loop in c.loops if loop.trip_count == 50]
    assert c.loop_iterations == 50
    assert c.kernels == c.outside_loops + 50 * loop.body_kernels and loop.body_kernels >= 2
    summary = kernels.summary(c)
    assert summary["kernels"] == c.kernels and summary["top_loops"][0]["trip_count"] == 50


def test_the_cpus_rolled_random_bit_loops_are_split_out():
    """jax.random on the CPU lowers threefry as a loop of 5 rounds (straight-line code on GPUs):
    such loops are counted apart, and a 5-step scan of the program's own is not one of them."""
    def f(key, x):
        noise = jax.random.normal(key, (16,))
        def step(c, _):
            return jnp.tanh(c * 2.0) + 1.0, None
        return jax.lax.scan(step, x + noise, None, length=5)[0]

    c = kernels.of_compiled(jax.jit(f).lower(jax.random.PRNGKey(0), jnp.ones(16)).compile())
    rng = [loop for loop in c.loops if loop.cpu_rng]
    own = [loop for loop in c.loops if not loop.cpu_rng]
    assert jax.default_backend() != "cpu" or len(rng) >= 1
    assert [loop.trip_count for loop in own] == [5]
    assert c.rng_iterations == sum(loop.trip_count * loop.calls for loop in rng)
    assert c.rng_kernels == sum(loop.body_kernels * 5 * loop.calls for loop in rng)
    summary = kernels.summary(c)
    assert summary["loop_iterations_without_rng"] == 5
    assert summary["kernels_without_rng"] == c.kernels - c.rng_kernels
