"""interp.following: answer normalisation, labels, TFR/VFR and the correct-in-both filter."""

from __future__ import annotations

import json

import pytest

from interp.errors import CaseError
from interp.following import correct_in_both, label_following, matches, normalise_answer, tfr_shift_ci, tfr_vfr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Red", "red"),
        ("  RED.  ", "red"),
        ("red!", "red"),
        ("Light-Blue", "light blue"),
        ("light   blue\n", "light blue"),
        ("\uff32\uff45\uff44", "red"),  # full-width letters
        ("peacock's", "peacocks"),
        ('"Yellow"', "yellow"),
        ("...", ""),
    ],
)
def test_normalise_answer(raw, expected):
    assert normalise_answer(raw) == expected


def test_matches_uses_synonyms_and_exact_words():
    assert matches("Crimson.", ["red", "crimson"])
    assert matches("red", "Red")  # a single string is a one-word list
    assert not matches("reddish", ["red"])
    assert not matches("the colour is red", ["red"])
    assert not matches("", ["red"])
    assert not matches("!", ["!"])  # punctuation-only normalises to nothing


def test_label_following():
    img, txt = ["red", "crimson"], ["blue", "navy"]
    assert label_following("Red.", img, txt) == "vision"
    assert label_following("crimson", img, txt) == "vision"
    assert label_following(" NAVY ", img, txt) == "text"
    assert label_following("green", img, txt) == "other"
    assert label_following("", img, txt) == "other"


def test_label_following_answer_matching_both_lists_raises():
    with pytest.raises(CaseError, match="both"):
        label_following("purple", ["red", "purple"], ["Purple", "blue"])
    # the shared word does not matter while the answer avoids it
    assert label_following("red", ["red", "purple"], ["purple", "blue"]) == "vision"


def test_tfr_vfr_leaves_other_out_of_the_denominator():
    r = tfr_vfr(["text", "text", "vision", "other", "other", "other"])
    assert (r.n_text, r.n_vision, r.n_other) == (2, 1, 3)
    assert r.tfr == pytest.approx(2 / 3)
    assert r.vfr == pytest.approx(1 / 3)
    assert r.note is None


def test_tfr_vfr_empty_denominator_is_none_with_note():
    for labels in (["other", "other"], []):
        r = tfr_vfr(labels)
        assert r.tfr is None and r.vfr is None
        assert "undefined" in r.note
        json.dumps(r.to_dict(), allow_nan=False)


def test_tfr_vfr_rejects_unknown_labels():
    with pytest.raises(ValueError, match="unknown"):
        tfr_vfr(["text", "Text"])


def test_correct_in_both_keeps_and_explains():
    # case: (y_v, y_t, image answers, text answers) -> expected reason
    cases = [
        ("red", "blue", ["red"], ["blue"], None),
        ("Crimson", "navy.", ["red", "crimson"], ["blue", "navy"], None),
        ("green", "blue", "red", "blue", "vision_wrong"),
        ("red", "green", "red", "blue", "text_wrong"),
        ("green", "green", "red", "blue", "both_wrong"),
        ("red", "Red", "red", "red", "not_conflict"),  # Y_v == Y_t
        ("red", "blue", ["red", "purple"], ["blue", "purple"], "not_conflict"),  # lists share a word
    ]
    res = correct_in_both(*(list(col) for col in zip(*(c[:4] for c in cases))))
    expected = [c[4] for c in cases]
    assert list(res.reasons) == expected
    assert res.kept == tuple(r is None for r in expected)
    assert res.kept_indices == (0, 1)
    assert (res.n_total, res.n_kept) == (7, 2)
    assert res.dropped == {"both_wrong": 1, "vision_wrong": 1, "text_wrong": 1, "not_conflict": 2}
    assert res.n_kept + sum(res.dropped.values()) == res.n_total
    json.dumps(res.to_dict(), allow_nan=False)


def test_correct_in_both_checks_lengths_and_empty_lists():
    with pytest.raises(ValueError, match="one entry per case"):
        correct_in_both(["red"], ["blue", "red"], ["red"], ["blue"])
    with pytest.raises(CaseError, match="empty"):
        correct_in_both(["red"], ["blue"], [[]], ["blue"])


def test_tfr_shift_interval_is_paired_and_says_when_it_cannot_be_computed():
    """Every case moves from vision to text: each paired resample's shift is exactly 1 (an
    unpaired one would scatter); the cases left out by `keep` do not enter; an undefined TFR
    gives no interval; labels of unequal length are refused."""
    before = ["vision"] * 10 + ["text"] * 3
    after = ["text"] * 10 + ["vision"] * 3
    keep = [True] * 10 + [False] * 3
    assert tfr_shift_ci(after, before, keep, n_boot=500) == (1.0, 1.0)
    lo, hi = tfr_shift_ci(after, before, n_boot=500)  # all 13: TFR 3/13 -> 10/13
    assert lo < 10 / 13 - 3 / 13 < hi
    assert tfr_shift_ci(["other"] * 3, ["text"] * 3) is None
    with pytest.raises(ValueError, match="one label per case"):
        tfr_shift_ci(["text"], ["text", "vision"])
