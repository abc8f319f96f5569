"""Tests for dreamer.replay: sequences stay within one stream, eviction, recency, persistence."""

import os

import numpy as np
import pytest

from dreamer.replay import Replay, stored_stamps


def make_step(worker: int, t: int, episode: int, first: bool) -> dict[str, np.ndarray]:
    """A step whose `vector` encodes (worker, index in the worker's stream, episode id)."""
    return {
        "image": np.full((2, 2, 1), (7 * worker + t) % 256, np.uint8),
        "vector": np.array([worker, t, episode], np.float32),
        "action": np.eye(3, dtype=np.float32)[t % 3],
        "reward": np.float32(t / 10),
        "is_first": np.bool_(first),
        "is_last": np.bool_(False),
        "is_terminal": np.bool_(False),
    }


def fill(replay: Replay, workers: int, steps: int, seed: int = 0,
         start: int = 0) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """Interleaves `steps` steps of each worker in a random order with random episode lengths.

    Returns the added steps by (worker, index in the worker's stream).
    """
    added = {}
    rng = np.random.default_rng(seed)
    t = [start] * workers
    left = [0] * workers
    episode = [0] * workers
    order = np.repeat(np.arange(workers), steps)
    rng.shuffle(order)
    for w in order:
        first = left[w] == 0
        if first:
            left[w] = int(rng.integers(1, 9))
            episode[w] += 1
        added[int(w), t[w]] = make_step(int(w), t[w], 100 * int(w) + episode[w], first)
        replay.add(added[int(w), t[w]], worker=int(w))
        t[w] += 1
        left[w] -= 1
    return added


def check_windows(batch: dict[str, np.ndarray]) -> None:
    """Each window comes from one worker, has consecutive indices, and marks every new episode."""
    vec = batch["vector"]
    assert (vec[:, :, 0] == vec[:, :1, 0]).all()
    assert (np.diff(vec[:, :, 1], axis=1) == 1).all()
    new_episode = vec[:, 1:, 2] != vec[:, :-1, 2]
    assert batch["is_first"][:, 1:][new_episode].all()
    w, t = vec[..., 0].astype(int), vec[..., 1].astype(int)
    assert (batch["image"][..., 0, 0, 0] == (7 * w + t) % 256).all()
    assert (batch["action"].argmax(-1) == t % 3).all()


def starts(batch: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    return [(int(w), int(t)) for w, t in batch["vector"][:, 0, :2]]


def test_shapes_and_dtypes():
    replay = Replay(capacity=100, length=5, chunk=4)
    fill(replay, workers=2, steps=10)
    batch = replay.sample(3)
    expected = {"image": ((2, 2, 1), np.uint8), "vector": ((3,), np.float32),
                "action": ((3,), np.float32), "reward": ((), np.float32),
                "is_first": ((), np.bool_), "is_last": ((), np.bool_),
                "is_terminal": ((), np.bool_), "step_id": ((), np.int32)}
    assert batch.keys() == expected.keys()
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == (3, 5, *shape), key
        assert batch[key].dtype == dtype, key
    assert len(replay) == 20
    assert {"replay/size", "replay/chunks", "replay/inserts", "replay/samples"} <= set(
        replay.stats)
    assert replay.stats["replay/samples"] == 3


def test_windows_stay_in_one_stream_and_mark_episode_starts():
    replay = Replay(capacity=1000, length=7, chunk=4)
    fill(replay, workers=3, steps=40, seed=1)
    for _ in range(20):
        check_windows(replay.sample(16))


def test_sample_covers_all_starts_across_chunks():
    replay = Replay(capacity=1000, length=6, chunk=4)
    fill(replay, workers=2, steps=9)
    seen = {s for _ in range(50) for s in starts(replay.sample(16))}
    assert seen == {(w, t) for w in range(2) for t in range(9 - 6 + 1)}


def test_nbytes_counts_every_preallocated_step_and_its_stamp_once():
    replay = Replay(capacity=1000, length=4, chunk=8)
    fill(replay, workers=2, steps=5)  # one open chunk of 8 steps per worker
    step = make_step(0, 0, 0, True)
    per_step = sum(np.asarray(v).nbytes for v in step.values()) + np.dtype(np.int64).itemsize
    assert replay.nbytes == 2 * 8 * per_step


def test_too_little_data_names_the_length():
    replay = Replay(capacity=100, length=8, chunk=4)
    with pytest.raises(ValueError, match="8 consecutive steps"):
        replay.sample(2)
    fill(replay, workers=3, steps=7)
    with pytest.raises(ValueError, match="8 consecutive steps.*holds 7"):
        replay.sample(2)


def test_capacity_evicts_oldest_chunks():
    replay = Replay(capacity=24, length=3, chunk=4)
    fill(replay, workers=2, steps=50, seed=2)
    assert 24 - 4 < len(replay) <= 24 + 2 * 4
    stats = replay.stats
    assert stats["replay/size"] == len(replay)
    assert stats["replay/evicted"] == 100 - len(replay)
    seen = set()
    for _ in range(30):
        batch = replay.sample(16)
        check_windows(batch)
        seen |= {(int(w), int(t)) for w, t in batch["vector"][:, :, :2].reshape(-1, 2)}
    # Per worker, the kept steps are a suffix of its stream: eviction drops the oldest chunks.
    for w in range(2):
        kept = sorted(t for v, t in seen if v == w)
        assert kept[-1] == 49 and kept == list(range(kept[0], 50))
    assert len(seen) == len(replay)


def test_recency_one_draws_only_newest_starts():
    length, window = 3, 5
    replay = Replay(capacity=1000, length=length, chunk=4, recency=1.0, recency_window=window)
    for t in range(30):  # round robin: step t of worker w is the (2 t + w)-th insert
        for w in range(2):
            replay.add(make_step(w, t, 0, t == 0), worker=w)
    valid = [(w, t) for t in range(30 - length + 1) for w in range(2)]
    newest = set(sorted(valid, key=lambda s: 2 * s[1] + s[0])[-window:])
    seen = {s for _ in range(40) for s in starts(replay.sample(8))}
    assert seen == newest


def test_recency_skips_streams_too_short_to_sample():
    replay = Replay(capacity=1000, length=4, chunk=4, recency=1.0, recency_window=3)
    for t in range(10):
        replay.add(make_step(0, t, 0, t == 0), worker=0)
    for t in range(2):
        replay.add(make_step(1, t, 0, t == 0), worker=1)
    seen = {s for _ in range(20) for s in starts(replay.sample(8))}
    assert seen == {(0, 4), (0, 5), (0, 6)}


def test_recency_fraction_is_rounded():
    replay = Replay(capacity=1000, length=2, chunk=8, recency=0.3, recency_window=4)
    fill(replay, workers=1, steps=200)
    newest = {(0, t) for t in range(195, 199)}
    old = 0
    for _ in range(30):
        drawn = starts(replay.sample(10))
        assert set(drawn[-3:]) <= newest  # round(0.3 * 10) = 3 recent rows, last in the batch
        old += sum(s not in newest for s in drawn[:-3])
    assert old > 150


def test_same_seed_same_samples():
    def draws(seed):
        replay = Replay(capacity=30, length=4, chunk=4, recency=0.5, seed=seed)
        fill(replay, workers=3, steps=20, seed=3)
        return [replay.sample(6)["vector"] for _ in range(5)]

    for a, b in zip(draws(1), draws(1)):
        np.testing.assert_array_equal(a, b)
    assert any((a != b).any() for a, b in zip(draws(1), draws(2)))


def test_rejects_mismatched_steps():
    replay = Replay(capacity=10, length=2)
    replay.add(make_step(0, 0, 0, True))
    step = make_step(0, 1, 0, False)
    for bad in ({k: v for k, v in step.items() if k != "reward"},
                {**step, "vector": np.zeros(4, np.float32)},
                {**step, "_stamp": np.int64(0)}, {**step, "step_id": np.int32(0)}):
        with pytest.raises(ValueError, match="differ from the stored"):
            replay.add(bad)
    assert len(replay) == 1


def stored(directory) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """The steps a replay loaded from `directory` holds, by (worker, index), via length-1 draws."""
    replay = Replay(capacity=10_000, length=1, directory=directory, seed=5)
    replay.load()
    batch = replay.sample(50 * len(replay))  # covers every step with overwhelming probability
    steps = {}
    for b, (w, t, _) in enumerate(batch["vector"][:, 0]):
        steps[int(w), int(t)] = {k: v[b, 0] for k, v in batch.items() if k != "step_id"}
    assert len(steps) == len(replay)
    return steps


def assert_same_steps(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for index, step in a.items():
        for key, value in step.items():
            assert value.dtype == b[index][key].dtype
            np.testing.assert_array_equal(value, b[index][key])


def test_save_load_round_trip(tmp_path):
    replay = Replay(capacity=1000, length=5, directory=tmp_path, chunk=4, recency=0.25, seed=4)
    added = fill(replay, workers=3, steps=13, seed=4)
    assert replay.save() == 3 * 4  # per worker: 3 full chunks and 1 partial
    loaded = Replay(capacity=1000, length=5, directory=tmp_path, chunk=4, recency=0.25, seed=4)
    assert loaded.load() == 39
    assert len(loaded) == len(replay) == 39
    assert loaded.stats["replay/chunks"] == replay.stats["replay/chunks"] == 12
    for _ in range(5):
        a, b = replay.sample(8), loaded.sample(8)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert_same_steps(stored(tmp_path), added)
    # After a load every worker writes a new stream, never joined to the loaded ones.
    fill(loaded, workers=3, steps=6, seed=5, start=100)
    for _ in range(20):
        check_windows(loaded.sample(16))


def test_step_ids_are_the_insert_indices_of_the_steps_also_after_a_load(tmp_path):
    replay = Replay(capacity=1000, length=5, directory=tmp_path, chunk=4, seed=2)
    added = fill(replay, workers=3, steps=13, seed=2)
    stamp = {index: i for i, index in enumerate(added)}  # fill's insert order

    def check(batch):
        want = [[stamp[int(w), int(t)] for w, t in row] for row in batch["vector"][..., :2]]
        np.testing.assert_array_equal(batch["step_id"], want)
        assert batch["step_id"].dtype == np.int32
        assert (np.diff(batch["step_id"], axis=1) > 0).all()

    for _ in range(5):
        check(replay.sample(16))
    replay.save()
    loaded = Replay(capacity=1000, length=5, directory=tmp_path, chunk=4, seed=2)
    loaded.load()
    for _ in range(5):
        check(loaded.sample(16))
    np.testing.assert_array_equal(np.sort(stored_stamps(tmp_path)), np.arange(len(added)))
    # One worker: the steps of a sequence have consecutive ids.
    single = Replay(capacity=1000, length=5, chunk=4)
    fill(single, workers=1, steps=20)
    ids = single.sample(16)["step_id"]
    np.testing.assert_array_equal(ids, ids[:, :1] + np.arange(5))


def test_steps_added_after_load_are_the_most_recent(tmp_path):
    kwargs = {"capacity": 1000, "length": 2, "directory": tmp_path, "chunk": 4,
              "recency": 1.0, "recency_window": 3}
    replay = Replay(**kwargs)
    fill(replay, workers=1, steps=10)
    replay.save()
    loaded = Replay(**kwargs)
    loaded.load()
    fill(loaded, workers=1, steps=5, start=100)
    seen = {s for _ in range(20) for s in starts(loaded.sample(8))}
    assert seen == {(0, 101), (0, 102), (0, 103)}


def test_load_keeps_newest_capacity_steps(tmp_path):
    replay = Replay(capacity=1000, length=2, directory=tmp_path, chunk=4)
    fill(replay, workers=1, steps=20)
    replay.save()
    loaded = Replay(capacity=10, length=2, directory=tmp_path, chunk=4)
    assert loaded.load() == 8
    assert {int(t) for t in loaded.sample(400)["vector"][:, :, 1].ravel()} == set(range(12, 20))


def test_save_is_incremental(tmp_path):
    replay = Replay(capacity=1000, length=3, directory=tmp_path, chunk=4)
    added = fill(replay, workers=2, steps=6)  # per worker: one full chunk and a partial one of 2 steps
    assert replay.save() == 4
    sealed = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*-4.npz")}
    assert len(sealed) == 2
    assert replay.save() == 0
    added |= {(0, t): make_step(0, t, 9, t == 6) for t in range(6, 9)}
    replay.add(added[0, 6], worker=0)  # grows worker 0's partial chunk
    assert replay.save() == 1
    replay.add(added[0, 7], worker=0)
    replay.add(added[0, 8], worker=0)  # fills it and opens a new chunk
    assert replay.save() == 2
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*-4.npz")
            if p.name in sealed} == sealed
    assert len(list(tmp_path.glob("*.npz"))) == 5  # the replaced partial files are gone
    assert not list(tmp_path.glob("*.tmp"))
    assert_same_steps(stored(tmp_path), added)


def test_load_does_not_join_across_a_missing_chunk(tmp_path):
    replay = Replay(capacity=1000, length=3, directory=tmp_path, chunk=4)
    fill(replay, workers=1, steps=16)
    replay.save()
    files = sorted(tmp_path.glob("*.npz"))
    files[1].unlink()  # steps 4..7
    loaded = Replay(capacity=1000, length=3, directory=tmp_path, chunk=4)
    assert loaded.load() == 12
    assert loaded.stats["replay/streams"] == 2
    for _ in range(20):
        check_windows(loaded.sample(16))


def test_eviction_removes_stale_partial_file(tmp_path):
    replay = Replay(capacity=4, length=2, directory=tmp_path, chunk=4)
    fill(replay, workers=1, steps=2)
    replay.save()  # a partial file of 2 steps
    fill(replay, workers=1, steps=4, start=2)  # fills that chunk, evicts it unrewritten
    assert replay.save() == 1  # the successor chunk, naming the evicted one as predecessor
    loaded = Replay(capacity=100, length=2, directory=tmp_path, chunk=4)
    assert loaded.load() == len(replay)
    for _ in range(10):
        check_windows(loaded.sample(8))


def test_load_ignores_temp_files_and_reports_corrupt_ones(tmp_path):
    replay = Replay(capacity=100, length=2, directory=tmp_path, chunk=4)
    fill(replay, workers=1, steps=6)
    replay.save()
    (tmp_path / (min(os.listdir(tmp_path)) + ".tmp")).write_bytes(b"half written")
    assert Replay(capacity=100, length=2, directory=tmp_path).load() == 6
    path = max(tmp_path.glob("*.npz"))
    intact = path.read_bytes()
    for broken in (intact[:40], b"not a zip archive", intact[:60] + bytes(40) + intact[100:]):
        path.write_bytes(broken)
        with pytest.raises(ValueError, match=f"corrupt replay chunk .*{path.name}.*delete or"):
            Replay(capacity=100, length=2, directory=tmp_path).load()


def test_load_of_missing_directory_is_empty(tmp_path):
    assert Replay(capacity=10, length=2, directory=tmp_path / "none").load() == 0
    with pytest.raises(ValueError, match="directory"):
        Replay(capacity=10, length=2).save()


def test_load_until_drops_steps_saved_after_the_checkpoint(tmp_path):
    """Steps saved after the checkpoint's insert count are dropped from memory and from disk, so
    a later resume sees exactly the checkpoint's replay and new steps take over their stamps."""
    replay = Replay(capacity=1000, length=2, directory=tmp_path, chunk=4, seed=0)
    fill(replay, workers=2, steps=5)
    replay.save()
    replay.sample(3)
    state = replay.state()
    assert state["inserts"] == 10
    fill(replay, workers=2, steps=3, start=100)  # then a kill before the checkpoint
    replay.save()
    loaded = Replay(capacity=1000, length=2, directory=tmp_path, chunk=4, seed=0)
    assert loaded.load(until=state["inserts"]) == 10
    loaded.load_state(state)
    stamps = sorted(int(s) for p in tmp_path.glob("*.npz") for s in np.load(p)["_stamp"])
    assert stamps == list(range(10))
    fill(loaded, workers=1, steps=4, start=200)
    loaded.save()
    again = Replay(capacity=1000, length=2, directory=tmp_path, chunk=4, seed=0)
    assert again.load() == 14
    stamps = sorted(int(s) for p in tmp_path.glob("*.npz") for s in np.load(p)["_stamp"])
    assert stamps == list(range(14))
    # The sampling generator continues where the state was taken.
    assert loaded.state()["rng"] == state["rng"] != Replay(1000, 2, seed=0).state()["rng"]


def test_replay_memory_benchmark_counts_bytes_per_step():
    from dreamer.bench.benchmark import replay_memory

    out = replay_memory(capacity=1024, size=(16, 16), chunk=128)
    step_bytes = 16 * 16 * 3 + 6 * 4 + 4 + 3 + 8  # image, action, reward, flags, stamp
    assert step_bytes <= out["bytes_per_step_arrays"] <= step_bytes * 1.2
    assert out["steps_stored"] <= 1024 and 0 < out["bytes_per_step_disk"] < step_bytes


def test_save_deletes_the_files_of_evicted_chunks(tmp_path):
    replay = Replay(capacity=8, length=2, directory=tmp_path, chunk=4)
    for _ in range(10):
        fill(replay, workers=1, steps=4)
        replay.save()
    assert len(replay) <= 8 and replay.stats["replay/evicted"] > 0
    stamps = sorted(int(s) for p in tmp_path.glob("*.npz") for s in np.load(p)["_stamp"])
    assert stamps == list(range(40 - len(replay), 40))  # exactly the steps held
    loaded = Replay(capacity=8, length=2, directory=tmp_path, chunk=4)
    assert loaded.load() == len(replay)


# ------------------------------------------------------------------------------ policy outputs


def with_output(step: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    """A step that also carries a per-step policy output (e.g. a stored model state)."""
    return {**step, "latent": np.full(4, value, np.float32)}


def test_update_rewrites_the_sampled_steps_only():
    """`update` writes values into the last n steps of each sampled sequence, across chunk
    boundaries, and leaves every other step as the policy stored it."""
    replay = Replay(capacity=1000, length=5, chunk=4, seed=3)
    for t in range(30):
        for w in range(2):
            replay.add(with_output(make_step(w, t, 0, t == 0), -1.0), worker=w)
    batch, ref = replay.sample(6, ref=True)
    assert (batch["latent"] == -1.0).all()
    w, t = batch["vector"][..., 0].astype(int), batch["vector"][..., 1].astype(int)
    new = (100 * w + t)[..., None].astype(np.float32) + np.zeros(4, np.float32)
    replay.update(ref, {"latent": new[:, 1:]})  # the first step is the context: kept
    assert replay.stats["replay/updated"] == 6
    written = {(a, b) for a, b in zip(w[:, 1:].ravel(), t[:, 1:].ravel())}
    for _ in range(40):
        check = replay.sample(8)
        cw, ct = check["vector"][..., 0].astype(int), check["vector"][..., 1].astype(int)
        for a, b, latent in zip(cw.ravel(), ct.ravel(), check["latent"].reshape(-1, 4)):
            want = 100 * a + b if (a, b) in written else -1.0
            np.testing.assert_array_equal(latent, want)


def test_update_rows_limit_the_write_to_the_marked_sequences():
    """With `update_rows`, unmarked sequences write nothing, even where they overlap a marked
    one and come after it in the batch."""
    replay = Replay(capacity=1000, length=5, chunk=4, seed=3)
    for t in range(12):
        replay.add(with_output(make_step(0, t, 0, t == 0), -1.0))
    batch, ref = replay.sample(16, ref=True)  # 8 starts: sequences overlap
    t = batch["vector"][..., 1].astype(int)
    marked = np.arange(16) % 2 == 0
    new = np.where(marked[:, None], t, -2).astype(np.float32)[..., None] + np.zeros(4, np.float32)
    replay.update(ref, {"latent": new, "update_rows": marked})
    written = set(t[marked].ravel())
    for _ in range(20):
        check = replay.sample(8)
        for b, latent in zip(check["vector"][..., 1].astype(int).ravel(),
                             check["latent"].reshape(-1, 4)):
            np.testing.assert_array_equal(latent, b if b in written else -1.0)


def test_update_rejects_unknown_keys_and_long_rows():
    replay = Replay(capacity=100, length=3, chunk=4)
    fill(replay, workers=1, steps=10)
    _, ref = replay.sample(2, ref=True)
    with pytest.raises(KeyError, match="latent"):
        replay.update(ref, {"latent": np.zeros((2, 2, 4), np.float32)})
    with pytest.raises(ValueError, match="4 steps per sequence"):
        replay.update(ref, {"reward": np.zeros((2, 4), np.float32)})


def test_online_queue_trains_each_new_sequence_once_first():
    """With `online`, every stream's consecutive, non-overlapping sequences are drawn first, in
    order of completion, once each; then draws are uniform. Reports (own `rng`) leave the
    queue alone."""
    length = 4
    replay = Replay(capacity=1000, length=length, chunk=3, online=True, seed=0)
    for t in range(12):
        for w in range(2):
            replay.add(make_step(w, t, 0, t == 0), worker=w)
    # 3 sequences per worker completed at t = 3, 7, 11.
    report = replay.sample(6, rng=np.random.default_rng(0))
    assert replay.stats["replay/online"] == 0 and report["vector"].shape[0] == 6
    first = starts(replay.sample(4))
    assert first == [(0, 0), (1, 0), (0, 4), (1, 4)]
    second = starts(replay.sample(4))
    assert second[:2] == [(0, 8), (1, 8)]  # the rest of the queue, then uniform draws
    assert replay.stats["replay/online"] == 6
    replay.add(make_step(0, 12, 0, False), worker=0)
    replay.sample(3)  # nothing new is complete: all three uniform
    assert replay.stats["replay/online"] == 6


def test_online_queue_and_outputs_survive_save_and_load(tmp_path):
    replay = Replay(capacity=1000, length=3, directory=tmp_path, chunk=4, online=True, seed=1)
    for t in range(9):
        replay.add(with_output(make_step(0, t, 0, t == 0), float(t)), worker=0)
    assert starts(replay.sample(1)) == [(0, 0)]  # queued: (0, 0), (0, 3), (0, 6)
    replay.save()
    state = replay.state()
    restored = Replay(capacity=1000, length=3, directory=tmp_path, chunk=4, online=True, seed=1)
    restored.load(until=state["inserts"])
    restored.load_state(state)
    expected = replay.sample(2)
    got = restored.sample(2)
    assert starts(got) == starts(expected) == [(0, 3), (0, 6)]
    np.testing.assert_array_equal(got["latent"], expected["latent"])
    np.testing.assert_array_equal(got["latent"][:, :, 0], got["vector"][:, :, 1])


# ------------------------------------------------------------------------------ storage


def test_steps_map_stream_positions_to_chunk_slices():
    """A stream's positions span its chunks; eviction drops whole sealed chunks, oldest first,
    and reports the steps dropped."""
    from dreamer.replay.store import Steps

    steps = Steps(capacity=6, chunk=4)
    for t in range(10):
        stream = steps.add(make_step(0, t, 0, t == 0), worker=0)
    assert [(i, k, offset) for _, i, k, offset in stream.pieces(2, 5)] == [(2, 4, 0), (0, 3, 2)]
    assert stream.stamp_at(5) == 5 and stream.holds(0)
    assert steps.evict() == 4 and steps.size == 6 and stream.held == 6
    assert not stream.holds(3) and stream.holds(4) and stream.stamp_at(4) == 4
    assert steps.evict() == 0  # 6 steps left: at capacity
