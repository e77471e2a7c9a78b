import numpy as np
import pytest

from pipeline.qalign.levels import DEFAULT_LEVELS, Levels


def test_eq1_equal_width_intervals_on_1_to_5():
    # 1..5 cut into five 0.8-wide intervals; the upper edge belongs to the interval (Eq. 1), the min to the worst
    mos = [1.0, 1.5, 1.8, 1.81, 2.6, 2.61, 3.4, 3.41, 4.2, 4.21, 5.0]
    words = [DEFAULT_LEVELS.word_of_mos(m, 1, 5) for m in mos]
    assert words == [
        "bad",
        "bad",
        "bad",
        "poor",
        "poor",
        "fair",
        "fair",
        "good",
        "good",
        "excellent",
        "excellent",
    ]


def test_eq1_uses_the_scale_not_fixed_numbers():
    assert DEFAULT_LEVELS.word_of_mos(85.0, 0, 100) == "excellent"
    assert DEFAULT_LEVELS.word_of_mos(79.9, 0, 100) == "good"
    assert DEFAULT_LEVELS.word_of_mos(0.0, 0, 100) == "bad"
    np.testing.assert_array_equal(DEFAULT_LEVELS.level_of_mos(np.array([0.1, 0.5, 0.9]), 0, 1), [4, 2, 0])
    with pytest.raises(ValueError, match="outside its scale"):
        DEFAULT_LEVELS.level_of_mos(5.5, 1, 5)
    with pytest.raises(ValueError, match="scale_max"):
        DEFAULT_LEVELS.level_of_mos(3, 5, 1)


def test_close_set_softmax_and_both_score_conventions():
    logits = np.array([[2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    probs = DEFAULT_LEVELS.probabilities(logits)
    e = np.exp(logits[0])
    np.testing.assert_allclose(probs[0], e / e.sum())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    far_apart = DEFAULT_LEVELS.probabilities(np.array([800.0, 0.0, 0.0, 0.0, -800.0]))  # exp(800) overflows float64
    np.testing.assert_array_equal(far_apart, [1.0, 0.0, 0.0, 0.0, 0.0])
    score = DEFAULT_LEVELS.score(probs)
    np.testing.assert_allclose(score[1], 3.0)
    np.testing.assert_allclose(score[0], probs[0] @ [5, 4, 3, 2, 1])
    # the 0..1 convention is the same score up to y = 4x + 1
    np.testing.assert_allclose(4 * DEFAULT_LEVELS.score_unit(probs) + 1, score)
    np.testing.assert_allclose(DEFAULT_LEVELS.score_unit(probs)[0], probs[0] @ [1, 0.75, 0.5, 0.25, 0])


def test_any_number_of_levels():
    three = Levels(words=("high", "medium", "low"), weights=(3.0, 2.0, 1.0))
    assert three.columns == ["p_high", "p_medium", "p_low"]
    assert three.word_of_mos(0.2, 0, 1) == "low" and three.word_of_mos(0.5, 0, 1) == "medium"
    np.testing.assert_allclose(three.score(np.array([0.0, 0.0, 1.0])), 1.0)
    with pytest.raises(ValueError, match="decrease"):
        Levels(words=("a", "b"), weights=(1.0, 2.0))
    with pytest.raises(ValueError):
        Levels(words=("a", "b", "c"), weights=(3.0, 2.0))
