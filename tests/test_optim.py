"""The optimiser against a plain numpy reference: adaptive gradient clipping (AGC), LaProp with
bias-corrected moments, per-group learning rates and linear learning-rate warm-up.

The reference follows the DreamerV3 2024 optimiser: per tensor, the raw gradient is clipped to
norm <= agc * max(|param|, pmin); it is divided by the root of the bias-corrected EMA of its
square plus eps (RMS scaling); the result goes through a bias-corrected momentum EMA (LaProp:
momentum on normalised gradients); the update is minus the learning rate times that, where the
learning rate of the k-th update (k = 0, 1, ...) is lr * min(k / warmup, 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dreamer.agents.dreamerv3.optim import GROUPS, adaptive_clip, make_optimizer
from dreamer.config import load_config

SHAPES = {
    "wm": {"enc": {"kernel": (3, 4), "bias": (4,)}, "head": {"kernel": (4, 2)}},
    "actor": {"kernel": (2, 3), "bias": (3,)},
    "critic": {"kernel": (5,)},
}
LRS = {"wm": "model_lr", "actor": "actor_lr", "critic": "critic_lr"}


def opt_cfg(**overrides):
    """The `opt` section of the debug config with `overrides` (keys without the `opt.` prefix)."""
    cfg = load_config(["debug"])
    return cfg.update({f"opt.{k}": v for k, v in overrides.items()}).opt


def random_tree(rng: np.random.Generator, scale: float = 1.0):
    """A float32 tree with the layout of `SHAPES`."""
    return jax.tree.map(lambda s: (scale * rng.normal(size=s)).astype(np.float32), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def grad_sequence(steps: int, seed: int = 0, scales=None):
    """`steps` gradient trees; step k is scaled by scales[k] so that the gradient norms differ
    from step to step (a constant scale would be removed by the RMS normalisation)."""
    rng = np.random.default_rng(seed)
    scales = scales if scales is not None else [1.0] * steps
    return [random_tree(rng, s) for s in scales[:steps]]


def reference_updates(cfg, params, grads_seq):
    """Plain numpy (float64) loop: the updates of every step, as trees of numpy arrays.

    Written leaf by leaf with explicit moments and step counters; parameters are updated after
    every step because AGC depends on their current norm.
    """
    groups = {g: jax.tree.map(lambda x: np.asarray(x, np.float64), params[g]) for g in GROUPS}
    out = []
    for g in GROUPS:
        leaves, treedef = jax.tree.flatten(groups[g])
        nu = [np.zeros_like(x) for x in leaves]
        mu = [np.zeros_like(x) for x in leaves]
        lr = float(cfg[LRS[g]])
        for k, grads in enumerate(grads_seq):
            t = k + 1
            gleaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads[g])]
            step_updates = []
            for i, (p, grad) in enumerate(zip(leaves, gleaves, strict=True)):
                if cfg.agc > 0:
                    bound = cfg.agc * max(np.sqrt(np.sum(p ** 2)), cfg.pmin)
                    norm = np.sqrt(np.sum(grad ** 2))
                    if norm > bound:
                        grad = grad * (bound / norm)
                nu[i] = cfg.beta2 * nu[i] + (1 - cfg.beta2) * grad ** 2
                nu_hat = nu[i] / (1 - cfg.beta2 ** t)
                normed = grad / (np.sqrt(nu_hat) + cfg.eps)
                if cfg.beta1 > 0:
                    mu[i] = cfg.beta1 * mu[i] + (1 - cfg.beta1) * normed
                    direction = mu[i] / (1 - cfg.beta1 ** t)
                else:
                    direction = normed
                rate = lr * min(k / cfg.warmup, 1.0) if cfg.warmup > 0 else lr
                step_updates.append(-rate * direction)
            leaves = [p + u for p, u in zip(leaves, step_updates, strict=True)]
            if len(out) <= k:
                out.append({})
            out[k][g] = jax.tree.unflatten(treedef, step_updates)
    return out


def optax_updates(cfg, params, grads_seq):
    """The updates of `make_optimizer(cfg)` for the same gradient sequence."""
    opt = make_optimizer(cfg)
    update = jax.jit(opt.update)
    state = opt.init(params)
    out = []
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=rtol,
                                                         atol=atol), got, want)


def assert_updates_close(got, want, cfg):
    """Compare lists of update trees in units of each group's learning rate (elements are then
    about 1 in size), to rtol 1e-5 and atol 2e-5.

    The tolerance covers float32 rounding: 1 - beta2^t is computed in float32, where
    1 - float32(0.999) is 1.3e-5 away from 0.001 in relative terms, which puts the normalised
    gradients about 6e-6 off (relative); momentum sums of normalised gradients of opposite signs
    turn this into absolute errors of about 1e-5 on elements of size below 1."""
    def per_lr(steps):
        return [{g: jax.tree.map(lambda x, lr=cfg[LRS[g]]: np.asarray(x, np.float64) / lr,
                                 step[g]) for g in GROUPS} for step in steps]
    assert len(got) == len(want)
    assert_trees_close(per_lr(got), per_lr(want), rtol=1e-5, atol=2e-5)


def test_full_chain_matches_numpy_reference():
    """AGC + LaProp + warm-up + per-group learning rates, several steps, against the numpy loop.

    Gradient norms vary over the steps, and the large ones exceed the AGC bound (checked), so the
    clipping changes the result; the learning rates are scaled up so that the parameters, and
    with them the AGC bounds, change noticeably from step to step."""
    cfg = opt_cfg(agc=0.3, warmup=3, model_lr=0.05, actor_lr=0.02, critic_lr=0.1)
    params = random_tree(np.random.default_rng(1))
    scales = [0.01, 3.0, 0.05, 10.0, 0.2, 1.0]
    grads_seq = grad_sequence(6, seed=2, scales=scales)
    clipped = [
        np.linalg.norm(g) > cfg.agc * max(np.linalg.norm(p), cfg.pmin)
        for grads in grads_seq
        for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True)]
    assert any(clipped) and not all(clipped)
    got = optax_updates(cfg, params, grads_seq)
    want = reference_updates(cfg, params, grads_seq)
    assert_updates_close(got, want, cfg)


@pytest.mark.parametrize("eps,beta1", [(None, None), (1e-3, None), (None, 0.0)])
def test_laprop_without_clipping_or_warmup_matches_numpy_reference(eps, beta1):
    """The LaProp core alone (agc 0, warmup 0), 5 steps: with the default betas and eps; with an
    eps as large as the gradients, which pins down where eps enters (added to the root of the
    bias-corrected second moment); and with beta1 0, which drops the momentum."""
    overrides = {k: v for k, v in (("eps", eps), ("beta1", beta1)) if v is not None}
    cfg = opt_cfg(agc=0.0, warmup=0, **overrides)
    params = random_tree(np.random.default_rng(3))
    grads_seq = grad_sequence(5, seed=4, scales=[1e-3, 1e-4, 5e-3, 5e-4, 2e-3])
    assert_updates_close(optax_updates(cfg, params, grads_seq),
                         reference_updates(cfg, params, grads_seq), cfg)


def test_first_update_is_minus_lr_times_sign_of_gradient():
    """With both moments bias-corrected, the first LaProp update is -lr * sign(g) (up to float32
    rounding): the second moment after one step is g^2 and the momentum of a single normalised
    gradient is that gradient. A missing or wrong bias correction breaks this."""
    cfg = opt_cfg(agc=0.0, warmup=0)
    params = random_tree(np.random.default_rng(5))
    (grads,) = grad_sequence(1, seed=6, scales=[1e-3])
    (updates,) = optax_updates(cfg, params, [grads])
    for g in GROUPS:
        want = jax.tree.map(lambda x, lr=cfg[LRS[g]]: -lr * np.sign(x), grads[g])
        assert_trees_close(updates[g], want, rtol=1e-5, atol=0.0)


def test_each_group_gets_its_own_learning_rate():
    """Identical parameters and gradients in the three groups: the updates differ exactly by the
    groups' learning rates, so each rate reaches its own group (and no other)."""
    lrs = {"wm": 1e-3, "actor": 2e-3, "critic": 4e-3}
    cfg = opt_cfg(agc=0.0, warmup=0, model_lr=lrs["wm"], actor_lr=lrs["actor"],
                  critic_lr=lrs["critic"])
    rng = np.random.default_rng(7)
    leaf = {"kernel": rng.normal(size=(3, 4)).astype(np.float32)}
    params = {g: leaf for g in GROUPS}
    grads_seq = [{g: {"kernel": grad} for g in GROUPS}
                 for grad in (rng.normal(size=(3, 4)).astype(np.float32) * s for s in (1, 4, .2))]
    got = optax_updates(cfg, params, grads_seq)
    for updates in got:
        base = np.asarray(updates["wm"]["kernel"]) / lrs["wm"]
        assert np.abs(base).min() > 0
        for g in GROUPS:
            np.testing.assert_allclose(np.asarray(updates[g]["kernel"]), lrs[g] * base,
                                       rtol=1e-5, atol=1e-9)
    assert_updates_close(got, reference_updates(cfg, params, grads_seq), cfg)


def test_warmup_ramps_the_learning_rate_linearly():
    """Update k is min(k / warmup, 1) times the update without warm-up (the first update is
    zero, as with optax's linear schedule in the DreamerV3 code); the moments do not depend on
    the learning rate, so the ratio is exact."""
    warmup = 4
    params = random_tree(np.random.default_rng(8))
    grads_seq = grad_sequence(7, seed=9, scales=[1.0, 0.3, 2.0, 0.5, 1.5, 0.7, 1.0])
    ramped = optax_updates(opt_cfg(agc=0.0, warmup=warmup), params, grads_seq)
    const = optax_updates(opt_cfg(agc=0.0, warmup=0), params, grads_seq)
    for k, (a, b) in enumerate(zip(ramped, const, strict=True)):
        factor = min(k / warmup, 1.0)
        assert_trees_close(a, jax.tree.map(lambda x, f=factor: f * np.asarray(x), b), atol=1e-9)
    cfg = opt_cfg(agc=0.0, warmup=warmup)
    assert_updates_close(ramped, reference_updates(cfg, params, grads_seq), cfg)


def test_agc_leaves_small_gradients_unchanged():
    """Gradients below agc * max(|param|, pmin) pass the clipping unchanged, and the whole chain
    then gives the same updates as without clipping."""
    rng = np.random.default_rng(10)
    params = random_tree(rng)
    grads = random_tree(rng, 1e-3)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True):
        assert np.linalg.norm(g) < 0.3 * np.linalg.norm(p)
    clip = adaptive_clip(0.3, 1e-3)
    out, _ = clip.update(grads, clip.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), out, grads)
    seq = grad_sequence(3, seed=11, scales=[1e-3, 1e-4, 2e-3])
    assert_trees_close(optax_updates(opt_cfg(agc=0.3), params, seq),
                       optax_updates(opt_cfg(agc=0.0), params, seq), atol=1e-9)


@pytest.mark.parametrize("param_scale", [1.0, 0.0])
def test_agc_clips_large_gradients_to_the_bound(param_scale):
    """A gradient above the bound is scaled down (direction kept) to norm agc * |param|, or to
    agc * pmin for parameters with a smaller norm than pmin (here: all-zero parameters)."""
    agc, pmin = 0.3, 1e-3
    rng = np.random.default_rng(12)
    params = random_tree(rng, param_scale)
    grads = random_tree(rng, 100.0)
    clip = adaptive_clip(agc, pmin)
    out, _ = clip.update(grads, clip.init(params), params)
    for o, g, p in zip(jax.tree.leaves(out), jax.tree.leaves(grads), jax.tree.leaves(params),
                       strict=True):
        g64 = np.asarray(g, np.float64)
        bound = agc * max(np.linalg.norm(np.asarray(p, np.float64)), pmin)
        np.testing.assert_allclose(np.asarray(o), g64 * bound / np.linalg.norm(g64), rtol=1e-5,
                                   atol=1e-9)


def test_agc_zero_disables_clipping():
    """With `agc: 0` huge gradients are not clipped: the updates match the reference without
    clipping and differ from the clipped ones (gradient norms vary over the steps, so clipping
    would change the LaProp normalisation)."""
    params = random_tree(np.random.default_rng(13))
    seq = grad_sequence(4, seed=14, scales=[100.0, 1.0, 1000.0, 10.0])
    cfg = opt_cfg(agc=0.0, warmup=0)
    unclipped = optax_updates(cfg, params, seq)
    assert_updates_close(unclipped, reference_updates(cfg, params, seq), cfg)
    clipped = optax_updates(opt_cfg(agc=0.3, warmup=0), params, seq)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(unclipped[1:]), jax.tree.leaves(clipped[1:]), strict=True))
    assert diff > 0.1 * min(cfg.model_lr, cfg.actor_lr, cfg.critic_lr)
