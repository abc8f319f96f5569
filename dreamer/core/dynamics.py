"""An ensemble dynamics model of (state vector, action) -> (state change, reward, termination),
learned from replayed sequences, with its normalisers, bootstraps and loss.

K Gaussian MLPs (`dreamer.core.ensemble`) map the normalised (state vector, action) to the normalised
(state change, reward) and a termination logit (Chua et al. 2018). Any agent that learns such a
model from the replay uses it: PETS plans with it; an agent that trains a policy on the model's
rollouts (MBPO) would train and query it alike.

- Transitions: replayed sequences of L steps give B x (L - 1) transitions (s_t, a_t) ->
  (s_t+1 - s_t, r_t+1, terminal_t+1); pairs across an episode boundary are masked out.
- Normalisers: the running moments of the distinct transitions seen, each counted once however
  often it is replayed; a table of step ids (`ModelState.seen`) records which were counted.
- Bootstraps: member k weights a transition by a Poisson(1) draw (the online bootstrap of Oza &
  Russell 2001) keyed by a key fixed for the run, k and the step id of the transition's first
  step, so a transition keeps its weight for a member every time it is replayed and the members
  see independent resamples of the data; they differ where data is scarce.
- Held-out transitions (optional, `holdout`): a fixed share of the transitions, chosen by a
  hash of their step id, never trains the model; each update measures every member's squared
  error on those of its batch, so an agent can rank members by error on data they never fit
  (MBPO's elites).
- `DynamicsModel`: the networks and optimiser with `init`, `predict` and `train_step`.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from dreamer.core import ensemble
from dreamer.core.parallel import gather_over, mean_over, sum_over
from dreamer.core.updates import keep_if_finite, nonfinite_metric

Batch = dict[str, jax.Array]


class ModelState(flax.struct.PyTreeNode):
    """The model's train state. `bootstrap` and `seen` stay out of `params`, which acting
    copies."""

    params: dict[str, Any]   # {'model': ensemble params [K, ...], 'norm': running moments}
    opt_state: Any
    step: jax.Array
    bootstrap: jax.Array     # uint32: the raw key of the members' bootstrap weights, for the run
    seen: jax.Array          # int32 [S]: step id of the transition last counted in each slot


def slots(capacity: int) -> int:
    """Size S of the normaliser's table of counted transitions for a replay of `capacity` steps:
    twice the capacity.

    A transition whose first step has id i occupies slot i % S, so its slot returns to use S
    inserts later. The replay holds `capacity` steps in sealed chunks plus one open chunk per
    worker and evicts the oldest chunks first, so the ids it holds span less than
    capacity + 2 x workers x chunk: while workers x chunk < capacity / 2 (the presets stay far
    below), a slot is reused only after its transition has left the replay. A worker that
    keeps a chunk open for S inserts of the others breaks this: its transitions may count
    twice."""
    return 2 * int(capacity)


def transitions(batch: Batch):
    """[B, L, ...] sequences -> inputs [B, L-1, D+A], targets [B, L-1, D+1], terminals and
    the mask of pairs within one episode [B, L-1]."""
    vec = batch["vector"].astype(jnp.float32)
    x = jnp.concatenate([vec[:, :-1], batch["action"][:, :-1]], -1)
    y = jnp.concatenate([vec[:, 1:] - vec[:, :-1], batch["reward"][:, 1:, None]], -1)
    mask = 1.0 - batch["is_last"][:, :-1].astype(jnp.float32)
    return x, y, batch["is_terminal"][:, 1:].astype(jnp.float32), mask


# ----------------------------------------------------------------------------- normalisers
def initial_norm(inputs: int, outputs: int) -> dict[str, jax.Array]:
    """Normalisers that have counted nothing: zero means, unit variances."""
    return {"count": jnp.zeros([], jnp.int32),
            "in_mean": jnp.zeros(inputs), "in_var": jnp.ones(inputs),
            "out_mean": jnp.zeros(outputs), "out_var": jnp.ones(outputs)}


def _merge(count, mean, var, n, batch_mean, batch_var):
    """Running moments (count, mean, var) merged with those of n new samples (Chan et al.
    1979); the counts are exact integers, the arithmetic float32. n = 0 changes nothing."""
    count, n = count.astype(jnp.float32), n.astype(jnp.float32)
    total = jnp.maximum(count + n, 1.0)
    delta = batch_mean - mean
    frac = n / total
    new_mean = mean + delta * frac
    new_var = (count * var + n * batch_var + jnp.square(delta) * count * frac) / total
    return jnp.where(n > 0, new_mean, mean), jnp.where(n > 0, new_var, var)


def _std(var: jax.Array) -> jax.Array:
    return jnp.sqrt(var + 1e-8)


def moments(x: jax.Array, mask: jax.Array, axis_name: str | None = None):
    """Masked count, mean and variance over every device's rows: x [..., F], mask [...]."""
    n = sum_over(mask.sum(), axis_name)
    w = mask[..., None]
    mean = sum_over((w * x).reshape(-1, x.shape[-1]).sum(0), axis_name) / jnp.maximum(n, 1.0)
    var = sum_over((w * jnp.square(x - mean)).reshape(-1, x.shape[-1]).sum(0), axis_name)
    return n, mean, var / jnp.maximum(n, 1.0)


def uncounted(seen: jax.Array, ids: jax.Array, valid: jax.Array) -> jax.Array:
    """Which transitions to count now: ids [M] of their first steps, valid [M] -> [M] bool.

    A transition counts when it is valid, its slot `seen[id % S]` does not hold its id yet, and
    it is the first of its copies in `ids` (overlapping sequences repeat transitions): sorted by
    id, valid copies first, a copy counts when the id before it differs."""
    order = jnp.lexsort((~valid, ids))
    ranked = ids[order]
    first = jnp.concatenate([jnp.ones(1, bool), ranked[1:] != ranked[:-1]])
    first = jnp.zeros_like(first).at[order].set(first)
    return valid & first & (seen[ids % seen.shape[0]] != ids)


def mark_counted(seen: jax.Array, ids: jax.Array, counted: jax.Array) -> jax.Array:
    """`seen` with the ids [M] of the transitions `counted` [M] written into their slots."""
    return seen.at[jnp.where(counted, ids % seen.shape[0], seen.shape[0])].set(ids, mode="drop")


def new_transitions(seen: jax.Array, ids: jax.Array, mask: jax.Array,
                    axis_name: str | None = None):
    """The transitions of a batch the normaliser has not counted, each once over all devices.

    ids, mask [B, L-1]: first-step ids and the mask of pairs within one episode. Every device
    gathers the ids of all devices and decides for all of them alike (the exact dedupe across
    devices), so the replicas of `seen` stay equal. Returns (this device's new transitions
    [B, L-1] bool, every device's ids [N*B*(L-1)] and new flags [N*B*(L-1)] for
    `mark_counted`)."""
    every = gather_over(ids, axis_name).reshape(-1)
    new = uncounted(seen, every, gather_over(mask > 0, axis_name).reshape(-1))
    start = 0 if axis_name is None else jax.lax.axis_index(axis_name) * ids.size
    mine = jax.lax.dynamic_slice_in_dim(new, start, ids.size).reshape(ids.shape)
    return mine, every, new


def update_norm(norm: dict[str, jax.Array], x: jax.Array, y: jax.Array, new: jax.Array,
                axis_name: str | None = None) -> dict[str, jax.Array]:
    """The running input and output moments merged with those of the `new` [B, L-1]
    transitions of every device (see `new_transitions`); `count` (int32) counts them."""
    n = sum_over(new.sum(dtype=jnp.int32), axis_name)
    weight = new.astype(jnp.float32)
    _, x_mean, x_var = moments(x, weight, axis_name)
    _, y_mean, y_var = moments(y, weight, axis_name)
    in_mean, in_var = _merge(norm["count"], norm["in_mean"], norm["in_var"], n, x_mean, x_var)
    out_mean, out_var = _merge(norm["count"], norm["out_mean"], norm["out_var"], n,
                               y_mean, y_var)
    return {"count": norm["count"] + n, "in_mean": in_mean, "in_var": in_var,
            "out_mean": out_mean, "out_var": out_var}


def held_out(ids: jax.Array, fraction: float) -> jax.Array:
    """Which transitions, named by the step ids of their first steps, are held out: those whose
    ids hash (Knuth's multiplicative hash, the top 16 bits) below `fraction` of the range; the
    same every time a transition is replayed, and about `fraction` of any run of ids."""
    if fraction <= 0:
        return jnp.zeros(ids.shape, bool)
    hashed = (ids.astype(jnp.uint32) * jnp.uint32(2654435761)) >> jnp.uint32(16)
    return hashed < jnp.uint32(round(fraction * 65536))


# ----------------------------------------------------------------------------- bootstraps, loss
def bootstrap_weights(key: jax.Array, ids: jax.Array, members: int) -> jax.Array:
    """Poisson(1) weights [K, B, L-1] of the transitions whose first steps have ids [B, L-1]:
    member k's weight of a transition is drawn from (key, k, id), so it is the same every time
    the transition is replayed, independent between members, and on N devices what one
    device holding every row draws. A single member (K = 1) is no ensemble: it weighs every
    transition 1, rather than leaving out for good the ~37% drawn 0."""
    if members == 1:
        return jnp.ones((1, *ids.shape), jnp.float32)
    flat = ids.reshape(-1)

    def member(k):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, k), flat)
        return jax.vmap(lambda one: jax.random.poisson(one, 1.0))(keys)

    w = jax.vmap(member)(jnp.arange(members))
    return w.reshape(members, *ids.shape).astype(jnp.float32)


def loss(model: Any, net: ensemble.GaussianMLP, norm: dict[str, jax.Array], x: jax.Array,
         y: jax.Array, term: jax.Array, weights: jax.Array, held: jax.Array | None = None, *,
         bound_reg: float):
    """Bootstrap-weighted Gaussian NLL of the normalised targets plus the termination
    cross-entropy, summed over members, plus `bound_reg` times the log-variance bound loss.
    `weights` [K, B, L-1] include the mask and are divided by their sum over all devices, so
    the mean of the per-device gradients is the gradient on the whole batch. The metrics
    include `held` ([B, L-1] weights of held-out transitions, or None): each member's summed
    squared error of its mean on them, [K], with no gradient."""
    k = weights.shape[0]
    flat = lambda a: jnp.broadcast_to(a.reshape(1, -1, *a.shape[2:]),
                                      (k, a.shape[0] * a.shape[1], *a.shape[2:]))
    xn = (x - norm["in_mean"]) / _std(norm["in_var"])
    yn = (y - norm["out_mean"]) / _std(norm["out_var"])
    mean, logvar, logits = ensemble.apply(net, model, flat(xn))
    nll = ensemble.gaussian_nll(mean, logvar, flat(yn)).mean(-1)
    bce = optax.sigmoid_binary_cross_entropy(logits[..., 0], flat(term))
    w = weights.reshape(k, -1)
    terms = {"nll": (w * nll).sum() / k, "termination": (w * bce).sum() / k,
             "mse": (w * jnp.square(mean - flat(yn)).mean(-1)).sum() / k}
    bounds = ensemble.bound_loss(model)
    total = k * (terms["nll"] + terms["termination"]) + bound_reg * bounds
    metrics = {f"loss/{n}": v for n, v in terms.items()}
    metrics.update({"loss/bounds": bounds, "model/logvar": logvar.mean()})
    if held is not None:
        error = jax.lax.stop_gradient(jnp.square(mean - flat(yn)).mean(-1))  # [K, B (L-1)]
        metrics["held_out_error"] = (held.reshape(1, -1) * error).sum(-1)
    return total, metrics


# ----------------------------------------------------------------------------- the model
class DynamicsModel:
    """K Gaussian MLPs of `layers` x `units` over (state [D], action [A]), trained with AdamW
    on replayed sequences that carry `step_id`; `slots` sizes the normaliser's table (see
    `slots`), `holdout` is the share of transitions held out (`held_out`). Reductions over
    `axis_name` only when it is set, so N devices holding B/N sequences each compute the update
    of one device holding B."""

    def __init__(self, obs_dim: int, act_dim: int, *, members: int, units: int, layers: int,
                 act: str, min_logvar: float, max_logvar: float, lr: float,
                 weight_decay: float, bound_reg: float, slots: int, holdout: float = 0.0,
                 axis_name: str | None = None):
        self.obs_dim, self.act_dim, self.members = obs_dim, act_dim, members
        self.holdout = holdout
        self.bound_reg, self.slots, self.axis_name = bound_reg, slots, axis_name
        self.net = ensemble.GaussianMLP(obs_dim + 1, units, layers, act, extra=1,
                                        min_logvar=min_logvar, max_logvar=max_logvar)
        self.opt = optax.adamw(lr, weight_decay=weight_decay)

    def init(self, key: jax.Array) -> ModelState:
        """Members initialised apart, normalisers and the table of counted transitions empty,
        and the run's bootstrap key, all from `key`."""
        inputs, outputs = self.obs_dim + self.act_dim, self.obs_dim + 1
        k_model, k_bootstrap = jax.random.split(key)
        model = ensemble.init(self.net, k_model, self.members, inputs)
        return ModelState(params={"model": model, "norm": initial_norm(inputs, outputs)},
                          opt_state=self.opt.init(model), step=jnp.zeros([], jnp.int32),
                          bootstrap=jax.random.key_data(k_bootstrap),
                          seen=jnp.full(self.slots, -1, jnp.int32))

    def predict(self, params: dict[str, Any], states: jax.Array, actions: jax.Array,
                key: jax.Array | None = None):
        """Every member on its own rows: states [K, N, D], actions [K, N, A] -> (next states
        [K, N, D], rewards [K, N], termination probabilities [K, N]); the members' means
        without `key`, samples from their Gaussians with it. `params['model']` may hold a
        subset of the members (e.g. the elites, K of them)."""
        members = jax.tree.leaves(params["model"])[0].shape[0]
        chex.assert_shape(states, (members, None, self.obs_dim))
        chex.assert_shape(actions, (*states.shape[:2], self.act_dim))
        norm = params["norm"]
        x = jnp.concatenate([states, actions], -1)
        x = (x - norm["in_mean"]) / _std(norm["in_var"])
        mean, logvar, logits = ensemble.apply(self.net, params["model"], x)
        if key is not None:
            mean = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        y = mean * _std(norm["out_var"]) + norm["out_mean"]
        return states + y[..., :-1], y[..., -1], jax.nn.sigmoid(logits[..., 0])

    def train_step(self, state: ModelState, batch: Batch) -> tuple[ModelState, dict, dict]:
        """One update on [B, L, ...] sequences (with `step_id`, L >= 2): the normalisers count
        the batch's new transitions, then each member takes a step on its bootstrap of those
        not held out. A non-finite loss or gradient leaves the state as it was
        (`metrics['nonfinite']`). Returns the state, the metrics and the held-out error of the
        parameters before the step: {'error': [K] each member's mean squared error of its mean
        on the batch's held-out transitions (normalised targets), 'count': how many there were
        on all devices} (error 0 where none)."""
        if batch["is_first"].shape[1] < 2:
            raise ValueError("the dynamics model trains on transitions: replayed sequences "
                             f"need at least 2 steps, got {batch['is_first'].shape[1]}")
        x, y, term, mask = transitions(batch)
        ids = batch["step_id"][:, :-1]  # a transition is named by its first step
        new, every, counted = new_transitions(state.seen, ids, mask, self.axis_name)
        norm = update_norm(state.params["norm"], x, y, new, self.axis_name)
        held = held_out(ids, self.holdout).astype(jnp.float32) * mask
        weights = bootstrap_weights(state.bootstrap, ids, self.members) * (mask - held)
        devices = sum_over(jnp.ones([]), self.axis_name)
        total = sum_over(weights.sum((1, 2)), self.axis_name)  # [K]: on the whole batch
        weights = weights * devices / jnp.maximum(total, 1.0)[:, None, None]
        grads, metrics = jax.grad(loss, has_aux=True)(
            state.params["model"], self.net, norm, x, y, term, weights, held,
            bound_reg=self.bound_reg)
        grads = mean_over(grads, self.axis_name)
        count = sum_over(held.sum(), self.axis_name)
        error = sum_over(metrics.pop("held_out_error"), self.axis_name) / jnp.maximum(count, 1.0)
        updates, opt_state = self.opt.update(grads, state.opt_state, state.params["model"])
        model = optax.apply_updates(state.params["model"], updates)
        metrics["grad_norm/model"] = optax.tree.norm(grads)
        metrics = mean_over(metrics, self.axis_name)
        metrics["norm/count"] = norm["count"].astype(jnp.float32)
        (params, opt_state, step), finite = keep_if_finite(
            ({"model": model, "norm": norm}, opt_state, state.step + 1),
            (state.params, state.opt_state, state.step), grads, metrics["loss/nll"])
        # Written in place rather than selected whole: the table is large, the batch small.
        seen = mark_counted(state.seen, every, counted & finite)
        state = state.replace(params=params, opt_state=opt_state, step=step, seen=seen)
        metrics["nonfinite"] = nonfinite_metric(finite)
        return state, metrics, {"error": error, "count": count}
