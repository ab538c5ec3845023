"""interp.curves: the logistic fit against statsmodels, a known balance point, and every degenerate input."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import scipy.optimize
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

from interp.curves import (
    _bootstrap_balance_points,
    fit_following,
    fit_logistic,
    isotonic_decreasing,
    robustness_split,
    wilson_interval,
)

TRUE_BP = 0.3
SLOPE = -3.0


def simulate(n: int, seed: int, bp: float = TRUE_BP, slope: float = SLOPE):
    """dH_rel ~ U(-2, 2) and P(text) = sigmoid(slope * (dH_rel - bp)): balance point ``bp``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-slope * (x - bp)))
    return x, y


def assert_json_clean(curve):
    json.dumps(curve.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- the logistic fit
@pytest.mark.parametrize(("n", "seed", "slope"), [(2000, 0, SLOPE), (300, 1, -1.0), (40, 2, -6.0)])
def test_logistic_fit_agrees_with_statsmodels(n, seed, slope):
    x, y = simulate(n, seed, slope=slope)
    ref = sm.Logit(y.astype(float), sm.add_constant(x)).fit(disp=0, tol=1e-12, maxiter=200).params
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(ref[0], abs=1e-6)
    assert b == pytest.approx(ref[1], abs=1e-6)
    curve = fit_following(x, y, n_boot=0)
    assert curve.a == pytest.approx(ref[0], abs=1e-6)
    assert curve.balance_point == pytest.approx(-ref[0] / ref[1], abs=1e-6)


def test_logistic_fit_worked_by_hand_on_two_groups():
    # With one binary covariate the MLE reproduces the group proportions:
    # x = 0: 6 of 8 text -> a = logit(3/4) = ln 3; x = 1: 2 of 8 -> a + b = -ln 3.
    x = np.repeat([0.0, 1.0], 8)
    y = np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 6, dtype=bool)
    curve = fit_following(x, y, n_boot=0)
    assert curve.status == "ok"
    assert curve.a == pytest.approx(math.log(3.0), abs=1e-9)
    assert curve.b == pytest.approx(-2.0 * math.log(3.0), abs=1e-9)
    assert curve.balance_point == pytest.approx(0.5, abs=1e-9)
    # isotonic fit 3/4 at 0 and 1/4 at 1 -> interpolated 0.5 crossing at 0.5
    assert curve.isotonic_balance_point == pytest.approx(0.5)
    # Spearman rho of two binary variables = phi = (2*2 - 6*6) / sqrt(8^4) = -0.5
    assert curve.spearman_rho == pytest.approx(-0.5)


def test_known_balance_point_recovered_on_2000_cases():
    x, y = simulate(2000, seed=0)
    curve = fit_following(x, y, n_boot=1000, seed=0)
    assert curve.status == "ok" and curve.note is None
    assert abs(curve.balance_point - TRUE_BP) < 0.1
    lo, hi = curve.balance_point_ci
    assert lo < curve.balance_point < hi
    assert curve.n_boot_ok == 1000
    assert abs(curve.isotonic_balance_point - TRUE_BP) < 0.25  # model-free, noisier (sd ~0.07)
    assert curve.spearman_rho < -0.5
    assert curve.share_decreasing >= 0.7
    assert sum(b.n for b in curve.bins) == 2000
    assert_json_clean(curve)


def test_bootstrap_interval_width_matches_delta_method():
    x, y = simulate(2000, seed=3)
    curve = fit_following(x, y, n_boot=1000, seed=0)
    res = sm.Logit(y.astype(float), sm.add_constant(x)).fit(disp=0)
    a, b = res.params
    grad = np.array([-1.0 / b, a / b**2])  # d(-a/b)/d(a, b)
    se = math.sqrt(grad @ res.cov_params() @ grad)
    width = curve.balance_point_ci[1] - curve.balance_point_ci[0]
    assert width == pytest.approx(2 * 1.959964 * se, rel=0.25)


def test_vectorised_bootstrap_equals_one_fit_per_resample():
    x, y = simulate(30, seed=0)
    start = fit_logistic(x, y)
    got = _bootstrap_balance_points(x, y, start, 200, np.random.default_rng(5))
    idx = np.random.default_rng(5).integers(0, x.size, size=(200, x.size))
    expected = []
    for i in idx:
        fit = fit_logistic(x[i], y[i])
        expected.append(np.nan if fit is None else -fit[0] / fit[1])
    assert np.isnan(got).sum() > 0  # small n: some resamples are separated
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_bootstrap_is_seeded():
    x, y = simulate(500, seed=4)
    c0, c0_again, c1 = (fit_following(x, y, n_boot=200, seed=s) for s in (0, 0, 1))
    assert c0.balance_point_ci == c0_again.balance_point_ci
    assert c0.balance_point_ci != c1.balance_point_ci
    assert c0.balance_point == c1.balance_point


# --------------------------------------------------------------------------- isotonic and bins
def test_isotonic_by_hand():
    xu, fit = isotonic_decreasing(np.arange(4.0), np.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(xu, [0, 1, 2, 3])
    np.testing.assert_allclose(fit, [1.0, 0.5, 0.5, 0.0])
    # ties in x are pooled: two cases at x = 1 with labels 1 and 0 -> 0.5
    xu, fit = isotonic_decreasing(np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_allclose(fit, [1.0, 0.5, 0.0])


@pytest.mark.skipif(
    not hasattr(scipy.optimize, "isotonic_regression"), reason="scipy < 1.12 has no isotonic_regression"
)
def test_isotonic_matches_scipy_reference():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-2, 2, 300))
    y = (rng.random(300) < 1 / (1 + np.exp(3 * x))).astype(float)
    _, fit = isotonic_decreasing(x, y)
    ref = scipy.optimize.isotonic_regression(y, increasing=False).x
    np.testing.assert_allclose(fit, ref, atol=1e-12)


def test_isotonic_crossing_interpolates_and_flat_run_midpoint():
    # x = 0..3, four cases each, 4/3/1/0 text -> fit 1, .75, .25, 0 -> crossing at 1.5
    x = np.repeat(np.arange(4.0), 4)
    y = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert fit_following(x, y, n_boot=0).isotonic_balance_point == pytest.approx(1.5)
    # 4/2/1/0 -> fit 1, .5, .25, 0 -> exactly 0.5 at x = 1
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert fit_following(x, y, n_boot=0).isotonic_balance_point == pytest.approx(1.0)
    # 4/3/1/2 text: the last two pool to 3/8 -> fit 1, .75, .375, .375 -> 1 + (.75-.5)/(.75-.375)
    y = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    assert fit_following(x, y, n_boot=0).isotonic_balance_point == pytest.approx(1.0 + 2.0 / 3.0)


def test_wilson_interval_by_hand_and_against_statsmodels():
    z2 = 1.959963984540054**2
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx((z2 / 10) / (1 + z2 / 10), abs=1e-12)  # k = 0 closed form
    for k, n in [(3, 10), (5, 10), (17, 40), (40, 40)]:
        ref = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert wilson_interval(k, n) == pytest.approx(ref, abs=1e-9)


def test_equal_count_bins_and_share_decreasing():
    x = np.arange(20.0)
    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    curve = fit_following(x, y, n_boot=0, n_bins=4)
    assert [b.n for b in curve.bins] == [5, 5, 5, 5]
    assert [b.p_text for b in curve.bins] == pytest.approx([1.0, 0.6, 0.2, 0.0])
    assert [(b.dh_rel_lo, b.dh_rel_hi, b.dh_rel_mean) for b in curve.bins[:2]] == [(0, 4, 2), (5, 9, 7)]
    assert (curve.bins[1].ci_low, curve.bins[1].ci_high) == pytest.approx(wilson_interval(3, 5))
    assert curve.share_decreasing == 1.0
    # bins 1.0, 0.2, 0.6, 0.0 -> two of three adjacent pairs decrease
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert fit_following(x, y, n_boot=0, n_bins=4).share_decreasing == pytest.approx(2 / 3)
    # at least 5 cases per bin: 20 cases and 10 bins asked -> 4 bins
    assert len(fit_following(x, y, n_boot=0, n_bins=10).bins) == 4


# --------------------------------------------------------------------------- degenerate inputs
def test_perfect_separation():
    x = np.linspace(-1.0, 1.0, 20)
    curve = fit_following(x, x < 0)
    assert curve.status == "separation"
    assert curve.a is None and curve.b is None
    assert curve.balance_point is None and curve.balance_point_ci is None
    assert "separation" in curve.note
    assert curve.isotonic_balance_point == pytest.approx(0.0, abs=1e-12)  # midpoint of the gap
    # ranks 1..20 against y = 1 on ranks 1..10: point-biserial on ranks,
    # (mean rank of text - mean rank of image) * sqrt(p(1-p)) / sd(ranks) = -10 * 0.5 / sqrt(399/12)
    assert curve.spearman_rho == pytest.approx(-5.0 / math.sqrt(399.0 / 12.0), abs=1e-12)
    assert_json_clean(curve)


def test_quasi_separation_with_a_tie_at_the_boundary():
    x = np.array([-1.0] * 6 + [0.0] * 2 + [1.0] * 6)
    y = np.array([1] * 6 + [1, 0] + [0] * 6, dtype=bool)
    curve = fit_following(x, y)
    assert curve.status == "separation" and curve.balance_point is None
    assert curve.isotonic_balance_point == pytest.approx(0.0)  # the fit is exactly 0.5 at x = 0
    assert_json_clean(curve)


def test_separation_against_the_law():
    x = np.linspace(-1.0, 1.0, 20)
    curve = fit_following(x, x > 0.3)  # text only at high dH_rel: increasing
    assert curve.status == "separation" and curve.balance_point is None
    assert curve.isotonic_balance_point is None  # a decreasing fit of increasing data is flat
    assert "image cases at dH_rel <=" in curve.note


@pytest.mark.parametrize("value", [True, False])
def test_single_class(value):
    x = np.linspace(-1.0, 1.0, 30)
    curve = fit_following(x, np.full(30, value))
    assert curve.status == "single_class"
    assert curve.balance_point is None and curve.isotonic_balance_point is None
    assert curve.a is None and curve.spearman_rho is None
    assert "single class" in curve.note
    assert [b.p_text for b in curve.bins] == [float(value)] * len(curve.bins)
    assert_json_clean(curve)


def test_too_few_cases():
    x, y = simulate(9, seed=0)
    curve = fit_following(x, y)
    assert curve.status == "too_few_cases"
    assert curve.n == 9 and curve.balance_point is None and curve.bins == ()
    assert "9 < 10" in curve.note
    empty = fit_following([], [])
    assert empty.status == "too_few_cases" and empty.dh_rel_min is None
    assert_json_clean(empty)


def test_constant_dh_rel():
    curve = fit_following(np.zeros(20), np.arange(20) % 2 == 0)
    assert curve.status == "constant_dh_rel" and curve.balance_point is None
    assert curve.isotonic_balance_point is None


def test_nan_rows_are_dropped_and_counted():
    x, y = simulate(500, seed=6)
    xn = x.copy()
    yn = y.astype(float)
    xn[[3, 10, 20]] = np.nan
    yn[[40, 50]] = np.nan
    curve = fit_following(xn, yn, n_boot=200)
    keep = np.ones(500, dtype=bool)
    keep[[3, 10, 20, 40, 50]] = False
    clean = fit_following(x[keep], y[keep], n_boot=200)
    assert curve.n_dropped_nan == 5 and curve.n == 495
    assert "5 case(s)" in curve.note
    assert curve.balance_point == clean.balance_point
    assert curve.balance_point_ci == clean.balance_point_ci


def test_no_crossing_in_the_observed_range():
    x, y = simulate(1000, seed=7, bp=3.0, slope=-1.0)  # P(text) > 0.5 all over [-2, 2]
    curve = fit_following(x, y, n_boot=100)
    assert curve.status == "no_crossing"
    assert curve.balance_point is None and curve.balance_point_ci is None
    assert curve.a is not None and -curve.a / curve.b > curve.dh_rel_max
    assert "no crossing in the observed range" in curve.note
    assert_json_clean(curve)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="one per case"):
        fit_following([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="infinite"):
        fit_following([np.inf] * 12, [True] * 12)
    with pytest.raises(ValueError, match="0/1"):
        fit_following(np.zeros(12), np.full(12, 2))


# --------------------------------------------------------------------------- robustness split
def test_robustness_split_fits_each_half():
    x, y = simulate(1000, seed=8)
    total = np.random.default_rng(108).uniform(0.5, 6.0, 1000)  # independent of dH_rel
    total[5] = np.nan
    split = robustness_split(x, y, total, n_boot=100, seed=2)
    keep = ~np.isnan(total)
    median = np.median(total[keep])
    low = keep & (total <= median)
    high = keep & (total > median)
    assert split.median_total_entropy == pytest.approx(median)
    assert split.n_dropped_nan == 1
    assert (split.low.n, split.high.n) == (low.sum(), high.sum())
    assert split.low.balance_point_ci == fit_following(x[low], y[low], n_boot=100, seed=2).balance_point_ci
    assert split.high.balance_point == fit_following(x[high], y[high], n_boot=0).balance_point
    assert abs(split.low.balance_point - TRUE_BP) < 0.2 and abs(split.high.balance_point - TRUE_BP) < 0.2
    json.dumps(split.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- slow checks
@pytest.mark.slow
def test_bootstrap_ci_covers_truth_over_100_seeds():
    covered = 0
    errors = []
    for seed in range(100):
        x, y = simulate(2000, seed=1000 + seed)
        curve = fit_following(x, y, n_boot=1000, seed=seed)
        lo, hi = curve.balance_point_ci
        covered += lo <= TRUE_BP <= hi
        errors.append(curve.balance_point - TRUE_BP)
    print(f"coverage {covered}/100, max |error| {np.max(np.abs(errors)):.4f}")
    assert covered >= 90
    assert np.max(np.abs(errors)) < 0.1


@pytest.mark.slow
def test_bootstrap_runtime_on_2000_cases():
    x, y = simulate(2000, seed=0)
    fit_following(x, y, n_boot=1000)  # warm-up
    t0 = time.perf_counter()
    fit_following(x, y, n_boot=1000)
    elapsed = time.perf_counter() - t0
    print(f"fit_following on 2000 cases, 1000 resamples: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
