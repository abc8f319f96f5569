"""The actor loop as Ray actors on a local Ray instance (2 CPUs)."""
import time

import pytest

from dreamer.config import load_config
from dreamer.run import actor_pools

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_ray_actors_deliver_steps_and_are_restarted(tmp_path):
    cfg = load_config(["debug"], {"logdir": str(tmp_path), "actors.num": 1,
                                  "actors.ray_address": "local"})
    pool = actor_pools.make_pool(cfg)
    assert isinstance(pool, actor_pools.RayActorPool)
    try:
        deadline = time.time() + 180
        streams, reports = set(), []
        while not reports and time.time() < deadline:
            for kind, message in pool.poll(timeout=0.5):
                if kind == "steps":
                    streams.add(message.stream)
                    assert message.data["image"].shape[1:] == (16, 16, 3)
                else:
                    reports.append(message)
        assert "a0.0.0.0" in streams and reports[0].frames > 0
        ray.kill(pool.actors[0], no_restart=True)
        while pool.check() == 0 and time.time() < deadline:
            time.sleep(0.2)
        assert pool.restarts == 1 and pool.incarnations == [1]
        while "a0.1.0.0" not in streams and time.time() < deadline:
            streams |= {m[1].stream for m in pool.poll(timeout=0.5) if m[0] == "steps"}
        assert "a0.1.0.0" in streams
    finally:
        start = time.time()
        pool.close()
    assert time.time() - start < 15
