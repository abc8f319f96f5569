"""Recurrent state-space model (DreamerV3 Sec. 2, block GRU of the 2024 code).

The model state is a dict `{'deter': [N, D], 'stoch': [N, S*K]}`: a deterministic recurrent
state and a flattened one-hot sample of S categorical latents with K classes each.

`RSSM` holds the parameters and the single-step pieces: `filter_step` (one observed step, shared
by `observe` and the acting policy) and `img_step` (one predicted step, which `unroll_prior`
scans for imagination and for open-loop prediction alike). Work that does not depend on the
recurrence is moved out of the scan: the embedding's share of the posterior layer is one large
matmul over all steps before the scan, and the prior of observed sequences is computed after it
from the stacked deterministic states.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer.core.distributions import noise, onehot_straight_through, sg, split_keys, unimix_logits
from dreamer.core.nets import (
    BlockLinear,
    ConcatLinear,
    Dense,
    Dtype,
    GroupedInputLinear,
    Linear,
    Norm,
    get_act,
)

State = dict[str, jax.Array]


class RSSM(nn.Module):
    deter: int
    hidden: int
    stoch: int
    classes: int
    embed: int            # size of the encoder's embedding (the posterior's input)
    blocks: int = 8
    img_layers: int = 2
    obs_layers: int = 1
    dyn_layers: int = 1
    unimix: float = 0.01
    norm: str = "rms"
    act: str = "silu"
    dtype: Dtype = jnp.float32
    batched_blocks: bool = False  # block GRU as batched matmuls (accelerators; `block_matmul`)
    observe_unroll: int = 1  # steps per iteration of observe's scan (fewer loop trips on GPUs)

    def setup(self):
        kw = {"norm": self.norm, "act": self.act, "dtype": self.dtype}
        self.dynin = [Dense(self.hidden, name=f"dynin{i}", **kw) for i in range(3)]
        self.dynhid = [
            (GroupedInputLinear if i == 0 else BlockLinear)(
                self.deter, self.blocks, dtype=self.dtype, batched=self.batched_blocks,
                name=f"dynhid{i}")
            for i in range(self.dyn_layers)]
        self.dynhid_norm = [Norm(self.norm, name=f"dynhid{i}norm") for i in range(self.dyn_layers)]
        self.dyngru = BlockLinear(3 * self.deter, self.blocks, dtype=self.dtype,
                                  batched=self.batched_blocks, name="dyngru")
        self.prior_layers = [Dense(self.hidden, name=f"prior{i}", **kw)
                             for i in range(self.img_layers)]
        self.prior_logit = Linear(self.stoch * self.classes, dtype=self.dtype, name="priorlogit")
        # The first posterior layer is one linear map on [deter, embed]; it is applied in two
        # parts so that the embedding's part runs on a whole sequence at once (`embed_proj`).
        self.obs0 = ConcatLinear(self.hidden, (self.deter, self.embed), dtype=self.dtype,
                                 name="obs0")
        self.obs_norm = Norm(self.norm, name="obs0norm")
        self.obs_layers_rest = [Dense(self.hidden, name=f"obs{i}", **kw)
                                for i in range(1, self.obs_layers)]
        self.obs_logit = Linear(self.stoch * self.classes, dtype=self.dtype, name="obslogit")

    def __call__(self, state: State, action: jax.Array, embed: jax.Array, key: jax.Array):
        """Touches every parameter (used for `init`)."""
        state, _ = self.obs_step(state, action, self.embed_proj(embed), key)
        return self.prior(state["deter"])

    def core(self, state: State, action: jax.Array) -> jax.Array:
        """Block GRU: (deter [N, D], stoch [N, SK], action [N, A]) -> next deter [N, D]."""
        g, deter = self.blocks, state["deter"]
        action = action / sg(jnp.maximum(1.0, jnp.abs(action)))
        inputs = [layer(x) for layer, x in zip(self.dynin, (deter, state["stoch"], action))]
        # Each of the g blocks sees its slice of deter and all three embedded inputs.
        x = self.dynhid[0](deter, jnp.concatenate(inputs, -1))
        x = get_act(self.act)(self.dynhid_norm[0](x))
        for layer, norm in zip(self.dynhid[1:], self.dynhid_norm[1:]):
            x = get_act(self.act)(norm(layer(x)))
        x = self.dyngru(x).astype(jnp.float32)
        x = x.reshape((*x.shape[:-1], g, 3, -1))
        reset, cand, update = [x[..., i, :].reshape(deter.shape) for i in range(3)]
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)  # bias towards keeping the state
        return update * cand + (1 - update) * deter

    def prior(self, deter: jax.Array) -> jax.Array:
        """deter [..., D] -> prior logits [..., S, K] (unimix applied)."""
        x = deter
        for layer in self.prior_layers:
            x = layer(x)
        return self._logits(self.prior_logit(x))

    def embed_proj(self, embed: jax.Array) -> jax.Array:
        """embed [..., E] -> [..., hidden]: the embedding's share of the first posterior layer."""
        return self.obs0.part(embed, 1).astype(jnp.float32)

    def posterior(self, deter: jax.Array, embed_proj: jax.Array) -> jax.Array:
        """(deter [N, D], projected embed [N, H]) -> posterior logits [N, S, K]."""
        x = self.obs0.part(deter, 0) + embed_proj.astype(self.dtype)
        x = get_act(self.act)(self.obs_norm(x))
        for layer in self.obs_layers_rest:
            x = layer(x)
        return self._logits(self.obs_logit(x))

    def _logits(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32).reshape((*x.shape[:-1], self.stoch, self.classes))
        return unimix_logits(x, self.unimix)

    def sample(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        """logits [N, S, K] -> flat straight-through one-hot sample [N, S*K]. `key`: one key,
        one per row [N], or the Gumbel noise [N, S, K] that `latent_noise` draws from it."""
        sample = onehot_straight_through(logits, key)
        return sample.reshape((*sample.shape[:-2], -1))

    def obs_step(self, state: State, action: jax.Array, embed_proj: jax.Array, key: jax.Array):
        """One filtering step: returns (posterior state, posterior logits [N, S, K])."""
        deter = self.core(state, action)
        logits = self.posterior(deter, embed_proj)
        return {"deter": deter, "stoch": self.sample(logits, key)}, logits

    def filter_step(self, state: State, prev_action: jax.Array, embed_proj: jax.Array,
                    is_first: jax.Array, key: jax.Array):
        """One observed step of N sequences: the state and previous action are zeroed where an
        episode starts (is_first [N]), then `obs_step`. Returns (state, posterior logits)."""
        state, prev_action = reset_state(state, prev_action, is_first)
        return self.obs_step(state, prev_action, embed_proj, key)

    def img_step(self, state: State, action: jax.Array, key: jax.Array):
        """One prediction step: returns (prior state, prior logits [N, S, K])."""
        deter = self.core(state, action)
        logits = self.prior(deter)
        return {"deter": deter, "stoch": self.sample(logits, key)}, logits


def initial(rssm: RSSM, batch: int) -> State:
    """All-zero model state for `batch` sequences (the state at every episode start)."""
    return {"deter": jnp.zeros((batch, rssm.deter), jnp.float32),
            "stoch": jnp.zeros((batch, rssm.stoch * rssm.classes), jnp.float32)}


def latent_noise(rssm: RSSM, keys: jax.Array, n: int) -> jax.Array:
    """The Gumbel noise of the latent samples of N states for each of a scan's keys:
    keys [T] or [T, N] (per row) -> [T, N, S, K]. `RSSM.sample` given noise [N, S, K] in place
    of a key draws exactly what it would from that key."""
    shape = (n, rssm.stoch, rssm.classes)
    return jax.vmap(lambda k: noise(jax.random.gumbel, k, shape))(keys)


def reset_state(state: State, action: jax.Array, is_first: jax.Array):
    """Zero the state and previous action where an episode starts (is_first [N])."""
    keep = 1.0 - is_first.astype(jnp.float32)
    state = jax.tree.map(lambda x: x * keep[:, None], state)
    return state, action * keep[:, None]


def observe(rssm: RSSM, params: Any, state: State, prev_action: jax.Array, embed: jax.Array,
            is_first: jax.Array, key: jax.Array):
    """Filter a batch of sequences.

    state: initial {'deter': [B, D], 'stoch': [B, SK]}; prev_action [B, T, A] (action taken
    before step t); embed [B, T, E]; is_first [B, T]; key: one key, or one per row [B].
    Returns (last state, states {'deter': [B, T, D], 'stoch': [B, T, SK]},
    posterior logits [B, T, S, K], prior logits [B, T, S, K]).
    """
    b, t = is_first.shape
    chex.assert_shape(prev_action, (b, t, None))
    chex.assert_shape(embed, (b, t, None))
    apply = _method(rssm, params)
    proj = apply("embed_proj", embed)
    gumbel = latent_noise(rssm, split_keys(key, t), b)

    def step(state, inputs):
        state, logits = apply("filter_step", state, *inputs)
        return state, (state, logits)

    xs = (_swap(prev_action), _swap(proj), _swap(is_first), gumbel)
    last, (states, post) = jax.lax.scan(step, state, xs, unroll=rssm.observe_unroll)
    states, post = _swap(states), _swap(post)
    prior = apply("prior", states["deter"])
    return last, states, post, prior


def unroll_prior(rssm: RSSM, params: Any, start: State, act: Callable, keys: jax.Array,
                 inputs: Any = None, draw: Callable | None = None):
    """Roll the prior forward one step per key ([H, ...]) from `start` ({'deter': [N, D], ...}).

    At step h the action `act(state_h, key, input_h) -> [N, A]` is taken (`inputs`: a pytree of
    [H, ...] per-step inputs, or None) and the next state is drawn with the step's second key.
    `draw(key) -> noise`, when given, turns each step's action key into the noise that `act`
    receives in its place, drawn for all steps before the scan (as the latent noise is).
    Returns (state after the last step, states [N, H, ...] in which the actions were taken,
    actions [N, H, A]).
    """
    apply = _method(rssm, params)
    n = start["deter"].shape[0]
    pairs = jax.vmap(lambda k: split_keys(k, 2))(keys)  # [H, 2, ...]
    k_act, k_img = pairs[:, 0], pairs[:, 1]
    if draw is not None:
        k_act = jax.vmap(draw)(k_act)

    def step(state, xs):
        k, gumbel, x = xs
        action = act(state, k, x)
        next_state, _ = apply("img_step", state, action, gumbel)
        return next_state, (state, action)

    xs = (k_act, latent_noise(rssm, k_img, n), inputs)
    last, (states, actions) = jax.lax.scan(step, start, xs)
    return last, _swap(states), _swap(actions)


def imagine(rssm: RSSM, params: Any, start: State, policy: Callable, horizon: int,
            key: jax.Array, draw: Callable | None = None):
    """Roll the prior forward from `start` ({'deter': [N, D], 'stoch': [N, SK]}).

    `policy(state, key) -> action [N, A]` picks each action from the state it is taken in.
    `key` is one key, or one per start state [N] (then `policy` gets row keys too); with
    `draw` (see `unroll_prior`), `policy` gets `draw(key)` in place of each key.
    Returns (states [N, H+1, ...] including the start, actions [N, H+1, A]), where action h is
    taken in state h (the last one is sampled for completeness but never executed).
    """
    keys = split_keys(key, horizon + 1)
    last, states, actions = unroll_prior(rssm, params, start, lambda s, k, _: policy(s, k),
                                         keys[:-1], draw=draw)
    last_action = policy(last, keys[-1] if draw is None else draw(keys[-1]))
    states = jax.tree.map(lambda xs, x: jnp.concatenate([xs, x[:, None]], 1), states, last)
    return states, jnp.concatenate([actions, last_action[:, None]], 1)


def open_loop(rssm: RSSM, params: Any, start: State, actions: jax.Array, key: jax.Array
              ) -> State:
    """The prior's states after taking `actions` [N, H, A] from `start` without observations:
    [N, H, ...], state h following action h."""
    keys = split_keys(key, actions.shape[1])
    last, states, _ = unroll_prior(rssm, params, start, lambda s, k, a: a, keys, _swap(actions))
    return jax.tree.map(lambda xs, x: jnp.concatenate([xs[:, 1:], x[:, None]], 1), states, last)


def feat(state: State) -> jax.Array:
    """Model state -> feature vector [..., D + S*K] used by all heads."""
    return jnp.concatenate([state["deter"], state["stoch"]], -1)


def _method(module: nn.Module, params: Any):
    return lambda name, *args: module.apply({"params": params}, *args, method=name)


def _swap(tree):
    """Swap the first two axes of every leaf ([B, T, ...] <-> [T, B, ...])."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)
