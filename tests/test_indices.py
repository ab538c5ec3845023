"""interp.indices and the alternative-index columns: each index checked against a second route."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from interp.candidates import AnswerTokens, CandidatePair
from interp.indices import INDICES, pass_indices, relative_index
from interp.logit_lens import trajectory_from_logits
from interp.summary import summarise
from interp.uncertainty import nmlp_confidence, one_minus_max_p, top2_margin, top_logprob_indices
from tests.simulated import synthetic_rows


def test_top_logprob_indices_by_hand():
    # p = (0.5, 0.3, 0.2): 1 - max p = 0.5, margin 0.2, NMLP over all three = -(ln .5 + ln .3 + ln .2) / 3
    got = top_logprob_indices(np.log([0.2, 0.5, 0.3]))  # any order
    assert got["one_minus_max_p"] == pytest.approx(0.5)
    assert got["top2_margin"] == pytest.approx(0.2)
    assert got["nmlp"] == pytest.approx(-(math.log(0.5) + math.log(0.3) + math.log(0.2)) / 3)


def test_top_logprob_indices_equal_the_full_vocabulary_indices():
    logits = np.random.default_rng(3).normal(0, 3, size=(6, 5, 300))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    top = -np.sort(-logp, axis=-1)[..., :20]
    got = top_logprob_indices(top)
    np.testing.assert_allclose(got["one_minus_max_p"], one_minus_max_p(logits), rtol=1e-10)
    np.testing.assert_allclose(got["top2_margin"], top2_margin(logits), rtol=1e-10)
    np.testing.assert_allclose(got["nmlp"], nmlp_confidence(logits), rtol=1e-10)


def test_pass_indices_of_a_trajectory():
    pair = CandidatePair(text=AnswerTokens("blue", (1,), ((1,),)), vision=AnswerTokens("red", (2,), ((2,),)),
                         prefix=(), text_ids=frozenset({1}), vision_ids=frozenset({2}))
    z = np.random.default_rng(0).normal(size=(3, 40))
    z[-1, 1], z[-1, 2] = 4.0 + math.log(3.0), 4.0  # p_text / p_vision = 3 at the last layer: q = 3/4
    got = pass_indices(trajectory_from_logits(pair, z))
    assert got["h_cand"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert got["one_minus_max_p"] == pytest.approx(float(one_minus_max_p(z[-1])))
    assert got["margin"] == pytest.approx(float(top2_margin(z[-1])))
    assert got["nmlp"] == pytest.approx(float(nmlp_confidence(z[-1])))


def test_relative_index_is_oriented_like_dh_rel():
    assert relative_index("entropy", 1.0, 3.0) == pytest.approx(2 * (1 - 3) / 4)  # text surer: negative
    assert relative_index("nmlp", 3.0, 1.0) == pytest.approx(2 * (1 - 3) / 4)  # confidence: text surer, negative
    assert relative_index("top2_margin", 0.0, 0.0) == 0.0  # the zero guard
    with pytest.raises(ValueError, match="unknown index"):
        relative_index("variance", 1.0, 1.0)


def _relative_by_hand(frame: pd.DataFrame, name: str) -> pd.Series:
    index = {i.name: i for i in INDICES}[name]
    v, t = frame[index.vision_column], frame[index.text_column]
    return 2 * (v - t) / (v + t) if index.confidence else 2 * (t - v) / (t + v)


def test_per_index_balance_points_agree_with_statsmodels():
    cases, _ = synthetic_rows(n_conflict=600, n_controls=0, seed=2)
    summary = summarise(cases, seed=0, n_boot=200)
    frame = pd.DataFrame(cases)
    frame = frame[frame.control.isna() & frame.kept & frame.label.isin(["text", "vision"])]
    y = (frame.label == "text").astype(float)
    for index in INDICES:
        x = _relative_by_hand(frame, index.name)
        fit = sm.Logit(y.to_numpy(), sm.add_constant(x.to_numpy())).fit(disp=0)
        a, b = fit.params
        entry = summary["indices"][index.name]
        assert entry["status"] == "ok", index.name
        assert entry["balance_point"] == pytest.approx(-a / b, abs=1e-3), index.name
        assert entry["spearman_rho"] == pytest.approx(x.corr(y, method="spearman"), abs=1e-9), index.name
        lo, hi = entry["balance_point_ci"]
        assert lo < entry["balance_point"] < hi
    assert summary["indices"]["entropy"]["balance_point"] == summary["balance_point"]  # dH_rel itself
    assert summary["indices"]["entropy"]["balance_point_ci"] == summary["balance_point_ci"]


def test_rows_without_index_columns_are_reported_not_recorded():
    cases, _ = synthetic_rows(n_conflict=200, n_controls=0, seed=1)
    old = [{k: v for k, v in c.items() if not k.startswith(("h_cand", "one_minus", "margin", "nmlp"))} for c in cases]
    entry = summarise(old, seed=0, n_boot=50)["indices"]["nmlp"]
    assert entry["status"] == "not_recorded" and entry["balance_point"] is None and "older" in entry["note"]
