"""interp.calibration and the response measures of interp.uncertainty, against scikit-learn and hand work."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from interp.calibration import (
    auroc,
    auroc_by_layer,
    auroc_ci,
    bootstrap_ci,
    brier_score,
    confidence_accuracy_slope,
    expected_calibration_error,
    first_separating_layer,
    majority_vote,
    mean_ci,
    reliability_bins,
    vcd_scores,
    voting_curve,
    weighted_vote,
)
from interp.uncertainty import answer_probability, nmlp_confidence, response_confidence


@pytest.fixture
def random_cases():
    rng = np.random.default_rng(11)
    p = rng.random(300)
    correct = rng.random(300) < p**2
    return p, correct


def test_brier_and_auroc_agree_with_scikit_learn(random_cases):
    p, correct = random_cases
    assert abs(brier_score(p, correct) - brier_score_loss(correct, p)) < 1e-9
    assert abs(auroc(p, correct) - roc_auc_score(correct, p)) < 1e-9
    ties = np.round(p, 1)  # many ties: mid-ranks must count them one half, as sklearn does
    assert abs(auroc(ties, correct) - roc_auc_score(correct, ties)) < 1e-9
    assert abs(auroc(-3.0 * ties + 7, correct) - roc_auc_score(correct, -ties)) < 1e-9


def test_auroc_of_one_class_is_none():
    assert auroc([0.1, 0.9], [True, True]) is None


def test_ece_by_hand():
    # 6 cases, 3 equal-mass bins of 2 after sorting by p:
    #   {0.1 wrong, 0.2 right}: conf 0.15, acc 0.5 -> |0.35|
    #   {0.4 wrong, 0.6 wrong}: conf 0.50, acc 0.0 -> |0.50|
    #   {0.8 right, 0.9 right}: conf 0.85, acc 1.0 -> |0.15|
    # ECE = (2/6)(0.35 + 0.50 + 0.15) = 1/3
    p = [0.9, 0.1, 0.4, 0.8, 0.2, 0.6]
    y = [True, False, False, True, True, False]
    assert expected_calibration_error(p, y, n_bins=3) == pytest.approx(1 / 3, abs=1e-12)
    bins = reliability_bins(p, y, n_bins=3)
    assert [b.n for b in bins] == [2, 2, 2]
    assert [b.accuracy for b in bins] == [0.5, 0.0, 1.0]
    assert bins[1].low == 0.4 and bins[1].high == 0.6


def test_ece_with_one_bin_is_the_gap_of_the_means(random_cases):
    p, correct = random_cases
    assert expected_calibration_error(p, correct, 1) == pytest.approx(abs(p.mean() - correct.mean()), abs=1e-12)


def test_ece_refuses_a_score_that_is_no_probability():
    with pytest.raises(ValueError, match="probabilities in"):
        expected_calibration_error([2.5, 0.3], [True, False])


def test_nmlp_by_hand():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    expected = -(math.log(0.5) + math.log(0.25)) / 2
    assert float(nmlp_confidence(np.log(p), k=2)) == pytest.approx(expected, abs=1e-12)
    peaked = np.log([0.97, 0.01, 0.01, 0.01])
    flat = np.log([0.25] * 4)
    assert float(nmlp_confidence(peaked, k=2)) > float(nmlp_confidence(flat, k=2))  # higher = more confident


def test_answer_probability_sums_the_answer_ids():
    logits = np.log([[0.1, 0.2, 0.3, 0.4]])
    assert answer_probability(logits, [1, 3])[0] == pytest.approx(0.6, abs=1e-12)


def test_response_confidence_variants_by_hand():
    c = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert response_confidence(c, "mean") == pytest.approx(3.0)
    assert response_confidence(c, "tail", window=2) == pytest.approx(4.5)
    assert response_confidence(c, "lowest_window", window=2) == pytest.approx(1.5)  # (1 + 2) / 2
    assert response_confidence(c, "lowest_window", window=9) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="choose from"):
        response_confidence(c, "median")


def test_vcd_with_alpha_zero_is_the_plain_log_probability():
    rng = np.random.default_rng(0)
    lc = np.log(rng.dirichlet(np.ones(50), size=4))
    ln = np.log(rng.dirichlet(np.ones(50), size=4))
    np.testing.assert_array_equal(vcd_scores(lc, ln, alpha=0.0, beta=0.0), lc)
    cut = vcd_scores(lc, ln, alpha=0.0, beta=0.1)
    keep = np.exp(lc) >= 0.1 * np.exp(lc).max(axis=-1, keepdims=True)
    np.testing.assert_array_equal(cut[keep], lc[keep])
    assert np.all(np.isneginf(cut[~keep]))


def test_vcd_contrast_by_hand():
    lc = np.log([0.6, 0.3, 0.1])
    ln = np.log([0.7, 0.1, 0.2])
    out = vcd_scores(lc, ln, alpha=1.0, beta=0.2)  # 0.1 < 0.2 * 0.6: the third token is cut
    assert out[0] == pytest.approx(2 * math.log(0.6) - math.log(0.7))
    assert out[1] == pytest.approx(2 * math.log(0.3) - math.log(0.1))
    assert np.isneginf(out[2])
    assert int(np.argmax(out)) == 1  # the token the noise does not explain wins


def test_weighted_vote_with_equal_confidences_is_majority_voting():
    rng = np.random.default_rng(3)
    for _ in range(200):
        answers = list(rng.choice(["red", "blue", "green"], size=int(rng.integers(1, 9))))
        assert weighted_vote(answers, [0.7] * len(answers)) == majority_vote(answers)
    assert majority_vote(["a", "b", "b"]) == "b"
    assert weighted_vote(["a", "b", "b"], [5.0, 1.0, 1.0]) == "a"
    with pytest.raises(ValueError, match="N >= 1"):
        weighted_vote([], [])


def test_voting_curve_with_equal_confidences_has_equal_curves():
    rng = np.random.default_rng(4)
    answers = rng.choice(["red", "blue"], size=(30, 7), p=[0.6, 0.4])
    curve = voting_curve(answers, np.ones((30, 7)), ["red"] * 30, ns=(1, 3, 7), n_draws=5)
    assert curve.weighted == curve.majority
    assert curve.majority[-1] == np.mean([(row == "red").sum() >= 4 for row in answers])  # all 7 samples: no tie
    assert curve.majority[0] == pytest.approx((answers == "red").mean(), abs=0.1)  # N = 1: one sample's accuracy
    with pytest.raises(ValueError, match="1..7"):
        voting_curve(answers, np.ones((30, 7)), ["red"] * 30, ns=(16,))


def test_slope_by_hand_and_flat_confidence():
    fit = confidence_accuracy_slope([0.2, 0.5, 0.8], [0.3, 0.45, 0.6])
    assert fit["slope"] == pytest.approx(0.5) and fit["r"] == pytest.approx(1.0)
    flat = confidence_accuracy_slope([0.2, 0.5, 0.8], [0.9, 0.9, 0.9])
    assert flat["slope"] == pytest.approx(0.0) and flat["r"] is None
    assert confidence_accuracy_slope([0.5, 0.5], [0.1, 0.2])["slope"] is None


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    v = np.random.default_rng(5).normal(2.0, 1.0, 400)
    lo, hi = bootstrap_ci(np.mean, v, n_boot=500, seed=1)
    assert lo < v.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.25)  # the normal-theory width
    assert bootstrap_ci(np.mean, v, n_boot=500, seed=1) == (lo, hi)
    m = mean_ci(v, n_boot=500, seed=1)
    assert m["mean"] == pytest.approx(v.mean()) and (m["ci_low"], m["ci_high"]) == (lo, hi)
    assert bootstrap_ci(np.mean, v[:1]) is None


def test_auroc_by_layer_finds_the_first_separating_layer():
    rng = np.random.default_rng(6)
    correct = rng.random(200) < 0.5
    noise = rng.normal(size=(200, 4))
    scores = noise + np.array([0.0, 0.0, 2.0, 3.0]) * correct[:, None]
    rows = auroc_by_layer(scores, correct, n_boot=200)
    for row in rows:
        assert row["auroc"] == pytest.approx(roc_auc_score(correct, scores[:, row["layer"]]), abs=1e-9)
    assert first_separating_layer(rows) == 2


def test_vectorised_auroc_interval_equals_the_generic_bootstrap(random_cases):
    p, correct = random_cases
    ties = np.round(p, 1)
    for score in (p, ties):
        assert auroc_ci(score, correct, n_boot=300, seed=4) == pytest.approx(
            bootstrap_ci(auroc, score, correct, n_boot=300, seed=4), abs=1e-12)
    few = np.array([True, False, False])  # many resamples hold one class only: dropped by both
    assert auroc_ci([0.2, 0.5, 0.1], few, n_boot=200, seed=1) == bootstrap_ci(auroc, [0.2, 0.5, 0.1], few,
                                                                              n_boot=200, seed=1)
