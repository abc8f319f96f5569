"""MuZero on the shared agent interface: Gumbel MuZero search (mctx) for acting, K-step unrolls
towards n-step value targets and the search's policy for training.

Training (Schrittwieser et al. 2020, App. G): from o_0 of each replayed sequence the model
unrolls K steps with the replayed actions; each step's reward, value and policy predictions are
trained on the targets of `targets.unroll_targets` by two-hot and policy cross-entropy, the
losses of steps k >= 1 scaled by 1/K and the hidden state's gradient halved at each dynamics
step. Acting runs `mctx.gumbel_muzero_policy` (Danihelka et al. 2022) at every step, on the
learner's device; the replay stores the search's policy (its completed-Q improvement of the
prior), its root value and whether a search chose the step.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import mctx
import numpy as np
import optax

from dreamer.agents.modes import check_mode
from dreamer.agents.muzero import targets as targets_lib
from dreamer.agents.muzero.nets import Nets
from dreamer.config import ConfigError
from dreamer.core.distributions import TwoHot, symexp_bins
from dreamer.core.parallel import mean_over, row_keys
from dreamer.core.updates import check_sequence_length, keep_if_finite, nonfinite_metric

Batch = dict[str, jax.Array]
BOOTSTRAPS = ("target", "search")  # muzero.bootstrap: a target network's value, or the stored root value


class TrainState(flax.struct.PyTreeNode):
    params: Any
    target: Any          # the target network: a copy of params every muzero.target_every updates
    opt_state: Any
    step: jax.Array


def reanalyse_period(fraction: float, batch_size: int) -> int:
    """Every how many sequences of a batch one is reanalysed (0: none) for `muzero.reanalyse`;
    the fraction must be 1/k for a k that divides the per-device batch size."""
    if fraction <= 0:
        return 0
    period = round(1.0 / fraction)
    if abs(1.0 / period - fraction) > 1e-6 or batch_size % period or fraction > 1:
        raise ConfigError(f"muzero.reanalyse must be 0 or 1/k for a k that divides batch_size "
                          f"({batch_size}), e.g. 0.25 or 0.5; got {fraction}")
    return period


class MuZero:
    """The MuZero agent (see `dreamer.agents.Agent`). Discrete actions only."""

    def __init__(self, cfg: Any, obs_space: dict, act_space: Any, axis_name: str | None = None,
                 platform: str | None = None):
        del platform  # float32 everywhere: the networks are small
        if not act_space.discrete:
            raise ConfigError(f"muzero searches over discrete actions; the task {cfg.env.task} "
                              f"has continuous actions: choose a task with discrete actions "
                              f"(e.g. gym_CartPole-v1) or another agent (dreamerv3, pets)")
        m = cfg.muzero
        self.cfg, self.axis_name = cfg, axis_name
        self.act_dim = act_space.n
        self.obs_space = obs_space
        self.obs_keys = tuple(k for k in ("image", "vector") if k in obs_space)
        self.unroll_steps, self.td_steps = int(m.unroll), int(m.td_steps)
        self.sequence_length = self.unroll_steps + self.td_steps + 1
        if cfg.batch_length != self.sequence_length:
            raise ConfigError(
                f"muzero replays sequences of muzero.unroll + muzero.td_steps + 1 = "
                f"{self.sequence_length} steps, but batch_length is {cfg.batch_length}: set "
                f"--batch_length={self.sequence_length} (training starts once the replay "
                f"holds batch_size x batch_length steps)")
        self.trained_length = self.unroll_steps + 1  # steps with losses per sequence
        self.acts_on_device = True  # a tree search per step
        self.reanalyse_every = reanalyse_period(m.reanalyse, cfg.batch_size)
        self.prioritized = bool(cfg.replay.prioritized)
        if m.bootstrap == "target" and int(m.target_every) < 1:
            raise ConfigError(f"muzero.target_every must be >= 1 (updates between copies of "
                              f"the target network), got {m.target_every}")
        self.bins = symexp_bins(m.bins)
        self.nets = Nets(self.act_dim, m.latent, m.layers, m.units, m.bins, m.depth,
                         tuple(m.mults), m.kernel, m.norm, m.act)
        self.opt = optax.chain(optax.clip_by_global_norm(m.grad_clip),
                               optax.adamw(m.lr, weight_decay=m.weight_decay))

    def init(self, key: jax.Array) -> TrainState:
        obs = {k: jnp.zeros((1, *self.obs_space[k].shape), self.obs_space[k].dtype)
               for k in self.obs_keys}
        params = self.nets.init(key, obs, jnp.zeros((1, self.act_dim)))["params"]
        # The target its own copy: a train step that donates the state donates each buffer once.
        target = jax.tree.map(jnp.copy, params)
        return TrainState(params=params, target=target, opt_state=self.opt.init(params),
                          step=jnp.zeros([], jnp.int32))

    # ----------------------------------------------------------------------------- model
    def _apply(self, params: Any, method: str, *args: Any) -> Any:
        return self.nets.apply({"params": params}, *args, method=method)

    def root(self, params: Any, obs: Batch) -> mctx.RootFnOutput:
        s = self._apply(params, "represent", {k: obs[k] for k in self.obs_keys})
        logits, value = self._apply(params, "predict", s)
        return mctx.RootFnOutput(prior_logits=logits, value=TwoHot(value, self.bins).mean(),
                                 embedding=s)

    def recurrent(self, params: Any, key: jax.Array, action: jax.Array, s: jax.Array):
        """mctx's recurrent_fn: one dynamics and prediction step for actions [N]."""
        del key
        s, reward = self._apply(params, "dynamics", s, jax.nn.one_hot(action, self.act_dim))
        logits, value = self._apply(params, "predict", s)
        out = mctx.RecurrentFnOutput(
            reward=TwoHot(reward, self.bins).mean(),
            discount=jnp.full(action.shape, self.cfg.muzero.discount, jnp.float32),
            prior_logits=logits, value=TwoHot(value, self.bins).mean())
        return out, s

    def search(self, params: Any, obs: Batch, key: jax.Array, gumbel_scale: float):
        """Gumbel MuZero search from observations [N, ...]: mctx's PolicyOutput."""
        m = self.cfg.muzero
        return mctx.gumbel_muzero_policy(
            params, key, self.root(params, obs), self.recurrent,
            num_simulations=m.simulations, max_num_considered_actions=m.considered,
            gumbel_scale=gumbel_scale)

    # ----------------------------------------------------------------------------- training
    def unroll(self, params: Any, s: jax.Array, actions: jax.Array):
        """The model's predictions along actions [B, >=K, A] from hidden states s [B, S]:
        policy and value logits [B, K+1, ...] at steps 0..K, reward logits [B, K, bins] at
        steps 1..K. The gradient into each state is halved at every dynamics step."""
        policies, values, rewards = [], [], []
        for k in range(self.unroll_steps + 1):
            logits, value = self._apply(params, "predict", s)
            policies.append(logits)
            values.append(value)
            if k < self.unroll_steps:
                s, reward = self._apply(params, "dynamics", s, actions[:, k])
                s = targets_lib.scale_gradient(s, 0.5)
                rewards.append(reward)
        return jnp.stack(policies, 1), jnp.stack(values, 1), jnp.stack(rewards, 1)

    def bootstrap_values(self, params: Any, batch: Batch) -> jax.Array:
        """[B, L] values that `params` predicts at the steps the value targets bootstrap from
        (zero elsewhere): the model's own value of o_e, which the stored root values of old
        searches (and the zeros of random prefill) only approximate."""
        b, length = batch["is_first"].shape
        ends = targets_lib.episode_ends(batch["is_first"], batch["is_last"])
        _, last = targets_lib.bootstrap_steps(ends, self.td_steps, self.unroll_steps + 1)
        obs = {}
        for k in self.obs_keys:
            x = batch[k]
            idx = last.reshape(last.shape + (1,) * (x.ndim - 2))
            obs[k] = jnp.take_along_axis(x, idx, 1).reshape((-1, *x.shape[2:]))
        _, value = self._apply(params, "predict", self._apply(params, "represent", obs))
        value = TwoHot(value, self.bins).mean().reshape(last.shape)
        rows = jnp.arange(b)[:, None]
        return jax.lax.stop_gradient(jnp.zeros((b, length)).at[rows, last].set(value))

    def loss(self, params: Any, batch: Batch, value: jax.Array | None = None):
        """The unrolled losses of [B, L, ...] sequences, bootstrapping from `value` [B, L] (from
        the stored root values where None); returns (loss, (metrics, root value errors [B]))."""
        m = self.cfg.muzero
        t = targets_lib.unroll_targets(batch, self.unroll_steps, self.td_steps, m.discount,
                                       value)
        s = self._apply(params, "represent", {k: batch[k][:, 0] for k in self.obs_keys})
        policy, value, reward = self.unroll(params, s, batch["action"])
        zero = jnp.zeros((s.shape[0], 1))
        values = TwoHot(value, self.bins)
        terms = {"reward": -jnp.concatenate(
                     [zero, TwoHot(reward, self.bins).log_prob(t.reward[:, 1:])], 1)
                     * t.reward_mask,
                 "value": -values.log_prob(t.value) * t.value_mask,
                 "policy": -jnp.sum(t.policy * jax.nn.log_softmax(policy), -1) * t.policy_mask}
        # Steps k >= 1 count 1/K each, as the paper scales their gradients; rows by their
        # importance weights where the replay draws by priority.
        k = self.unroll_steps
        step_scale = jnp.concatenate([jnp.ones(1), jnp.full(k, 1.0 / k)])
        weight = batch.get("weight", jnp.ones(s.shape[0]))[:, None] * step_scale[None]
        scales = {"reward": 1.0, "value": m.value_scale, "policy": 1.0}
        total = sum(scales[k] * jnp.mean(jnp.sum(v * weight, 1)) for k, v in terms.items())
        metrics = {f"loss/{k}": jnp.sum(v) / jnp.maximum(jnp.sum(mask), 1.0)
                   for (k, v), mask in zip(terms.items(), (t.reward_mask, t.value_mask,
                                                          t.policy_mask))}
        metrics["loss/total"] = total
        metrics["target/value"] = jnp.mean(t.value[:, 0])
        return total, (metrics, jnp.abs(values.mean()[:, 0] - t.value[:, 0]))

    def reanalyse(self, params: Any, batch: Batch, key: jax.Array) -> Batch:
        """Every `reanalyse_every`-th sequence of the batch with its search outputs renewed:
        a search with `params` from each of its steps gives new policy and root-value targets
        (MuZero Reanalyse, Schrittwieser et al. 2021), for the loss and for the replay. The
        rows are chosen by their index in the global batch and each draws its search noise
        from its own key, so N devices renew what one device does. Other rows keep theirs."""
        b, length = batch["is_first"].shape
        rows = slice(0, b, self.reanalyse_every)
        obs = {k: batch[k][rows] for k in self.obs_keys}
        n = obs[self.obs_keys[0]].shape[0]
        keys = row_keys(key, b, self.axis_name)[rows]
        flat = {k: v.reshape((n * length, *v.shape[2:])) for k, v in obs.items()}
        step_keys = jax.vmap(lambda k: jax.random.split(k, length))(keys)
        step_keys = step_keys.reshape((n * length, *step_keys.shape[2:]))  # typed or raw keys
        out = jax.vmap(lambda o, k: self.search(
            params, jax.tree.map(lambda x: x[None], o), k, 1.0))(flat, step_keys)
        renewed = {"search_policy": out.action_weights[:, 0].reshape(n, length, self.act_dim),
                   "root_value": jax.vmap(lambda t: t.summary().value)(out.search_tree)[:, 0]
                   .reshape(n, length),
                   "searched": jnp.ones((n, length), jnp.float32)}
        batch = dict(batch)
        for k, v in renewed.items():
            batch[k] = batch[k].at[rows].set(jax.lax.stop_gradient(v).astype(batch[k].dtype))
        return batch

    def train_step(self, state: TrainState, batch: Batch, key: jax.Array):
        """One update on [B, K + n + 1, ...] sequences (rows weighted by `weight` where the
        replay draws by priority). Replay updates: with `muzero.reanalyse`, the renewed search
        outputs of the reanalysed sequences (`update_rows` marks them); with
        `replay.prioritized`, each sequence's new priority |v_0 - z_0|."""
        b, length = batch["is_first"].shape
        chex.assert_shape(batch["action"], (b, length, self.act_dim))
        check_sequence_length(batch, self.sequence_length, "muzero",
                              "muzero.unroll + muzero.td_steps + 1")
        replay_updates = {}
        if self.reanalyse_every:
            batch = self.reanalyse(state.params, batch, key)
            replay_updates = {k: batch[k] for k in ("search_policy", "root_value", "searched")}
            replay_updates["update_rows"] = jnp.arange(b) % self.reanalyse_every == 0
        value = (self.bootstrap_values(state.target, batch)
                 if self.cfg.muzero.bootstrap == "target" else None)
        grads, (metrics, errors) = jax.grad(self.loss, has_aux=True)(state.params, batch, value)
        if self.prioritized:  # the paper's priority: |root value - value target| at the start
            replay_updates["priority"] = errors
        grads = mean_over(grads, self.axis_name)
        updates, opt_state = self.opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        copy = (state.step + 1) % max(int(self.cfg.muzero.target_every), 1) == 0
        target = jax.tree.map(lambda t, p: jnp.where(copy, p, t), state.target, params)
        new = TrainState(params=params, target=target, opt_state=opt_state, step=state.step + 1)
        metrics["grad_norm"] = optax.tree.norm(grads)
        state, finite = keep_if_finite(new, state, metrics["loss/total"], grads)
        metrics["nonfinite"] = nonfinite_metric(finite)
        return state, mean_over(metrics, self.axis_name), replay_updates

    # ----------------------------------------------------------------------------- acting
    def policy_initial(self, batch: int) -> jax.Array:
        return jnp.zeros((batch,))  # no carry: the search starts from each observation

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        """Random prefill steps: a uniform policy, root value 0, not searched (no policy loss)."""
        return {"search_policy": np.full((batch, self.act_dim), 1.0 / self.act_dim, np.float32),
                "root_value": np.zeros(batch, np.float32),
                "searched": np.zeros(batch, np.float32)}

    def policy(self, params: Any, carry: jax.Array, obs: Batch, key: jax.Array,
               mode: str = "sample"):
        """Searches from N observations. 'sample' acts on the Gumbel-top-k sampled action of the
        search (exploration comes from the Gumbel noise); 'eval' and 'mode' search without noise
        and take its deterministic choice, as Gumbel MuZero evaluates."""
        check_mode(mode)
        out = self.search(params, obs, key, 1.0 if mode == "sample" else 0.0)
        outputs = {"search_policy": out.action_weights.astype(jnp.float32),
                   "root_value": out.search_tree.summary().value.astype(jnp.float32),
                   "searched": jnp.ones(out.action.shape, jnp.float32)}
        return carry, jax.nn.one_hot(out.action, self.act_dim), outputs
