"""Tests for the DreamerV3 world model and RSSM: balanced KL with free bits, the filtering scan
against a plain Python loop, imagination, and that training lowers the world-model loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.agents.dreamerv3.world_model import kl_losses

# ------------------------------------------------------------------------------ KL balancing


def np_kl(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """KL(lhs || rhs) of categoricals [..., S, K] given by logits, summed over S."""
    def log_softmax(x):
        x = np.asarray(x, np.float64)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lp, rp = log_softmax(lhs), log_softmax(rhs)
    return (np.exp(lp) * (lp - rp)).sum((-2, -1))


# Two sequences of two latents with three classes: the first pair is far apart (KL > 1 nat),
# the second close together (KL < 1 nat).
POST = np.array([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]],
                 [[0.2, 0.0, 0.0], [0.0, 0.0, 0.1]]], np.float32)
PRIOR = np.array([[[0.0, 0.0, 4.0], [1.0, 0.0, 0.0]],
                  [[0.0, 0.1, 0.0], [0.0, 0.0, 0.0]]], np.float32)
FREE = 1.0

kl_jit = jax.jit(kl_losses, static_argnums=2)


def test_kl_values_and_free_bits():
    kl = np_kl(POST, PRIOR)
    assert kl[0] > FREE > kl[1] > 0  # the fixture covers both sides of the threshold
    dyn, rep = kl_jit(POST, PRIOR, FREE)
    chex.assert_shape([dyn, rep], (2,))
    expected = np.array([kl[0], FREE], np.float32)
    chex.assert_trees_all_close(dyn, expected, rtol=1e-5)
    chex.assert_trees_all_close(rep, expected, rtol=1e-5)
    dyn, rep = kl_jit(POST, PRIOR, 0.0)
    chex.assert_trees_all_close(dyn, kl.astype(np.float32), rtol=1e-5)
    chex.assert_trees_all_close(rep, kl.astype(np.float32), rtol=1e-5)


@jax.jit
def kl_grads(post, prior):
    def term(index, row):
        return lambda po, pr: kl_losses(po, pr, FREE)[index][row]
    return {(name, row): jax.grad(term(index, row), argnums=(0, 1))(post, prior)
            for index, name in enumerate(("dyn", "rep")) for row in range(2)}


def test_kl_gradients_are_balanced():
    grads = kl_grads(POST, PRIOR)
    # Above the free nats: dyn trains only the prior, rep only the posterior.
    g_post, g_prior = grads["dyn", 0]
    assert float(jnp.abs(g_post).max()) == 0.0
    assert float(jnp.abs(g_prior[0]).max()) > 0.1
    g_post, g_prior = grads["rep", 0]
    assert float(jnp.abs(g_post[0]).max()) > 0.1
    assert float(jnp.abs(g_prior).max()) == 0.0
    # Below the free nats both terms are constant: no gradient at all.
    for name in ("dyn", "rep"):
        g_post, g_prior = grads[name, 1]
        assert float(jnp.abs(g_post).max()) == 0.0 and float(jnp.abs(g_prior).max()) == 0.0


def test_kl_prior_gradient_matches_numpy():
    """d KL(p || softmax(l)) / d l = softmax(l) - p for the sequence above the free nats."""
    grads = kl_grads(POST, PRIOR)
    p = np.exp(POST[0]) / np.exp(POST[0]).sum(-1, keepdims=True)
    q = np.exp(PRIOR[0]) / np.exp(PRIOR[0]).sum(-1, keepdims=True)
    chex.assert_trees_all_close(grads["dyn", 0][1][0], (q - p).astype(np.float32), atol=1e-6)


# ------------------------------------------------------------------------------ RSSM

B, T, E, A = 3, 7, 6, 2
RESET_AT = 3  # row 0 starts a new episode here


@pytest.fixture(scope="module")
def rssm_setup():
    """A tiny RSSM (unimix on, one block layer) with parameters and jitted pieces."""
    rssm = rssm_lib.RSSM(deter=8, hidden=8, stoch=3, classes=4, embed=E, blocks=2, img_layers=1)
    state0 = rssm_lib.initial(rssm, B)
    params = jax.jit(rssm.init)(jax.random.key(0), state0, jnp.zeros((B, A)), jnp.zeros((B, E)),
                                jax.random.key(1))["params"]

    def method(name):
        return jax.jit(lambda p, *args: rssm.apply({"params": p}, *args, method=name))

    observe = jax.jit(lambda *args: rssm_lib.observe(rssm, *args))
    return rssm, params, observe, {n: method(n) for n in
                                   ("embed_proj", "obs_step", "prior", "core")}


def sequence_inputs(seed: int):
    rng = np.random.default_rng(seed)
    start = {"deter": rng.normal(size=(B, 8)).astype(np.float32),
             "stoch": np.eye(4, dtype=np.float32)[rng.integers(0, 4, (B, 3))].reshape(B, 12)}
    prev_action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
    embed = rng.normal(size=(B, T, E)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[0, 0] = is_first[0, RESET_AT] = True  # row 0: two episodes
    is_first[2, 5] = True                           # row 2: continues `start`, then a new episode
    return start, prev_action, embed, is_first      # row 1: continues `start` throughout


def loop_observe(methods, params, start, prev_action, embed, is_first, key):
    """Reference filter: a Python loop over time with the reset written out."""
    keys = jax.random.split(key, T)
    state = {k: np.asarray(v) for k, v in start.items()}
    deter, stoch, post, prior = [], [], [], []
    for t in range(T):
        keep = 1.0 - is_first[:, t].astype(np.float32)[:, None]
        state = {k: v * keep for k, v in state.items()}
        action = prev_action[:, t] * keep
        proj = methods["embed_proj"](params, embed[:, t])
        state, logits = methods["obs_step"](params, state, action, proj, keys[t])
        deter.append(state["deter"])
        stoch.append(state["stoch"])
        post.append(logits)
        prior.append(methods["prior"](params, state["deter"]))
    states = {"deter": jnp.stack(deter, 1), "stoch": jnp.stack(stoch, 1)}
    return state, states, jnp.stack(post, 1), jnp.stack(prior, 1)


def test_observe_matches_python_loop(rssm_setup):
    _, params, observe, methods = rssm_setup
    inputs = sequence_inputs(0)
    key = jax.random.key(5)
    last, states, post, prior = observe(params, *inputs, key)
    chex.assert_shape(states["deter"], (B, T, 8))
    chex.assert_shape(states["stoch"], (B, T, 12))
    chex.assert_shape([post, prior], (B, T, 3, 4))
    ref_last, ref_states, ref_post, ref_prior = loop_observe(methods, params, *inputs, key)
    chex.assert_trees_all_close(states, ref_states, atol=1e-5)
    chex.assert_trees_all_close(post, ref_post, atol=1e-5)
    chex.assert_trees_all_close(prior, ref_prior, atol=1e-5)
    chex.assert_trees_all_close(last, ref_last, atol=1e-5)
    chex.assert_trees_all_close(last, jax.tree.map(lambda x: x[:, -1], states))
    # Samples are one-hot per latent.
    stoch = np.asarray(states["stoch"]).reshape(B, T, 3, 4)
    np.testing.assert_allclose(stoch.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(stoch.max(-1), 1.0, atol=1e-6)


def test_observe_uses_start_state_until_reset(rssm_setup):
    _, params, observe, _ = rssm_setup
    start, prev_action, embed, is_first = sequence_inputs(0)
    other = {k: v + 1.0 for k, v in start.items()}
    key = jax.random.key(5)
    _, states, _, _ = observe(params, start, prev_action, embed, is_first, key)
    _, states2, _, _ = observe(params, other, prev_action, embed, is_first, key)
    # Row 0 starts with is_first: the start state is ignored. Rows 1 and 2 carry it.
    chex.assert_trees_all_equal(states["deter"][0], states2["deter"][0])
    diff = np.abs(np.asarray(states["deter"] - states2["deter"]))
    assert diff[1].max() > 1e-3 and diff[2, :5].max() > 1e-3
    chex.assert_trees_all_equal(states["deter"][2, 5:], states2["deter"][2, 5:])


def test_reset_mid_sequence_forgets_the_past(rssm_setup):
    _, params, observe, _ = rssm_setup
    start, prev_action, embed, is_first = sequence_inputs(0)
    key = jax.random.key(5)
    _, states, post, prior = observe(params, start, prev_action, embed, is_first, key)
    # Different history before the reset (start state, actions and observations) ...
    rng = np.random.default_rng(9)
    prev_action2, embed2 = prev_action.copy(), embed.copy()
    prev_action2[:, :RESET_AT] = rng.uniform(-1, 1, prev_action2[:, :RESET_AT].shape)
    embed2[:, :RESET_AT] = rng.normal(size=embed2[:, :RESET_AT].shape)
    # ... and a different action into the reset step, which must be zeroed too.
    prev_action2[:, RESET_AT] = -prev_action2[:, RESET_AT]
    start2 = {k: v - 2.0 for k, v in start.items()}
    _, states2, post2, prior2 = observe(params, start2, prev_action2, embed2, is_first, key)

    def after(tree):
        return jax.tree.map(lambda x: x[0, RESET_AT:], tree)

    chex.assert_trees_all_close(after(states), after(states2), atol=1e-6)
    chex.assert_trees_all_close(after(post), after(post2), atol=1e-6)
    chex.assert_trees_all_close(after(prior), after(prior2), atol=1e-6)
    assert np.abs(np.asarray(states["deter"][0, :RESET_AT] - states2["deter"][0, :RESET_AT])
                  ).max() > 1e-3
    # The reset state is the first state of a fresh sequence starting there (its deterministic
    # part and posterior do not depend on the sampling key).
    suffix_first = np.zeros((B, T), bool)
    suffix_first[:, 0] = True

    def shift(x):
        return np.concatenate([x[:, RESET_AT:], x[:, :RESET_AT]], 1)

    _, fresh, fresh_post, _ = observe(params, start2, shift(prev_action2), shift(embed),
                                      suffix_first, jax.random.key(11))
    chex.assert_trees_all_close(fresh["deter"][0, 0], states["deter"][0, RESET_AT], atol=1e-6)
    chex.assert_trees_all_close(fresh_post[0, 0], post[0, RESET_AT], atol=1e-6)


def test_reset_state_zeroes_where_first():
    state = {"deter": jnp.ones((3, 4)), "stoch": 2 * jnp.ones((3, 6))}
    action = jnp.full((3, 2), 3.0)
    new, new_action = rssm_lib.reset_state(state, action, jnp.array([True, False, True]))
    keep = np.array([0.0, 1.0, 0.0])[:, None]
    chex.assert_trees_all_equal(new, {"deter": np.ones((3, 4)) * keep,
                                      "stoch": 2 * np.ones((3, 6)) * keep})
    chex.assert_trees_all_equal(new_action, 3.0 * np.ones((3, 2)) * keep)


def test_imagine_shapes_start_and_transitions(rssm_setup):
    rssm, params, _, methods = rssm_setup
    horizon, n = 4, 5
    w = jax.random.normal(jax.random.key(2), (20, A))

    def policy(state, key):
        del key
        return jnp.tanh(rssm_lib.feat(state) @ w)

    rng = np.random.default_rng(3)
    start = {"deter": rng.normal(size=(n, 8)).astype(np.float32),
             "stoch": np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, 3))].reshape(n, 12)}
    imagine = jax.jit(lambda p, s, k: rssm_lib.imagine(rssm, p, s, policy, horizon, k))
    states, actions = imagine(params, start, jax.random.key(4))
    chex.assert_shape(states["deter"], (n, horizon + 1, 8))
    chex.assert_shape(states["stoch"], (n, horizon + 1, 12))
    chex.assert_shape(actions, (n, horizon + 1, A))
    chex.assert_tree_all_finite((states, actions))
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[:, 0], states), start)

    def at(h):
        return jax.tree.map(lambda x: x[:, h], states)

    # Action h is the policy's choice in state h, and state h+1 follows from both.
    for h in range(horizon + 1):
        chex.assert_trees_all_close(actions[:, h], policy(at(h), None), atol=1e-5)
    for h in range(horizon):
        chex.assert_trees_all_close(states["deter"][:, h + 1],
                                    methods["core"](params, at(h), actions[:, h]), atol=1e-5)
    stoch = np.asarray(states["stoch"]).reshape(n, horizon + 1, 3, 4)
    np.testing.assert_allclose(stoch.sum(-1), 1.0, atol=1e-6)


def test_open_loop_follows_the_given_actions_like_a_loop_of_prior_steps(rssm_setup):
    """Open-loop prediction shares imagination's prior unroll: state h follows action h from
    state h-1, each drawn with the second half of the step's key."""
    rssm, params, _, _ = rssm_setup
    horizon, n = 4, 3
    rng = np.random.default_rng(7)
    start = {"deter": rng.normal(size=(n, 8)).astype(np.float32),
             "stoch": np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, 3))].reshape(n, 12)}
    actions = rng.uniform(-1, 1, (n, horizon, A)).astype(np.float32)
    key = jax.random.key(5)
    got = jax.jit(lambda p, s, a, k: rssm_lib.open_loop(rssm, p, s, a, k))(
        params, start, actions, key)
    chex.assert_shape(got["deter"], (n, horizon, 8))
    state = start
    for h, k in enumerate(jax.random.split(key, horizon)):
        state, _ = rssm.apply({"params": params}, state, actions[:, h],
                              jax.random.split(k, 2)[1], method="img_step")
        chex.assert_trees_all_close({k: v[:, h] for k, v in got.items()}, state, atol=1e-5)


def test_filter_step_resets_then_observes(rssm_setup):
    """The one filtering step that `observe` scans and the policy takes: zero state and
    previous action where an episode starts, then the posterior step."""
    rssm, params, _, methods = rssm_setup
    start, prev_action, embed, _ = sequence_inputs(4)
    proj = methods["embed_proj"](params, embed[:, 0])
    first = np.array([True, False, True])
    key = jax.random.key(6)
    got = rssm.apply({"params": params}, start, prev_action[:, 0], proj, first, key,
                     method="filter_step")
    keep = (~first).astype(np.float32)[:, None]
    state = {k: v * keep for k, v in start.items()}
    want = methods["obs_step"](params, state, prev_action[:, 0] * keep, proj, key)
    chex.assert_trees_all_close(got, want, atol=1e-6)


# ------------------------------------------------------------------------------ training


def test_updates_on_a_fixed_batch_lower_the_world_model_loss(discrete_case):
    """With a fixed batch and key the loss is a deterministic function of the parameters."""
    case = discrete_case
    state = case.fresh_state()
    losses = []
    for _ in range(21):
        state, metrics, _ = case.train_step(state, case.batch, jax.random.key(100))
        losses.append(float(metrics["loss/wm"]))
    assert int(state.step) == 21
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.95 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    assert (np.diff(losses) < 0).mean() > 0.8, losses


def test_report_videos_show_real_model_and_error(discrete_case):
    """The open-loop prediction sees only the first `context` frames: changing later frames
    changes the reconstruction but not the imagination."""
    agent, params, batch = discrete_case.agent, discrete_case.state.params, discrete_case.batch
    report = jax.jit(agent.report, static_argnames="context")
    context = 3
    out = jax.device_get(report(params, batch, jax.random.key(0), context=context))
    b, t, h, w, c = batch["image"].shape
    for name in ("recon", "openloop"):
        video = out[name]
        assert video.shape == (b, t, h, 3 * w, c) and video.dtype == np.uint8
        np.testing.assert_array_equal(video[..., :w, :], batch["image"])  # real
        model = video[..., w:2 * w, :].astype(np.float64)
        error = video[..., 2 * w:, :].astype(np.float64)
        expected = np.round(((model - batch["image"]) / 255.0 + 1.0) / 2.0 * 255.0)
        np.testing.assert_allclose(error, expected, atol=1.0)
    np.testing.assert_array_equal(out["openloop"][:, :context], out["recon"][:, :context])
    assert np.isfinite(out["recon_mse"]) and np.isfinite(out["openloop_mse"])

    later = {**batch, "image": batch["image"].copy()}
    later["image"][:, context:] = 255 - later["image"][:, context:]
    changed = jax.device_get(report(params, later, jax.random.key(0), context=context))
    np.testing.assert_array_equal(changed["openloop"][:, :, :, w:2 * w],
                                  out["openloop"][:, :, :, w:2 * w])
    assert not np.array_equal(changed["recon"][:, context:, :, w:2 * w],
                              out["recon"][:, context:, :, w:2 * w])


def test_report_is_empty_without_images(continuous_case):
    agent, case = continuous_case.agent, continuous_case
    assert agent.report(case.state.params, case.batch, jax.random.key(0), context=2) == {}
