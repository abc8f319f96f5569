"""World-model loss: reconstruction, reward, continue and balanced KL (DreamerV3 Sec. 2, Eq. 5);
open-loop prediction and reconstruction reports."""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.core.convnets import Decoder, Encoder
from dreamer.core.distributions import (
    TwoHot,
    bernoulli_log_prob,
    categorical_entropy,
    categorical_kl,
    sg,
    symlog,
)
from dreamer.core.nets import MLP

OBS_KEYS = ("image", "vector")


class WorldModelNets(NamedTuple):
    """The world model's module definitions (no parameters; those live in the train state)."""

    enc: Encoder
    rssm: rssm_lib.RSSM
    dec: Decoder
    rew: MLP
    con: MLP
    bins: jax.Array  # the two-hot bins of the reward head


def flat_steps(tree: Any) -> Any:
    """Arrays [B, T, ...] -> [B*T, ...]: one row per step."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1], *x.shape[2:])), tree)


def obs_of(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: batch[k] for k in OBS_KEYS if k in batch}


def encode(nets: WorldModelNets, params: Any, obs: dict[str, jax.Array]) -> jax.Array:
    """Observations with any leading dims [...] -> embeddings [..., E]."""
    lead = next(iter(obs.values())).shape[:-3 if "image" in obs else -1]
    flat = {k: v.reshape((-1, *v.shape[len(lead):])) for k, v in obs.items()}
    embed = nets.enc.apply({"params": params["enc"]}, flat)
    return embed.reshape((*lead, embed.shape[-1]))


def observe_step(nets: WorldModelNets, params: Any, carry: Any, obs: dict[str, jax.Array],
                 key: jax.Array) -> dict[str, jax.Array]:
    """One filtering step for N environments: the posterior model state {'deter': [N, D],
    'stoch': [N, S*K]} after observing `obs` (image [N, H, W, C] / vector [N, V], is_first [N])
    from the carry (model state, previous action)."""
    state, prev_action = carry
    embed = encode(nets, params, obs_of(obs))
    rssm_params = {"params": params["rssm"]}
    proj = nets.rssm.apply(rssm_params, embed, method="embed_proj")
    state, _ = nets.rssm.apply(rssm_params, state, prev_action, proj, obs["is_first"], key,
                               method="filter_step")
    return state


def kl_losses(post: jax.Array, prior: jax.Array, free_nats: float):
    """Balanced KL with free bits (paper Eq. 5): logits [..., S, K] -> (dyn [...], rep [...]).

    dyn trains the prior towards the (fixed) posterior; rep regularises the posterior towards the
    (fixed) prior. Both are clipped below at `free_nats` so that a KL already small does not get
    pushed further at the expense of prediction.
    """
    dyn = categorical_kl(sg(post), prior)
    rep = categorical_kl(post, sg(prior))
    return jnp.maximum(dyn, free_nats), jnp.maximum(rep, free_nats)


class WMOut(NamedTuple):
    states: dict[str, jax.Array]  # posterior states, [B, T, ...]
    feat: jax.Array               # [B, T, F]


def filter_sequences(nets: WorldModelNets, params: Any, obs: dict[str, jax.Array],
                     start: dict[str, jax.Array], prev_action: jax.Array, is_first: jax.Array,
                     key: jax.Array):
    """Posterior states of observed sequences from `start`: (states {'deter': [B, T, D],
    'stoch': [B, T, SK]}, posterior logits [B, T, S, K], prior logits [B, T, S, K])."""
    embed = encode(nets, params, obs)
    _, states, post, prior = rssm_lib.observe(
        nets.rssm, params["rssm"], start, prev_action, embed, is_first, key)
    return states, post, prior


def shifted_actions(action: jax.Array) -> jax.Array:
    """action [B, T, A] (taken after observing step t) -> the action before each step, zero
    before the first."""
    return jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, :-1]], 1)


def replay_context(states: dict[str, jax.Array], stoch: int) -> dict[str, jax.Array]:
    """Model states ({'deter': [..., D], 'stoch': [..., S*K]}) -> what the replay stores as
    context: `context_deter` float32 and the class index of each latent, `context_stoch`
    int32 [..., S]."""
    classes = states["stoch"].reshape((*states["stoch"].shape[:-1], stoch, -1))
    return {"context_deter": states["deter"].astype(jnp.float32),
            "context_stoch": jnp.argmax(classes, -1).astype(jnp.int32)}


def initial_context(n: int, deter: int, stoch: int) -> dict[str, np.ndarray]:
    """The context stored with steps that the policy did not choose: the zero state an episode
    starts from (latent class -1, which `sequence_inputs` reads as an all-zero latent)."""
    return {"context_deter": np.zeros((n, deter), np.float32),
            "context_stoch": np.full((n, stoch), -1, np.int32)}


def sequence_inputs(nets: WorldModelNets, batch: dict[str, jax.Array], context: bool):
    """(start state [B, ...], previous actions [B, T, A], steps [B, T, ...]) of a replayed batch.

    With replay context (2024 code) the batch holds T+1 steps: the first supplies the model
    state stored with it (`context_deter` [B, L, D], `context_stoch` [B, L, S] class indices)
    and the action taken there, and the model trains on the T steps after it. Without, the T
    steps start from the zero state and no previous action. Values per sequence [B] (a
    prioritized replay's `weight`) come along as they are.
    """
    if not context:
        return (rssm_lib.initial(nets.rssm, batch["is_first"].shape[0]),
                shifted_actions(batch["action"]), batch)
    stoch = jax.nn.one_hot(batch["context_stoch"][:, 0], nets.rssm.classes, dtype=jnp.float32)
    start = {"deter": batch["context_deter"][:, 0].astype(jnp.float32),
             "stoch": stoch.reshape((stoch.shape[0], -1))}
    steps = jax.tree.map(lambda x: x[:, 1:] if x.ndim > 1 else x, batch)
    return start, batch["action"][:, :-1], steps


def loss(nets: WorldModelNets, params: Any, batch: dict[str, jax.Array],
         start: dict[str, jax.Array], prev_action: jax.Array, key: jax.Array, *,
         free_nats: float):
    """World-model loss terms on replayed steps (see `sequence_inputs`), each unscaled.

    batch: image [B, T, H, W, C] uint8 and/or vector [B, T, V], reward [B, T],
    is_first [B, T], is_terminal [B, T]; start: the model state before the first step
    ({'deter': [B, D], 'stoch': [B, S*K]}); prev_action [B, T, A]: the action before each step.
    Returns (terms {image, vector, reward, cont, dyn, rep: [B, T]}, metrics, WMOut).
    """
    b, t = batch["is_first"].shape
    chex.assert_shape(prev_action, (b, t, None))
    chex.assert_shape([batch["reward"], batch["is_terminal"]], (b, t))
    obs = obs_of(batch)
    states, post, prior = filter_sequences(nets, params, obs, start, prev_action,
                                           batch["is_first"], key)
    feat = rssm_lib.feat(states)

    losses = {}
    flat = flat_steps(states)
    recon = nets.dec.apply({"params": params["dec"]}, flat["deter"], flat["stoch"])
    if "image" in recon:
        target = obs["image"].astype(jnp.float32) / 255.0
        pred = recon["image"].reshape(target.shape)
        losses["image"] = jnp.sum(jnp.square(pred - target), (-3, -2, -1))
    if "vector" in recon:
        pred = recon["vector"].reshape(obs["vector"].shape)
        losses["vector"] = jnp.sum(jnp.square(pred - symlog(obs["vector"])), -1)
    rew_logits = nets.rew.apply({"params": params["rew"]}, feat)
    losses["reward"] = -TwoHot(rew_logits, nets.bins).log_prob(batch["reward"])
    con_logits = nets.con.apply({"params": params["con"]}, feat)[..., 0]
    cont = 1.0 - batch["is_terminal"].astype(jnp.float32)
    losses["cont"] = -bernoulli_log_prob(con_logits, cont)
    losses["dyn"], losses["rep"] = kl_losses(post, prior, free_nats)
    chex.assert_shape(list(losses.values()), (b, t))
    metrics = {
        "wm/post_ent": categorical_entropy(post).sum(-1).mean(),
        "wm/prior_ent": categorical_entropy(prior).sum(-1).mean(),
        "wm/kl": categorical_kl(post, prior).mean(),
        "wm/reward_err": jnp.abs(TwoHot(rew_logits, nets.bins).mean() - batch["reward"]).mean(),
        "wm/cont_acc": ((con_logits > 0) == (cont > 0.5)).mean(),
    }
    return losses, metrics, WMOut(states, feat)


def posterior(nets: WorldModelNets, params: Any, batch: dict[str, jax.Array], key: jax.Array
              ) -> dict[str, jax.Array]:
    """Posterior model states of replayed sequences from the zero state:
    {'deter': [B, T, D], 'stoch': [B, T, SK]}."""
    start = rssm_lib.initial(nets.rssm, batch["is_first"].shape[0])
    states, _, _ = filter_sequences(nets, params, obs_of(batch), start,
                                    shifted_actions(batch["action"]), batch["is_first"], key)
    return states


def decode_images(nets: WorldModelNets, params: Any, states: dict[str, jax.Array]) -> jax.Array:
    """Model states [B, T, ...] -> decoded images in [0, 1], float32 [B, T, H, W, C]."""
    b, t = states["deter"].shape[:2]
    flat = flat_steps(states)
    image = nets.dec.apply({"params": params["dec"]}, flat["deter"], flat["stoch"])["image"]
    return jnp.clip(image.reshape((b, t, *image.shape[1:])).astype(jnp.float32), 0.0, 1.0)


def predict_rewards(nets: WorldModelNets, params: Any, states: dict[str, jax.Array]) -> jax.Array:
    """Expected reward [B, T] that the reward head predicts for model states [B, T, ...]."""
    logits = nets.rew.apply({"params": params["rew"]}, rssm_lib.feat(states))
    return TwoHot(logits, nets.bins).mean()


def open_loop_prediction(nets: WorldModelNets, params: Any, batch: dict[str, jax.Array],
                         key: jax.Array, context: int, actions: jax.Array | None = None):
    """Posterior states of all T steps of replayed sequences, and the prior's states after it has
    observed the first `context` steps and then takes the recorded actions (or `actions`
    [B, T - context, A]) without observations. Returns (states [B, T, ...],
    imagined [B, T - context, ...])."""
    _, t = batch["is_first"].shape
    if not 0 < context < t:
        raise ValueError(f"report context must lie in [1, {t - 1}] for sequences of {t} steps, "
                         f"got {context}")
    k_obs, k_img = jax.random.split(key)
    states = posterior(nets, params, batch, k_obs)
    start = jax.tree.map(lambda x: x[:, context - 1], states)
    if actions is None:
        actions = batch["action"][:, context - 1:-1]
    return states, rssm_lib.open_loop(nets.rssm, params["rssm"], start, actions, k_img)


def report(nets: WorldModelNets, params: Any, batch: dict[str, jax.Array], key: jax.Array,
           context: int) -> dict[str, jax.Array]:
    """What the world model sees and imagines on replayed image sequences (for logging).

    The posterior filters all T steps and its decoding is the reconstruction. For the open-loop
    prediction, the model observes the first `context` frames and then imagines the rest from
    the recorded actions alone, without seeing further frames (`open_loop_prediction`). Each
    video shows real | model | error side by side, error as (model - real + 1) / 2.
    Returns `recon` and `openloop` videos uint8 [B, T, H, 3W, C] and their mean squared errors
    per pixel (`recon_mse` over all steps, `openloop_mse` over the imagined ones); empty when
    the observations hold no image.
    """
    if "image" not in batch:
        return {}
    states, imagined = open_loop_prediction(nets, params, batch, key, context)
    real = batch["image"].astype(jnp.float32) / 255.0
    recon = decode_images(nets, params, states)
    openloop = jnp.concatenate([recon[:, :context], decode_images(nets, params, imagined)], 1)

    def video(model):
        frames = jnp.concatenate([real, model, (model - real + 1.0) / 2.0], -2)
        return jnp.round(frames * 255.0).astype(jnp.uint8)

    return {"recon": video(recon), "openloop": video(openloop),
            "recon_mse": jnp.mean(jnp.square(recon - real)),
            "openloop_mse": jnp.mean(jnp.square(openloop - real)[:, context:])}
