"""RER, CFR, MMC, per-format accuracy, McNemar and the CER against hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from interp.consistency import (answers_identical, cfr, character_error_rate, consistency_metrics, format_accuracy,
                                mcnemar, mmc, rer)

# Five items x (text, image, mixed); truth "red" for all. Worked by hand:
#  0: red red red        -> identical, solved in all 3
#  1: red blue red       -> not identical, solved in 2 of 3 (counts towards CFR)
#  2: blue blue blue     -> identical (all wrong), solved in none
#  3: red None red       -> the image answer is unparsable (invalid, wrong): not identical, CFR
#  4: green blue green   -> not identical, solved in none
ANSWERS = [["red"] * 3, ["red", "blue", "red"], ["blue"] * 3, ["red", None, "red"], ["green", "blue", "green"]]
CORRECT = np.array([[a == "red" for a in row] for row in ANSWERS])


def test_hand_worked_metrics():
    assert answers_identical(ANSWERS).tolist() == [True, False, True, False, False]
    assert rer(ANSWERS) == pytest.approx(2 / 5)
    assert mmc(CORRECT) == pytest.approx(3 / 5)  # items 0, 1, 3
    assert cfr(CORRECT) == pytest.approx(2 / 3)  # items 1 and 3 among 0, 1, 3
    assert format_accuracy(CORRECT).tolist() == pytest.approx([3 / 5, 1 / 5, 3 / 5])


def test_invalid_never_identical_and_cfr_undefined_without_solved_items():
    assert answers_identical([[None, None, None]]).tolist() == [False]
    assert cfr(np.zeros((3, 3), bool)) is None
    assert mmc(np.zeros((3, 3), bool)) == 0.0


def test_mcnemar_against_scipy_binomtest():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 0, 1, 1], bool)
    b = np.array([0, 0, 0, 0, 1, 0, 1, 1, 0, 1], bool)
    res = mcnemar(a, b)
    assert (res.only_a, res.only_b) == (5, 1)
    # exact two-sided: P(X<=1 or X>=5 | n=6, p=1/2) = (1 + 6 + 6 + 1) / 64
    assert res.p_value == pytest.approx(14 / 64)
    assert res.p_value == pytest.approx(scipy.stats.binomtest(5, 6, 0.5).pvalue)
    assert mcnemar(a, a).p_value == 1.0


def test_consistency_metrics_bundle():
    m = consistency_metrics(ANSWERS, CORRECT, n_boot=200, seed=1)
    assert m.n == 5 and m.rer["value"] == pytest.approx(0.4) and m.cfr["value"] == pytest.approx(2 / 3)
    assert m.invalid == {"text": 0, "image": 1, "mixed": 0}
    assert m.rer["ci_low"] <= 0.4 <= m.rer["ci_high"]
    assert 0 <= m.cfr["ci_low"] <= m.cfr["ci_high"] <= 1
    assert [(t.a, t.b) for t in m.mcnemar] == [("text", "image"), ("text", "mixed"), ("image", "mixed")]
    assert m.to_dict()["accuracy"]["image"]["value"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="invalid"):
        consistency_metrics([["red", None, "red"]], np.array([[True, True, True]]))


def test_character_error_rate():
    assert character_error_rate("The  circle\nis red", "The circle is red") == 0.0
    assert character_error_rate("The circle is rad", "The circle is red") == pytest.approx(1 / 17)
    assert character_error_rate("", "abcd") == 1.0
    assert character_error_rate("kitten", "sitting") == pytest.approx(3 / 7)  # the textbook distance 3
    with pytest.raises(ValueError):
        character_error_rate("x", "  ")
