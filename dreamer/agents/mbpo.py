"""MBPO (Janner et al. 2019, "When to Trust Your Model"): an ensemble dynamics model feeds soft
actor-critic with short rollouts branched from real states.

One `train_step` (one per env step at the presets' train ratio) does, on [B, L, ...] replayed
sequences of state vectors:

1. Model: one update of the ensemble (`dreamer.core.dynamics.DynamicsModel`, 7 members) on the
   batch's transitions, except a fixed share held out by step id (`mbpo.holdout`), on which
   each member's error is measured; a moving average of those errors ranks the members, and
   the `mbpo.elites` best are the elites.
2. Rollouts: `mbpo.rollouts` starts drawn from the real transitions of every device's batch,
   rolled out k steps by the current policy, each on one elite (`dreamer.core.branched`), into
   the model buffer in the train state. k follows MBPO's schedule over epochs of env steps
   (`rollout_length`); the buffer keeps `mbpo.retain` train steps of rollouts at the longest k
   and samples from the newest `retain` train steps' worth at the current k (MBPO's pool of one
   epoch). Every device draws the same starts with the same key and writes the same rollouts:
   the buffer is identical everywhere.
3. Policy: `mbpo.updates` SAC steps (`dreamer.core.sac`) in one `lax.scan`, each on
   `mbpo.sac_batch` transitions per device, a `mbpo.real_ratio` share of them real (drawn from
   every device's batch) and the rest from the model buffer; each row's draw comes from its
   index in the global minibatch, so N devices with the same global sizes make one device's
   update. Until the model has taken `mbpo.model_warmup` steps, the policy does not train (MBPO
   first fits its model on the initial exploration data).

`mbpo.real_ratio: 1` is SAC alone: no model training, no rollouts, every row real (with
`mbpo.updates: 1`, the usual one update per env step).

Where this differs from the official code (jannerm/mbpo): the model takes one step per env step
on the replayed batch rather than being fitted to convergence every 250 steps; termination is the
model's learned prediction, not a hand-written function per task; rollouts are written every
train step rather than 100K of them every 250 steps (the same count per env step); held-out data
are a fixed share by step id rather than a fresh split at each fit.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dreamer.agents.modes import check_mode
from dreamer.config import ConfigError
from dreamer.core import branched, dynamics
from dreamer.core.parallel import gather_over, row_keys, sum_over
from dreamer.core.sac import SAC, SACState
from dreamer.core.updates import all_finite, check_sequence_length, nonfinite_metric

Batch = dict[str, jax.Array]


class MBPOState(flax.struct.PyTreeNode):
    sac: SACState
    model: dynamics.ModelState
    buffer: branched.Buffer
    error: jax.Array       # [K] moving average of each member's held-out error
    scored: jax.Array      # updates that measured it (0: none yet, the elites are members 0..E-1)
    step: jax.Array        # train steps taken

    @property
    def params(self) -> dict[str, Any]:
        """What the policy acts with: the actor."""
        return {"actor": self.sac.actor}


def rollout_length(schedule: tuple[float, ...], epoch: jax.Array | int) -> jax.Array:
    """MBPO's rollout length at `epoch` for `schedule` [epoch_a, epoch_b, k_a, k_b]: k_a up to
    epoch_a, then linear to k_b at epoch_b and k_b after, rounded down."""
    a, b, k_a, k_b = schedule
    frac = jnp.clip((epoch - a) / max(b - a, 1e-9), 0.0, 1.0)
    return jnp.floor(k_a + frac * (k_b - k_a) + 1e-6).astype(jnp.int32)


def transitions(batch: Batch) -> tuple[dict[str, jax.Array], jax.Array]:
    """[B, L, ...] sequences -> transitions {obs, action, reward, next_obs, cont} [B (L-1), ...]
    and which are valid (both steps in one episode): action a_t taken at s_t, reward r_t+1 and
    cont 0 where s_t+1 is terminal (a time limit's last step keeps cont 1)."""
    vec = batch["vector"].astype(jnp.float32)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    items = {"obs": flat(vec[:, :-1]), "action": flat(batch["action"][:, :-1]),
             "reward": flat(batch["reward"][:, 1:].astype(jnp.float32)),
             "next_obs": flat(vec[:, 1:]),
             "cont": flat(1.0 - batch["is_terminal"][:, 1:].astype(jnp.float32))}
    return items, flat(~batch["is_last"][:, :-1])


def mix(real: dict[str, jax.Array], model: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """One SAC minibatch: the real rows, then the model rows."""
    return {k: jnp.concatenate([real[k], model[k]]) for k in branched.KEYS}


def real_rows(sac_batch: int, real_ratio: float) -> int:
    """Real transitions in a minibatch of `sac_batch` (the official int(batch x ratio)).
    `sac_batch` is per device, so N devices draw N x int(sac_batch x ratio) real rows: they equal
    one device with N x sac_batch where sac_batch x ratio is whole (or rounds alike)."""
    return int(sac_batch * real_ratio + 1e-9)


class MBPO:
    """The MBPO agent on the shared agent interface (see `dreamer.agents.Agent`)."""

    def __init__(self, cfg: Any, obs_space: dict, act_space: Any, axis_name: str | None = None,
                 platform: str | None = None):
        del platform  # float32 everywhere: the networks are small
        m = cfg.mbpo
        if act_space.discrete:
            raise ConfigError(f"mbpo's SAC acts in continuous action spaces; the task "
                              f"{cfg.env.task} has discrete actions: choose a continuous task "
                              f"(e.g. gym_InvertedPendulum-v5) or another agent (muzero, dreamerv3)")
        if "vector" not in obs_space or "image" in obs_space:
            raise ConfigError("mbpo models state vectors: set env.obs=vector (the task "
                              f"{cfg.env.task} gives {', '.join(obs_space)})")
        if cfg.batch_length < 2:
            raise ConfigError(f"mbpo trains on transitions: batch_length must be at least 2, "
                              f"got {cfg.batch_length}")
        if not 0 < m.real_ratio <= 1:
            raise ConfigError(f"mbpo.real_ratio must be in (0, 1], got {m.real_ratio}")
        if m.real_ratio < 1 and not 0 < m.holdout < 1:
            raise ConfigError(f"mbpo.holdout must be in (0, 1): the share of transitions held "
                              f"out to rank the members and choose the elites, got {m.holdout}")
        if real_rows(m.sac_batch, m.real_ratio) < 1:
            raise ConfigError(f"mbpo.sac_batch x mbpo.real_ratio ({m.sac_batch} x "
                              f"{m.real_ratio}) gives no real transitions per minibatch: raise "
                              f"either")
        if not 1 <= m.elites <= m.members:
            raise ConfigError(f"mbpo.elites must be in [1, mbpo.members={m.members}], "
                              f"got {m.elites}")
        if min(m.rollouts, m.retain, m.updates, m.sac_batch) < 1:
            raise ConfigError("mbpo.rollouts, mbpo.retain, mbpo.updates and mbpo.sac_batch must "
                              f"be at least 1, got {m.rollouts}, {m.retain}, {m.updates}, "
                              f"{m.sac_batch}")
        if m.rollouts % m.elites:
            raise ConfigError(f"mbpo.rollouts ({m.rollouts}) must be a multiple of mbpo.elites "
                              f"({m.elites}): each elite rolls out as many")
        if len(m.rollout_schedule) != 4 or min(m.rollout_schedule[2:]) < 1:
            raise ConfigError("mbpo.rollout_schedule is [epoch_a, epoch_b, k_a, k_b] with "
                              f"lengths k >= 1, got {list(m.rollout_schedule)}")
        self.cfg, self.axis_name = cfg, axis_name
        self.act_dim = act_space.shape[-1]
        self.obs_dim = obs_space["vector"].shape[-1]
        self.obs_keys = ("vector",)
        self.sequence_length = cfg.batch_length
        self.trained_length = cfg.batch_length - 1  # transitions per sequence
        self.acts_on_device = False  # a small MLP: the host acts
        self.model_based = m.real_ratio < 1
        self.real = real_rows(m.sac_batch, m.real_ratio)
        self.max_length = int(max(m.rollout_schedule[2:]))
        self.model = dynamics.DynamicsModel(
            self.obs_dim, self.act_dim, members=m.members, units=m.units, layers=m.layers,
            act=m.act, min_logvar=m.min_logvar, max_logvar=m.max_logvar, lr=m.model_lr,
            weight_decay=m.weight_decay, bound_reg=m.bound_reg,
            slots=dynamics.slots(cfg.replay.capacity), holdout=m.holdout, axis_name=axis_name)
        self.sac = SAC(self.obs_dim, self.act_dim, layers=m.sac_layers, units=m.sac_units,
                       act=m.sac_act, lr=m.lr, discount=m.discount, tau=m.tau,
                       init_alpha=m.init_alpha, target_entropy=m.target_entropy,
                       axis_name=axis_name)

    def capacity(self) -> int:
        """Model buffer rows: `mbpo.retain` train steps of rollouts at the longest k (none for
        SAC alone)."""
        m = self.cfg.mbpo
        return m.retain * m.rollouts * self.max_length if self.model_based else 1

    def init(self, key: jax.Array) -> MBPOState:
        k_sac, k_model = jax.random.split(key)
        return MBPOState(sac=self.sac.init(k_sac), model=self.model.init(k_model),
                         buffer=branched.Buffer.empty(self.capacity(), self.obs_dim,
                                                      self.act_dim),
                         error=jnp.zeros(self.cfg.mbpo.members),
                         scored=jnp.zeros([], jnp.int32), step=jnp.zeros([], jnp.int32))

    # ----------------------------------------------------------------------------- training
    def env_steps(self, step: jax.Array) -> jax.Array:
        """Env steps collected when train step `step` (from 0) runs, by the loop's train ratio
        (`dreamer.run.clocks.updates_due`: the first update when training starts, then one
        per global batch x trained length / train ratio agent steps)."""
        cfg = self.cfg
        devices = sum_over(jnp.ones([]), self.axis_name)
        trained = cfg.batch_size * devices * self.trained_length
        start = jnp.maximum(np.ceil(cfg.run.prefill / cfg.env.action_repeat),
                            cfg.batch_size * devices * cfg.batch_length)
        return (start + step * trained / cfg.run.train_ratio) * cfg.env.action_repeat

    def length(self, step: jax.Array) -> jax.Array:
        """The rollout length k at train step `step`. Epochs count the env steps since training
        started, as MBPO's epochs start after its initial exploration (the prefill here)."""
        trained = self.env_steps(step) - self.env_steps(jnp.zeros([], jnp.int32))
        epoch = jnp.floor(trained / self.cfg.mbpo.epoch)
        return rollout_length(tuple(self.cfg.mbpo.rollout_schedule), epoch)

    def elites(self, error: jax.Array) -> jax.Array:
        """The `mbpo.elites` members of lowest held-out error [E] (ties: lower index)."""
        return jnp.argsort(error, stable=True)[:self.cfg.mbpo.elites]

    def actor_sample(self, actor: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        return self.sac.policy(actor, obs).sample(key)

    def train_model(self, state: MBPOState, batch: Batch):
        """Step 1: the model's update and the members' held-out error average."""
        model, metrics, val = self.model.train_step(state.model, batch)
        decay = self.cfg.mbpo.error_decay
        fresh = jnp.where(state.scored == 0, val["error"],
                          decay * state.error + (1 - decay) * val["error"])
        error = jnp.where(val["count"] > 0, fresh, state.error)
        scored = state.scored + (val["count"] > 0).astype(jnp.int32)
        metrics = {**metrics, "model/held_out_count": val["count"],
                   "model/held_out_error": jnp.where(val["count"] > 0, val["error"].mean(), 0.0)}
        return model, error, scored, metrics

    def branch(self, state: MBPOState, pool: dict[str, jax.Array], valid: jax.Array,
               key: jax.Array):
        """Step 2: rollouts from real starts drawn from `pool` (every device's transitions)."""
        m = self.cfg.mbpo
        k_start, k_roll = jax.random.split(key)
        index = jax.random.categorical(k_start, jnp.log(valid.astype(jnp.float32)),
                                       shape=(m.rollouts,))
        elites = self.elites(state.error)
        params = state.model.params
        elite_params = {"model": jax.tree.map(lambda x: x[elites], params["model"]),
                        "norm": params["norm"]}
        length = self.length(state.step)
        buffer, stats = branched.rollout(
            self.model.predict, elite_params,
            lambda obs, k: self.actor_sample(state.sac.actor, obs, k),
            pool["obs"][index], m.elites, length, state.buffer, k_roll)
        metrics = {"mbpo/rollout_length": stats["steps"].astype(jnp.float32),
                   "mbpo/rollout_steps": stats["written"].astype(jnp.float32) / m.rollouts,
                   "mbpo/buffer": buffer.size(self.newest(length)).astype(jnp.float32)}
        return buffer, metrics

    def newest(self, length: jax.Array) -> jax.Array:
        """Model buffer rows that sampling reads at rollout length k: `mbpo.retain` train steps
        of rollouts (MBPO's pool of the last epoch)."""
        return self.cfg.mbpo.retain * self.cfg.mbpo.rollouts * length

    def minibatch(self, buffer: branched.Buffer, length: jax.Array, pool: dict[str, jax.Array],
                  valid: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """This device's SAC minibatch and a key per row: `real` rows from the real pool,
        the rest from the model buffer's newest rows. A row's draw and its key come from its
        index among the real (or model) rows of the global minibatch, so N devices draw what
        one device holding all rows draws."""
        m = self.cfg.mbpo
        k_real, k_model = jax.random.split(key)
        logits = jnp.log(valid.astype(jnp.float32))
        keys = row_keys(k_real, self.real, self.axis_name)
        draw, keys = jax.vmap(jax.random.split)(keys).swapaxes(0, 1)
        index = jax.vmap(lambda k: jax.random.categorical(k, logits))(draw)
        real = {k: v[index] for k, v in pool.items()}
        if not self.model_based:
            return real, keys
        model_keys = row_keys(k_model, m.sac_batch - self.real, self.axis_name)
        draw, model_keys = jax.vmap(jax.random.split)(model_keys).swapaxes(0, 1)
        model = buffer.sample(draw, draw.shape[0], self.newest(length))
        return mix(real, model), jnp.concatenate([keys, model_keys])

    def train_policy(self, sac: SACState, buffer: branched.Buffer, length: jax.Array,
                     pool: dict[str, jax.Array], valid: jax.Array, key: jax.Array):
        """Step 3: `mbpo.updates` SAC steps in one scan; the metrics are their means."""
        def update(sac, k):
            batch, keys = self.minibatch(buffer, length, pool, valid, k)
            return self.sac.update(sac, batch, keys)

        sac, metrics = jax.lax.scan(update, sac, jax.random.split(key, self.cfg.mbpo.updates))
        return sac, jax.tree.map(jnp.mean, metrics)

    def train_step(self, state: MBPOState, batch: Batch, key: jax.Array):
        """Model update, branched rollouts and the SAC updates on [B, L, ...] sequences (with
        `step_id`); no replay updates. A non-finite SAC update leaves SAC's state as it was
        (the model skips its own non-finite updates)."""
        check_sequence_length(batch, self.sequence_length, "mbpo")
        k_branch, k_policy = jax.random.split(key)
        items, valid = transitions(batch)
        pool, valid = gather_over((items, valid), self.axis_name)  # every device's, in order
        metrics = {}
        model, buffer, error, scored = state.model, state.buffer, state.error, state.scored
        length = self.length(state.step)
        if self.model_based:
            model, error, scored, metrics = self.train_model(state, batch)
            buffer, roll = self.branch(state.replace(model=model, error=error), pool, valid,
                                       k_branch)
            metrics.update(roll)
        nonfinite_model = metrics.pop("nonfinite", jnp.zeros([]))

        train = lambda: self.train_policy(state.sac, buffer, length, pool, valid, k_policy)
        if self.model_based:
            # Before the model's warm-up ends the policy waits (its metrics read 0 meanwhile).
            warm = state.step >= self.cfg.mbpo.model_warmup
            shapes = jax.eval_shape(train)[1]
            sac, sac_metrics = jax.lax.cond(warm, train, lambda: (state.sac, jax.tree.map(
                lambda x: jnp.zeros(x.shape, x.dtype), shapes)))
        else:
            warm, (sac, sac_metrics) = jnp.ones([], bool), train()
        finite = all_finite(sac)
        sac = jax.tree.map(lambda n, o: jnp.where(finite, n, o), sac, state.sac)
        metrics.update({"loss/critic": sac_metrics.pop("sac/critic_loss"),
                        "loss/actor": sac_metrics.pop("sac/actor_loss"),
                        "loss/alpha": sac_metrics.pop("sac/alpha_loss")})
        metrics.update(sac_metrics)
        metrics["mbpo/policy_trains"] = jnp.asarray(warm, jnp.float32)
        metrics["mbpo/env_steps"] = self.env_steps(state.step)
        metrics["nonfinite"] = jnp.maximum(nonfinite_model, nonfinite_metric(finite))
        return state.replace(sac=sac, model=model, buffer=buffer, error=error, scored=scored,
                             step=state.step + 1), metrics, {}

    # ----------------------------------------------------------------------------- acting
    def policy_initial(self, batch: int) -> jax.Array:
        return jnp.zeros(batch)

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        return {}

    def policy(self, params: dict[str, Any], carry: jax.Array, obs: Batch, key: jax.Array,
               mode: str = "sample"):
        """'sample' draws from the tanh-Gaussian (collection); 'eval' and 'mode' act on tanh of
        its mean, as MBPO and SAC evaluate (deterministic evaluation)."""
        check_mode(mode)
        dist = self.sac.policy(params["actor"], obs["vector"].astype(jnp.float32))
        action = dist.sample(key) if mode == "sample" else dist.mode()
        return carry, action, {}
