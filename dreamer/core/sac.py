"""Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications": twin Q
functions, Polyak-averaged targets and the entropy temperature tuned towards a target entropy),
the learner MBPO trains on model and real transitions.

Pure functions of arrays for the losses, so each is checked against its formula, and one
`SAC.update` that takes a batch of transitions {obs, action, reward, next_obs, cont} ([N, ...];
`cont` is 0 after a terminal step, 1 otherwise) and makes one gradient step of the critics, the
actor and the temperature, then moves the target critics by τ. The actor's loss reads the critics
as they were before this step (as the reference implementations order it: critic, then actor
and temperature from the same batch).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from dreamer.core import nets
from dreamer.core.distributions import TanhNormal, is_row_keys
from dreamer.core.parallel import mean_over, row_keys

LOG_STD = (-20.0, 2.0)  # the actor's log-std range (softlearning's)


class TwinQ(nn.Module):
    """Two Q networks Q_i(s, a), each an MLP of `layers` x `units` on the concatenated input:
    returns [2, N]."""

    layers: int
    units: int
    act: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], -1)
        qs = [nets.MLP(self.layers, self.units, 1, norm="none", act=self.act, name=f"q{i}")(x)
              for i in range(2)]
        return jnp.stack(qs)[..., 0]


class Actor(nn.Module):
    """The tanh-Gaussian policy π(a | s): an MLP to the mean and log-std of u, a = tanh(u)."""

    layers: int
    units: int
    act_dim: int
    act: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> TanhNormal:
        loc, log_std = nets.MLP(self.layers, self.units, (self.act_dim, self.act_dim),
                                norm="none", act=self.act)(obs)
        return TanhNormal(loc, jnp.exp(jnp.clip(log_std, *LOG_STD)))


def critic_target(reward: jax.Array, cont: jax.Array, next_q: jax.Array, next_logp: jax.Array,
                  alpha: jax.Array, discount: float) -> jax.Array:
    """y = r + γ c (min_i Q'_i(s', a') - α log π(a' | s')), a' ~ π(· | s'), [N]."""
    return reward + discount * cont * (jnp.min(next_q, 0) - alpha * next_logp)


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """Σ_i mean_n ½ (Q_i(s, a) - y)², with y held fixed; q is [2, N]."""
    return jnp.sum(jnp.mean(0.5 * jnp.square(q - jax.lax.stop_gradient(target)[None]), -1))


def actor_loss(q: jax.Array, logp: jax.Array, alpha: jax.Array) -> jax.Array:
    """mean_n (α log π(a | s) - min_i Q_i(s, a)), a ~ π(· | s) reparameterised; α held fixed."""
    return jnp.mean(jax.lax.stop_gradient(alpha) * logp - jnp.min(q, 0))


def temperature_loss(log_alpha: jax.Array, logp: jax.Array, target_entropy: float) -> jax.Array:
    """-mean_n log α (log π(a | s) + H̄): α grows while the policy's entropy is below H̄ and
    shrinks while above; only log α gets a gradient."""
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(logp + target_entropy))


def polyak(target: Any, online: Any, tau: float) -> Any:
    """θ' ← (1 - τ) θ' + τ θ, leaf by leaf."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


class SACState(flax.struct.PyTreeNode):
    actor: Any
    critic: Any
    target: Any  # the target critics
    log_alpha: jax.Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any


class SAC:
    """Networks, optimisers and one update; `target_entropy` defaults to -act_dim. Under
    `axis_name` each device holds its share of the transitions: gradients and metrics are
    averaged over the devices, and each row's noise comes from its index in the global batch,
    so N devices holding N/B rows each make the update of one device holding B."""

    def __init__(self, obs_dim: int, act_dim: int, *, layers: int = 2, units: int = 256,
                 act: str = "relu", lr: float = 3e-4, discount: float = 0.99,
                 tau: float = 5e-3, init_alpha: float = 1.0,
                 target_entropy: float | None = None, axis_name: str | None = None):
        self.obs_dim, self.act_dim, self.axis_name = obs_dim, act_dim, axis_name
        self.actor = Actor(layers, units, act_dim, act)
        self.critic = TwinQ(layers, units, act)
        self.opt = optax.adam(lr)
        self.discount, self.tau, self.init_alpha = discount, tau, init_alpha
        self.target_entropy = -float(act_dim) if target_entropy is None else target_entropy

    def init(self, key: jax.Array) -> SACState:
        k_actor, k_critic = jax.random.split(key)
        obs, act = jnp.zeros((1, self.obs_dim)), jnp.zeros((1, self.act_dim))
        actor = self.actor.init(k_actor, obs)["params"]
        critic = self.critic.init(k_critic, obs, act)["params"]
        log_alpha = jnp.asarray(jnp.log(self.init_alpha), jnp.float32)
        return SACState(actor=actor, critic=critic, target=jax.tree.map(jnp.copy, critic),
                        log_alpha=log_alpha, actor_opt=self.opt.init(actor),
                        critic_opt=self.opt.init(critic), alpha_opt=self.opt.init(log_alpha))

    def policy(self, actor: Any, obs: jax.Array) -> TanhNormal:
        return self.actor.apply({"params": actor}, obs)

    def q(self, critic: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.critic.apply({"params": critic}, obs, action)

    def update(self, state: SACState, batch: dict[str, jax.Array],
               key: jax.Array) -> tuple[SACState, dict[str, jax.Array]]:
        """One step of critics, actor and temperature on transitions [N, ...], then the
        targets' Polyak step. `key` is one key, or one per row [N] (a row's noise then
        follows the row wherever it sits in the minibatch)."""
        if not is_row_keys(key):  # one key: each row's from its index in the global batch
            key = row_keys(key, batch["reward"].shape[0], self.axis_name)
        k_next, k_new = jax.vmap(jax.random.split)(key).swapaxes(0, 1)
        alpha = jnp.exp(state.log_alpha)
        next_action, next_logp = self.policy(state.actor, batch["next_obs"]).sample_and_log_prob(
            k_next)
        target = critic_target(batch["reward"], batch["cont"],
                               self.q(state.target, batch["next_obs"], next_action), next_logp,
                               alpha, self.discount)

        def critic_fn(critic):
            q = self.q(critic, batch["obs"], batch["action"])
            return critic_loss(q, target), q

        (c_loss, q), c_grads = jax.value_and_grad(critic_fn, has_aux=True)(state.critic)

        def actor_fn(actor):
            action, logp = self.policy(actor, batch["obs"]).sample_and_log_prob(k_new)
            return actor_loss(self.q(state.critic, batch["obs"], action), logp, alpha), logp

        (a_loss, logp), a_grads = jax.value_and_grad(actor_fn, has_aux=True)(state.actor)
        t_loss, t_grad = jax.value_and_grad(temperature_loss)(state.log_alpha, logp,
                                                              self.target_entropy)
        c_grads, a_grads, t_grad = mean_over((c_grads, a_grads, t_grad), self.axis_name)
        critic, critic_opt = _step(self.opt, c_grads, state.critic_opt, state.critic)
        actor, actor_opt = _step(self.opt, a_grads, state.actor_opt, state.actor)
        log_alpha, alpha_opt = _step(self.opt, t_grad, state.alpha_opt, state.log_alpha)
        new = SACState(actor=actor, critic=critic, target=polyak(state.target, critic, self.tau),
                       log_alpha=log_alpha, actor_opt=actor_opt, critic_opt=critic_opt,
                       alpha_opt=alpha_opt)
        metrics = {"sac/critic_loss": c_loss, "sac/actor_loss": a_loss,
                   "sac/alpha_loss": t_loss, "sac/alpha": alpha, "sac/entropy": -jnp.mean(logp),
                   "sac/q": jnp.mean(q), "sac/target": jnp.mean(target)}
        return new, mean_over(metrics, self.axis_name)


def _step(opt: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
