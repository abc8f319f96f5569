"""The RSSM's block GRU against a plain numpy GRU with explicit block-diagonal matrices, the
grouped-input layer against a block-diagonal layer on the broadcast input, and the batched and
per-block matmul forms of the whole model against each other.

Block GRU of the DreamerV3 2024 code, as implemented in `RSSM.core`: the action is divided by
max(1, |action|); deter, stoch and action each go through linear -> RMSNorm -> SiLU (`dynin`);
block g of the first hidden layer sees [its slice of deter, all three embedded inputs]; hidden
layers are block-diagonal linear -> RMSNorm -> SiLU; the gate layer is block-diagonal with 3D
outputs, block g's outputs laid out as [reset_g, candidate_g, update_g]; then
reset = sigmoid(r), cand = tanh(reset * c), update = sigmoid(u - 1) and
deter' = update * cand + (1 - update) * deter.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer.agents.dreamerv3.rssm import RSSM, imagine, initial, observe
from dreamer.core.nets import BlockLinear, GroupedInputLinear

DETER, HIDDEN, STOCH, CLASSES, EMBED, ACTION = 16, 8, 4, 3, 6, 3
N = 5
NORM_EPS = 1e-4  # `Norm`'s epsilon inside the root of the mean square
TOL = {"rtol": 1e-5, "atol": 1e-6}


def block_diag(kernel: np.ndarray) -> np.ndarray:
    """[G, I, O] blocks -> the dense [G*I, G*O] block-diagonal matrix."""
    g, i, o = kernel.shape
    dense = np.zeros((g * i, g * o), np.float64)
    for k in range(g):
        dense[k * i:(k + 1) * i, k * o:(k + 1) * o] = kernel[k]
    return dense


def rms_norm(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + NORM_EPS) * scale


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def numpy_block_gru(p: dict, deter: np.ndarray, stoch: np.ndarray, action: np.ndarray,
                    blocks: int, layers: int) -> np.ndarray:
    """One block-GRU step in float64 numpy; `p` is the RSSM's parameter dict."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    deter, stoch, action = (np.asarray(x, np.float64) for x in (deter, stoch, action))
    action = action / np.maximum(1.0, np.abs(action))
    embedded = []
    for i, x in enumerate((deter, stoch, action)):
        layer = p[f"dynin{i}"]
        dense = layer["Linear_0"]["dense"]
        embedded.append(silu(rms_norm(x @ dense["kernel"] + dense["bias"],
                                      layer["Norm_0"]["scale"])))
    shared = np.concatenate(embedded, -1)
    size = DETER // blocks
    x = np.concatenate([np.concatenate([deter[:, k * size:(k + 1) * size], shared], -1)
                        for k in range(blocks)], -1)  # [N, G * (D/G + 3H)]
    for i in range(layers):
        layer = p[f"dynhid{i}"]
        x = x @ block_diag(layer["kernel"]) + layer["bias"]
        x = silu(rms_norm(x, p[f"dynhid{i}norm"]["scale"]))
    gates = x @ block_diag(p["dyngru"]["kernel"]) + p["dyngru"]["bias"]  # [N, 3D]
    per_block = [gates[:, k * 3 * size:(k + 1) * 3 * size] for k in range(blocks)]
    reset, cand, update = (np.concatenate([b[:, j * size:(j + 1) * size] for b in per_block], -1)
                           for j in range(3))
    reset = sigmoid(reset)
    cand = np.tanh(reset * cand)
    update = sigmoid(update - 1.0)
    return update * cand + (1.0 - update) * deter


def make_rssm(blocks: int, layers: int = 1, batched: bool = False, norm: str = "rms",
              unroll: int = 1) -> RSSM:
    return RSSM(deter=DETER, hidden=HIDDEN, stoch=STOCH, classes=CLASSES, embed=EMBED,
                blocks=blocks, dyn_layers=layers, batched_blocks=batched, norm=norm,
                observe_unroll=unroll)


def random_inputs(seed: int = 0):
    """State, action (some entries above 1 in magnitude, so the action scaling matters) and
    embedding for N rows."""
    rng = np.random.default_rng(seed)
    state = {"deter": rng.normal(0, 0.8, (N, DETER)).astype(np.float32),
             "stoch": np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, (N, STOCH))]
             .reshape(N, STOCH * CLASSES)}
    action = rng.normal(0, 2.0, (N, ACTION)).astype(np.float32)
    embed = rng.normal(size=(N, EMBED)).astype(np.float32)
    return state, action, embed


def random_params(rssm: RSSM, seed: int = 0):
    """Initialised parameters plus noise on every leaf: biases start at zero and norm scales at
    one, which would hide a bias or scale applied in the wrong place."""
    state, action, embed = random_inputs()
    params = rssm.init(jax.random.PRNGKey(seed), state, action, embed, jax.random.PRNGKey(1))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("blocks,layers", [(2, 1), (4, 1), (4, 2)])
def test_block_gru_step_matches_numpy_gru(blocks, layers, batched):
    """`RSSM.core` equals a numpy block GRU built from dense block-diagonal matrices of the
    module's parameters: checks the per-block input layout, the gate layout inside each block,
    the gate formulas (update = sigmoid(u - 1)), the norms and the action scaling."""
    rssm = make_rssm(blocks, layers, batched)
    params = random_params(rssm)
    state, action, _ = random_inputs(1)
    got = rssm.apply(params, state, action, method="core")
    want = numpy_block_gru(params["params"], state["deter"], state["stoch"], action, blocks,
                           layers)
    assert got.shape == (N, DETER) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


def test_block_gru_blocks_only_mix_through_shared_inputs_and_norms():
    """The hidden and gate layers are block-diagonal: blocks exchange information only through
    the shared embedded inputs and the norms (which run over all D units). Without norms and
    with the deter-embedding layer's weights zeroed, changing one block's slice of deter changes
    only that block's slice of the next deter."""
    blocks = 4
    rssm = make_rssm(blocks, layers=2, norm="none")
    params = random_params(rssm)
    dense = params["params"]["dynin0"]["Linear_0"]["dense"]
    params["params"]["dynin0"]["Linear_0"]["dense"] = jax.tree.map(jnp.zeros_like, dense)
    state, action, _ = random_inputs(2)
    size = DETER // blocks
    changed = dict(state, deter=state["deter"].copy())
    changed["deter"][:, size:2 * size] += 1.0  # block 1 only
    before = np.asarray(rssm.apply(params, state, action, method="core"))
    after = np.asarray(rssm.apply(params, changed, action, method="core"))
    moved = np.abs(after - before).max(0).reshape(blocks, size).max(-1)
    assert moved[1] > 1e-3
    np.testing.assert_array_equal(moved[[0, 2, 3]], 0.0)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("blocks", [2, 4])
def test_grouped_input_linear_equals_block_linear_on_broadcast_input(blocks, batched):
    """`GroupedInputLinear(own, shared)` equals a `BlockLinear` with the same parameters on the
    input whose group g is [own_g, shared] (shared broadcast to every group), and both equal
    the explicit block-diagonal matrix product; also with two leading batch axes."""
    units, own_size, shared_size = 8, 12, 5
    rng = np.random.default_rng(blocks)
    own = rng.normal(size=(2, 3, own_size)).astype(np.float32)
    shared = rng.normal(size=(2, 3, shared_size)).astype(np.float32)
    grouped = GroupedInputLinear(units, blocks, batched=batched)
    params = grouped.init(jax.random.PRNGKey(0), own, shared)
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                          params)
    kernel = params["params"]["kernel"]
    assert kernel.shape == (blocks, own_size // blocks + shared_size, units // blocks)
    size = own_size // blocks
    broadcast = np.concatenate(
        [np.concatenate([own[..., k * size:(k + 1) * size], shared], -1) for k in range(blocks)],
        -1)
    got = np.asarray(grouped.apply(params, own, shared))
    block = np.asarray(BlockLinear(units, blocks, batched=batched).apply(params, broadcast))
    np.testing.assert_allclose(got, block, **TOL)
    want = (broadcast.astype(np.float64) @ block_diag(np.asarray(kernel, np.float64))
            + np.asarray(params["params"]["bias"], np.float64))
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("blocks", [2, 4])
def test_batched_blocks_gives_the_same_model(blocks):
    """`batched_blocks` only changes how the block matmuls are computed: with the same params
    and keys, filtering (`observe`, over episode starts) and imagination (`imagine`) give the
    same states and logits either way."""
    plain, batched = make_rssm(blocks, 2, False), make_rssm(blocks, 2, True)
    params = random_params(plain)["params"]
    rng = np.random.default_rng(3)
    b, t = 3, 4
    start = initial(plain, b)
    prev_action = rng.normal(0, 2.0, (b, t, ACTION)).astype(np.float32)
    embed = rng.normal(size=(b, t, EMBED)).astype(np.float32)
    is_first = np.zeros((b, t), bool)
    is_first[:, 0] = is_first[0, 2] = True
    key = jax.random.PRNGKey(4)
    outs = [observe(m, params, start, prev_action, embed, is_first, key) for m in (plain, batched)]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL),
                 outs[0], outs[1])

    def policy(state, key):
        del key
        return jnp.tanh(state["deter"][:, :ACTION])

    last = outs[0][0]
    imagined = [imagine(m, params, last, policy, 3, key) for m in (plain, batched)]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL),
                 imagined[0], imagined[1])


@pytest.mark.parametrize("unroll", [3, 8])
def test_observe_unroll_gives_the_same_filtering(unroll):
    """`observe_unroll` runs several steps per loop iteration, also when it does not divide
    the sequence length: states, posterior and prior logits and their gradients equal those
    of one step per iteration."""
    plain, unrolled = make_rssm(2, 1), make_rssm(2, 1, unroll=unroll)
    params = random_params(plain)["params"]
    rng = np.random.default_rng(5)
    b, t = 2, 7
    start = initial(plain, b)
    prev_action = rng.normal(0, 2.0, (b, t, ACTION)).astype(np.float32)
    embed = rng.normal(size=(b, t, EMBED)).astype(np.float32)
    is_first = np.zeros((b, t), bool)
    is_first[:, 0] = is_first[1, 3] = True
    key = jax.random.PRNGKey(6)

    def run(model, params):
        return observe(model, params, start, prev_action, embed, is_first, key)

    outs = [run(m, params) for m in (plain, unrolled)]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL),
                 outs[0], outs[1])
    grads = [jax.grad(lambda p, m=m: jnp.sum(run(m, p)[3] ** 2))(params)
             for m in (plain, unrolled)]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL),
                 grads[0], grads[1])
