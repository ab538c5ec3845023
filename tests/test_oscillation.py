"""interp.oscillation: switch counts worked by hand, regions, and the per-region bootstrap summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from interp.oscillation import count_switches, region_labels, summarise_oscillations

V, T, I = "vision", "text", "irrelevant"


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ([V, I, T], 1),  # the examples
        ([V, T, V, T], 3),
        ([I, I, I, I], 0),
        ([], 0),
        ([T], 0),
        ([V, V, V, V], 0),
        ([T, T, V, I, V, T], 2),
        ([I, T, I, I, T, I], 0),  # text twice with irrelevant between: no switch
        ([V, I, V, I, T, I, T, I, V], 2),
        ([I, V, T, I, I, V, I, T, T, V], 4),
    ],
)
def test_count_switches_by_hand(classes, expected):
    assert count_switches(classes) == expected


def test_embedding_layer_is_skipped_when_flagged():
    assert count_switches([V, T, T]) == 1
    assert count_switches([V, T, T], has_embedding=True) == 0
    assert count_switches([T, V, I, T], has_embedding=True) == 1


def test_count_switches_rejects_unknown_classes():
    with pytest.raises(ValueError, match="unknown layer class"):
        count_switches([V, "Text"])


def test_region_labels():
    dh = np.array([0.25, 0.75, 0.76, -0.25, -0.26, np.nan, 2.0])
    assert region_labels(dh, 0.25) == ["ambiguous", "ambiguous", "clear", "ambiguous", "clear", None, "clear"]
    assert region_labels(dh, 0.25, width=0.1) == ["ambiguous", "clear", "clear", "clear", "clear", None, "clear"]


def test_region_labels_without_balance_point_are_none():
    assert region_labels([0.0, 1.0], None) == [None, None]
    with pytest.raises(ValueError):
        region_labels([0.0], math.nan)
    with pytest.raises(ValueError):
        region_labels([0.0], 0.0, width=-1.0)


def test_summary_means_by_hand():
    counts = [2, 1, 3, 0, 1, 0, 0, 5, 4]
    regions = ["ambiguous", "ambiguous", "ambiguous", "clear", "clear", "clear", "clear", None, "control"]
    s = summarise_oscillations(counts, regions, n_boot=500, seed=0)
    amb, clear, control = s.regions
    assert (amb.region, amb.n, amb.mean) == ("ambiguous", 3, pytest.approx(2.0))
    assert (clear.region, clear.n, clear.mean) == ("clear", 4, pytest.approx(0.25))
    assert (control.region, control.n, control.mean) == ("control", 1, pytest.approx(4.0))
    assert control.ci_low is None  # one case: no interval
    assert s.difference == pytest.approx(1.75)
    assert s.n_unassigned == 1
    # a bootstrap mean of {1, 2, 3} lies in [1, 3]; of {0, 0, 0, 1} in [0, 1]
    assert 1.0 <= amb.ci_low <= 2.0 <= amb.ci_high <= 3.0
    assert 0.0 <= clear.ci_low <= 0.25 <= clear.ci_high <= 1.0
    assert s.region("clear") is clear
    json.dumps(s.to_dict(), allow_nan=False)


def test_summary_constant_counts_have_a_point_interval():
    s = summarise_oscillations([2, 2, 2, 1, 1], ["ambiguous"] * 3 + ["clear"] * 2)
    assert (s.regions[0].ci_low, s.regions[0].ci_high) == (2.0, 2.0)
    assert s.difference_ci == (1.0, 1.0)


def test_summary_interval_matches_normal_approximation():
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.4, 400)
    s = summarise_oscillations(counts, ["ambiguous"] * 400, n_boot=2000, seed=1)
    amb = s.region("ambiguous")
    half = 1.959964 * counts.std(ddof=1) / math.sqrt(400)
    assert amb.ci_low == pytest.approx(counts.mean() - half, abs=0.2 * half)
    assert amb.ci_high == pytest.approx(counts.mean() + half, abs=0.2 * half)
    assert s.region("clear").n == 0 and s.region("clear").mean is None
    assert s.difference is None and "empty" in s.note


def test_summary_is_seeded():
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, 2000)  # many cases, so the bootstrap means are nearly continuous
    regions = ["ambiguous", "clear"] * 1000
    a, b, c = (summarise_oscillations(counts, regions, seed=s) for s in (3, 3, 4))
    assert a == b
    assert a.difference_ci != c.difference_ci


def test_summary_rejects_bad_counts():
    with pytest.raises(ValueError, match="one per case"):
        summarise_oscillations([1, 2], ["clear"])
    for bad in ([-1], [1.5], [math.nan]):
        with pytest.raises(ValueError, match="non-negative integers"):
            summarise_oscillations(bad, ["clear"])


def test_pipeline_from_trajectories():
    trajectories = [[V, T, V], [V, V, V], [T, I, V, T], [I, I, I]]
    dh = [0.1, 1.5, -0.2, np.nan]
    counts = [count_switches(t) for t in trajectories]
    assert counts == [2, 0, 2, 0]
    s = summarise_oscillations(counts, region_labels(dh, balance_point=0.0), n_boot=100)
    assert s.region("ambiguous").mean == pytest.approx(2.0)
    assert s.region("clear").mean == pytest.approx(0.0)
    assert s.n_unassigned == 1
