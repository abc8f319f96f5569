"""The ensemble dynamics model: transitions from replayed sequences, normalisers that count each
transition once, bootstraps fixed per transition and member, gradients only from a member's own
bootstrap, training that is device-count invariant, prediction under the normalisers, and a
model that learns known dynamics; no planning code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.core import dynamics
from dreamer.core.parallel import AXIS, DataParallel

D, A = 3, 2
SIZES = {"units": 32, "layers": 2, "act": "silu", "min_logvar": -10.0, "max_logvar": 0.5,
         "lr": 1e-3, "weight_decay": 5e-5, "bound_reg": 0.01, "slots": 256}


def model_of(members=2, axis_name=None, **overrides):
    return dynamics.DynamicsModel(D, A, **{"members": members, **SIZES, **overrides},
                                  axis_name=axis_name)


def batch_of(key, b=8, length=4, dynamics_fn=None, first=0):
    """Sequences in the replay's layout: obs s_t, action a_t chosen after it, reward r_t on
    arriving at s_t; with `dynamics_fn`, s_t+1, r_t+1 = dynamics_fn(s_t, a_t). The step ids
    number the steps row after row from `first`."""
    k1, k2 = jax.random.split(key)
    actions = np.asarray(jax.random.uniform(k1, (b, length, A), minval=-1, maxval=1))
    obs = np.zeros((b, length, D), np.float32)
    reward = np.zeros((b, length), np.float32)
    obs[:, 0] = np.asarray(jax.random.normal(k2, (b, D)))
    for t in range(1, length):
        if dynamics_fn is None:
            obs[:, t], reward[:, t] = obs[:, t - 1] + 1.0, t
        else:
            obs[:, t], reward[:, t] = dynamics_fn(obs[:, t - 1], actions[:, t - 1])
    flags = np.zeros((b, length), bool)
    ids = np.arange(first, first + b * length, dtype=np.int32).reshape(b, length)
    return {"vector": obs, "action": actions.astype(np.float32), "reward": reward,
            "is_first": flags.copy(), "is_last": flags.copy(), "is_terminal": flags.copy(),
            "step_id": ids}


def stream(steps, seed=0, ends=(9, 22), first=100):
    """One worker's steps as a replay holds them, [T, ...] each, with step ids from `first`;
    episodes end at the steps `ends` (the next step starts a new episode)."""
    rng = np.random.default_rng(seed)
    is_last = np.isin(np.arange(steps), ends)
    return {"vector": rng.normal(0, 2, (steps, D)).astype(np.float32),
            "action": rng.uniform(-1, 1, (steps, A)).astype(np.float32),
            "reward": rng.normal(0, 1, steps).astype(np.float32),
            "is_first": np.concatenate([[True], is_last[:-1]]), "is_last": is_last,
            "is_terminal": np.zeros(steps, bool),
            "step_id": np.arange(first, first + steps, dtype=np.int32)}


def sequences(steps, starts, length=4):
    """The sequences of `length` steps of `steps` (see `stream`) that begin at `starts`."""
    index = np.asarray(starts)[:, None] + np.arange(length)
    return {k: v[index] for k, v in steps.items()}


def distinct_moments(steps, starts, length=4):
    """(count, input mean, var, output mean, var) of the distinct transitions within one
    episode that the sequences at `starts` hold, in float64."""
    t = np.unique(np.asarray(starts)[:, None] + np.arange(length - 1))
    t = t[~steps["is_last"][t]]
    x = np.concatenate([steps["vector"][t], steps["action"][t]], -1).astype(np.float64)
    y = np.concatenate([steps["vector"][t + 1] - steps["vector"][t],
                        steps["reward"][t + 1, None]], -1).astype(np.float64)
    return len(t), x.mean(0), x.var(0), y.mean(0), y.var(0)


def linear(s, a):
    """s' = s + 0.2 [a, a0]; r' = s . (1, -0.5, 0.25) + a0."""
    move = np.concatenate([a, a[:, :1]], -1)
    return s + 0.2 * move, s @ np.array([1.0, -0.5, 0.25], np.float32) + a[:, 0]


def test_transitions_mask_pairs_across_an_episode_boundary():
    batch = batch_of(jax.random.PRNGKey(0), b=2, length=4)
    batch["is_last"][0, 1] = True  # step 2 of row 0 starts a new episode
    batch["is_terminal"][1, 2] = True
    x, y, term, mask = dynamics.transitions(batch)
    assert x.shape == (2, 3, D + A) and y.shape == (2, 3, D + 1)
    np.testing.assert_array_equal(mask, [[1, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(term, [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(x[0, 1], np.concatenate([batch["vector"][0, 1],
                                                         batch["action"][0, 1]]))
    np.testing.assert_allclose(y[1, 2], [1.0, 1.0, 1.0, 3.0])  # Δs = 1, r_3 = 3


def assert_moments(norm, want):
    count, in_mean, in_var, out_mean, out_var = want
    assert int(norm["count"]) == count and norm["count"].dtype == jnp.int32
    for name, value in (("in_mean", in_mean), ("in_var", in_var), ("out_mean", out_mean),
                        ("out_var", out_var)):
        np.testing.assert_allclose(norm[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_normalisers_count_each_transition_once_however_often_it_is_replayed():
    model = model_of()
    state = model.init(jax.random.PRNGKey(0))
    step = jax.jit(model.train_step)
    steps = stream(40)
    rng = np.random.default_rng(1)
    # Overlapping sequences, the same start twice in one batch, earlier starts again later.
    batches = [[0, 0, 1, 5, 7, 8, 20, 21], [3, 8, 9, 10, 20, 22, 30, 36],
               rng.integers(0, 37, 8), [36, 30, 22, 20, 10, 9, 8, 3]]
    starts = []
    for batch in batches:
        starts += list(batch)
        state, metrics, _ = step(state, sequences(steps, batch))
        assert float(metrics["nonfinite"]) == 0.0
        assert_moments(state.params["norm"], distinct_moments(steps, starts))
    # A batch of transitions already counted, in another order, changes nothing.
    before = state.params["norm"]
    state, *_ = step(state, sequences(steps, batches[0][::-1]))
    jax.tree.map(np.testing.assert_array_equal, state.params["norm"], before)
    # The table holds the ids of the counted transitions, each in its slot.
    counted = np.flatnonzero(np.asarray(state.seen) >= 0)
    t = np.unique(np.asarray(starts)[:, None] + np.arange(3))
    ids = steps["step_id"][t[~steps["is_last"][t]]]
    np.testing.assert_array_equal(counted, np.sort(ids % model.slots))
    np.testing.assert_array_equal(np.asarray(state.seen)[counted], np.sort(ids))


def test_a_slot_counts_the_transition_that_holds_it_now():
    seen = jnp.full(8, -1, jnp.int32)
    ids = jnp.array([3, 11, 3, 4, 5, 5], jnp.int32)
    valid = jnp.array([True, True, True, True, False, False])
    new = dynamics.uncounted(seen, ids, valid)
    np.testing.assert_array_equal(new, [True, True, False, True, False, False])
    seen = dynamics.mark_counted(seen, jnp.array([3, 4]), jnp.array([True, True]))
    np.testing.assert_array_equal(seen, [-1, -1, -1, 3, 4, -1, -1, -1])
    # 11 shares slot 3 with 3, which holds it: 3 is counted, 11 is not yet.
    np.testing.assert_array_equal(dynamics.uncounted(seen, ids[:2], valid[:2]), [False, True])


def test_the_table_holds_twice_the_replay():
    assert dynamics.slots(1000) == 2000


@pytest.mark.parametrize("devices", [2, 4])
def test_devices_compute_the_update_of_one_device_on_the_whole_batch(devices):
    single, multi = model_of(), model_of(axis_name=AXIS)
    state = single.init(jax.random.PRNGKey(0))
    steps = stream(30, ends=(4, 17))
    # Rows on different devices share transitions, which count once over all of them.
    starts = [0, 2, 4, 14, 2, 15, 0, 20]
    batch = sequences(steps, starts)
    want, metrics, _ = jax.jit(single.train_step)(state, batch)
    assert_moments(want.params["norm"], distinct_moments(steps, starts))
    par = DataParallel(lambda s, b, _: (*multi.train_step(s, b)[:2], {}),
                       jax.devices()[:devices], "pmap", donate=False)
    got, par_metrics, _ = par(par.replicate(state), par.shard(batch), jax.random.PRNGKey(2))
    par.assert_replicas_equal(got)
    got = par.unreplicate(got)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for name in ("loss/nll", "loss/termination", "loss/mse"):
        np.testing.assert_allclose(metrics[name], par_metrics[name], rtol=1e-5)
    assert float(metrics["nonfinite"]) == 0.0


def test_bootstrap_weights_are_fixed_per_transition_and_independent_between_members():
    key = jax.random.PRNGKey(0)
    ids = np.arange(4000, dtype=np.int32).reshape(1000, 4)
    w = np.asarray(dynamics.bootstrap_weights(key, ids, members=4))
    assert w.shape == (4, 1000, 4)
    # The same transitions in another batch, in another order and layout: the same weights.
    order = np.random.default_rng(0).permutation(4000)
    again = dynamics.bootstrap_weights(key, ids.reshape(-1)[order].reshape(500, 8), 4)
    np.testing.assert_array_equal(np.asarray(again).reshape(4, -1), w.reshape(4, -1)[:, order])
    flat = w.reshape(4, -1)
    np.testing.assert_allclose(flat.mean(1), 1.0, atol=0.06)  # Poisson(1) for each member
    np.testing.assert_allclose(flat.var(1), 1.0, atol=0.12)
    corr = np.corrcoef(flat)[np.triu_indices(4, 1)]
    assert np.abs(corr).max() < 0.1, corr  # independent resamples (std of corr ~ 0.016)
    other = np.asarray(dynamics.bootstrap_weights(jax.random.PRNGKey(1), ids, members=4))
    assert abs(np.corrcoef(other.reshape(-1), w.reshape(-1))[0, 1]) < 0.1


def test_a_single_member_weighs_every_transition_one():
    ids = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    w = dynamics.bootstrap_weights(jax.random.key(0), ids, 1)
    np.testing.assert_array_equal(w, np.ones((1, 3, 4), np.float32))


def test_the_update_keeps_the_run_key_whose_bootstraps_train_the_members():
    model = model_of()
    state = model.init(jax.random.PRNGKey(0))
    other = model.init(jax.random.PRNGKey(1))
    assert not np.array_equal(state.bootstrap, other.bootstrap)
    step = jax.jit(model.train_step)
    batch = batch_of(jax.random.PRNGKey(1), dynamics_fn=linear)
    a, *_ = step(state, batch)
    np.testing.assert_array_equal(a.bootstrap, state.bootstrap)
    # Another run key draws other bootstraps: the members train otherwise.
    c, *_ = step(state.replace(bootstrap=other.bootstrap), batch)
    assert not np.allclose(c.params["model"]["Dense_0"]["kernel"],
                           a.params["model"]["Dense_0"]["kernel"])


def test_a_member_learns_only_from_the_transitions_its_bootstrap_weighs():
    model = model_of(members=3)
    state = model.init(jax.random.PRNGKey(0))
    x, y, term, _ = dynamics.transitions(batch_of(jax.random.PRNGKey(1), dynamics_fn=linear))
    weights = jnp.ones((3, *term.shape)).at[1].set(0.0) / term.size
    grads, _ = jax.grad(dynamics.loss, has_aux=True)(
        state.params["model"], model.net, state.params["norm"], x, y, term, weights,
        bound_reg=0.0)
    for name, g in jax.tree_util.tree_leaves_with_path(grads):
        np.testing.assert_array_equal(g[1], 0.0, err_msg=jax.tree_util.keystr(name))
        assert float(jnp.abs(g[0]).max()) > 0 and float(jnp.abs(g[2]).max()) > 0
    # The bound loss alone reaches every member's bounds, and nothing else.
    grads, _ = jax.grad(dynamics.loss, has_aux=True)(
        state.params["model"], model.net, state.params["norm"], x, y, term, weights * 0.0,
        bound_reg=1.0)
    np.testing.assert_array_equal(grads["max_logvar"], 1.0)
    np.testing.assert_array_equal(grads["min_logvar"], -1.0)
    assert float(jnp.abs(grads["Dense_0"]["kernel"]).max()) == 0.0


def test_a_nonfinite_update_counts_nothing():
    model = model_of()
    state = model.init(jax.random.PRNGKey(0))
    batch = batch_of(jax.random.PRNGKey(1), dynamics_fn=linear)
    batch["vector"][2, 1] = np.nan
    new, metrics, _ = jax.jit(model.train_step)(state, batch)
    assert float(metrics["nonfinite"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, new, state)


def test_sequences_of_one_step_hold_no_transition():
    model = model_of()
    state = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="at least 2 steps"):
        model.train_step(state, batch_of(jax.random.PRNGKey(1), length=1))


def constant_params(model, change, reward, logvar, norm):
    """Params whose members all output the normalised state change `change` [D] and reward with
    log-variance `logvar` (soft bounds far away) and termination logit 0, under `norm`."""
    params = model.init(jax.random.PRNGKey(0)).params["model"]
    params = jax.tree.map(jnp.zeros_like, params)
    out = [k for k in params if k.startswith("Dense")][-1]
    bias = np.zeros((model.members, 2 * (D + 1) + 1), np.float32)
    bias[:, :D], bias[:, D], bias[:, D + 1:2 * (D + 1)] = change, reward, logvar
    params[out]["bias"] = jnp.asarray(bias)
    params["min_logvar"] = jnp.full_like(params["min_logvar"], -40.0)
    params["max_logvar"] = jnp.full_like(params["max_logvar"], 40.0)
    return {"model": params, "norm": norm}


def test_predict_undoes_the_output_normaliser_and_samples_the_members_gaussians():
    model = model_of()
    norm = {"count": jnp.array(10, jnp.int32), "in_mean": jnp.zeros(D + A),
            "in_var": jnp.ones(D + A), "out_mean": jnp.array([1.0, -2.0, 0.5, 3.0]),
            "out_var": jnp.array([4.0, 1.0, 0.25, 9.0])}
    params = constant_params(model, [0.5, 1.0, -2.0], 1.0, np.log(0.25), norm)
    states = jax.random.normal(jax.random.PRNGKey(1), (2, 4000, D))
    actions = jnp.zeros((2, 4000, A))
    nxt, reward, done = jax.jit(model.predict)(params, states, actions)
    # Change = normalised mean x std + mean: (0.5 x 2 + 1, 1 x 1 - 2, -2 x 0.5 + 0.5).
    np.testing.assert_allclose(nxt - states, np.broadcast_to([2.0, -1.0, -0.5], states.shape),
                               atol=1e-5)
    np.testing.assert_allclose(reward, 6.0, atol=1e-5)  # 1 x 3 + 3
    np.testing.assert_allclose(done, 0.5, atol=1e-6)
    # Sampled: the normalised std exp(log(0.25) / 2) = 0.5, times each output's std.
    nxt, reward, _ = jax.jit(model.predict)(params, states, actions, jax.random.PRNGKey(2))
    spread = np.concatenate([np.asarray(nxt - states), np.asarray(reward)[..., None]], -1)
    np.testing.assert_allclose(spread.reshape(-1, D + 1).std(0), [1.0, 0.5, 0.25, 1.5],
                               rtol=0.05)
    np.testing.assert_allclose(spread.reshape(-1, D + 1).mean(0), [2.0, -1.0, -0.5, 6.0],
                               atol=0.05)


def test_the_model_learns_known_dynamics():
    model = model_of(lr=3e-3)
    state = model.init(jax.random.PRNGKey(0))
    step = jax.jit(model.train_step)
    for i in range(300):
        state, metrics, _ = step(state, batch_of(jax.random.PRNGKey(i), 32, 4, linear,
                                              first=i * 32 * 4))
    test = batch_of(jax.random.PRNGKey(99_999), 64, 2, linear)
    s, a = test["vector"][:, 0], test["action"][:, 0]
    rows = lambda v: jnp.broadcast_to(v, (2, *v.shape))
    next_s, reward, done = model.predict(state.params, rows(s), rows(a))
    want_s, want_r = linear(s, a)
    # Bounds with room for the spread over initialisations and bootstraps, over init seeds
    # 0-19 (this is seed 0): mean state error <= 0.012, worst of the 384 outputs 0.018 to
    # 0.12, reward error 4.9% to 9.9% of the reward (13% on one seed), termination
    # probability <= 0.067, NLL of the last batch <= -1.33. The reward error is the noise of
    # constant-rate Adam on small Poisson-weighted batches, not a bias: bootstraps drawn
    # afresh every update spread alike (5.4% to 12% over 10 seeds).
    error = np.abs(next_s - want_s)
    assert float(error.mean()) < 0.015 and float(error.max()) < 0.15
    assert float(np.abs(reward - want_r).mean()) < 0.12 * float(np.abs(want_r).mean())
    assert float(done.max()) < 0.08
    assert float(metrics["loss/nll"]) < -1.2  # confident where it is right


def test_held_out_transitions_are_a_fixed_share_by_step_id():
    ids = jnp.arange(100_000, 120_000, dtype=jnp.int32)
    held = np.asarray(dynamics.held_out(ids, 0.2))
    assert abs(held.mean() - 0.2) < 0.01
    np.testing.assert_array_equal(held, np.asarray(dynamics.held_out(ids, 0.2)))
    assert not np.asarray(dynamics.held_out(ids, 0.0)).any()
    # Nested: a larger share holds out a superset.
    assert np.all(np.asarray(dynamics.held_out(ids, 0.3))[held])


def test_held_out_transitions_never_train_and_are_scored_per_member():
    model = model_of(members=3, holdout=0.3)
    state = model.init(jax.random.PRNGKey(0))
    batch = batch_of(jax.random.PRNGKey(1), b=16, length=3, dynamics_fn=linear)
    held = np.asarray(dynamics.held_out(jnp.asarray(batch["step_id"][:, :-1]), 0.3))
    assert 0 < held.sum() < held.size
    step = jax.jit(model.train_step)
    new, _, val = step(state, batch)
    # With every transition already counted (the normalisers then stay as they are), changing
    # the held-out targets leaves the step unchanged; changing one that trains does not.
    ids = batch["step_id"][:, :-1].reshape(-1)
    counted = new.replace(seen=new.seen.at[ids % model.slots].set(ids))
    base, _, _ = step(counted, batch)
    for rows, changes in ((held, False), (~held, True)):
        other = {k: v.copy() for k, v in batch.items()}
        other["reward"][:, 1:][rows] += 5.0
        got, _, _ = step(counted, other)
        differ = any(not np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(got.params["model"]), jax.tree.leaves(base.params["model"])))
        assert differ == changes
    # The error: each member's mean prediction (parameters before the step, the step's
    # normalisers) against the held-out targets, normalised, squared, averaged.
    norm = new.params["norm"]
    s, a = batch["vector"][:, :-1][held], batch["action"][:, :-1][held]
    target = np.concatenate([batch["vector"][:, 1:][held] - s, batch["reward"][:, 1:][held][:, None]], -1)
    k = model.members
    nxt, reward, _ = model.predict({**state.params, "norm": norm},
                                   jnp.broadcast_to(s, (k, *s.shape)),
                                   jnp.broadcast_to(a, (k, *a.shape)))
    pred = np.concatenate([np.asarray(nxt) - s, np.asarray(reward)[..., None]], -1)
    std = np.sqrt(np.asarray(norm["out_var"]) + 1e-8)
    want = (np.square((pred - target) / std).mean(-1)).mean(-1)
    np.testing.assert_allclose(np.asarray(val["error"]), want, rtol=1e-4, atol=1e-6)
    assert float(val["count"]) == held.sum()
