"""DreamerV3's published curves: values read back against lines of the CSV, the bin rule of
`value_at`, and errors that name the valid choices."""
import numpy as np
import pytest

from dreamer.bench import reference


def test_published_curve_matches_the_csv():
    assert reference.benchmarks() == ["atari100k", "dmc_proprio", "dmc_vision"]
    assert [len(reference.tasks(b)) for b in reference.benchmarks()] == [26, 18, 20]
    steps, mean, low, high, seeds = reference.published("dmc_proprio", "dmc_cartpole_balance")
    # dmc_proprio,dmc_cartpole_balance,10000,316.3,264.3,381.7,5
    # dmc_proprio,dmc_cartpole_balance,100000,839.7,752.4,966.2,5
    # dmc_proprio,dmc_cartpole_balance,490000,990.6,985.2,994.0,5
    np.testing.assert_array_equal(steps, np.arange(1, 50) * 10_000)  # proprio runs end at 490K
    assert (mean[0], low[0], high[0], seeds[0]) == (316.3, 264.3, 381.7, 5)
    assert (mean[9], low[9], high[9], seeds[9]) == (839.7, 752.4, 966.2, 5)
    assert (mean[-1], low[-1], high[-1]) == (990.6, 985.2, 994.0)
    vision = reference.published("dmc_vision", "dmc_walker_walk")
    assert (vision.steps[-1], vision.mean[-1], vision.seeds[-1]) == (1_000_000, 961.7, 10)


def test_value_at_takes_the_bin_that_ends_at_or_after_the_step():
    def value(step):
        return reference.value_at("dmc_proprio", "dmc_cartpole_balance", step)

    assert value(10_000) == value(1) == 316.3
    assert value(10_001) == 226.7  # (10K, 20K]
    assert value(95_000) == value(100_000) == 839.7
    assert value(100_001) == 831.6
    assert value(490_000) == 990.6 and value(490_001) is None  # past the last published bin
    # atari100k,atari_private_eye has no bin at 10K or 140K: the next one holds the step.
    assert reference.value_at("atari100k", "atari_private_eye", 5_000) == -140.0
    assert reference.value_at("atari100k", "atari_private_eye", 135_000) == 977.4


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(reference.UnknownCurve, match="dmc_nope.*its tasks: dmc_acrobot_swingup, "):
        reference.published("dmc_proprio", "dmc_nope")
    with pytest.raises(reference.UnknownCurve,
                       match="benchmark 'dmc'; benchmarks: atari100k, dmc_proprio, dmc_vision"):
        reference.value_at("dmc", "dmc_walker_walk", 10_000)
