"""The steering report's statistics (`interp.steering`), without a model."""

from __future__ import annotations

import pytest

from interp.steering import SteeringReport, SteeringRow


def test_tfr_shift_interval_matches_the_binomial_law_of_paired_resamples():
    """k of m kept cases turn from vision to text under steering, the rest stay vision: a paired
    resample's shift is (changed cases drawn) / m ~ Binomial(m, k/m) / m, whose quantiles the
    bootstrap interval must match (to one case); unpaired resampling would be wider."""
    from scipy.stats import binom

    from interp.following import tfr_vfr

    m, k = 80, 20
    base = ("vision",) * m + ("other",) * 5
    steered = ("text",) * k + ("vision",) * (m - k) + ("other",) * 5
    kept = (True,) * m + (False,) * 5
    rows = tuple(SteeringRow(a, lab, tfr_vfr(l for l, kk in zip(lab, kept) if kk), None, 0.0)
                 for a, lab in ((0.0, base), (1.0, steered)))
    report = SteeringReport((1,), "answer", m + 5, kept, (0.0,) * (m + 5), rows)
    assert report.tfr_shift(1.0) == pytest.approx(k / m)
    lo, hi = report.tfr_shift_ci(1.0, n_boot=4000, seed=3)
    assert abs(lo - binom.ppf(0.025, m, k / m) / m) <= 1 / m + 1e-12
    assert abs(hi - binom.ppf(0.975, m, k / m) / m) <= 1 / m + 1e-12
    none = SteeringReport((1,), "answer", 3, (True,) * 3, (0.0,) * 3,
                            tuple(SteeringRow(a, ("other",) * 3, tfr_vfr(["other"] * 3), None, 0.0)
                                  for a in (0.0, 1.0)))
    assert none.tfr_shift_ci(1.0) is None  # TFR undefined: no interval, not a number
