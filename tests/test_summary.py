"""interp.summary: summary.json values against hand counts and the simulated truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats

from modality_lens.rows import CASE_SCHEMA
from interp.summary import REQUIRED_KEYS, summarise
from tests.simulated import BALANCE, synthetic_rows

NAN = math.nan
# id, control, visual tier, text tier, vision_correct, text_correct, h_v, h_t, label, drop reason, oscillations
HAND = [
    ("a1", None, 0, 0, True, True, 0.5, 1.5, "text", None, 1),
    ("a2", None, 0, 1, True, True, 1.0, 1.0, "vision", None, 0),
    ("a3", None, 1, 0, True, True, 2.0, 0.5, "text", None, 2),
    ("a4", None, 1, 1, False, True, 2.5, 1.0, "vision", "vision_wrong", 3),
    ("a5", None, 1, 1, True, False, 1.5, 3.0, "text", "text_wrong", None),
    ("a6", None, 0, 0, False, False, NAN, 0.5, "other", "both_wrong", 0),
    ("a7", None, 2, 0, True, True, 0.0, 0.0, "other", None, 1),
    ("a8", None, 2, 1, True, True, 1.0, 2.0, "text", None, 2),
    ("c1", "text_irrelevant", 0, 0, True, False, 0.5, 2.0, "vision", "text_wrong", 0),
    ("c2", "text_irrelevant", 1, 0, True, False, 0.5, 2.0, "vision", "text_wrong", 1),
    ("c3", "text_irrelevant", 2, 0, True, False, 0.5, 2.0, "text", "text_wrong", 1),
    ("c4", "image_irrelevant", 0, 0, False, True, 2.0, 0.5, "text", "vision_wrong", 2),
    ("c5", "image_irrelevant", 0, 1, False, True, 2.0, 0.5, "text", "vision_wrong", None),
]


def hand_rows():
    rows = []
    for cid, control, vt, tt, vc, tc, hv, ht, label, reason, osc in HAND:
        total = hv + ht
        dh = 0.0 if total == 0 else (NAN if math.isnan(total) else 2 * (ht - hv) / total)
        rows.append({"case_id": cid, "group_id": "g", "visual_tier": vt, "text_tier": tt, "control": control,
                     "image_answer": "red", "text_answer": "blue", "y_v": "", "y_t": "", "y_m": "",
                     "vision_correct": vc, "text_correct": tc, "h_v": hv, "h_t": ht, "dh_rel": dh,
                     "label": label, "kept": reason is None and control is None, "drop_reason": reason,
                     "oscillations": osc})
    return rows


def wilson(k, n):
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [ci.low, ci.high]


def test_hand_table():
    s = summarise(hand_rows(), seed=0, n_boot=200)
    json.loads(json.dumps(s, allow_nan=False))
    for key in REQUIRED_KEYS:
        assert key in s
    assert (s["n_cases"], s["n_conflict"], s["n_kept"]) == (13, 8, 5)
    assert s["n_controls"] == {"text_irrelevant": 3, "image_irrelevant": 2}
    f = s["filter"]
    assert f["dropped"] == {"both_wrong": 1, "vision_wrong": 1, "text_wrong": 1, "not_conflict": 0}
    assert f["labels_kept"] == {"text": 3, "vision": 1, "other": 1}
    assert (f["n_curve"], f["n_other_excluded"], f["n_zero_entropy"]) == (4, 1, 1)
    assert s["tfr"] == pytest.approx(3 / 4) and s["vfr"] == pytest.approx(1 / 4)

    # 4 curve cases < 10: no curve, no balance point, no region, no invented oscillation mean
    assert s["curve_status"] == "too_few_cases"
    assert s["balance_point"] is None and s["balance_point_ci"] is None
    osc = s["oscillation"]
    assert osc["ambiguous"] == {"mean": None, "ci": None, "n": 0}
    assert osc["clear"] == {"mean": None, "ci": None, "n": 0}
    assert osc["n_unassigned"] == 5 and "no balance point" in osc["note"]

    ctrl = s["controls"]
    assert ctrl["text_irrelevant"]["n"] == 3 and ctrl["text_irrelevant"]["mean"] == pytest.approx(2 / 3)
    lo, hi = ctrl["text_irrelevant"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1
    image = ctrl["image_irrelevant"]
    assert (image["n_cases"], image["n"], image["mean"], image["ci"]) == (2, 1, 2.0, None)  # c5 has no count
    assert ctrl["text_irrelevant"]["labels"] == {"text": 1, "vision": 2, "other": 0}

    visual = {t["tier"]: t for t in s["tiers"]["visual"]}
    assert visual[0]["n"] == 3 and visual[0]["accuracy"] == pytest.approx(2 / 3)
    assert visual[0]["accuracy_ci"] == pytest.approx(wilson(2, 3))
    assert visual[0]["mean_entropy"] == pytest.approx(0.75) and visual[0]["n_entropy"] == 2  # NaN H_v left out
    assert visual[1]["accuracy"] == pytest.approx(2 / 3) and visual[1]["mean_entropy"] == pytest.approx(2.0)
    assert visual[1]["sd_entropy"] == pytest.approx(0.5)
    assert visual[2]["accuracy"] == 1.0 and visual[2]["mean_entropy"] == pytest.approx(0.5)
    assert [visual[t]["tfr"] for t in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    text = {t["tier"]: t for t in s["tiers"]["text"]}
    assert text[0]["accuracy"] == pytest.approx(3 / 4) and text[0]["mean_entropy"] == pytest.approx(0.625)
    assert text[1]["accuracy"] == pytest.approx(3 / 4) and text[1]["mean_entropy"] == pytest.approx(1.75)
    assert text[1]["accuracy_ci"] == pytest.approx(wilson(3, 4))


def test_inconsistent_or_repeated_rows_are_refused():
    rows = hand_rows()
    with pytest.raises(ValueError, match="drop_reason"):
        summarise([{**rows[0], "drop_reason": "text_wrong"}] + rows[1:], seed=0)
    with pytest.raises(ValueError, match="a2"):
        summarise(rows + [rows[1]], seed=0)
    with pytest.raises(ValueError, match="h_t"):
        summarise([{k: v for k, v in r.items() if k != "h_t"} for r in rows], seed=0)


def test_no_kept_case():
    rows = [{**r, "kept": False, "drop_reason": r["drop_reason"] or "both_wrong"} for r in hand_rows()]
    s = summarise(rows, seed=0, n_boot=50)
    json.dumps(s, allow_nan=False)
    assert s["n_kept"] == 0 and s["tfr"] is None and s["balance_point"] is None
    assert s["oscillation"]["ambiguous"]["mean"] is None
    assert any("TFR undefined" in n for n in s["notes"])


# --------------------------------------------------------------------------- simulated run
@pytest.fixture(scope="module")
def simulated():
    cases, _ = synthetic_rows(n_conflict=400, n_controls=20, seed=0)
    return cases, summarise(cases, seed=0, n_boot=300)


def test_valid_json_with_required_keys(simulated):
    _, s = simulated
    text = json.dumps(s, allow_nan=False)
    again = json.loads(text)
    assert set(REQUIRED_KEYS) <= set(again)
    assert set(again["oscillation"]["ambiguous"]) >= {"mean", "ci", "n"}
    assert again["curve"]["status"] == again["curve_status"] == "ok"
    assert again["curve"]["bins"] and again["curve"]["note"] is None


def test_balance_point_near_the_simulated_truth(simulated):
    _, s = simulated
    bp, (lo, hi) = s["balance_point"], s["balance_point_ci"]
    assert abs(bp - BALANCE) < 0.15
    assert lo < BALANCE < hi and hi - lo < 0.5
    assert abs(s["isotonic_balance_point"] - BALANCE) < 0.3
    assert s["spearman_rho"] < -0.5
    assert s["monotonicity"]["share_decreasing"] >= 0.5


def test_counts_and_tfr_by_hand(simulated):
    cases, s = simulated
    conflict = [c for c in cases if c["control"] is None]
    kept = [c for c in conflict if c["kept"]]
    n_text = sum(c["label"] == "text" for c in kept)
    n_vision = sum(c["label"] == "vision" for c in kept)
    assert s["n_kept"] == len(kept) and s["n_conflict"] == 400 and s["n_cases"] == 440
    assert s["tfr"] == pytest.approx(n_text / (n_text + n_vision))
    assert s["curve"]["n"] == n_text + n_vision and s["curve"]["n_text"] == n_text
    assert s["filter"]["n_other_excluded"] == len(kept) - n_text - n_vision > 0
    assert sum(s["filter"]["dropped"].values()) + s["n_kept"] == 400
    for tier in s["tiers"]["visual"]:
        rows = [c for c in conflict if c["visual_tier"] == tier["tier"]]
        assert tier["accuracy"] == pytest.approx(np.mean([c["vision_correct"] for c in rows]))
        assert tier["mean_entropy"] == pytest.approx(np.mean([c["h_v"] for c in rows]))
    for tier in s["tiers"]["text"]:
        rows = [c for c in conflict if c["text_tier"] == tier["tier"]]
        assert tier["accuracy"] == pytest.approx(np.mean([c["text_correct"] for c in rows]))
        assert tier["mean_entropy"] == pytest.approx(np.mean([c["h_t"] for c in rows]))
    # the simulation makes vision harder with the visual tier: the summary must show it
    acc = [t["accuracy"] for t in s["tiers"]["visual"]]
    assert acc[0] > acc[-1]


def test_oscillation_regions_by_hand(simulated):
    cases, s = simulated
    bp = s["balance_point"]
    kept = [c for c in cases if c["control"] is None and c["kept"]]
    dh = np.array([c["dh_rel"] for c in kept])
    k = np.array([c["oscillations"] for c in kept], dtype=float)
    amb = np.abs(dh - bp) <= 0.5
    o = s["oscillation"]
    assert o["ambiguous"]["n"] == amb.sum() and o["clear"]["n"] == (~amb).sum()
    assert o["ambiguous"]["mean"] == pytest.approx(k[amb].mean())
    assert o["clear"]["mean"] == pytest.approx(k[~amb].mean())
    assert o["difference"] == pytest.approx(k[amb].mean() - k[~amb].mean())
    # simulated: 2-3 switches near the true balance point, 0-1 away from it
    assert o["ambiguous"]["mean"] > o["clear"]["mean"] + 1
    assert o["ambiguous"]["ci"][0] <= o["ambiguous"]["mean"] <= o["ambiguous"]["ci"][1]
    for name in ("text_irrelevant", "image_irrelevant"):
        ctrl = [c["oscillations"] for c in cases if c["control"] == name]
        assert s["controls"][name]["n"] == 20
        assert s["controls"][name]["mean"] == pytest.approx(np.mean(ctrl))


def test_region_width_parameter(simulated):
    cases, s = simulated
    wide = summarise(cases, seed=0, n_boot=50, region_width=5.0)  # every dH_rel lies within 4 of anything
    assert wide["oscillation"]["clear"]["n"] == 0
    assert wide["oscillation"]["ambiguous"]["n"] == s["n_kept"]
    assert wide["parameters"]["region_width"] == 5.0


def test_robustness_split(simulated):
    cases, s = simulated
    r = s["robustness"]
    curve = [c for c in cases if c["control"] is None and c["kept"] and c["label"] != "other"]
    assert r["median_total_entropy"] == pytest.approx(np.median([c["h_v"] + c["h_t"] for c in curve]))
    assert r["low"]["n"] + r["high"]["n"] == len(curve)


def test_other_answers_do_not_move_the_curve(simulated):
    cases, s = simulated
    extra = [{**cases[0], "case_id": f"z{i}", "label": "other", "kept": True, "drop_reason": None, "control": None,
              "dh_rel": -1.0 + 0.1 * i} for i in range(20)]
    s2 = summarise(cases + extra, seed=0, n_boot=300)
    assert s2["balance_point"] == s["balance_point"] and s2["balance_point_ci"] == s["balance_point_ci"]
    assert s2["filter"]["n_other_excluded"] == s["filter"]["n_other_excluded"] + 20
    assert s2["tfr"] == s["tfr"]


def test_input_form_and_order_do_not_matter(simulated):
    cases, s = simulated
    small = cases[:150]
    base = summarise(small, seed=4, n_boot=100)
    shuffled = [small[i] for i in np.random.default_rng(1).permutation(len(small))]
    assert summarise(shuffled, seed=4, n_boot=100) == base
    table = pa.Table.from_pylist(small, schema=CASE_SCHEMA)
    assert summarise(table, seed=4, n_boot=100) == base
    assert summarise(table.to_pydict(), seed=4, n_boot=100) == base
    other_seed = summarise(small, seed=5, n_boot=100)
    assert other_seed["balance_point"] == base["balance_point"]
    assert other_seed["balance_point_ci"] != base["balance_point_ci"]
    assert other_seed["parameters"]["seed"] == 5
