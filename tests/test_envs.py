"""Tests for dreamer.envs: the step-dict contract of every suite and the generic wrappers."""

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dreamer.envs import MAKERS, SUITES, EnvError, Space, make_env
from dreamer.envs.base import rescale_action

os.environ.setdefault("MUJOCO_GL", "egl")

FLAGS = ("is_first", "is_last", "is_terminal")


def config(task, **overrides):
    """An ``env`` config section as the launcher passes it, with small images."""
    cfg = {
        "task": task,
        "obs": "image",
        "size": (16, 16),
        "action_repeat": 1,
        "time_limit": 0,
        "gray": False,
        "sticky": True,
        "noops": 30,
        "lives": False,
        "opponent": "random",
        "gym_kwargs": (),
    }
    return types.SimpleNamespace(**(cfg | overrides))


def random_action(space, rng):
    if space.discrete:
        return np.int32(rng.integers(space.n))
    return rng.uniform(-1, 1, space.shape).astype(np.float32)


def check_step(out, env, first):
    """Keys, shapes and strict dtypes of one step dict."""
    assert set(out) == set(env.obs_space) | {"reward", *FLAGS}
    for key, space in env.obs_space.items():
        assert out[key].dtype == space.dtype, key
        assert out[key].shape == space.shape, key
    assert out["reward"].dtype == np.float32
    for flag in FLAGS:
        assert isinstance(out[flag], np.bool_), flag
    assert bool(out["is_first"]) == first
    if first:
        assert out["reward"] == 0 and not out["is_last"] and not out["is_terminal"]
    if out["is_terminal"]:
        assert out["is_last"]


def rollout(env, steps, seed=0):
    """Steps with random actions until ``is_last`` or ``steps``; checks every step dict."""
    rng = np.random.default_rng(seed)
    outs = [env.reset()]
    check_step(outs[0], env, first=True)
    for _ in range(steps):
        outs.append(env.step(random_action(env.act_space, rng)))
        check_step(outs[-1], env, first=False)
        if outs[-1]["is_last"]:
            break
    return outs


def episode_length(env, seed=0):
    outs = rollout(env, 10_000, seed)
    assert outs[-1]["is_last"]
    return len(outs) - 1, outs[-1]


# ---------------------------------------------------------------- spaces and shapes per suite


def test_space_properties():
    discrete = Space(np.int32, (), 0, 5)
    assert discrete.discrete and discrete.n == 6
    continuous = Space(np.float32, (3,), -1.0, 1.0)
    assert not continuous.discrete
    with pytest.raises(ValueError, match="not a bounded discrete space"):
        _ = continuous.n


@pytest.mark.parametrize("task", ["builtin_catch", "builtin_reach"])
@pytest.mark.parametrize("obs", ["image", "vector", "both"])
def test_builtin_shapes(task, obs):
    env = make_env(config(task, obs=obs, size=(12, 20)), seed=0)
    if obs != "vector":
        assert env.obs_space["image"] == Space(np.uint8, (12, 20, 3), 0, 255)
    assert ("vector" in env.obs_space) == (obs != "image")
    rollout(env, 100)
    assert env.act_space == (
        Space(np.int32, (), 0, 2) if task == "builtin_catch" else Space(np.float32, (2,), -1, 1)
    )


def test_builtin_images_show_bright_objects_on_dark_background():
    image = make_env(config("builtin_catch", size=(64, 64)), seed=0).reset()["image"]
    assert np.median(image) < 64 and image.max() >= 200
    image = make_env(config("builtin_reach", size=(8, 8)), seed=0).reset()["image"]
    red = (image[..., 0] > 200) & (image[..., 1] < 100)
    assert red.any(), "the point stays visible at 8x8"
    with pytest.raises(EnvError, match="8x8"):
        make_env(config("builtin_catch", size=(4, 4)), seed=0)


@pytest.mark.parametrize("obs", ["image", "vector"])
def test_dmc_shapes(obs):
    env = make_env(config("dmc_cartpole_balance", obs=obs, size=(64, 64)), seed=0)
    assert env.act_space == Space(np.float32, (1,), -1.0, 1.0)
    if obs == "image":
        assert env.obs_space == {"image": Space(np.uint8, (64, 64, 3), 0, 255)}
    else:
        # cartpole: position (cos, sin, x) and velocity (2).
        assert env.obs_space == {"vector": Space(np.float32, (5,))}
    outs = rollout(env, 3)
    if obs == "image":
        assert outs[-1]["image"].std() > 0
    env.close()


def test_dmc_domain_with_underscores():
    env = make_env(config("dmc_ball_in_cup_catch", obs="vector"), seed=0)
    assert env.obs_space["vector"].shape == (8,) and env.act_space.shape == (2,)
    rollout(env, 2)


def test_gym_discrete_shapes():
    env = make_env(config("gym_CartPole-v1", obs="vector"), seed=0)
    assert env.act_space == Space(np.int32, (), 0, 1)
    assert env.obs_space == {"vector": Space(np.float32, (4,))}
    rollout(env, 20)


def test_gym_discrete_observations_are_one_hot():
    env = make_env(config("gym_FrozenLake-v1", obs="vector"), seed=0)
    assert env.obs_space == {"vector": Space(np.float32, (16,))}
    outs = rollout(env, 20)
    assert all(o["vector"].sum() == 1.0 for o in outs)
    assert np.argmax(outs[0]["vector"]) == 0  # FrozenLake starts in the top-left cell
    env.close()


def test_gym_kwargs_reach_gymnasium_make():
    """The deterministic 8x8 lake: moving right from the start always arrives one cell right
    (the slippery default slides sideways a third of the time each), and episodes keep the
    registered 200-step limit."""
    env = make_env(config("gym_FrozenLake8x8-v1", obs="vector",
                          gym_kwargs=("is_slippery=false",)), seed=0)
    assert env.obs_space["vector"].shape == (64,)
    right = 2
    for _ in range(20):
        env.reset()
        assert np.argmax(env.step(right)["vector"]) == 1
    up = 3
    env.reset()
    outs = [env.step(up) for _ in range(200)]  # stays in the top-left cell until the limit
    assert [bool(o["is_last"]) for o in outs] == [False] * 199 + [True]
    assert not outs[-1]["is_terminal"]
    env.close()


@pytest.mark.parametrize("kwargs,task,match", [
    (("slippery=false",), "gym_FrozenLake8x8-v1", r"does not take env.gym_kwargs.*slippery"),
    (("render_mode=human",), "gym_FrozenLake8x8-v1", r"render_mode, which env.obs decides"),
    (("is_slippery=false",), "builtin_catch", r"gym_\* tasks only; the task is builtin_catch"),
])
def test_bad_gym_kwargs_are_clear_errors(kwargs, task, match):
    with pytest.raises(EnvError, match=match):
        make_env(config(task, obs="vector", gym_kwargs=kwargs), seed=0)


@pytest.mark.parametrize("obs", ["vector", "both"])
def test_gym_continuous_shapes(obs):
    # A MuJoCo task: classic-control rendering would need pygame.
    env = make_env(config("gym_InvertedPendulum-v5", obs=obs, size=(24, 32)), seed=0)
    assert env.act_space == Space(np.float32, (1,), -1.0, 1.0)
    if obs == "both":
        assert env.obs_space["image"].shape == (24, 32, 3)
    outs = rollout(env, 3)
    if obs == "both":
        assert outs[-1]["image"].std() > 0
    env.close()


def atari_env(**overrides):
    ale_py = pytest.importorskip("ale_py", reason="ale-py is not installed")
    from ale_py import roms

    game = overrides.pop("game", "pong")
    if roms.get_rom_path(game) is None:
        pytest.skip(f"the {game} ROM is not available to ale-py")
    del ale_py
    return make_env(config(f"atari_{game}", **overrides), seed=0)


@pytest.mark.parametrize("gray", [False, True])
def test_atari_shapes(gray):
    env = atari_env(gray=gray, size=(32, 32), action_repeat=4, noops=5)
    assert env.obs_space == {"image": Space(np.uint8, (32, 32, 1 if gray else 3), 0, 255)}
    assert env.act_space == Space(np.int32, (), 0, 5)  # Pong's minimal action set
    outs = rollout(env, 5)
    assert outs[-1]["image"].std() > 0
    env.close()


def test_atari_life_loss_is_terminal_and_continues_the_game():
    env = atari_env(game="breakout", lives=True, action_repeat=4, size=(16, 16), noops=0)
    length, last = episode_length(env)
    assert last["is_terminal"] and length < 2000
    ale = env._ale
    lives = ale.lives()
    assert 0 < lives < 5
    env.reset()
    assert ale.lives() == lives, "a life-loss episode does not restart the game"
    env.close()


def test_minatar_observations_are_the_grid_and_actions_the_minimal_set():
    from dreamer.envs.minatar import grid_image

    env = make_env(config("minatar_breakout", obs="both", size=(24, 32)), seed=3)
    assert env.obs_space == {"image": Space(np.uint8, (24, 32, 4), 0, 255),
                             "vector": Space(np.float32, (400,), 0, 1)}
    assert env.act_space == Space(np.int32, (), 0, 2)  # Breakout: no-op, left, right
    first = env.reset()
    state = env._env.state()
    np.testing.assert_array_equal(first["vector"], state.reshape(-1).astype(np.float32))
    # Each cell a 2 x 2 block (floor(24 / 10)), centred: rows 2..21, columns 6..25.
    image = first["image"]
    assert image.dtype == np.uint8 and set(np.unique(image)) <= {0, 255}
    np.testing.assert_array_equal(image[2:22, 6:26], np.kron(state, np.ones((2, 2, 1))) * 255)
    assert image[:2].sum() == image[22:].sum() == image[:, :6].sum() == image[:, 26:].sum() == 0
    np.testing.assert_array_equal(grid_image(state, (16, 16))[3:13, 3:13], state * 255)
    # Action 1 is MinAtar's 'left' (index 1 of its six): the paddle moves one cell left.
    env._env.sticky_action_prob = 0.0
    paddle = lambda: int(np.argmax(env._env.state()[9, :, 0]))
    start = paddle()
    env.step(np.int32(1))
    assert paddle() == max(start - 1, 0)
    env.step(np.int32(2))
    assert paddle() == max(start - 1, 0) + 1
    env.close()


def test_minatar_endings_and_errors():
    length, last = episode_length(make_env(config("minatar_breakout"), seed=0))
    assert last["is_terminal"] and length < 500  # random play loses the ball soon
    env = make_env(config("minatar_freeway", sticky=False), seed=0)
    length, last = episode_length(env)
    assert length == 2501 and last["is_last"] and not last["is_terminal"]  # its clock ran out
    with pytest.raises(EnvError, match="minatar_space_invaders"):
        make_env(config("minatar_spaceinvaders"), seed=0)
    with pytest.raises(EnvError, match="--env.size"):
        make_env(config("minatar_breakout", size=(8, 8)), seed=0)
    with pytest.raises(EnvError, match="--env.gray"):
        make_env(config("minatar_breakout", gray=True), seed=0)


def in_a_row(plane, k):
    """Whether a plane of stones holds k in a row, in any of the four directions."""
    rows, cols = plane.shape
    for r in range(rows):
        for c in range(cols):
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                cells = [(r + i * dr, c + i * dc) for i in range(k)]
                if all(0 <= y < rows and 0 <= x < cols and plane[y, x] for y, x in cells):
                    return True
    return False


BOARDS = {"pgx_connect_four": ((6, 7), 4, 7), "pgx_tic_tac_toe": ((3, 3), 3, 9)}


@pytest.mark.parametrize("task,opponent", [("pgx_connect_four", "random"),
                                           ("pgx_connect_four", "greedy"),
                                           ("pgx_tic_tac_toe", "random")])
def test_board_games_against_a_fixed_opponent(task, opponent):
    """Random play against each opponent: the board is seen from the agent's side (its stones
    count its legal moves), the reward is 0 until the end and then +1 where the agent has k in
    a row, -1 where the opponent has or the agent's move was illegal (pgx's rule; the board
    stays as it was), 0 for a full board; both players move first in some games."""
    (rows, cols), k, n = BOARDS[task]
    env = make_env(config(task, obs="vector", opponent=opponent), seed=1)
    assert env.obs_space == {"vector": Space(np.float32, (rows * cols * 2,), 0, 1)}
    assert env.act_space == Space(np.int32, (), 0, n - 1)
    rng = np.random.default_rng(0)
    outcomes, first_movers = [], set()
    for _ in range(20):
        step = env.reset()
        board = step["vector"].reshape(rows, cols, 2)
        first_movers.add(int(board[..., 1].sum()))  # 1 where the opponent opened
        moves = 0
        while not step["is_last"]:
            before = board
            step = env.step(np.int32(rng.integers(n)))
            board = step["vector"].reshape(rows, cols, 2)
            legal = board[..., 0].sum() == moves + 1
            moves += int(legal)
            assert board[..., 0].sum() == moves and not (board[..., 0] * board[..., 1]).any()
            if not step["is_last"]:
                assert step["reward"] == 0 and legal
        assert step["is_terminal"]
        mine, theirs = in_a_row(board[..., 0], k), in_a_row(board[..., 1], k)
        if not legal:
            np.testing.assert_array_equal(board, before)
            expected = -1.0
        else:
            expected = 1.0 if mine else -1.0 if theirs else 0.0
            assert mine or theirs or board.sum() == rows * cols
        assert step["reward"] == expected
        outcomes.append(expected)
    assert first_movers == {0, 1}
    if opponent == "greedy":  # it never misses a win in one, so random play rarely wins
        assert np.mean(outcomes) < -0.7


def test_greedy_opponent_wins_in_one_and_blocks_in_one():
    """Column 0 holds three stones of the first player: as the second player the greedy
    opponent blocks it, as the first it completes it; the random opponent never plays a full
    column."""
    import jax
    import pgx

    from dreamer.envs.pgx import opponent_policy

    game = pgx.make("connect_four")
    greedy, random = (jax.jit(opponent_policy(game, kind)) for kind in ("greedy", "random"))
    step = jax.jit(game.step)

    def play(moves):
        state = game.init(jax.random.key(0))
        for a in moves:
            state = step(state, np.int32(a))
        return state

    block, win = play([0, 1, 0, 1, 0]), play([0, 1, 0, 1, 0, 2])
    full = play([0, 0, 0, 0, 0, 0])
    for i in range(20):
        key = jax.random.key(i)
        assert int(greedy(block, key)) == 0 and int(greedy(win, key)) == 0
        assert int(random(full, key)) != 0
    assert len({int(greedy(play([3]), jax.random.key(i))) for i in range(20)}) > 1


def test_pgx_errors():
    with pytest.raises(EnvError, match="pgx_connect_four"):
        make_env(config("pgx_connect4", obs="vector"), seed=0)
    with pytest.raises(EnvError, match="--env.obs=vector"):
        make_env(config("pgx_connect_four"), seed=0)
    with pytest.raises(EnvError, match="--env.action_repeat=1"):
        make_env(config("pgx_connect_four", obs="vector", action_repeat=2), seed=0)
    with pytest.raises(EnvError, match="random, greedy"):
        make_env(config("pgx_connect_four", obs="vector", opponent="minimax"), seed=0)


# ---------------------------------------------------------------- termination and truncation


def test_catch_terminates_after_four_balls():
    length, last = episode_length(make_env(config("builtin_catch"), seed=0))
    assert length == 28 and last["is_terminal"]


def test_reach_is_truncated_by_its_default_limit():
    length, last = episode_length(make_env(config("builtin_reach"), seed=0))
    assert length == 50 and not last["is_terminal"]
    # The default limit counts agent steps, whatever the action repeat.
    length, _ = episode_length(make_env(config("builtin_reach", action_repeat=3), seed=0))
    assert length == 50


@pytest.mark.parametrize("task", ["builtin_reach", "builtin_catch", "gym_Pendulum-v1"])
def test_time_limit_truncates(task):
    env = make_env(config(task, obs="vector", time_limit=5, action_repeat=2), seed=0)
    outs = rollout(env, 100)
    assert len(outs) == 6
    assert outs[-1]["is_last"] and not outs[-1]["is_terminal"]
    env.reset()  # the limit restarts with the episode
    assert len(rollout(env, 100)) == 6


def test_time_limit_replaces_a_shorter_suite_limit():
    # Pendulum-v1 registers a 200-step limit and never terminates.
    length, last = episode_length(make_env(config("gym_Pendulum-v1", obs="vector"), seed=0))
    assert length == 200 and not last["is_terminal"]
    env = make_env(config("gym_Pendulum-v1", obs="vector", time_limit=300), seed=0)
    length, last = episode_length(env)
    assert length == 300 and not last["is_terminal"]


def test_dmc_time_limit_truncates():
    env = make_env(config("dmc_cartpole_balance", obs="vector", time_limit=3), seed=0)
    outs = rollout(env, 10)
    assert len(outs) == 4 and not outs[-1]["is_terminal"]


# ---------------------------------------------------------------- action repeat and determinism


@pytest.mark.parametrize("task", ["builtin_catch", "builtin_reach"])
def test_action_repeat_sums_rewards(task):
    repeat = 3
    env = make_env(config(task, obs="both", action_repeat=repeat), seed=7)
    ref = make_env(config(task, obs="both", time_limit=1000), seed=7)
    rng = np.random.default_rng(1)
    out, expected = env.reset(), ref.reset()
    np.testing.assert_array_equal(out["image"], expected["image"])
    while not out["is_last"]:
        action = random_action(env.act_space, rng)
        out = env.step(action)
        total = 0.0
        for _ in range(repeat):
            expected = ref.step(action)
            total += float(expected["reward"])
            if expected["is_last"]:
                break
        assert out["reward"] == pytest.approx(total, abs=1e-5)
        np.testing.assert_array_equal(out["image"], expected["image"])
        np.testing.assert_array_equal(out["vector"], expected["vector"])
    assert out["is_terminal"] == (task == "builtin_catch")


@pytest.mark.parametrize(
    "task,obs",
    [
        ("builtin_catch", "both"),
        ("builtin_reach", "both"),
        ("dmc_walker_walk", "vector"),
        ("gym_Pendulum-v1", "vector"),
    ],
)
def test_seed_determines_the_episode(task, obs):
    def trajectory(seed):
        env = make_env(config(task, obs=obs), seed)
        outs = rollout(env, 30) + rollout(env, 30)  # the second episode too
        return np.concatenate([np.ravel(o[k]).astype(np.float64) for o in outs for k in sorted(o)])

    first = trajectory(3)
    np.testing.assert_array_equal(first, trajectory(3))
    assert not np.array_equal(first, trajectory(4))


# ---------------------------------------------------------------- actions


def test_rescale_action_by_hand():
    low, high = np.array([0.0, -2.0, -np.inf]), np.array([10.0, 2.0, np.inf])
    np.testing.assert_allclose(rescale_action(np.array([-1.0, 0.5, 0.3]), low, high), [0, 1, 0.3])
    np.testing.assert_allclose(rescale_action(np.array([1.0, 2.0, -7.0]), low, high), [10, 2, -1])


def test_gym_continuous_actions_are_rescaled():
    env = make_env(config("gym_Pendulum-v1", obs="vector"), seed=0)  # torque bounds [-2, 2]
    env.reset()
    for action, torque in [(0.5, 1.0), (-1.0, -2.0), (3.0, 2.0)]:
        env.step(np.array([action], np.float32))
        assert env._env.unwrapped.last_u == pytest.approx(torque)


def test_reach_moves_a_tenth_of_the_action():
    env = make_env(config("builtin_reach", obs="vector"), seed=0)
    start = env.reset()["vector"][:2]
    action = np.array([0.5, -0.25], np.float32)
    moved = env.step(action)["vector"][:2]
    expected = np.clip(start + 0.1 * action, 0, 1)
    np.testing.assert_allclose(moved, expected, atol=1e-6)


# ---------------------------------------------------------------- scores quoted in the docstrings


def mean_score(task, episodes, policy):
    env = make_env(config(task, obs="vector"), seed=0)
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(episodes):
        out, score = env.reset(), 0.0
        while not out["is_last"]:
            out = env.step(policy(out["vector"], rng))
            score += float(out["reward"])
        scores.append(score)
    return np.mean(scores)


def test_catch_scores():
    random = mean_score("builtin_catch", 2000, lambda v, rng: np.int32(rng.integers(3)))
    assert random == pytest.approx(-2.86, abs=0.12)
    # Ball and paddle columns are scaled by 1/6; move towards the ball.
    greedy = mean_score("builtin_catch", 50, lambda v, rng: np.int32(1 + np.sign(v[1] - v[2])))
    assert greedy == 4.0


def test_track_scores():
    random = mean_score("builtin_track", 2000, lambda v, rng: np.int32(rng.integers(3)))
    assert random == pytest.approx(4.04, abs=0.2)
    greedy = mean_score("builtin_track", 300, lambda v, rng: np.int32(1 + np.sign(v[1] - v[2])))
    assert greedy == pytest.approx(22.3, abs=0.4)


def test_track_rewards_each_step_under_the_ball():
    env = make_env(config("builtin_track", obs="vector"), seed=0)
    out = env.reset()
    for _ in range(10):
        ball, paddle = out["vector"][1], out["vector"][2]
        out = env.step(np.int32(1 + np.sign(ball - paddle)))
        under = np.isclose(out["vector"][2], ball) and out["vector"][0] > 0
        assert out["reward"] in (0.0, 1.0)
        if under:
            assert out["reward"] == 1.0


def test_reach_scores():
    random = mean_score("builtin_reach", 300, lambda v, rng: rng.uniform(-1, 1, 2))
    assert random == pytest.approx(11.2, abs=1.2)
    greedy = mean_score("builtin_reach", 300, lambda v, rng: np.clip((v[2:] - v[:2]) / 0.1, -1, 1))
    assert greedy == pytest.approx(48.7, abs=0.5)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "task,suggestion",
    [
        ("dmc_walker_wlak", "dmc_walker_walk"),
        ("dcm_walker_walk", "dmc_walker_walk"),
        ("walker_walk", "dmc_walker_walk"),
        ("builtin_cach", "builtin_catch"),
        ("gym_CartPole-v9", "gym_CartPole-v1"),
        ("atari_pongg", "atari_pong"),
    ],
)
def test_unknown_task_names_close_choices_and_suites(task, suggestion):
    with pytest.raises(EnvError) as info:
        make_env(config(task), seed=0)
    message = str(info.value)
    assert repr(task) in message and suggestion in message
    for suite in SUITES:
        assert f"{suite}_*" in message
    assert isinstance(info.value, ValueError)


def test_bad_obs_mode():
    with pytest.raises(EnvError, match="image, vector, both"):
        make_env(config("builtin_catch", obs="pixels"), seed=0)


def test_suites_and_makers_agree():
    assert tuple(MAKERS) == SUITES


def test_render_failure_names_backend_and_packages():
    code = (
        "from types import SimpleNamespace as S\n"
        "from dreamer.envs import EnvError, make_env\n"
        'cfg = S(task="dmc_cartpole_balance", obs="image", size=(8, 8), action_repeat=1,\n'
        "        time_limit=0, gray=False, sticky=True, noops=0, lives=False, gym_kwargs=())\n"
        "try:\n"
        "    make_env(cfg, 0)\n"
        "except EnvError as err:\n"
        "    print(err)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MUJOCO_GL": "nonexistent", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for needle in ("MUJOCO_GL", "libegl1 libegl-mesa0 libgl1-mesa-dri", "libosmesa6"):
        assert needle in result.stdout, result.stdout + result.stderr
