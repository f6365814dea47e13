"""hpo.analysis.stopping: the last trials' gain against the noise, on studies whose answer is built in."""

from __future__ import annotations

import math

import pytest

from hpo.analysis.stopping import StoppingAdvice, last_trials_gain, window_size


def test_a_plateau_says_more_trials_are_unlikely_to_help():
    # 50 trials: the best (89.8) is reached at trial 30 (in the first 33); the last 17 add 0.1 at most.
    values = [80.0 + 0.3 * i for i in range(30)] + [89.8] + [85.0] * 18 + [89.9]
    advice = last_trials_gain(values, noise=0.2)
    assert advice.window == 17 and advice.trials == 50
    assert advice.improvement == pytest.approx(0.1)
    assert advice.more_may_help is False
    assert advice.sentence == (
        "the last 17 of 50 trials improved the best by 0.1 points (seed-to-seed noise 0.2): "
        "more trials are unlikely to help"
    )


def test_a_late_gain_above_the_noise_says_more_may_help():
    values = [85.0] * 40 + [87.3] + [86.0] * 19  # 60 trials, window 20, the best before it 85.0
    advice = last_trials_gain(values, noise=0.2)
    assert (advice.window, advice.improvement, advice.more_may_help) == (20, pytest.approx(2.3), True)
    assert advice.sentence.endswith(
        "improved the best by 2.3 points (seed-to-seed noise 0.2): more trials may still help"
    )


def test_no_gain_at_all_and_pruned_trials_count_as_trials():
    values = [88.0, None, 89.0, float("nan"), 87.0] + [None] * 10  # 15 trials, 10 in the window, all pruned
    advice = last_trials_gain(values, noise=0.5)
    assert (advice.trials, advice.window, advice.improvement, advice.more_may_help) == (15, 10, 0.0, False)
    assert "the last 10 of 15 trials did not improve the best" in advice.sentence


def test_without_a_noise_estimate_it_assumes_the_stop_default():
    values = [80.0] * 20 + [80.15] + [79.0] * 9  # window 10, gain 0.15 > 0.1
    advice = last_trials_gain(values)
    assert advice.noise is None and advice.threshold == 0.1 and advice.more_may_help is True
    assert "(noise unknown, 0.1 assumed)" in advice.sentence
    assert last_trials_gain(values, noise=0.2).more_may_help is False  # the same gain is within a larger noise


def test_minimize_reads_a_drop_as_a_gain():
    values = [10.0] * 20 + [7.5] + [9.0] * 9  # wall time: lower is better
    advice = last_trials_gain(values, direction="minimize", noise=1.0)
    assert advice.improvement == pytest.approx(2.5) and advice.more_may_help is True


@pytest.mark.parametrize(
    "values",
    [[], [89.0] * 6, [89.0] * 14, [None] * 15 + [89.0] * 10],  # none, 6, 14 trials; 25 with no value before the window
)
def test_too_few_trials_to_say(values):
    advice = last_trials_gain(values, noise=0.2)
    assert advice.more_may_help is None and advice.improvement is None and advice.window == 0
    assert advice.sentence == f"too few trials ({len(values)}) to say whether more would help"


def test_window_is_ten_or_a_third():
    assert [window_size(n) for n in (6, 30, 31, 50, 60, 300)] == [10, 10, 11, 17, 20, 100]
    assert last_trials_gain([89.0] * 15, noise=0.2).window == 10  # the smallest study it judges


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"direction": "max"}, "direction"), ({"noise": -1.0}, "noise"), ({"noise": math.nan}, "noise")],
)
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        last_trials_gain([1.0] * 20, **kwargs)


def test_advice_is_plain_data():
    advice = last_trials_gain([1.0] * 20)
    assert isinstance(advice, StoppingAdvice)
    with pytest.raises(AttributeError):
        advice.window = 3  # frozen
