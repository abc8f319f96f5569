"""Actor-critic learning in imagination (DreamerV3 Sec. 3).

Trajectories are imagined from every posterior state of the replayed batch under stop-gradient:
the actor learns by REINFORCE with normalised advantages and an entropy bonus, the critic by
two-hot regression onto λ-returns with a regulariser towards its slow (EMA) copy. The losses take
their hyperparameters as keyword arguments and return unscaled per-step terms.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.agents.dreamerv3.world_model import WorldModelNets
from dreamer.config import CHOICES
from dreamer.distributions import Policy, TwoHot, sg
from dreamer.nets import MLP

ACTOR_GRADS = CHOICES["ac.actor_grad"]


class ActorCriticNets(NamedTuple):
    """The actor's and critic's module definitions and the constants of their outputs."""

    actor: MLP
    critic: MLP
    bins: jax.Array   # the critic's two-hot bins
    discrete: bool    # one-hot actions (else a bounded Gaussian)
    minstd: float     # the continuous policy's standard deviation range
    maxstd: float


def lambda_return(reward: jax.Array, cont: jax.Array, boot: jax.Array,
                  lam: jax.Array | float) -> jax.Array:
    """TD(λ) returns by a reverse scan (paper Eq. 7), arrays [N, T] -> returns [N, T-1].

    R_t = r_{t+1} + c_{t+1} ((1 - λ_{t+1}) v_{t+1} + λ_{t+1} R_{t+1}), with R_{T-1} = v_{T-1},
    where `reward` r_t is received on entering step t, `cont` c_t = γ (1 - terminal_t) and
    `boot` v_t are the bootstrap values. `lam` may vary per step (0 cuts at episode ends).
    """
    chex.assert_equal_shape([reward, cont, boot])
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), reward.shape)

    def step(ret_next, inputs):
        r, c, v, lm = inputs
        ret = r + c * ((1 - lm) * v + lm * ret_next)
        return ret, ret

    xs = [x[:, 1:].T for x in (reward, cont, boot, lam)]
    _, rets = jax.lax.scan(step, boot[:, -1], xs, reverse=True)
    return rets.T


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
    """All values of `x` across devices (flattened), or `x` itself on one device."""
    x = x.reshape(-1)
    return jax.lax.all_gather(x, axis_name, tiled=True) if axis_name else x


def update_retnorm(stats: dict[str, jax.Array], ret: jax.Array, *, lo: float, hi: float,
                   decay: float, limit: float, axis_name: str | None = None):
    """Percentile return normalisation (paper Eq. 11): EMA (rate 1 - `decay`) of the `lo` and
    `hi` quantiles of the returns on all devices.

    Returns (new stats, scale) with scale = max(limit, hi - lo); dividing advantages by it keeps
    the entropy bonus meaningful across reward scales while not amplifying tiny returns.
    """
    values = gather(ret, axis_name)
    stats = {"lo": decay * stats["lo"] + (1 - decay) * jnp.quantile(values, lo),
             "hi": decay * stats["hi"] + (1 - decay) * jnp.quantile(values, hi)}
    return stats, jnp.maximum(limit, stats["hi"] - stats["lo"])


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

    Returns feat [N, H+1, F], action [N, H+1, A], reward [N, H+1] and cont [N, H+1]
    (continue probabilities; index 0 belongs to the start state and is replaced by the caller).
    World-model parameters and start states never receive gradients. With `grad`, gradients
    flow from the outputs through the frozen model's dynamics into the actor (reparameterised or
    straight-through action samples); otherwise everything is stopped.
    """
    start = sg(start)
    frozen = sg({k: wm_params[k] for k in ("rssm", "rew", "con")})
    actor = actor_params if grad else sg(actor_params)

    def policy(state, eps):
        return policy_dist(ac, actor, rssm_lib.feat(state)).sample(eps, straight_through=grad)

    shape = (start["deter"].shape[0], action_dim(ac))
    states, action = rssm_lib.imagine(wm.rssm, frozen["rssm"], start, policy, horizon, key,
                                      draw=lambda k: Policy.noise(k, shape, ac.discrete))
    feat = rssm_lib.feat(states)
    reward = TwoHot(wm.rew.apply({"params": frozen["rew"]}, feat), wm.bins).mean()
    cont = jax.nn.sigmoid(wm.con.apply({"params": frozen["con"]}, feat)[..., 0])
    out = (feat, action, reward, cont)
    return out if grad else sg(out)


def critic_loss(nets: ActorCriticNets, critic_params: Any, slow_params: Any, feat: jax.Array,
                target: jax.Array, *, slowreg: float, dist: TwoHot | None = None) -> jax.Array:
    """Two-hot regression onto `target` plus a pull towards the slow critic's prediction.
    `dist` is the critic's output on `feat` when the caller has it already."""
    dist = value_dist(nets, critic_params, feat) if dist is None else dist
    slow = sg(value_dist(nets, slow_params, feat).mean())
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
    feat, action, reward, cont = rollout(wm, ac, params["wm"], params["actor"], start, key,
                                         horizon=horizon, grad=dynamics)
    cont = cont.at[:, 0].set(start_cont)
    gamma = 1.0 - 1.0 / discount_horizon
    # The critic is frozen inside the actor's objective; with dynamics gradients, values still
    # pass gradients to the imagined features. Without them the features are constants, and
    # the critic's one forward pass serves both its own loss and the (stopped) values.
    if dynamics:
        value = value_dist(ac, sg(params["critic"]), feat).mean()
        critic_dist = None
    else:
        full = value_dist(ac, params["critic"], feat)
        value = sg(full.mean())
        critic_dist = TwoHot(full.logits[:, :-1], full.bins)
    ret = lambda_return(reward, gamma * cont, value, lam)  # [N, H]
    # Imagined steps after a predicted episode end should not count: weight by the discounted
    # probability of still being alive.
    weight = sg(jnp.cumprod(gamma * cont, 1) / gamma)[:, :-1]
    retnorm, scale = update_retnorm(retnorm, sg(ret), lo=retnorm_lo, hi=retnorm_hi,
                                    decay=retnorm_decay, limit=retnorm_limit,
                                    axis_name=axis_name)
    adv = sg((ret - value[:, :-1]) / scale)
    feat, action, reward, cont, value = sg((feat, action, reward, cont, value))

    dist = policy_dist(ac, params["actor"], feat[:, :-1])
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
                                  slowreg=slowreg, dist=critic_dist)
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
