"""DreamerV3: network construction, the train-state pytree, the loss with its scales, `train_step`
and `policy` (pure)."""
from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamer.agents.dreamerv3 import behavior, world_model
from dreamer.agents.dreamerv3 import rssm as rssm_lib
from dreamer.agents.dreamerv3.behavior import ActorCriticNets
from dreamer.agents.dreamerv3.optim import GROUPS, make_optimizer
from dreamer.agents.dreamerv3.world_model import WorldModelNets
from dreamer.agents.modes import check_mode
from dreamer.config import ConfigError
from dreamer.core.convnets import Decoder, Encoder
from dreamer.core.distributions import split_keys, symexp_bins
from dreamer.core.nets import MLP, count_params
from dreamer.core.parallel import mean_over, row_keys
from dreamer.core.updates import check_sequence_length, ema, keep_if_finite, nonfinite_metric

Batch = dict[str, jax.Array]
OBSERVE_UNROLL = 8  # observe-scan steps per loop iteration on accelerators (`build_nets`)


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


def imag_steps(imag_last: int, length: int) -> int:
    """How many of a sequence's `length` steps imagination starts from: the last `imag_last`
    (`ac.imag_last`, as the 2024 code's `imag_last`), every step when it is 0 or above `length`."""
    if imag_last < 0:  # the config's types have refused a non-integer already
        raise ConfigError(f"ac.imag_last must be an integer >= 0 (0: imagine from every replayed "
                          f"step), got {imag_last!r}")
    return min(imag_last or length, length)


def build_nets(cfg: Any, obs_space: dict, act_space: Any, platform: str | None = None
               ) -> tuple[WorldModelNets, ActorCriticNets]:
    """Module definitions from the config and the environment's spaces, computing in the dtype
    of `jax.compute_dtype` for `platform` (default: `jax.platform`, else JAX's backend); on
    accelerators the block GRU's blocks run as one batched matmul (`nets.block_matmul`) and the
    observe scan runs `OBSERVE_UNROLL` steps per loop iteration (the same math in fewer, larger
    iterations: each one is a host round trip or a graph node on a GPU)."""
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
    bins = symexp_bins(m.bins)
    wm = WorldModelNets(
        enc=enc,
        rssm=rssm_lib.RSSM(m.deter, m.hidden, m.stoch, m.classes, embed.shape[-1], m.blocks,
                           m.img_layers, m.obs_layers, m.dyn_layers, m.unimix, **common,
                           batched_blocks=platform != "cpu",
                           observe_unroll=1 if platform == "cpu" else OBSERVE_UNROLL),
        dec=Decoder(shapes, layers=m.dec_layers, bspace=m.bspace, **cnn, **common),
        rew=MLP(m.head_layers, m.units, m.bins, outscale=0.0, **common),
        con=MLP(m.head_layers, m.units, 1, outscale=1.0, **common),
        bins=bins,
    )
    ac = ActorCriticNets(
        actor=MLP(cfg.ac.layers, m.units, policy_out, outscale=cfg.ac.policy_outscale, **common),
        critic=MLP(cfg.ac.layers, m.units, m.bins, outscale=0.0, **common),
        bins=bins, discrete=bool(act_space.discrete), minstd=cfg.ac.minstd, maxstd=cfg.ac.maxstd,
    )
    return wm, ac


def loss_scales(cfg: Any) -> dict[str, float]:
    """The weight of each loss term in the objective (paper Eq. 5 and Sec. 3; the 2024 code's
    replayed-value term `repval`)."""
    m, ac = cfg.model, cfg.ac
    return {"image": m.rec_scale, "vector": m.rec_scale, "reward": m.rew_scale,
            "cont": m.con_scale, "dyn": m.dyn_scale, "rep": m.rep_scale,
            "policy": ac.policy_scale, "value": ac.value_scale, "repval": ac.repval}


def weighted_sum(terms: dict[str, jax.Array], scales: dict[str, float]) -> jax.Array:
    """Σ_k scale_k · mean(term_k); every term must have a scale."""
    missing = sorted(set(terms) - set(scales))
    if missing:
        raise ValueError(f"loss terms without a scale: {', '.join(missing)}")
    return sum(scales[k] * v.mean() for k, v in terms.items())


def total_loss(terms: dict[str, jax.Array], scales: dict[str, float], wm_terms: tuple[str, ...],
               metrics: dict[str, jax.Array]) -> jax.Array:
    """The weighted objective; adds each term's mean, the world model's weighted part and the
    total to `metrics` as loss/*."""
    total = weighted_sum(terms, scales)
    metrics.update({f"loss/{k}": v.mean() for k, v in terms.items()})
    metrics["loss/wm"] = weighted_sum({k: terms[k] for k in wm_terms}, scales)
    metrics["loss/total"] = total
    return total


def imagination_kwargs(ac: Any, axis_name: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `behavior.actor_critic_loss` from the `ac` config section."""
    return {"horizon": ac.horizon, "discount_horizon": ac.discount_horizon, "lam": ac.lam,
            "entropy": ac.entropy, "slowreg": ac.slowreg, "actor_grad": ac.actor_grad,
            "retnorm_lo": ac.retnorm_lo, "retnorm_hi": ac.retnorm_hi,
            "retnorm_decay": ac.retnorm_decay, "retnorm_limit": ac.retnorm_limit,
            "axis_name": axis_name}


def init_params(wm: WorldModelNets, ac: ActorCriticNets, obs_space: dict, act_dim: int,
                key: jax.Array) -> dict[str, Any]:
    """Fresh parameters: {'wm': {enc, rssm, dec, rew, con}, 'actor': ..., 'critic': ...}."""
    keys = dict(zip(("enc", "rssm", "dec", "rew", "con", "actor", "critic", "sample"),
                    jax.random.split(key, 8)))
    obs = {k: jnp.zeros((1, *s.shape), s.dtype) for k, s in obs_space.items()}
    enc = wm.enc.init(keys["enc"], obs)["params"]
    embed = wm.enc.apply({"params": enc}, obs)
    state = rssm_lib.initial(wm.rssm, 1)
    feat = rssm_lib.feat(state)
    return {
        "wm": {"enc": enc,
               "rssm": wm.rssm.init(keys["rssm"], state, jnp.zeros((1, act_dim)), embed,
                                    keys["sample"])["params"],
               "dec": wm.dec.init(keys["dec"], state["deter"], state["stoch"])["params"],
               "rew": wm.rew.init(keys["rew"], feat)["params"],
               "con": wm.con.init(keys["con"], feat)["params"]},
        "actor": ac.actor.init(keys["actor"], feat)["params"],
        "critic": ac.critic.init(keys["critic"], feat)["params"],
    }


def initial_state(opt: optax.GradientTransformation, params: dict[str, Any]) -> TrainState:
    """The train state before the first update: the slow critic a copy of the critic, return
    statistics zero."""
    return TrainState(params=params, slow_critic=jax.tree.map(jnp.copy, params["critic"]),
                      opt_state=opt.init(params), retnorm={"lo": jnp.zeros([]), "hi": jnp.zeros([])},
                      step=jnp.zeros([], jnp.int32))


def param_counts(params: dict[str, Any]) -> dict[str, int]:
    """Parameters per module (the world model's five, actor, critic) and their total."""
    counts = {k: count_params(v) for k, v in params["wm"].items()}
    counts.update(actor=count_params(params["actor"]), critic=count_params(params["critic"]))
    counts["total"] = sum(counts.values())
    return counts


def apply_gradients(opt: optax.GradientTransformation, state: TrainState, grads: Any,
                    retnorm: dict[str, jax.Array], metrics: dict[str, jax.Array],
                    slow_rate: float):
    """The optimiser step, the slow critic's EMA and the new return statistics, or the old state
    whole where the loss or a gradient is not finite (all devices see the same averaged values,
    so all skip together). Returns (state, finite, metrics with gradient and parameter norms and
    `nonfinite`)."""
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    slow = ema(state.slow_critic, params["critic"], slow_rate)
    metrics = dict(metrics)
    for group in GROUPS:
        metrics[f"grad_norm/{group}"] = optax.tree.norm(grads[group])
        metrics[f"param_norm/{group}"] = optax.tree.norm(params[group])
    new = TrainState(params=params, slow_critic=slow, opt_state=opt_state, retnorm=retnorm,
                     step=state.step + 1)
    state, finite = keep_if_finite(new, state, metrics["loss/total"], grads)
    metrics["nonfinite"] = nonfinite_metric(finite)
    return state, finite, metrics


class DreamerV3:
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
        self.wm, self.ac = build_nets(cfg, obs_space, act_space, platform)
        if imag_steps(cfg.ac.imag_last, cfg.batch_length) < 2 and cfg.ac.repval > 0:
            raise ConfigError(
                f"ac.imag_last={cfg.ac.imag_last} with batch_length={cfg.batch_length} leaves one "
                "replayed step for the replayed-value loss, whose λ-returns need two (its mean "
                "would be NaN and every update skipped): use ac.imag_last >= 2, or ac.repval=0")
        self.scales = loss_scales(cfg)
        self.opt = make_optimizer(cfg.opt)
        self.axis_name = axis_name
        self.obs_keys = tuple(obs_space)

    def init(self, key: jax.Array) -> TrainState:
        return initial_state(self.opt, init_params(self.wm, self.ac, self.obs_space,
                                                   self.act_dim, key))

    # ----------------------------------------------------------------------------- training
    @property
    def context(self) -> bool:
        """Whether replayed sequences carry one step of replay context (`replay.context`)."""
        return bool(self.cfg.replay.context)

    @property
    def sequence_length(self) -> int:
        """Steps per replayed sequence: `batch_length`, plus the context step."""
        return self.cfg.batch_length + int(self.context)

    acts_on_device = False  # one filter step and an actor head: cheap on the host

    @property
    def trained_length(self) -> int:
        """Steps per sequence that the train ratio counts: `batch_length` (not the context
        step, which only supplies the model state), as the 2024 code counts them."""
        return self.cfg.batch_length

    def imagination_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `behavior.actor_critic_loss` from the config."""
        return imagination_kwargs(self.cfg.ac, self.axis_name)

    def loss(self, params: dict[str, Any], state: TrainState, batch: Batch, key: jax.Array):
        """World-model, actor, critic and replay-value losses on a replayed batch, each term
        weighted once by `loss_scales` (`weighted_sum`).

        With replay context the batch holds T+1 steps; the first only supplies the starting
        model state (stored by the policy, or by an earlier update) and the previous action.
        The actor-critic sees only stopped world-model outputs; the replay-value loss reaches
        the world model too when `ac.repval_grad` is on (2024 code).
        Returns (scalar loss, (metrics, new retnorm stats, replay context of the batch))."""
        cfg = self.cfg
        start, prev_action, batch = world_model.sequence_inputs(self.wm, batch, self.context)
        b, t = batch["is_first"].shape
        # One key per sequence from its index in the global batch: N devices draw what one does.
        k_wm, k_ac = split_keys(row_keys(key, b, self.axis_name), 2)
        terms, metrics, out = world_model.loss(self.wm, params["wm"], batch, start, prev_action,
                                               k_wm, free_nats=cfg.model.free_nats)
        wm_terms = tuple(terms)
        # Imagination starts from the last k steps of each sequence (`ac.imag_last`, 0: all);
        # the replayed-value loss covers the same steps. Each step keeps its own key whatever k.
        k = imag_steps(cfg.ac.imag_last, t)
        last = lambda x: x[:, t - k:]
        starts = world_model.flat_steps(jax.tree.map(last, out.states))
        k_ac = world_model.flat_steps(last(jnp.swapaxes(split_keys(k_ac, t), 0, 1)))
        start_cont = 1.0 - last(batch["is_terminal"]).reshape(-1).astype(jnp.float32)
        ac_terms, ac_metrics, retnorm, ret0 = behavior.actor_critic_loss(
            self.wm, self.ac, params, state.slow_critic, state.retnorm, starts, start_cont, k_ac,
            **self.imagination_kwargs())
        terms.update(ac_terms)
        metrics.update(ac_metrics)
        if self.scales["repval"] > 0:
            replayed = {key: last(batch[key]) for key in ("reward", "is_last", "is_terminal")}
            terms["repval"] = behavior.repval_loss(
                self.ac, params["critic"], state.slow_critic, last(out.feat), replayed,
                ret0.reshape(b, k), discount_horizon=cfg.ac.discount_horizon, lam=cfg.ac.lam,
                slowreg=cfg.ac.slowreg, grad=cfg.ac.repval_grad)
        total = total_loss(terms, self.scales, wm_terms, metrics)
        return total, (metrics, retnorm, self._context_of(out.states))

    def _context_of(self, states: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return world_model.replay_context(states, self.cfg.model.stoch) if self.context else {}

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
        check_sequence_length(batch, self.sequence_length, "dreamerv3",
                              "batch_length + replay context")
        grads, (metrics, retnorm, context) = jax.grad(self.loss, has_aux=True)(
            state.params, state, batch, key)
        grads = mean_over(grads, self.axis_name)
        state, finite, metrics = apply_gradients(self.opt, state, grads, retnorm, metrics,
                                                 self.cfg.ac.slow_rate)
        metrics = mean_over(metrics, self.axis_name)
        context = {k: jnp.where(finite, v, batch[k][:, length - v.shape[1]:])
                   for k, v in context.items()}
        return state, metrics, context

    def report(self, params: dict[str, Any], batch: Batch, key: jax.Array,
               context: int | None = None):
        """Open-loop prediction and reconstruction videos of a replayed batch after `context`
        observed frames (default `logger.report_context`; see `world_model.report`)."""
        if context is None:
            context = self.cfg.logger.report_context
        return world_model.report(self.wm, params["wm"], batch, key, context)

    # ----------------------------------------------------------------------------- acting
    def policy_initial(self, batch: int):
        """Initial policy carry for `batch` environments: (model state, previous action)."""
        return rssm_lib.initial(self.wm.rssm, batch), jnp.zeros((batch, self.act_dim))

    def policy_outputs_initial(self, batch: int) -> dict[str, np.ndarray]:
        """Per-step outputs of steps not chosen by the policy (random actions): the zero state
        an episode starts from (latent class -1, which `sequence_inputs` reads as an all-zero
        latent), until an update rewrites it."""
        m = self.cfg.model
        return world_model.initial_context(batch, m.deter, m.stoch) if self.context else {}

    def observe(self, params: dict[str, Any], carry: Any, obs: Batch, key: jax.Array):
        """The filtering half of `policy` (`world_model.observe_step`)."""
        return world_model.observe_step(self.wm, params["wm"], carry, obs, key)

    def policy_outputs(self, state: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """What the replay stores with a step acted on from model state [N, ...]: the state
        as replay context (empty without it)."""
        return self._context_of(state)

    def policy(self, params: dict[str, Any], carry: Any, obs: Batch, key: jax.Array,
               mode: str = "sample"):
        """One acting step for N environments.

        obs: image [N, H, W, C] / vector [N, V], is_first [N]. Returns (carry, action [N, A],
        outputs): actions are one-hot for discrete spaces, unclipped continuous otherwise;
        `outputs` are what the replay stores with the step (the model state after observing
        it, as replay context). 'sample' and 'eval' both sample from the actor: the official
        code evaluates with sampled actions too, so evaluation scores compare with its
        published curves; 'mode' takes the actor's most likely action (greedy).
        """
        check_mode(mode)
        k_obs, k_act = jax.random.split(key)
        state = self.observe(params, carry, obs, k_obs)
        dist = behavior.policy_dist(self.ac, params["actor"], rssm_lib.feat(state))
        action = dist.mode() if mode == "mode" else dist.sample(k_act)
        return (state, action), action, self.policy_outputs(state)
