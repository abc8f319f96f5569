"""Actor-critic learning in imagination (DreamerV3 Sec. 3).

Trajectories are imagined from every posterior state of the replayed batch under stop-gradient:
the actor learns by REINFORCE with normalised advantages and an entropy bonus, the critic by
two-hot regression onto λ-returns with a regulariser towards its slow (EMA) copy. The losses take
their hyperparameters as keyword arguments and return unscaled per-step terms.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.agents.dreamerv3.world_model import WorldModelNets
from dreamer.core.distributions import Policy, TwoHot, sg
from dreamer.core.nets import MLP, fused_mlps
from dreamer.core.returns import lambda_return, update_retnorm

ACTOR_GRADS = ("reinforce", "dynamics")  # what `ac.actor_grad` may name


class ActorCriticNets(NamedTuple):
    """The actor's and critic's module definitions and the constants of their outputs."""

    actor: MLP
    critic: MLP
    bins: jax.Array   # the critic's two-hot bins
    discrete: bool    # one-hot actions (else a bounded Gaussian)
    minstd: float     # the continuous policy's standard deviation range
    maxstd: float


def action_dim(nets: ActorCriticNets) -> int:
    """The size of an action vector (one-hot for discrete actions)."""
    out = nets.actor.out
    return out[0] if isinstance(out, tuple) else out


def policy_dist(nets: ActorCriticNets, actor_params: Any, feat: jax.Array) -> Policy:
    out = nets.actor.apply({"params": actor_params}, feat)
    return Policy(out, nets.discrete, nets.minstd, nets.maxstd)


def value_dist(nets: ActorCriticNets, critic_params: Any, feat: jax.Array) -> TwoHot:
    return TwoHot(nets.critic.apply({"params": critic_params}, feat), nets.bins)


def rollout(wm: WorldModelNets, ac: ActorCriticNets, wm_params: Any, actor_params: Any,
            start: dict[str, jax.Array], key: jax.Array, *, horizon: int, grad: bool = False):
    """Imagine `horizon` steps from start states [N, ...].

    Returns feat [N, H+1, F] and action [N, H+1, A]. World-model parameters and start states
    never receive gradients. With `grad`, gradients flow from the outputs through the frozen
    model's dynamics into the actor (reparameterised or straight-through action samples);
    otherwise everything is stopped.
    """
    start = sg(start)
    actor = actor_params if grad else sg(actor_params)

    def policy(state, eps):
        return policy_dist(ac, actor, rssm_lib.feat(state)).sample(eps, straight_through=grad)

    shape = (start["deter"].shape[0], action_dim(ac))
    states, action = rssm_lib.imagine(wm.rssm, sg(wm_params["rssm"]), start, policy, horizon,
                                      key, draw=lambda k: Policy.noise(k, shape, ac.discrete))
    out = (rssm_lib.feat(states), action)
    return out if grad else sg(out)


def imagined_outputs(wm: WorldModelNets, ac: ActorCriticNets, params: dict[str, Any],
                     slow_critic: Any, feat: jax.Array) -> dict[str, Any]:
    """Every head's output on imagined (stopped) features [N, H+1, F], from two fused calls
    (`nets.fused_mlps`): the frozen ones (reward, continue, slow critic) and the trained ones
    (critic, actor). Returns reward [N, H+1] (expected), cont [N, H+1] (probabilities),
    slow [N, H+1] (the slow critic's value), critic (TwoHot [N, H+1]) and actor (the policy's
    raw outputs on all H+1 states)."""
    frozen = sg((params["wm"]["rew"], params["wm"]["con"], slow_critic))
    rew, con, slow = fused_mlps([(wm.rew, frozen[0]), (wm.con, frozen[1]),
                                 (ac.critic, frozen[2])], feat)
    critic, actor = fused_mlps([(ac.critic, params["critic"]), (ac.actor, params["actor"])],
                               feat)
    return {"reward": TwoHot(rew, wm.bins).mean(), "cont": jax.nn.sigmoid(con[..., 0]),
            "slow": TwoHot(slow, ac.bins).mean(), "critic": TwoHot(critic, ac.bins),
            "actor": actor}


def critic_loss(nets: ActorCriticNets, critic_params: Any, slow_params: Any, feat: jax.Array,
                target: jax.Array, *, slowreg: float, dist: TwoHot | None = None,
                slow: jax.Array | None = None) -> jax.Array:
    """Two-hot regression onto `target` plus a pull towards the slow critic's prediction.
    `dist` (the critic's output) and `slow` (the slow critic's value) on `feat` are given when
    the caller has them already."""
    dist = value_dist(nets, critic_params, feat) if dist is None else dist
    slow = value_dist(nets, slow_params, feat).mean() if slow is None else slow
    slow = sg(slow)
    return -dist.log_prob(sg(target)) - slowreg * dist.log_prob(slow)


def actor_critic_loss(wm: WorldModelNets, ac: ActorCriticNets, params: dict[str, Any],
                      slow_critic: Any, retnorm: dict[str, jax.Array],
                      start: dict[str, jax.Array], start_cont: jax.Array, key: jax.Array, *,
                      horizon: int, discount_horizon: float, lam: float, entropy: float,
                      slowreg: float, actor_grad: str, retnorm_lo: float, retnorm_hi: float,
                      retnorm_decay: float, retnorm_limit: float,
                      axis_name: str | None = None):
    """Imagination losses from start states [N, ...] with data continue flags `start_cont` [N].

    `params` holds 'wm', 'actor' and 'critic'; the world model's receive no gradient.
    Returns (terms {policy, value: [N, H]}, metrics, new retnorm stats, λ-return of each
    start [N]).
    """
    if actor_grad not in ACTOR_GRADS:
        raise ValueError(f"ac.actor_grad must be one of {ACTOR_GRADS}, got {actor_grad!r}")
    dynamics = actor_grad == "dynamics"
    feat, action = rollout(wm, ac, params["wm"], params["actor"], start, key, horizon=horizon,
                           grad=dynamics)
    gamma = 1.0 - 1.0 / discount_horizon
    # The critic is frozen inside the actor's objective; with dynamics gradients, values still
    # pass gradients to the imagined features. Without them the features are constants, and
    # one forward pass of every head on them serves all losses (`imagined_outputs`).
    if dynamics:
        frozen = sg(params["wm"])
        reward = TwoHot(wm.rew.apply({"params": frozen["rew"]}, feat), wm.bins).mean()
        cont = jax.nn.sigmoid(wm.con.apply({"params": frozen["con"]}, feat)[..., 0])
        value = value_dist(ac, sg(params["critic"]), feat).mean()
        critic_dist = slow = actor_out = None
    else:
        outs = imagined_outputs(wm, ac, params, slow_critic, feat)
        reward, cont, full = outs["reward"], outs["cont"], outs["critic"]
        value = sg(full.mean())
        critic_dist = TwoHot(full.logits[:, :-1], full.bins)
        slow = outs["slow"][:, :-1]
        actor_out = jax.tree.map(lambda x: x[:, :-1], outs["actor"])
    cont = cont.at[:, 0].set(start_cont)
    ret = lambda_return(reward, gamma * cont, value, lam)  # [N, H]
    # Imagined steps after a predicted episode end should not count: weight by the discounted
    # probability of still being alive.
    weight = sg(jnp.cumprod(gamma * cont, 1) / gamma)[:, :-1]
    retnorm, scale = update_retnorm(retnorm, sg(ret), lo=retnorm_lo, hi=retnorm_hi,
                                    decay=retnorm_decay, limit=retnorm_limit,
                                    axis_name=axis_name)
    adv = sg((ret - value[:, :-1]) / scale)
    feat, action, reward, cont, value = sg((feat, action, reward, cont, value))

    if actor_out is None:
        dist = policy_dist(ac, params["actor"], feat[:, :-1])
    else:
        dist = Policy(actor_out, ac.discrete, ac.minstd, ac.maxstd)
    ent = dist.entropy()
    if dynamics:
        # Dreamer (2020-2023) continuous control: maximise the λ-return itself by backpropagating
        # through the frozen world model.
        objective = ret / sg(scale)
    else:
        objective = dist.log_prob(action[:, :-1]) * adv  # REINFORCE (paper Eq. 11)
    actor = -weight * (objective + entropy * ent)
    ret = sg(ret)
    critic = weight * critic_loss(ac, params["critic"], slow_critic, feat[:, :-1], ret,
                                  slowreg=slowreg, dist=critic_dist, slow=slow)
    metrics = {
        "ac/entropy": ent.mean(), "ac/return": ret.mean(), "ac/value": value.mean(),
        "ac/adv_abs": jnp.abs(adv).mean(), "ac/retnorm_scale": scale,
        "ac/retnorm_lo": retnorm["lo"], "ac/retnorm_hi": retnorm["hi"],
        "ac/imag_reward": reward[:, 1:].mean(), "ac/imag_cont": cont[:, 1:].mean(),
    }
    return {"policy": actor, "value": critic}, metrics, retnorm, ret[:, 0]


def repval_loss(ac: ActorCriticNets, critic_params: Any, slow_critic: Any, feat: jax.Array,
                batch: dict[str, jax.Array], boot: jax.Array, *, discount_horizon: float,
                lam: float, slowreg: float, grad: bool) -> jax.Array:
    """Critic loss on λ-returns of the replayed sequences (2024 code), bootstrapped from the
    imagined returns of each step. feat [B, T, F]; boot [B, T]. Returns the loss [B, T-1].

    With `grad` (`ac.repval_grad`, the 2024 code's default) the loss also trains the world
    model through the posterior features; otherwise they are stopped."""
    gamma = 1.0 - 1.0 / discount_horizon
    is_last = batch["is_last"].astype(jnp.float32)
    cont = gamma * (1.0 - batch["is_terminal"].astype(jnp.float32))
    if not grad:
        feat = sg(feat)
    # Returns are cut where an episode ends inside the sequence (λ = 0 there, so the step's own
    # bootstrap is used) and the last step of an episode, whose successor belongs to another
    # episode, gets no weight.
    ret = lambda_return(batch["reward"], cont, sg(boot), lam * (1.0 - is_last))
    weight = 1.0 - is_last[:, :-1]
    return weight * critic_loss(ac, critic_params, slow_critic, feat[:, :-1], ret,
                                slowreg=slowreg)
