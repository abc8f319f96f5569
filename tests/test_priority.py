"""Prioritized replay (dreamer.replay.priority): probabilities and importance weights against plain
numpy, the largest priority for new steps, write-back to exactly the sampled starts (also through
the session's write-back on several devices), eviction, exact resume, and the options it rejects."""
import types

import jax
import numpy as np
import pytest
from conftest import DEVICES
from test_replay import fill, make_step, with_output

from dreamer.config import ConfigError, load_config
from dreamer.core.parallel import DataParallel, select_devices
from dreamer.replay import Prioritized, Replay, prioritized_options

EPS = 1e-6


def prioritized(alpha=0.6, beta=0.4, **kwargs) -> Replay:
    kwargs = {"capacity": 1000, "length": 3, "chunk": 4, "seed": 0, **kwargs}
    return Replay(prioritized=Prioritized(alpha, beta, EPS), **kwargs)


def valid_starts(replay: Replay, added: dict) -> np.ndarray:
    """Stamps of the held steps whose worker's next `length - 1` steps are held too, found from
    what `fill` added (stamp i is the i-th added step), not from the replay's own bookkeeping."""
    index = {key: stamp for stamp, key in enumerate(added)}
    held = set(replay.priorities()["step_id"].tolist())
    return np.array(sorted(index[w, t] for (w, t) in added if all(
        index.get((w, t + j)) in held for j in range(replay.length))), np.int64)


def write_random_priorities(replay: Replay, rounds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        _, ref = replay.sample(8, ref=True)
        replay.update(ref, {"priority": rng.exponential(2.0, 8)})


def test_probabilities_equal_the_numpy_formula():
    alpha = 0.7
    replay = prioritized(alpha, capacity=40)
    added = fill(replay, workers=3, steps=30, seed=1)  # eviction leaves suffixes of the streams
    write_random_priorities(replay, rounds=5, seed=1)
    table = replay.priorities()
    starts = valid_starts(replay, added)
    at = np.searchsorted(table["step_id"], starts)
    assert len(set(table["priority"][at].tolist())) > 5  # the written priorities differ
    want = np.zeros(len(table["step_id"]))
    want[at] = table["priority"][at] ** alpha / np.sum(table["priority"][at] ** alpha)
    np.testing.assert_allclose(table["probability"], want, rtol=1e-12, atol=0)


def test_draw_frequencies_follow_the_probabilities():
    """Six starts with priorities 1..32: the frequencies over 60,000 draws match P(i) for
    alpha = 0.6 within 0.006, which the frequencies of alpha = 1 miss by more than 0.05."""
    replay = prioritized(alpha=0.6, length=2, chunk=8)
    for t in range(7):
        replay.add(make_step(0, t, 0, t == 0))
    batch, ref = replay.sample(64, ref=True)
    starts = batch["step_id"][:, 0]
    assert set(starts.tolist()) == set(range(6))
    replay.update(ref, {"priority": 2.0 ** starts})
    p = 2.0 ** np.arange(6) + EPS
    np.testing.assert_array_equal(replay.priorities()["priority"][:6], p)
    counts = np.zeros(6)
    for _ in range(6):
        counts += np.bincount(replay.sample(10_000)["step_id"][:, 0], minlength=6)
    freq = counts / counts.sum()
    np.testing.assert_allclose(freq, p ** 0.6 / np.sum(p ** 0.6), atol=0.006)
    assert np.abs(freq - p / p.sum()).max() > 0.05


def test_weights_equal_the_numpy_formula():
    beta = 0.5
    replay = prioritized(alpha=0.8, beta=beta)
    added = fill(replay, workers=2, steps=25, seed=2)
    write_random_priorities(replay, rounds=4, seed=2)
    table = replay.priorities()
    n = len(valid_starts(replay, added))
    batch = replay.sample(16)
    prob = table["probability"][np.searchsorted(table["step_id"], batch["step_id"][:, 0])]
    want = (n * prob) ** -beta / np.max((n * prob) ** -beta)
    assert batch["weight"].dtype == np.float32 and batch["weight"].shape == (16,)
    np.testing.assert_allclose(batch["weight"], want, rtol=1e-6)
    assert batch["weight"].max() == 1.0 and batch["weight"].min() < 0.99


def test_new_steps_get_the_largest_priority_written_so_far():
    replay = prioritized(length=2, chunk=4)
    for t in range(6):
        replay.add(make_step(0, t, 0, t == 0))
    np.testing.assert_array_equal(replay.priorities()["priority"], np.ones(6))
    _, ref = replay.sample(2, ref=True)
    replay.update(ref, {"priority": np.array([0.25, 3.0])})
    replay.add(make_step(0, 6, 0, False))
    assert replay.priorities()["priority"][-1] == 3.0 + EPS
    _, ref = replay.sample(2, ref=True)
    replay.update(ref, {"priority": np.array([0.5, 0.5])})  # lower: the largest stays
    replay.add(make_step(0, 7, 0, False))
    assert replay.priorities()["priority"][-1] == 3.0 + EPS


def test_write_back_sets_exactly_the_sampled_starts_beside_other_updates():
    replay = prioritized(length=4, chunk=3)
    for t in range(20):
        for w in range(2):
            replay.add(with_output(make_step(w, t, 0, t == 0), -1.0), worker=w)
    before = replay.priorities()
    batch, ref = replay.sample(6, ref=True)
    new = np.arange(6) * 10.0 + 5.0
    latent = np.full((6, 3, 4), 7.0, np.float32)
    replay.update(ref, {"priority": new, "latent": latent})
    after = replay.priorities()
    want = before["priority"].copy()
    for stamp, value in zip(batch["step_id"][:, 0], new):  # a start drawn twice: its last row
        want[np.searchsorted(after["step_id"], stamp)] = value + EPS
    np.testing.assert_array_equal(after["priority"], want)
    check = replay.sample(64)  # the per-step values went where they always go
    assert set(np.unique(check["latent"])) <= {-1.0, 7.0}
    with pytest.raises(ValueError, match="one priority per sampled sequence"):
        replay.update(ref, {"priority": np.ones((6, 1))})


def test_non_finite_priorities_are_skipped():
    replay = prioritized(length=2)
    for t in range(6):
        replay.add(make_step(0, t, 0, t == 0))
    _, ref = replay.sample(3, ref=True)
    replay.update(ref, {"priority": np.array([np.nan, np.inf, np.nan])})
    np.testing.assert_array_equal(replay.priorities()["priority"], np.ones(6))


def test_starts_evicted_since_sampling_are_skipped():
    replay = prioritized(capacity=8, length=2, chunk=4)
    for t in range(8):
        replay.add(make_step(0, t, 0, t == 0))
    _, ref = replay.sample(16, ref=True)
    for t in range(8, 16):  # evicts every step sampled above
        replay.add(make_step(0, t, 0, False))
    assert replay.stats["replay/evicted"] >= 8
    replay.update(ref, {"priority": np.full(16, 100.0)})
    table = replay.priorities()
    assert table["step_id"].min() >= 8
    np.testing.assert_array_equal(table["priority"], np.ones(len(table["priority"])))
    replay.add(make_step(0, 16, 0, False))  # the evicted starts did not raise the largest
    assert replay.priorities()["priority"][-1] == 1.0


def draws(replay: Replay, rounds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Prioritized draws with priority write-backs between them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        batch, ref = replay.sample(8, ref=True)
        out.append((batch["step_id"][:, 0], batch["weight"]))
        replay.update(ref, {"priority": rng.exponential(1.0, 8)})
    return out


def test_resume_continues_with_the_same_priorities_and_draws(tmp_path):
    """A replay restored from its save and state draws the same starts and weights as the
    original at the checkpoint, although the original went on past it (more steps, priorities
    and saves: a kill before the next checkpoint)."""
    kwargs = {"capacity": 60, "length": 3, "chunk": 4, "seed": 3, "directory": tmp_path}
    original = prioritized(**kwargs)
    fill(original, workers=2, steps=25, seed=3)
    draws(original, rounds=6, seed=3)
    original.save()
    state = original.state()
    table = original.priorities()
    expected = draws(original, rounds=4, seed=4)
    # The run goes on (without evicting: a save after an eviction deletes the evicted chunks'
    # files, which a resume then lacks), then it is killed.
    fill(original, workers=2, steps=4, seed=5, start=100)
    draws(original, rounds=3, seed=5)
    original.save()
    restored = prioritized(**kwargs)
    restored.load(until=state["inserts"])
    restored.load_state(state)
    for key in table:
        np.testing.assert_array_equal(restored.priorities()[key], table[key])
    got = draws(restored, rounds=4, seed=4)
    for (a, wa), (b, wb) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(wa, wb)


def test_resume_under_another_alpha_recomputes_the_scaled_priorities(tmp_path):
    original = prioritized(alpha=0.6, directory=tmp_path, length=2)
    fill(original, workers=1, steps=12)
    write_random_priorities(original, rounds=3, seed=7)
    original.save()
    state = original.state()
    restored = prioritized(alpha=1.0, directory=tmp_path, length=2)
    restored.load(until=state["inserts"])
    restored.load_state(state)
    np.testing.assert_array_equal(restored.priorities()["priority"],
                                  original.priorities()["priority"])
    fill(restored, workers=1, steps=3, start=100)  # new steps at the largest priority
    table = restored.priorities()
    valid = table["probability"] > 0
    np.testing.assert_allclose(table["probability"][valid],
                               table["priority"][valid] / table["priority"][valid].sum())


def test_saves_keep_the_newest_priority_files(tmp_path):
    replay = prioritized(directory=tmp_path)
    for i in range(5):
        fill(replay, workers=1, steps=4, start=4 * i)
        replay.save(keep=2)
    files = sorted(p.name for p in (tmp_path / "priorities").glob("*.npz"))
    assert files == [f"{16:020d}.npz", f"{20:020d}.npz"]
    assert Replay(capacity=1000, length=3, directory=tmp_path).load() == 20  # not chunk files


def test_missing_priority_file_warns_and_restarts_at_the_largest(tmp_path):
    replay = prioritized(directory=tmp_path, length=2)
    fill(replay, workers=1, steps=8)
    _, ref = replay.sample(4, ref=True)
    replay.update(ref, {"priority": np.full(4, 5.0)})
    replay.save()
    state = replay.state()
    for path in (tmp_path / "priorities").glob("*.npz"):
        path.unlink()
    restored = prioritized(directory=tmp_path, length=2)
    restored.load(until=state["inserts"])
    with pytest.warns(UserWarning, match="no priorities"):
        restored.load_state(state)
    np.testing.assert_array_equal(restored.priorities()["priority"], np.full(8, 5.0 + EPS))


def test_unsupported_options_are_config_errors():
    for kwargs, key in (({"recency": 0.5}, "replay.recency=0"),
                        ({"online": True}, "replay.online=false")):
        with pytest.raises(ConfigError, match=f"replay.prioritized=true.*{key}"):
            prioritized(**kwargs)
    for alpha, beta, eps, key in ((-1, 0.4, EPS, "priority_alpha"), (0.6, 2, EPS, "priority_beta"),
                                  (0.6, 0.4, 0.0, "priority_eps")):
        with pytest.raises(ConfigError, match=f"replay.{key}"):
            Prioritized(alpha, beta, eps)
    cfg = load_config(["debug"], {"replay.prioritized": True})  # DreamerV3: the online queue
    with pytest.raises(ConfigError, match="replay.online=false"):
        prioritized_options(cfg.replay)
    cfg = cfg.update({"replay.online": False, "replay.priority_beta": 1.0})
    assert prioritized_options(cfg.replay) == Prioritized(0.6, 1.0, 1e-6)
    assert prioritized_options(load_config(["debug"]).replay) is None


def test_prioritized_off_draws_as_before():
    """Without priorities the draws are those of the code before prioritized replay existed
    (starts recorded from it), and batches hold no `weight`; `priority` updates are dropped."""
    recorded = {
        (): [[50, 27, 30, 46, 23, 37], [42, 32, 21, 35, 35, 43], [47, 20, 45, 42, 26, 38]],
        (("recency", 0.5), ("recency_window", 6)):
            [[50, 27, 30, 51, 47, 50], [42, 32, 21, 49, 49, 51], [47, 20, 45, 50, 48, 50]],
        (("online", True),):
            [[22, 30, 32, 40, 42, 49], [51, 50, 27, 30, 46, 23], [37, 42, 32, 21, 35, 35]],
    }
    for options, want in recorded.items():
        replay = Replay(capacity=40, length=5, chunk=4, seed=7, **dict(options))
        fill(replay, workers=2, steps=30, seed=7)
        got = []
        for _ in range(3):
            batch, ref = replay.sample(6, ref=True)
            assert "weight" not in batch
            replay.update(ref, {"priority": np.ones(6)})
            got.append(batch["step_id"][:, 0].tolist())
        assert got == want, options
    with pytest.raises(ValueError, match="without priorities"):
        replay.priorities()


@pytest.mark.parametrize("backend", ["pmap", "shard_map"])
def test_priorities_written_back_through_the_session_from_several_devices(backend):
    """An update's `priority` rows [N, B/N] on N devices reach the starts of their own host
    rows through `ContextWriteback` and `DataParallel.local_rows`, as the learner passes them."""
    from dreamer.run.session import ContextWriteback

    def step(state, batch, key):  # each sequence's priority: its summed reward
        return state, {"loss": state}, {"priority": batch["reward"].sum(-1)}

    parallel = DataParallel(step, select_devices(DEVICES), backend, donate=False)
    replay = prioritized(length=4, chunk=4)
    fill(replay, workers=2, steps=20, seed=6)
    learner = types.SimpleNamespace(local_rows=parallel.local_rows)
    writeback = ContextWriteback(replay, learner)
    batch, ref = replay.sample(2 * DEVICES, ref=True)
    _, _, rows = parallel(parallel.replicate(np.float32(0)),
                          parallel.shard({"reward": batch["reward"]}), jax.random.key(0))
    writeback.hold(ref, rows)
    assert replay.priorities()["priority"].max() == 1.0  # held until the next update or flush
    writeback.flush()
    table = replay.priorities()
    got = table["priority"][np.searchsorted(table["step_id"], batch["step_id"][:, 0])]
    rewards = batch["reward"].sum(-1).astype(np.float64)
    last = {s: r for s, r in zip(batch["step_id"][:, 0], rewards)}  # a start drawn twice: last
    np.testing.assert_allclose(got, [last[s] + EPS for s in batch["step_id"][:, 0]], rtol=1e-6)
