"""Tests for the DreamerV3 agent: parameter counts of the size presets, where gradients flow, the
jitted train step and the acting policy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dreamer.agents.dreamerv3 import behavior, world_model
from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.agents.dreamerv3.agent import DreamerV3, compute_dtype, param_counts, weighted_sum
from dreamer.config import ConfigError, load_config
from dreamer.core.distributions import split_keys
from dreamer.core.parallel import row_keys
from dreamer.envs import base

WM_MODULES = ("enc", "rssm", "dec", "rew", "con")


def norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                             for x in jax.tree.leaves(tree))))


@jax.jit
def distance(lhs, rhs) -> jax.Array:
    """Euclidean distance between two trees (one compile instead of an eager op per leaf)."""
    return optax.tree.norm(jax.tree.map(jnp.subtract, lhs, rhs))


@jax.jit
def ema(slow, fast, rate):
    return jax.tree.map(lambda s, p: (1 - rate) * s + rate * p, slow, fast)


def assert_all_zero(tree, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        assert not np.asarray(leaf).any(), f"{what}{jax.tree_util.keystr(path)} has gradient"


# ------------------------------------------------------------------------------ sizes

WALKER_OBS = {"vision": {"image": base.Space(np.uint8, (64, 64, 3), 0, 255)},
              "proprio": {"vector": base.Space(np.float32, (24,))}}


@pytest.mark.parametrize("preset, obs, millions", [
    ("size1m", "vision", 0.69), ("size12m", "vision", 10.5),
    ("size1m", "proprio", 0.64), ("size12m", "proprio", 9.7),
])
def test_parameter_counts_match_dreamerv3(preset, obs, millions):
    """Walker (6-D continuous actions) parameter counts of the DreamerV3 size presets."""
    agent = DreamerV3(load_config([preset]), WALKER_OBS[obs], base.continuous_space(6))
    shapes = jax.eval_shape(agent.init, jax.random.key(0)).params
    counts = param_counts(shapes)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert counts["total"] == pytest.approx(millions * 1e6, rel=0.1), counts


# ------------------------------------------------------------------------------ gradients


def test_imagination_loss_trains_actor_without_entropy(imagination):
    """With the entropy bonus off, the actor still learns from the advantage-weighted
    log-probabilities of its (non-differentiable) sampled actions."""
    metrics = imagination["ac_aux"][1]
    assert float(metrics["ac/adv_abs"]) > 0
    grads = imagination["ac_grads"]
    chex.assert_tree_all_finite(grads)
    assert norm(grads["actor"]) > 1e-4
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads["actor"]):
        assert np.asarray(leaf).any(), f"actor{jax.tree_util.keystr(path)} gets no gradient"


def test_imagination_loss_does_not_train_the_world_model(imagination):
    """Imagination starts from the world model's posterior states and uses its dynamics, reward
    and continue heads, but none of them may receive gradient from the actor-critic loss."""
    grads = imagination["ac_grads"]
    assert set(grads["wm"]) == set(WM_MODULES)
    for module in WM_MODULES:
        assert_all_zero(grads["wm"][module], f"wm/{module}")
    assert norm(grads["critic"]) > 1e-4


@pytest.fixture(scope="module")
def full_grads(continuous_case, perturb_heads):
    """Gradients of the full `DreamerV3.loss` and of the world-model loss alone, without entropy
    bonus and with random reward/critic output layers (non-zero advantages).

    Continuous actions and vector inputs here; the train-step tests below differentiate the
    full loss for discrete actions and images.
    """
    case = continuous_case
    cfg = case.agent.cfg.update({"ac.entropy": 0.0})
    agent = DreamerV3(cfg, case.agent.obs_space, case.agent.act_space)
    stopped = DreamerV3(cfg.update({"ac.repval_grad": False}), case.agent.obs_space,
                    case.agent.act_space)
    key = jax.random.key(2)
    # The world model's share of the keys inside DreamerV3.loss: its half of every row's key.
    k_wm = split_keys(row_keys(key, case.batch["is_first"].shape[0], None), 2)[0]
    start, prev_action, steps = world_model.sequence_inputs(agent.wm, case.batch, True)

    def wm_loss(p):
        terms = world_model.loss(agent.wm, p["wm"], steps, start, prev_action, k_wm,
                                 free_nats=cfg.model.free_nats)[0]
        return weighted_sum(terms, agent.scales)

    @jax.jit
    def grads(params):
        full = jax.grad(lambda p: stopped.loss(p, case.state, case.batch, key)[0])(params)
        wm = jax.grad(wm_loss)(params)
        with_repval = jax.grad(lambda p: agent.loss(p, case.state, case.batch, key)[0])(params)
        return full, wm, with_repval

    return grads(perturb_heads(case.state.params, jax.random.key(8)))


def test_full_loss_trains_actor_without_entropy(full_grads):
    full, _, _ = full_grads
    chex.assert_tree_all_finite(full)
    for group in ("wm", "actor", "critic"):
        assert norm(full[group]) > 1e-4, group


def test_world_model_loss_trains_only_the_world_model(full_grads):
    full, wm, with_repval = full_grads
    chex.assert_tree_all_finite(wm)
    for module in WM_MODULES:
        assert norm(wm["wm"][module]) > 0, module
    assert_all_zero(wm["actor"], "actor")
    assert_all_zero(wm["critic"], "critic")
    # Conversely, with the replayed-value loss stopped, the actor-critic terms of the full loss
    # add nothing to the world model's gradients.
    chex.assert_trees_all_close(full["wm"], wm["wm"], rtol=1e-5, atol=1e-7)
    # With `ac.repval_grad` (2024 default) the replayed-value loss adds to the encoder's and the
    # RSSM's gradients, and to no other world-model module's.
    for module in ("enc", "rssm"):
        assert float(distance(with_repval["wm"][module], wm["wm"][module])) > 1e-6, module
    for module in ("dec", "rew", "con"):
        chex.assert_trees_all_close(with_repval["wm"][module], wm["wm"][module], rtol=1e-5,
                                    atol=1e-7)


# ------------------------------------------------------------------------------ train step


def test_train_step_metrics_and_state(discrete_case):
    case = discrete_case
    state_in = case.fresh_state()
    state, metrics, _ = case.train_step(state_in, case.batch, jax.random.key(4))
    # The state was donated: its buffers now hold the new state.
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state_in.params))
    chex.assert_tree_all_finite((state, metrics))
    for name in ("loss/wm", "loss/total", "loss/policy", "loss/value", "loss/repval",
                 "loss/image", "loss/reward", "loss/cont", "loss/dyn", "loss/rep"):
        chex.assert_shape(metrics[name], ())
    # Gradients of the full loss (with the entropy bonus) reach every group.
    for group in ("wm", "actor", "critic"):
        assert float(metrics[f"grad_norm/{group}"]) > 0, group
    assert int(state.step) == int(case.state.step) + 1 == 1
    chex.assert_trees_all_equal_structs(state, case.state)
    # First LaProp update: the bias-corrected second moment is g^2 and the first moment g, so
    # every parameter with a gradient moves by exactly its group's learning rate. (Some get no
    # gradient at first: the critic's hidden layers, behind an output layer that starts at 0.)
    lrs = {"wm": case.agent.cfg.opt.model_lr, "actor": case.agent.cfg.opt.actor_lr,
           "critic": case.agent.cfg.opt.critic_lr}
    assert case.agent.cfg.opt.warmup == 0
    for group, lr in lrs.items():
        step = np.abs(np.concatenate([
            (np.asarray(new, np.float64) - np.asarray(old, np.float64)).ravel()
            for new, old in zip(jax.tree.leaves(state.params[group]),
                                jax.tree.leaves(case.state.params[group]), strict=True)]))
        moved = step > lr / 2
        assert moved.any(), group
        np.testing.assert_allclose(step[moved], lr, rtol=1e-2, err_msg=group)
        assert (step[~moved] < 1e-9).all(), group
    # The slow critic moves towards the updated critic at the configured rate.
    expected = ema(case.state.slow_critic, state.params["critic"], case.agent.cfg.ac.slow_rate)
    assert float(distance(state.slow_critic, expected)) < 1e-6
    assert float(distance(state.slow_critic, case.state.slow_critic)) > 0
    # Return statistics move from zero towards the batch's return percentiles.
    assert float(state.retnorm["hi"]) >= float(state.retnorm["lo"])
    # The caller's undonated state stays usable for the next step.
    state2, _, _ = case.train_step(state, case.batch, jax.random.key(5))
    assert int(state2.step) == 2


def test_train_step_rejects_wrong_action_shape(discrete_case, make_batch, image_obs_space):
    batch = make_batch(image_obs_space, base.discrete_space(4), length=9)
    with pytest.raises(AssertionError, match="shape"):
        discrete_case.agent.train_step(discrete_case.state, batch, jax.random.key(0))


# ------------------------------------------------------------------------------ policy


def random_carry(agent: DreamerV3, n: int, seed: int):
    rng = np.random.default_rng(seed)
    rssm = agent.wm.rssm
    stoch = np.eye(rssm.classes, dtype=np.float32)[rng.integers(0, rssm.classes,
                                                                 (n, rssm.stoch))]
    state = {"deter": rng.normal(size=(n, rssm.deter)).astype(np.float32),
             "stoch": stoch.reshape(n, -1)}
    return state, rng.uniform(-1, 1, (n, agent.act_dim)).astype(np.float32)


def test_policy_actions_and_reset(case):
    agent, params = case.agent, case.state.params
    n = 3
    obs = {k: v[:n, 0] for k, v in case.batch.items() if k in ("image", "vector")}
    key = jax.random.key(6)
    initial = agent.policy_initial(n)
    carry_a, carry_b = random_carry(agent, n, 0), random_carry(agent, n, 1)

    first = {**obs, "is_first": np.ones(n, bool)}
    out0, action0, outputs0 = case.policy(params, initial, first, key)
    out_a, action_a, _ = case.policy(params, carry_a, first, key)
    out_b, _, _ = case.policy(params, carry_b, first, key)
    chex.assert_shape(action0, (n, agent.act_dim))
    chex.assert_tree_all_finite((out0, action0))
    chex.assert_trees_all_close(out_a, out0, atol=1e-6)
    chex.assert_trees_all_close(out_b, out0, atol=1e-6)
    chex.assert_trees_all_close(action_a, action0, atol=1e-6)
    chex.assert_trees_all_close(out0[1], action0)  # the carry remembers the action
    chex.assert_shape(out0[0]["deter"], (n, agent.wm.rssm.deter))
    # The step's outputs are the replay context: the posterior state just computed, with the
    # latents as class indices.
    np.testing.assert_array_equal(outputs0["context_deter"], out0[0]["deter"])
    rssm = agent.wm.rssm
    stoch = np.asarray(out0[0]["stoch"]).reshape(n, rssm.stoch, rssm.classes)
    np.testing.assert_array_equal(outputs0["context_stoch"], stoch.argmax(-1))
    if agent.act_space.discrete:
        np.testing.assert_array_equal(np.sort(np.asarray(action0), -1),
                                      np.tile([0.0, 0.0, 1.0], (n, 1)))

    # Without is_first the carried state matters; a mixed batch resets only its first rows.
    mixed = {**obs, "is_first": np.array([True, False, False])}
    out_a, _, _ = case.policy(params, carry_a, mixed, key)
    out_b, _, _ = case.policy(params, carry_b, mixed, key)
    chex.assert_trees_all_close(out_a[0]["deter"][0], out0[0]["deter"][0], atol=1e-6)
    chex.assert_trees_all_close(out_b[0]["deter"][0], out0[0]["deter"][0], atol=1e-6)
    diff = np.abs(np.asarray(out_a[0]["deter"] - out_b[0]["deter"]))
    assert diff[1:].min(-1).max() > 0 and diff[1:].max() > 1e-3


def test_eval_samples_as_sample_does_and_mode_is_greedy(case):
    """'eval' is 'sample' (the official code evaluates with sampled actions): the same draw under
    the same key, and not the actor's most likely action in the state observed; 'mode' is that
    most likely action under every key."""
    agent, params = case.agent, case.state.params
    n = 4
    obs = {k: v[:n, 0] for k, v in case.batch.items() if k in ("image", "vector")}
    obs["is_first"] = np.ones(n, bool)
    carry, sampled = agent.policy_initial(n), False
    for seed in range(3):
        key = jax.random.key(seed)
        (state, _), drawn, _ = case.policy(params, carry, obs, key, mode="eval")
        np.testing.assert_array_equal(case.policy(params, carry, obs, key)[1], drawn)
        greedy = case.policy(params, carry, obs, key, mode="mode")[1]
        dist = behavior.policy_dist(agent.ac, params["actor"], rssm_lib.feat(state))
        np.testing.assert_allclose(greedy, dist.mode(), atol=1e-5)
        sampled |= not np.allclose(drawn, dist.mode(), atol=1e-3)
    assert sampled


def test_every_loss_term_is_scaled_once(discrete_case):
    """The objective is Σ scale_k · mean(term_k) over the unscaled terms that the world-model,
    actor-critic and replayed-value losses return; a term without a scale is refused."""
    case = discrete_case
    agent = case.agent
    _, (metrics, _, _) = jax.jit(agent.loss)(case.state.params, case.state, case.batch,
                                             jax.random.key(4))
    terms = {k[len("loss/"):] for k in metrics if k.startswith("loss/")} - {"wm", "total"}
    assert terms == {"image", "reward", "cont", "dyn", "rep", "policy", "value", "repval"}
    total = sum(agent.scales[k] * float(metrics[f"loss/{k}"]) for k in terms)
    np.testing.assert_allclose(float(metrics["loss/total"]), total, rtol=1e-5)
    wm = sum(agent.scales[k] * float(metrics[f"loss/{k}"])
             for k in ("image", "reward", "cont", "dyn", "rep"))
    np.testing.assert_allclose(float(metrics["loss/wm"]), wm, rtol=1e-5)
    assert (agent.scales["dyn"], agent.scales["rep"]) == (agent.cfg.model.dyn_scale,
                                                          agent.cfg.model.rep_scale)
    with pytest.raises(ValueError, match="without a scale: extra"):
        weighted_sum({"image": jnp.ones(2), "extra": jnp.ones(2)}, agent.scales)


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_dynamics_gradients_reach_actor_not_world_model(kind, request, perturb_heads):
    """With `ac.actor_grad=dynamics` the actor maximises the λ-return through the frozen model:
    the actor gets gradient, the world model none, and the critic only from its own loss."""
    case = request.getfixturevalue(f"{kind}_case")
    cfg = case.agent.cfg.update({"ac.entropy": 0.0, "ac.actor_grad": "dynamics"})
    agent = DreamerV3(cfg, case.agent.obs_space, case.agent.act_space)
    params = perturb_heads(case.state.params, jax.random.key(3))
    start, prev_action, steps = world_model.sequence_inputs(agent.wm, case.batch, True)
    _, _, out = world_model.loss(agent.wm, params["wm"], steps, start, prev_action,
                                 jax.random.key(4), free_nats=cfg.model.free_nats)
    b, t = steps["is_first"].shape
    start = world_model.flat_steps(out.states)

    def actor_only(p):
        terms, _, _, _ = behavior.actor_critic_loss(
            agent.wm, agent.ac, p, case.state.slow_critic, case.state.retnorm, start,
            jnp.ones(b * t), jax.random.key(5), **agent.imagination_kwargs())
        return terms["policy"].mean()

    grads = jax.jit(jax.grad(actor_only))(params)
    assert norm(grads["actor"]) > 1e-6
    for module in WM_MODULES:
        assert_all_zero(grads["wm"][module], f"wm/{module}")
    assert_all_zero(grads["critic"], "critic")


def test_nonfinite_update_is_skipped(discrete_case):
    case = discrete_case
    batch = {**case.batch, "reward": case.batch["reward"].copy()}
    batch["reward"][1, 3] = np.nan
    state, metrics, context = case.train_step(case.fresh_state(), batch, jax.random.key(4))
    assert float(metrics["nonfinite"]) == 1.0
    chex.assert_trees_all_equal(state, case.state)  # nothing moved, not even the step counter
    # The replay keeps the context it had (no non-finite latents are written back).
    for key, value in context.items():
        np.testing.assert_array_equal(value, batch[key][:, 1:])
    state, metrics, _ = case.train_step(case.fresh_state(), case.batch, jax.random.key(4))
    assert float(metrics["nonfinite"]) == 0.0 and int(state.step) == 1


# ------------------------------------------------------------------------------ replay context


def test_replay_context_from_policy_is_the_sequence_start(continuous_case):
    """Steps acted on by the policy store its model state; a train step on a sequence whose
    first step carries that state continues the same recurrence: the deterministic state of the
    second step (a function of the stored state and the action taken) equals the policy's."""
    case = continuous_case
    agent, params = case.agent, case.state.params
    batch = {k: v.copy() for k, v in case.batch.items()}
    b = batch["is_first"].shape[0]
    batch["is_first"][:, :2] = [True, False]
    carry, outputs = agent.policy_initial(b), []
    for t in range(2):
        obs = {"vector": batch["vector"][:, t], "is_first": batch["is_first"][:, t]}
        carry, action, out = case.policy(params, carry, obs, jax.random.key(t))
        batch["action"][:, t] = np.asarray(action)
        outputs.append(jax.device_get(out))
    for key in outputs[0]:
        batch[key][:, 0] = outputs[0][key]
    _, metrics, context = case.train_step(case.fresh_state(), batch, jax.random.key(9))
    assert float(metrics["nonfinite"]) == 0.0
    chex.assert_shape(context["context_deter"], (b, agent.cfg.batch_length, agent.cfg.model.deter))
    chex.assert_shape(context["context_stoch"], (b, agent.cfg.batch_length, agent.cfg.model.stoch))
    np.testing.assert_allclose(context["context_deter"][:, 0], outputs[1]["context_deter"],
                               rtol=1e-5, atol=1e-6)


def test_train_step_reads_only_the_first_steps_context(continuous_case):
    """The stored state of the first step is the start of the recurrence (changing it changes
    the loss); the stored states of later steps are only rewritten, never read."""
    case = continuous_case
    key = jax.random.key(3)
    loss = jax.jit(lambda batch: case.agent.loss(case.state.params, case.state, batch, key)[0])
    base_loss = float(loss(case.batch))
    later = {**case.batch, "context_deter": case.batch["context_deter"].copy()}
    later["context_deter"][:, 1:] += 1.0
    assert float(loss(later)) == base_loss
    first = {**case.batch, "context_deter": case.batch["context_deter"].copy()}
    first["context_deter"][:, 0] += 1.0
    assert float(loss(first)) != base_loss


IMAGINE, REPLAYED_VALUE = behavior.actor_critic_loss, behavior.repval_loss


def spied_loss(agent: DreamerV3, params, batch, state, monkeypatch) -> dict:
    """What `agent.loss` hands the actor-critic and replayed-value losses: starts, start_cont,
    keys and the returns ret0 of the imagination; feat, batch and boot of the replayed value."""
    seen = {}

    def ac_spy(wm, ac, params, slow, retnorm, starts, start_cont, keys, **kw):
        out = IMAGINE(wm, ac, params, slow, retnorm, starts, start_cont, keys, **kw)
        seen.update(starts=starts, start_cont=start_cont, keys=jax.random.key_data(keys),
                    ret0=out[3])
        return out

    def repval_spy(ac, critic, slow, feat, batch, boot, **kw):
        seen.update(feat=feat, batch=batch, boot=boot)
        return REPLAYED_VALUE(ac, critic, slow, feat, batch, boot, **kw)

    monkeypatch.setattr(behavior, "actor_critic_loss", ac_spy)
    monkeypatch.setattr(behavior, "repval_loss", repval_spy)

    def run(params, state, batch, key):
        agent.loss(params, state, batch, key)
        return dict(seen)

    return jax.device_get(jax.jit(run)(params, state, batch, jax.random.key(5)))


def test_imagination_starts_from_the_last_k_steps(continuous_case, perturb_heads, monkeypatch):
    """`ac.imag_last=k` (the 2024 code's `imag_last`): the actor-critic imagines from the last k
    steps of each sequence only, each with the state, continue flag and key it has when every
    step starts one, and the replayed-value loss covers those k steps, bootstrapped from their
    imagined returns. Random reward and critic heads make the returns non-zero; an episode ends
    (terminal) inside the last k steps of one sequence."""
    case, k = continuous_case, 3
    b, t = case.batch["is_first"].shape[0], case.agent.cfg.batch_length
    assert case.agent.cfg.ac.imag_last == 0 and 0 < k < t
    batch = {key: np.array(v) for key, v in case.batch.items()}
    end = batch["is_first"].shape[1] - 2  # the second-to-last step: inside the last k
    batch["is_last"][1, end] = batch["is_terminal"][1, end] = True
    params = perturb_heads(case.state.params, jax.random.key(6))
    spy = lambda imag_last: spied_loss(
        DreamerV3(case.agent.cfg.update({"ac.imag_last": imag_last}), case.agent.obs_space,
                  case.agent.act_space), params, batch, case.state, monkeypatch)
    every, last = spy(0), spy(k)
    tail = lambda x: x.reshape(b, t, *x.shape[1:])[:, t - k:].reshape(b * k, *x.shape[1:])
    assert np.abs(every["ret0"]).min() > 1e-3 and (every["start_cont"] == 0).sum() == 2
    assert (last["start_cont"] == 0).sum() == 1 and last["starts"]["deter"].shape[0] == b * k
    for name in ("start_cont", "keys", "ret0"):
        np.testing.assert_allclose(last[name], tail(every[name]), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    chex.assert_trees_all_close(last["starts"], jax.tree.map(tail, every["starts"]), rtol=1e-5)
    np.testing.assert_allclose(last["feat"], every["feat"][:, t - k:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last["boot"], every["boot"][:, t - k:], rtol=1e-5, atol=1e-6)
    for key in ("reward", "is_last", "is_terminal"):
        np.testing.assert_array_equal(last["batch"][key], every["batch"][key][:, t - k:])
    # Anything from the sequence length up starts from every step, as 0 does.
    whole = spy(t + 5)
    np.testing.assert_array_equal(whole["keys"], every["keys"])
    np.testing.assert_allclose(whole["ret0"], every["ret0"], rtol=1e-6)


def test_a_wrong_imag_last_is_named(continuous_case):
    """A negative count, or one replayed step left for the replayed-value loss, is refused when
    the agent is built (the config's types refuse a non-integer before that)."""
    cfg, case = continuous_case.agent.cfg, continuous_case
    build = lambda values: DreamerV3(cfg.update(values), case.agent.obs_space,
                                     case.agent.act_space)
    with pytest.raises(ConfigError, match=r"ac.imag_last must be an integer >= 0.*got -1"):
        build({"ac.imag_last": -1})
    with pytest.raises(ConfigError, match=r"ac.imag_last=1 .* use ac.imag_last >= 2, or ac.repval=0"):
        build({"ac.imag_last": 1})
    build({"ac.imag_last": 1, "ac.repval": 0.0})
    with pytest.raises(ConfigError, match="imag_last"):
        cfg.update({"ac.imag_last": 1.5})


# ------------------------------------------------------------------------------ precision


def test_train_step_takes_a_prioritized_batch(continuous_case):
    """A prioritized replay's batch also holds `weight` [B], one value per sequence, which
    DreamerV3 does not use: the step with replay context traces as without it."""
    case = continuous_case
    assert case.agent.context
    weighted = {**case.batch, "weight": np.ones(case.batch["is_first"].shape[0], np.float32)}
    plain = jax.eval_shape(case.agent.train_step, case.state, case.batch, jax.random.key(0))
    got = jax.eval_shape(case.agent.train_step, case.state, weighted, jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(got, plain)


def test_compute_dtype_auto_is_bfloat16_on_accelerators_and_float32_on_cpu():
    assert compute_dtype("auto", "cpu") == jnp.float32
    assert compute_dtype("auto", "gpu") == compute_dtype("auto", "tpu") == jnp.bfloat16
    assert compute_dtype("float32", "tpu") == jnp.float32
    with pytest.raises(ConfigError, match="auto, float32 or bfloat16"):
        compute_dtype("float16")


def test_bfloat16_step_keeps_float32_params_losses_and_context(continuous_case):
    """With bfloat16 compute the parameters, optimiser state, losses and the replay context
    stay float32 (traced only: the shapes and dtypes of one update)."""
    case = continuous_case
    cfg = case.agent.cfg.update({"jax.compute_dtype": "bfloat16"})
    agent = DreamerV3(cfg, case.agent.obs_space, case.agent.act_space)
    assert agent.wm.rssm.dtype == jnp.bfloat16
    state = jax.eval_shape(agent.init, jax.random.key(0))
    new, metrics, context = jax.eval_shape(agent.train_step, state, case.batch,
                                           jax.random.key(1))
    for leaf in jax.tree.leaves((new.params, new.opt_state, new.slow_critic, new.retnorm)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf
    assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(metrics))
    assert context["context_deter"].dtype == jnp.float32


def test_steps_without_policy_state_start_from_the_zero_state(continuous_case):
    """Random-action steps store the zero state (latent class -1): a sequence starting there
    starts from `policy_initial`'s state, as an episode does."""
    agent = continuous_case.agent
    outputs = agent.policy_outputs_initial(3)
    np.testing.assert_array_equal(outputs["context_stoch"], -1)
    batch = {**continuous_case.batch}
    for key, value in outputs.items():
        batch[key] = np.repeat(value[:, None], batch["is_first"].shape[1], 1)
        batch[key] = np.concatenate([batch[key]] * 2)[:batch["is_first"].shape[0]]
    start, _, _ = world_model.sequence_inputs(agent.wm, batch, True)
    initial = agent.policy_initial(batch["is_first"].shape[0])[0]
    chex.assert_trees_all_equal(jax.device_get(start), jax.device_get(initial))


# ------------------------------------------------------------------------------ accelerators

HOST_TRANSFERS = ("callback", "infeed", "outfeed", "stablehlo.send", "stablehlo.recv",
                  "host_compute")


def test_train_step_has_no_host_round_trip_and_donates_its_state(case):
    """On an accelerator the update must run without the host: no callbacks, infeed/outfeed or
    send/recv in the lowered step. And the train state's buffers are donated to the update
    (the old state is consumed, so the device holds one copy of it)."""
    lowered = jax.jit(case.agent.train_step, donate_argnums=0).lower(
        case.state, case.batch, jax.random.key(1))
    text = lowered.as_text()
    for word in HOST_TRANSFERS:
        assert word not in text, f"the train step lowers with {word!r}"
    state = case.fresh_state()
    case.train_step(state, case.batch, jax.random.key(1))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
