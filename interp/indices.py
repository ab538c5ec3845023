"""Alternative uncertainty indices per case, and the following curve of each (METHOD §1.2-1.4).

The law is stated for the full-vocabulary entropy; the later version of the paper says it holds
"across diverse uncertainty indices". Each index is read at the answer position of the last
layer of the vision-only pass (``_v``) and of the text-only pass (``_t``):

======================  =============  ============================================  ===========
name                    columns        per pass                                      direction
======================  =============  ============================================  ===========
``entropy``             h_v, h_t       Shannon entropy, full vocabulary, nats        uncertainty
``candidate_entropy``   h_cand_v/_t    entropy over the case's two candidate         uncertainty
                                       answers, renormalised, nats (in [0, ln 2])
``one_minus_max_p``     one_minus_max  ``1 - max_y p(y)``, full vocabulary           uncertainty
                        _p_v/_t
``top2_margin``         margin_v/_t    ``p_(1) - p_(2)``, full vocabulary            confidence
``nmlp``                nmlp_v/_t      ``-(1/20) sum log p_(i)`` over the top 20      confidence
======================  =============  ============================================  ===========

**[ours]** The candidates of ``candidate_entropy`` are the case's two answers (the image answer
and the text answer, each the sum over its first-token ids): ``q = p_text / (p_text + p_vision)``
and ``H = -q ln q - (1 - q) ln(1 - q)``. The run's other answer words are not used, because
which of them a lens row carries would depend on the batch. The margin is between the two most
probable tokens of the vocabulary, as :func:`interp.uncertainty.top2_margin` defines it.

**Relative index [ours]**, oriented like dH_rel so that negative means *more certain from the
text* for every index: an uncertainty ``U`` gives ``2 (U_t - U_v) / (U_t + U_v)``, a confidence
``C`` gives ``2 (C_v - C_t) / (C_v + C_t)``; both in [-2, 2], 0 when both are 0 (the dH_rel zero
guard). For ``entropy`` it is dH_rel itself. The following curve of each index is
:func:`interp.curves.fit_following` of its relative index on the cases of the main curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from interp.curves import fit_following
from interp.logit_lens import Trajectory
from interp.uncertainty import NMLP_TOP_K, dh_rel, entropy, top_logprob_indices

__all__ = ["INDICES", "Index", "index_curves", "pass_indices", "relative_index"]


@dataclass(frozen=True)
class Index:
    """One uncertainty index: its name, the case columns of its two passes, and its direction."""

    name: str
    vision_column: str
    text_column: str
    confidence: bool
    definition: str

    def relative(self, value_t: Any, value_v: Any) -> Any:
        """The relative index, negative = more certain from the text (module docstring)."""
        return dh_rel(value_v, value_t) if self.confidence else dh_rel(value_t, value_v)


INDICES: tuple[Index, ...] = (
    Index("entropy", "h_v", "h_t", False, "Shannon entropy over the full vocabulary (nats); relative form dH_rel"),
    Index("candidate_entropy", "h_cand_v", "h_cand_t", False,
          "entropy over the two candidate answers, renormalised (nats)"),
    Index("one_minus_max_p", "one_minus_max_p_v", "one_minus_max_p_t", False, "1 - max p over the full vocabulary"),
    Index("top2_margin", "margin_v", "margin_t", True, "p(top 1) - p(top 2) over the full vocabulary (confidence)"),
    Index("nmlp", "nmlp_v", "nmlp_t", True,
          f"NMLP: -(1/{NMLP_TOP_K}) sum of the top-{NMLP_TOP_K} log-probs (nats; confidence)"),
)
"""Every index, the headline entropy first."""

_BY_NAME = {i.name: i for i in INDICES}


def relative_index(name: str, value_t: Any, value_v: Any) -> Any:
    """The relative form of index ``name`` (:data:`INDICES`) from its text-only and vision-only values."""
    try:
        return _BY_NAME[name].relative(value_t, value_v)
    except KeyError:
        raise ValueError(f"unknown index {name!r}; choose from {[i.name for i in INDICES]}") from None


def pass_indices(traj: Trajectory) -> dict[str, float | None]:
    """The alternative indices of one pass at its last layer: candidate entropy, 1 - max p, margin, NMLP.

    Keys are the suffix-free column stems (``h_cand``, ``one_minus_max_p``, ``margin``, ``nmlp``);
    the last three are None when the lens kept fewer than 20 top log-probs (a top-1 lens), the
    margin also with fewer than two.
    """
    two = np.array([float(traj.logit_diff[-1]), 0.0])  # candidate logits up to a shared constant
    h_cand = float(entropy(two)) if np.isfinite(two).all() else None
    out: dict[str, float | None] = {"h_cand": h_cand, "one_minus_max_p": None, "margin": None, "nmlp": None}
    if traj.top_logp is not None and traj.top_logp.shape[-1] >= 1:
        top = traj.top_logp[-1]
        values = top_logprob_indices(top)
        out["one_minus_max_p"] = float(values["one_minus_max_p"])
        if top.size >= 2:
            out["margin"] = float(values["top2_margin"])
        if top.size >= NMLP_TOP_K:
            out["nmlp"] = float(values["nmlp"])
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in out.items()}


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    return np.array([math.nan if r.get(name) is None else float(r[name]) for r in rows], dtype=np.float64)


def index_curves(curve_rows: Sequence[Mapping[str, Any]], *, n_boot: int, seed: int,
                 ci_level: float = 0.95) -> dict[str, Any]:
    """Per index, the following curve of its relative form over ``curve_rows`` (the main curve's cases).

    Returns ``{name: {"definition", "direction", "columns", "n", "n_missing", "status",
    "balance_point", "balance_point_ci", "isotonic_balance_point", "spearman_rho", "spearman_p",
    "a", "b", "bins", "note"}}``; an index whose columns the rows lack (a run directory written
    before they were recorded) has ``status "not_recorded"`` and None numbers.
    """
    y = np.array([r["label"] == "text" for r in curve_rows], dtype=bool)
    out: dict[str, Any] = {}
    for index in INDICES:
        entry: dict[str, Any] = {"definition": index.definition,
                                 "direction": "confidence" if index.confidence else "uncertainty",
                                 "columns": [index.vision_column, index.text_column]}
        if curve_rows and not all(index.vision_column in r and index.text_column in r for r in curve_rows):
            out[index.name] = {**entry, "n": 0, "n_missing": len(curve_rows), "status": "not_recorded",
                               "balance_point": None, "balance_point_ci": None, "isotonic_balance_point": None,
                               "spearman_rho": None, "spearman_p": None, "a": None, "b": None, "bins": [],
                               "note": f"columns {entry['columns']} not recorded (a run directory from an older "
                                       "modality-lens); rerun into a new --out to get them"}
            continue
        v, t = _column(curve_rows, index.vision_column), _column(curve_rows, index.text_column)
        ok = np.isfinite(v) & np.isfinite(t)
        x = np.full(v.size, np.nan)
        if ok.any():
            x[ok] = index.relative(t[ok], v[ok])
        curve = fit_following(x, y, n_boot=n_boot, seed=seed, ci_level=ci_level).to_dict()
        out[index.name] = {**entry, "n": curve["n"], "n_missing": int((~ok).sum()), "status": curve["status"],
                           **{k: curve[k] for k in ("balance_point", "balance_point_ci", "isotonic_balance_point",
                                                    "spearman_rho", "spearman_p", "a", "b", "bins", "note")}}
    return out
