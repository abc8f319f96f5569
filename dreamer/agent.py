"""The agent: network construction, the train-state pytree, `train_step` and `policy` (pure)."""
from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamer import behavior, world_model
from dreamer import rssm as rssm_lib
from dreamer.config import ConfigError
from dreamer.distributions import split_keys, symexp_bins
from dreamer.nets import MLP, Decoder, Encoder, count_params
from dreamer.optim import GROUPS, make_optimizer
from dreamer.parallel import mean_over, row_keys

Batch = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes between updates."""

    params: dict[str, Any]        # {'wm': {enc, rssm, dec, rew, con}, 'actor': ..., 'critic': ...}
    slow_critic: Any              # EMA of params['critic'] (paper Sec. 3, critic regulariser)
    opt_state: Any
    retnorm: dict[str, jax.Array]  # EMA of the 5th/95th return percentiles
    step: jax.Array               # updates done


def compute_dtype(name: str, platform: str | None = None) -> jnp.dtype:
    """The compute dtype for `jax.compute_dtype`: 'auto' is bfloat16 on GPU and TPU and float32
    on the CPU (where bfloat16 matmuls are slower); parameters stay float32 either way."""
    if name == "auto":
        platform = platform or jax.default_backend()
        return jnp.dtype(jnp.float32 if platform == "cpu" else jnp.bfloat16)
    if name not in ("float32", "bfloat16"):
        raise ConfigError(f"jax.compute_dtype must be auto, float32 or bfloat16, got {name!r}")
    return jnp.dtype(name)


def build_nets(cfg: Any, obs_space: dict, act_space: Any,
               platform: str | None = None) -> world_model.Nets:
    """Module definitions from the config and the environment's spaces, computing in the dtype
    of `jax.compute_dtype` for `platform` (default: `jax.platform`, else JAX's backend); on
    accelerators the block GRU's blocks run as one batched matmul (`nets.block_matmul`)."""
    m = cfg.model
    platform = platform or cfg.jax.platform or jax.default_backend()
    dtype = compute_dtype(cfg.jax.compute_dtype, platform)
    common = {"norm": m.norm, "act": m.act, "dtype": dtype}
    shapes = {k: tuple(space.shape) for k, space in obs_space.items()}
    cnn = {"depth": m.depth, "mults": tuple(m.mults), "kernel": m.kernel, "units": m.units}
    act_dim = act_space.n if act_space.discrete else act_space.shape[-1]
    # Discrete: logits; continuous: separate mean and std layers (2024 code).
    policy_out = act_dim if act_space.discrete else (act_dim, act_dim)
    enc = Encoder(layers=m.enc_layers, **cnn, **common)
    obs = {k: jax.ShapeDtypeStruct((1, *s.shape), s.dtype) for k, s in obs_space.items()}
    embed = jax.eval_shape(lambda o: enc.init_with_output(jax.random.PRNGKey(0), o)[0], obs)
    return world_model.Nets(
        enc=enc,
        rssm=rssm_lib.RSSM(m.deter, m.hidden, m.stoch, m.classes, embed.shape[-1], m.blocks,
                           m.img_layers, m.obs_layers, m.dyn_layers, m.unimix, **common,
                           batched_blocks=platform != "cpu"),
        dec=Decoder(shapes, layers=m.dec_layers, bspace=m.bspace, **cnn, **common),
        rew=MLP(m.head_layers, m.units, m.bins, outscale=0.0, **common),
        con=MLP(m.head_layers, m.units, 1, outscale=1.0, **common),
        actor=MLP(cfg.ac.layers, m.units, policy_out, outscale=cfg.ac.policy_outscale, **common),
        critic=MLP(cfg.ac.layers, m.units, m.bins, outscale=0.0, **common),
        bins=symexp_bins(m.bins),
        discrete=bool(act_space.discrete),
    )


class Agent:
    """DreamerV3. `train_step` and `policy` are pure functions of their arguments.

    `axis_name` names the device axis when the step runs under pmap/shard_map; gradients,
    metrics and return statistics are then averaged (or gathered) over it. `platform` is where
    the agent computes ('cpu' for acting on the host), which `jax.compute_dtype: auto` follows.
    """

    def __init__(self, cfg: Any, obs_space: dict, act_space: Any, axis_name: str | None = None,
                 platform: str | None = None):
        self.cfg = cfg
        self.obs_space = obs_space
        self.act_space = act_space
        self.act_dim = act_space.n if act_space.discrete else act_space.shape[-1]
        self.nets = build_nets(cfg, obs_space, act_space, platform)
        self.opt = make_optimizer(cfg.opt)
        self.axis_name = axis_name
        self.obs_keys = tuple(obs_space)

    # ----------------------------------------------------------------------------- init
    def init_params(self, key: jax.Array) -> dict[str, Any]:
        nets = self.nets
        keys = dict(zip(("enc", "rssm", "dec", "rew", "con", "actor", "critic", "sample"),
                        jax.random.split(key, 8)))
        obs = {k: jnp.zeros((1, *s.shape), s.dtype) for k, s in self.obs_space.items()}
        embed = nets.enc.init(keys["enc"], obs)["params"]
        embed_out = nets.enc.apply({"params": embed}, obs)
        state = rssm_lib.initial(nets.rssm, 1)
        action = jnp.zeros((1, self.act_dim))
        feat = rssm_lib.feat(state)
        wm = {
            "enc": embed,
            "rssm": nets.rssm.init(keys["rssm"], state, action, embed_out,
                                   keys["sample"])["params"],
            "dec": nets.dec.init(keys["dec"], state["deter"], state["stoch"])["params"],
            "rew": nets.rew.init(keys["rew"], feat)["params"],
            "con": nets.con.init(keys["con"], feat)["params"],
        }
        return {"wm": wm, "actor": nets.actor.init(keys["actor"], feat)["params"],
                "critic": nets.critic.init(keys["critic"], feat)["params"]}

    def init(self, key: jax.Array) -> TrainState:
        params = self.init_params(key)
        return TrainState(
            params=params, slow_critic=jax.tree.map(jnp.copy, params["critic"]), opt_state=self.opt.init(params),
            retnorm={"lo": jnp.zeros([]), "hi": jnp.zeros([])}, step=jnp.zeros([], jnp.int32))

    def param_counts(self, params: dict[str, Any]) -> dict[str, int]:
        counts = {k: count_params(v) for k, v in params["wm"].items()}
        counts.update(actor=count_params(params["actor"]), critic=count_params(params["critic"]))
        counts["total"] = sum(counts.values())
        return counts

    # ----------------------------------------------------------------------------- training
    @property
    def context(self) -> bool:
        """Whether replayed sequences carry one step of replay context (`replay.context`)."""
        return bool(self.cfg.replay.context)

    @property
    def sequence_length(self) -> int:
        """Steps per replayed sequence: `batch_length`, plus the context step."""
        return self.cfg.batch_length + int(self.context)

    def loss(self, params: dict[str, Any], state: TrainState, batch: Batch, key: jax.Array):
        """Sum of world-model, actor, critic and replay-value losses on a replayed batch.

        With replay context the batch holds T+1 steps; the first only supplies the starting
        model state (stored by the policy, or by an earlier update) and the previous action.
        The actor-critic sees only stopped world-model outputs; the replay-value loss reaches
        the world model too when `ac.repval_grad` is on (2024 code)."""
        cfg, nets = self.cfg, self.nets
        start, prev_action, batch = world_model.sequence_inputs(nets, batch, self.context)
        b, t = batch["is_first"].shape
        k_wm, k_ac = split_keys(self.row_keys(key, b), 2)
        wm_loss, (metrics, out) = world_model.loss(
            nets, params["wm"], batch, start, prev_action, k_wm, cfg)
        starts = jax.tree.map(lambda x: x.reshape((b * t, *x.shape[2:])), out.states)
        k_ac = jnp.swapaxes(split_keys(k_ac, t), 0, 1).reshape((b * t, *k_ac.shape[1:]))
        start_cont = 1.0 - batch["is_terminal"].reshape(-1).astype(jnp.float32)
        view = {**params["wm"], "actor": params["actor"], "critic": params["critic"]}
        ac_loss, (ac_metrics, retnorm, ret0) = behavior.actor_critic_loss(
            nets, view, state.slow_critic, state.retnorm, starts, start_cont, k_ac, cfg,
            self.axis_name)
        metrics.update(ac_metrics)
        total = wm_loss + ac_loss
        if cfg.ac.repval > 0:
            rep = behavior.repval_loss(nets, view, state.slow_critic, out.feat, batch,
                                       ret0.reshape(b, t), cfg)
            metrics["loss/repval"] = rep
            total = total + cfg.ac.repval * rep
        metrics["loss/wm"] = wm_loss
        metrics["loss/total"] = total
        return total, (metrics, retnorm, self._context_of(out.states))

    def _context_of(self, states: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Model states [..., D], [..., S*K] -> what the replay stores as context: `deter`
        float32 and the class index of each latent (int32 [..., S]); empty without context."""
        if not self.context:
            return {}
        m = self.cfg.model
        stoch = states["stoch"].reshape((*states["stoch"].shape[:-1], m.stoch, m.classes))
        return {"context_deter": states["deter"].astype(jnp.float32),
                "context_stoch": jnp.argmax(stoch, -1).astype(jnp.int32)}

    def row_keys(self, key: jax.Array, rows: int) -> jax.Array:
        """One key per replayed sequence, derived from its index in the global batch.

        Every random draw of the update comes from these, so N devices that each hold B/N
        sequences draw exactly what one device holding all B draws."""
        return row_keys(key, rows, self.axis_name)

    def train_step(self, state: TrainState, batch: Batch, key: jax.Array):
        """One update: (state, batch [B, L, ...], key) -> (state, metrics, replay updates).

        L is `sequence_length`. The replay updates are the fresh posterior latents of the last
        `batch_length` steps of each sequence (`context_*` [B, T, ...]; empty without replay
        context), for the replay to store in place of the older ones.
        `metrics['nonfinite']` is 1 when the loss or a gradient was not finite; the update is
        then skipped: the returned state equals the input state and the replay updates are the
        batch's own context values."""
        b, length = batch["is_first"].shape
        chex.assert_shape(batch["action"], (b, length, self.act_dim))
        if length != self.sequence_length:
            raise ValueError(f"batch sequences hold {length} steps, the agent trains on "
                             f"{self.sequence_length} (batch_length + replay context)")
        grads, (metrics, retnorm, context) = jax.grad(self.loss, has_aux=True)(
            state.params, state, batch, key)
        grads = mean_over(grads, self.axis_name)
        updates, opt_state = self.opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rate = self.cfg.ac.slow_rate
        slow = jax.tree.map(lambda s, p: (1 - rate) * s + rate * p,
                            state.slow_critic, params["critic"])
        for group in GROUPS:
            metrics[f"grad_norm/{group}"] = optax.tree.norm(grads[group])
            metrics[f"param_norm/{group}"] = optax.tree.norm(params[group])
        metrics = mean_over(metrics, self.axis_name)
        new = TrainState(params=params, slow_critic=slow, opt_state=opt_state,
                         retnorm=retnorm, step=state.step + 1)
        # A non-finite loss or gradient leaves the whole state as it was (every device sees the
        # same averaged values, so all skip together); the runner counts these.
        finite = jnp.isfinite(metrics["loss/total"]) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        context = {k: jnp.where(finite, v, batch[k][:, length - v.shape[1]:])
                   for k, v in context.items()}
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return state, metrics, context

    def report(self, params: dict[str, Any], batch: Batch, key: jax.Array,
               context: int | None = None):
        """Open-loop prediction and reconstruction videos of a replayed batch after `context`
        observed frames (default `logger.report_context`; see `world_model.report`)."""
        if context is None:
            context = self.cfg.logger.report_context
        return world_model.report(self.nets, params["wm"], batch, key, context)

    # ----------------------------------------------------------------------------- acting
    def policy_initial(self, batch: int):
        """Initial policy carry for `batch` environments: (model state, previous action)."""
        return rssm_lib.initial(self.nets.rssm, batch), jnp.zeros((batch, self.act_dim))

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        """Per-step outputs of steps not chosen by the policy (random actions): the zero state
        an episode starts from (latent class -1, which `sequence_inputs` reads as an all-zero
        latent), until an update rewrites it."""
        if not self.context:
            return {}
        m = self.cfg.model
        return {"context_deter": np.zeros((batch, m.deter), np.float32),
                "context_stoch": np.full((batch, m.stoch), -1, np.int32)}

    def policy(self, params: dict[str, Any], carry: Any, obs: Batch, key: jax.Array,
               mode: str = "sample"):
        """One acting step for N environments.

        obs: image [N, H, W, C] / vector [N, V], is_first [N]. Returns (carry, action [N, A],
        outputs): actions are one-hot for discrete spaces, unclipped continuous otherwise;
        `outputs` are what the replay stores with the step (the model state after observing
        it, as replay context). `mode` is 'sample' (training and evaluation, as in the paper)
        or 'mode' (greedy).
        """
        nets = self.nets
        k_obs, k_act = jax.random.split(key)
        state, prev_action = rssm_lib.reset_state(*carry, obs["is_first"])
        embed = world_model.encode(nets, params["wm"], world_model.obs_of(obs))
        rssm_params = {"params": params["wm"]["rssm"]}
        proj = nets.rssm.apply(rssm_params, embed, method="embed_proj")
        state, _ = nets.rssm.apply(rssm_params, state, prev_action, proj, k_obs,
                                   method="obs_step")
        dist = behavior.policy_dist(nets, params["actor"], rssm_lib.feat(state), self.cfg)
        action = dist.sample(k_act) if mode == "sample" else dist.mode()
        return (state, action), action, self._context_of(state)
