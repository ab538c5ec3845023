"""Which modality a conflict answer follows, the macro ratios, and the correct-in-both filter (METHOD §1.1).

Answers are compared after :func:`normalise_answer`, against candidate lists: the dataset's
answer for a modality plus its synonyms (MC²-style ``answer_img_candidate_list`` /
``answer_text_candidate_list``) **[ours]**. A candidate list may be given as one string.
Matching is exact after normalisation: "Red." matches "red", but "The colour is red" does not
(the prompt asks for one word, and a substring rule would make "reddish orange" follow both).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from interp.errors import CaseError
from interp.results import CorrectInBoth, FollowingRatios
from interp.vocabulary import LABELS, Label, normalise_answer

__all__ = [
    "DROP_REASONS",
    "Label",
    "correct_in_both",
    "label_following",
    "matches",
    "normalise_answer",
    "tfr_shift_ci",
    "tfr_vfr",
]

DROP_REASONS: tuple[str, ...] = ("both_wrong", "vision_wrong", "text_wrong", "not_conflict")
"""Why :func:`correct_in_both` drops a case, in the order the checks are made."""

Candidates = str | Iterable[str]


def _normalised_set(candidates: Candidates) -> frozenset[str]:
    if isinstance(candidates, str):
        candidates = [candidates]
    out = frozenset(normalise_answer(c) for c in candidates)
    return out - {""}


def matches(answer: str, candidates: Candidates) -> bool:
    """True when ``answer`` equals one of ``candidates`` after :func:`normalise_answer`.

    An answer that normalises to the empty string (only punctuation or whitespace) matches
    nothing.
    """
    a = normalise_answer(answer)
    return bool(a) and a in _normalised_set(candidates)


def label_following(y_m: str, image_candidates: Candidates, text_candidates: Candidates) -> Label:
    """Label the conflict-pass answer ``Y_m``: ``"vision"``, ``"text"`` or ``"other"`` (METHOD §1.1).

    ``"vision"`` when ``Y_m`` matches the image answer or one of its synonyms, ``"text"`` when
    it matches the text answer's, else ``"other"``.

    Raises:
        CaseError: ``Y_m`` matches **both** lists. **[ours]** Such an answer supports both
            modalities, so it cannot be attributed to either, and calling it "other" would
            hide a malformed case: the two candidate lists share a word and the case is not a
            clean conflict. :func:`correct_in_both` drops such cases ("not_conflict") when
            ``Y_v`` and ``Y_t`` land on the shared word; otherwise fix the candidate lists.
    """
    vision = matches(y_m, image_candidates)
    text = matches(y_m, text_candidates)
    if vision and text:
        shared = sorted(_normalised_set(image_candidates) & _normalised_set(text_candidates))
        raise CaseError(
            f"answer {y_m!r} matches both the image and the text candidates (shared: {shared}); "
            "the case is not a clean conflict: remove the shared word from one list or drop the case"
        )
    if vision:
        return "vision"
    if text:
        return "text"
    return "other"


def tfr_vfr(labels: Iterable[str]) -> FollowingRatios:
    """Text- and vision-following ratios: ``TFR = #text / (#text + #vision)``, ``VFR = 1 - TFR``.

    "other" labels are counted (``n_other``) but left out of the denominator (METHOD §1.1).
    When there is no text- or vision-following label at all the ratios are ``None`` (not 0,
    not NaN) and ``note`` says why.

    Raises:
        ValueError: a label other than "vision", "text", "other".
    """
    counts = {label: 0 for label in LABELS}
    for label in labels:
        if label not in counts:
            raise ValueError(f"unknown following label {label!r}; expected one of {LABELS}")
        counts[label] += 1
    denominator = counts["text"] + counts["vision"]
    if denominator == 0:
        return FollowingRatios(
            n_text=0,
            n_vision=0,
            n_other=counts["other"],
            tfr=None,
            vfr=None,
            note=f"no text- or vision-following answer among {counts['other']} labels; TFR undefined",
        )
    tfr = counts["text"] / denominator
    return FollowingRatios(
        n_text=counts["text"], n_vision=counts["vision"], n_other=counts["other"], tfr=tfr, vfr=1.0 - tfr
    )


def tfr_shift_ci(after: Sequence[str], before: Sequence[str], keep: Sequence[bool] | None = None, *,
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Paired percentile bootstrap interval of ``TFR(after) - TFR(before)``.

    ``after[i]`` and ``before[i]`` label the same case under two conditions (an intervention
    and none); the cases (those with ``keep[i]``, all by default) are resampled together for
    both, so the interval reflects only how the cases that change are drawn. None when either
    TFR is undefined or a resample leaves it undefined in more than 5% of the draws.
    """
    if len(after) != len(before) or (keep is not None and len(keep) != len(after)):
        raise ValueError(f"need one label per case under each condition (and one keep flag each): "
                         f"{len(after)}, {len(before)}" + ("" if keep is None else f", {len(keep)}"))
    idx = np.arange(len(after)) if keep is None else np.flatnonzero(np.asarray(keep, dtype=bool))
    if tfr_vfr(after[i] for i in idx).tfr is None or tfr_vfr(before[i] for i in idx).tfr is None:
        return None
    draws = idx[np.random.default_rng(seed).integers(0, len(idx), size=(n_boot, len(idx)))]

    def tfr(labels: Sequence[str]) -> np.ndarray:
        lab = np.asarray(labels)
        text = (lab[draws] == "text").sum(1)
        both = text + (lab[draws] == "vision").sum(1)
        return np.where(both > 0, text / np.maximum(both, 1), np.nan)

    shift = tfr(after) - tfr(before)
    ok = shift[np.isfinite(shift)]
    if len(ok) < 0.95 * n_boot:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(ok, tail)), float(np.percentile(ok, 100 - tail))


def correct_in_both(
    y_v: Sequence[str],
    y_t: Sequence[str],
    image_candidates: Sequence[Candidates],
    text_candidates: Sequence[Candidates],
) -> CorrectInBoth:
    """Keep the conflict cases that the model answers correctly in both unimodal passes (METHOD §1.1).

    Case ``i`` is kept when ``y_v[i]`` (vision-only answer) matches ``image_candidates[i]``,
    ``y_t[i]`` (text-only answer) matches ``text_candidates[i]``, and the case is a conflict.
    Every other case gets exactly one reason, checked in this order:

    - ``"both_wrong"``: neither unimodal answer is correct;
    - ``"vision_wrong"``: only the vision-only answer is wrong;
    - ``"text_wrong"``: only the text-only answer is wrong;
    - ``"not_conflict"``: both are correct but the case is no conflict: ``Y_v == Y_t`` after
      normalisation, or **[ours]** the two candidate lists share a word (then some answer
      would follow both modalities and :func:`label_following` could not label it).

    Args:
        y_v, y_t: one answer per case.
        image_candidates, text_candidates: per case, the image / text answer and synonyms
            (a string or a list of strings).

    Returns:
        :class:`~interp.results.CorrectInBoth` with the kept mask, a reason per case and the
        count per reason.
    """
    n = len(y_v)
    if not (len(y_t) == len(image_candidates) == len(text_candidates) == n):
        raise ValueError(
            "y_v, y_t, image_candidates and text_candidates need one entry per case; got lengths "
            f"{n}, {len(y_t)}, {len(image_candidates)}, {len(text_candidates)}"
        )
    reasons: list[str | None] = []
    for v, t, img, txt in zip(y_v, y_t, image_candidates, text_candidates):
        img_set, txt_set = _normalised_set(img), _normalised_set(txt)
        if not img_set or not txt_set:
            raise CaseError("a case has an empty image or text candidate list; every case needs both answers")
        v_ok = normalise_answer(v) in img_set
        t_ok = normalise_answer(t) in txt_set
        if not v_ok and not t_ok:
            reasons.append("both_wrong")
        elif not v_ok:
            reasons.append("vision_wrong")
        elif not t_ok:
            reasons.append("text_wrong")
        elif normalise_answer(v) == normalise_answer(t) or img_set & txt_set:
            reasons.append("not_conflict")
        else:
            reasons.append(None)
    kept = tuple(r is None for r in reasons)
    return CorrectInBoth(
        kept=kept,
        reasons=tuple(reasons),
        n_total=n,
        n_kept=sum(kept),
        dropped={reason: reasons.count(reason) for reason in DROP_REASONS},
    )
