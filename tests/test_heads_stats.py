"""Statistics over heads (interp.heads), on hand-worked arrays and labels."""

from __future__ import annotations

import numpy as np
import pytest

from interp.heads import knockout_report, mean_by_label, random_heads, shift_difference_ci, top_heads


def test_means_by_label_are_the_group_means_with_intervals_around_them():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(400, 2, 3))
    values[:200] += 1.0  # the text followers sit one unit higher everywhere
    labels = ["text"] * 200 + ["vision"] * 180 + ["other"] * 20
    keep = [True] * 390 + [False] * 10
    out = mean_by_label(values, labels, keep, n_boot=500, seed=0)
    assert out.groups["text"].n == 200 and out.groups["vision"].n == 180 and out.groups["all"].n == 390
    assert np.allclose(out.groups["text"].mean, values[:200].mean(0))
    assert np.allclose(out.groups["vision"].mean, values[200:380].mean(0))
    assert np.allclose(out.groups["all"].mean, values[:390].mean(0))
    assert np.allclose(out.difference, values[:200].mean(0) - values[200:380].mean(0))
    g = out.groups["text"]
    assert (g.low < g.mean).all() and (g.mean < g.high).all()
    # the standard error of a mean of 200 unit-variance values is 1/sqrt(200): a 95% interval is ~ +-0.139
    assert np.allclose((g.high - g.low) / 2, 1.96 / np.sqrt(200), rtol=0.25)
    assert (out.difference_low < out.difference).all() and (out.difference < out.difference_high).all()
    assert np.allclose((out.difference_high - out.difference_low) / 2, 1.96 * np.sqrt(1 / 200 + 1 / 180), rtol=0.25)
    assert (out.difference_low > 0).all()
    assert out.to_dict()["text"]["n"] == 200


def test_constant_values_give_a_zero_width_interval_and_empty_groups_nan():
    out = mean_by_label(np.full((5, 2), 3.0), ["text"] * 5, n_boot=50)
    assert np.allclose(out.groups["text"].low, 3.0) and np.allclose(out.groups["text"].high, 3.0)
    assert out.groups["vision"].n == 0 and np.isnan(out.groups["vision"].mean).all()
    assert np.isnan(out.difference).all()
    with pytest.raises(ValueError, match="one label"):
        mean_by_label(np.zeros((3, 2)), ["text"] * 2)


def test_top_heads_and_random_controls():
    score = np.array([[0.1, -2.0, 0.5], [3.0, 0.0, -0.7]])
    assert top_heads(score, 2) == [(1, 0, 3.0), (0, 2, 0.5)]
    assert top_heads(score, 2, sign=-1) == [(0, 1, -2.0), (1, 2, -0.7)]
    with pytest.raises(ValueError, match="between 1 and the 6 heads"):
        top_heads(score, 7)
    drawn = random_heads(2, 3, 3, exclude=[(1, 0), (0, 2)], seed=4)
    assert len(set(drawn)) == 3 and not {(1, 0), (0, 2)} & set(drawn)
    assert drawn == random_heads(2, 3, 3, exclude=[(1, 0), (0, 2)], seed=4)
    assert random_heads(2, 3, 4, exclude=[(1, 0), (0, 2)]) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    with pytest.raises(ValueError, match="cannot draw 5"):
        random_heads(2, 3, 5, exclude=[(1, 0), (0, 2)])


def test_knockout_report_counts_tfr_over_kept_cases():
    before = ["text", "vision", "text", "vision", "text", "other"] * 10
    after = ["vision", "vision", "text", "vision", "text", "other"] * 10
    keep = [True] * 60
    r = knockout_report("top", [(1, 2)], before, after, keep, n_boot=500)
    assert r.tfr_before == pytest.approx(3 / 5) and r.tfr_after == pytest.approx(2 / 5)
    assert r.shift == pytest.approx(-0.2)
    lo, hi = r.shift_ci
    assert lo < -0.2 < hi <= 0.0  # every changed case moved towards vision
    dropped = knockout_report("top", [(1, 2)], before, after, [i % 6 != 0 for i in range(60)])
    assert dropped.tfr_before == pytest.approx(2 / 4) and dropped.tfr_after == pytest.approx(2 / 4)
    same = shift_difference_ci(r, r, n_boot=200)
    assert same == (0.0, 0.0)
    control = knockout_report("control", [(0, 0)], before, before, keep, n_boot=500)
    lo, hi = shift_difference_ci(r, control, n_boot=500)
    assert lo < -0.2 < hi <= 0.0
    assert "TFR 0.600 -> 0.400" in str(r)
    assert r.counts("before") == {"text": 30, "vision": 20, "other": 10}
    assert r.counts() == {"text": 20, "vision": 30, "other": 10}
