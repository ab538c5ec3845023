"""summary.json of a run: every number of METHOD §1 computed from the case rows alone.

:func:`summarise` is pure: it reads case rows (the columns of
:data:`modality_lens.rundir.CASE_SCHEMA`) and returns a JSON-ready dict; no file is touched.
Rows are put in ``case_id`` order first, so the result depends only on the set of cases and
the seed, not on the order in which a (possibly interrupted and resumed) run recorded them.

Which cases enter which number **[ours where METHOD is silent]**:

- **conflict cases**: rows with ``control`` None. Controls ("text_irrelevant",
  "image_irrelevant") enter only ``n_controls`` and ``controls``.
- **filter**: among conflict cases, ``kept`` is the correct-in-both filter; ``filter.dropped``
  counts every ``drop_reason``.
- **TFR / VFR**: labels of the kept conflict cases ("other" counted, out of the denominator).
- **following curve**: kept conflict cases labelled "text" or "vision", with
  ``follows_text = label == "text"``. Kept cases labelled "other" follow neither modality
  and are left out of the curve (counted in ``filter.n_other_excluded``); calling them
  "not text" would pull the curve down wherever the model answers off-target.
- **oscillation**: every kept conflict case with a switch count, "other" included (the
  trajectory between the two modalities exists whatever the final answer). Region
  "ambiguous" when ``|dH_rel - balance_point| <= region_width``, else "clear". Without a
  balance point no region exists: the means are None and ``oscillation.note`` says why (no
  region is centred on 0 by default).
- **controls**: every control row with a switch count, whatever its ``kept``: the control's
  point is the oscillation of a case with nothing to resolve.
- **alternative indices** (``indices``, `interp.indices`): the following curve of each index's
  relative form over the cases of the main curve; a row without an index's columns (an older
  run) gives a null there, counted in ``n_missing``.
- **layers** (given ``layers``, the run's layer rows): every switch count is recounted from the
  conflict-pass rows over the counted lens positions (``counted_layers``; default every decoder
  layer, which is the recorded ``oscillations``), and ``oscillation_depth`` holds the
  by-outcome and by-layer comparison and the constant-layer diagnostic (`interp.depth`);
  ``oscillation_without_constant`` is the headline comparison with the constant layers left out.
- **tiers**: all conflict cases (before the filter, which depends on the very correctness
  reported here): per visual tier the vision-only pass (``vision_correct``, ``H_v``), per
  text tier the text-only pass (``text_correct``, ``H_t``); accuracy with a Wilson interval,
  entropy mean and SD in nats; plus the TFR of the kept cases of that tier. Cases that share
  an image under several text tiers each count once per case.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from interp.curves import fit_following, robustness_split, wilson_interval
from interp.depth import conflict_switches, layer_columns, oscillation_depth
from interp.following import DROP_REASONS, tfr_vfr
from interp.indices import index_curves
from interp.oscillation import AMBIGUOUS_WIDTH, compare_regions, region_entry, region_labels, summarise_oscillations
from interp.results import _jsonable
from interp.vocabulary import CONTROLS, LABELS

__all__ = ["AMBIGUOUS_WIDTH", "REQUIRED_KEYS", "case_regions", "summarise", "with_regions"]

REQUIRED_KEYS: tuple[str, ...] = (
    "n_cases", "n_conflict", "n_kept", "tfr", "vfr", "balance_point", "balance_point_ci",
    "isotonic_balance_point", "spearman_rho", "oscillation", "tiers",
)
"""Top-level keys every summary.json has (tests and the report rely on them)."""

CI_LEVEL = 0.95

_COLUMNS = ("case_id", "control", "visual_tier", "text_tier", "vision_correct", "text_correct",
            "h_v", "h_t", "dh_rel", "label", "kept", "drop_reason", "oscillations")


def _rows(cases: pa.Table | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Case rows as dicts in ``case_id`` order; ValueError on a missing column or a repeated id."""
    if isinstance(cases, pa.Table):
        rows = cases.to_pylist()
    elif isinstance(cases, Mapping):
        names = list(cases)
        rows = [dict(zip(names, values)) for values in zip(*(cases[n] for n in names))]
    else:
        rows = [dict(r) for r in cases]
    missing = sorted({c for r in rows for c in _COLUMNS if c not in r})
    if missing:
        raise ValueError(f"case rows lack the column(s) {missing}")
    ids = [r["case_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"case id(s) appear more than once: {dup[:5]}")
    return sorted(rows, key=lambda r: r["case_id"])


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _is_kept_conflict(r: Mapping[str, Any]) -> bool:
    return r["control"] is None and bool(r["kept"])


def case_regions(
    rows: Iterable[Mapping[str, Any]], balance_point: float | None, width: float = AMBIGUOUS_WIDTH
) -> list[str | None]:
    """Per row, its oscillation region: "ambiguous" / "clear" for a kept conflict case, else None.

    None also for every row when ``balance_point`` is None, and for a NaN dH_rel
    (:func:`interp.oscillation.region_labels`).
    """
    rows = list(rows)
    dh = np.array([_float(r["dh_rel"]) for r in rows], dtype=np.float64)
    labels = region_labels(dh, balance_point, width)
    return [lab if _is_kept_conflict(r) else None for r, lab in zip(rows, labels)]


def _put(cases: pa.Table, name: str, column: pa.Array) -> pa.Table:
    if name in cases.column_names:
        return cases.set_column(cases.column_names.index(name), name, column)
    return cases.append_column(name, column)


def with_regions(cases: pa.Table, summary: Mapping[str, Any], layers: Any = None) -> pa.Table:
    """``cases`` with a ``region`` column from the summary's balance point and region width (row order kept).

    Given the run's ``layers`` and a summary computed from them, also ``oscillations`` recounted
    over the summary's counted lens positions and ``oscillations_no_constant`` without its
    constant layers (None for a case without conflict-pass rows): the counts every oscillation
    number of the summary rests on.
    """
    rows = cases.to_pylist()
    regions = case_regions(rows, summary["balance_point"], summary["parameters"]["region_width"])
    cases = _put(cases, "region", pa.array(regions, type=pa.string()))
    depth = summary.get("oscillation_depth") or {}
    if layers is None or "layers_counted" not in depth:
        return cases
    cols = layer_columns(layers)
    for name, counted in (("oscillations", depth["layers_counted"]),
                          ("oscillations_no_constant", depth["layers_without_constant"])):
        landing = conflict_switches(cols, counted)
        counts = [len(landing[r["case_id"]]) if r["case_id"] in landing else None for r in rows]
        cases = _put(cases, name, pa.array(counts, type=pa.int64()))
    return cases


def _tier_table(rows: list[dict[str, Any]], tier: str, correct: str, entropy: str) -> tuple[list[dict[str, Any]], int]:
    by_tier: dict[int, list[dict[str, Any]]] = {}
    n_missing = 0
    for r in rows:
        if r[tier] is None:
            n_missing += 1
        else:
            by_tier.setdefault(int(r[tier]), []).append(r)
    out = []
    for t in sorted(by_tier):
        group = by_tier[t]
        flags = [bool(r[correct]) for r in group if r[correct] is not None]
        h = np.array([_float(r[entropy]) for r in group])
        h = h[np.isfinite(h)]
        kept_labels = [r["label"] for r in group if _is_kept_conflict(r)]
        ratios = tfr_vfr(kept_labels)
        out.append({
            "tier": t,
            "n": len(group),
            "accuracy": sum(flags) / len(flags) if flags else None,
            "accuracy_ci": list(wilson_interval(sum(flags), len(flags), CI_LEVEL)) if flags else None,
            "mean_entropy": float(h.mean()) if h.size else None,
            "sd_entropy": float(h.std(ddof=1)) if h.size > 1 else None,
            "n_entropy": int(h.size),
            "n_kept": len(kept_labels),
            "tfr": ratios.tfr,
        })
    return out, n_missing


def summarise(
    cases: pa.Table | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    *,
    seed: int,
    n_boot: int = 1000,
    region_width: float = AMBIGUOUS_WIDTH,
    layers: Any = None,
    counted_layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The summary of a run from its case rows (see the module docstring for which cases enter what).

    Args:
        cases: case rows (a ``pyarrow.Table``, a list of dicts, or a dict of columns) with at
            least ``case_id, control, visual_tier, text_tier, vision_correct, text_correct,
            h_v, h_t, dh_rel, label, kept, drop_reason, oscillations``.
        seed: seeds every bootstrap (curve, robustness halves, oscillation, controls).
        n_boot: bootstrap resamples of each interval.
        region_width: half-width of the ambiguous region around the balance point (dH_rel units).
        layers: the run's layer rows (a table or dicts with ``case_id, pass, layer, class,
            top1``); None: the recorded ``oscillations`` and no ``oscillation_depth``.
        counted_layers: the lens positions whose switches count (None: every decoder layer).

    Returns:
        A dict of plain JSON types (no NaN or infinity: a missing number is None and a note
        says why) with the keys of :data:`REQUIRED_KEYS` and: ``n_controls``, ``ratios``,
        ``curve_status``, ``curve`` (:class:`~interp.results.FollowingCurve` as a dict),
        ``monotonicity``, ``robustness``, ``controls``, ``filter``, ``parameters``, ``notes``.
        ``oscillation`` is ``{"ambiguous": {"mean", "ci", "n"}, "clear": {...},
        "difference", "difference_ci", "n_unassigned", "n_missing", "note"}``.

    Raises:
        ValueError: a required column is missing, a case id repeats, or a conflict row says
            ``kept`` together with a drop reason (or neither).
    """
    rows = _rows(cases)
    notes: list[str] = []
    conflict = [r for r in rows if r["control"] is None]
    for r in conflict:
        if bool(r["kept"]) == (r["drop_reason"] is not None):
            raise ValueError(
                f"case {r['case_id']}: kept={r['kept']} with drop_reason={r['drop_reason']!r}; a kept case has "
                "no drop reason and a dropped case has one"
            )
    kept = [r for r in conflict if r["kept"]]
    control_names = list(CONTROLS) + sorted({r["control"] for r in rows if r["control"] is not None} - set(CONTROLS))

    # --- filter and macro ratios
    ratios = tfr_vfr(r["label"] for r in kept)
    curve_rows = [r for r in kept if r["label"] in ("text", "vision")]
    filter_counts = _filter_counts(conflict, kept, ratios, len(curve_rows), notes)

    # --- following curve, monotonicity, robustness
    x = np.array([_float(r["dh_rel"]) for r in curve_rows], dtype=np.float64)
    y = np.array([r["label"] == "text" for r in curve_rows], dtype=bool)
    total = np.array([_float(r["h_t"]) + _float(r["h_v"]) for r in curve_rows], dtype=np.float64)
    curve = fit_following(x, y, n_boot=n_boot, seed=seed, ci_level=CI_LEVEL)
    robust = robustness_split(x, y, total, n_boot=n_boot, seed=seed, ci_level=CI_LEVEL)
    if curve.note:
        notes.append(f"following curve ({curve.status}): {curve.note}")
    depth, without = None, None
    if layers is not None:
        regions = case_regions(kept, curve.balance_point, region_width)
        depth, counts, counts_nc = oscillation_depth(kept, regions, layers, counted=counted_layers,
                                                     n_boot=n_boot, seed=seed)
        rows = [{**r, "oscillations": counts.get(r["case_id"])} for r in rows] if counts else rows
        kept = [r for r in rows if _is_kept_conflict(r)]
        if counts_nc:
            pairs = [(counts_nc[r["case_id"]], g) for r, g in zip(kept, regions) if r["case_id"] in counts_nc]
            without = compare_regions([c for c, _ in pairs], [g for _, g in pairs], n_boot=n_boot, seed=seed)

    summary = {
        "n_cases": len(rows),
        "n_conflict": len(conflict),
        "n_controls": {name: sum(r["control"] == name for r in rows) for name in control_names},
        "n_kept": len(kept),
        "tfr": ratios.tfr,
        "vfr": ratios.vfr,
        "ratios": ratios.to_dict(),
        "balance_point": curve.balance_point,
        "balance_point_ci": list(curve.balance_point_ci) if curve.balance_point_ci else None,
        "isotonic_balance_point": curve.isotonic_balance_point,
        "spearman_rho": curve.spearman_rho,
        "curve_status": curve.status,
        "curve": curve.to_dict(),
        "monotonicity": {
            "spearman_rho": curve.spearman_rho,
            "spearman_p": curve.spearman_p,
            "share_decreasing": curve.share_decreasing,
        },
        "robustness": robust.to_dict(),
        "oscillation": _oscillation(kept, curve, region_width, n_boot=n_boot, seed=seed),
        "controls": _controls(rows, control_names, n_boot=n_boot, seed=seed),
        "tiers": _tiers(conflict),
        "filter": filter_counts,
        "indices": index_curves(curve_rows, n_boot=n_boot, seed=seed, ci_level=CI_LEVEL),
        "oscillation_depth": depth,
        "oscillation_without_constant": without,
        "parameters": {"seed": seed, "n_boot": n_boot, "region_width": region_width, "ci_level": CI_LEVEL,
                       "layers": (depth or {}).get("layers_counted")},
        "notes": notes,
    }
    return _jsonable(summary)


def _filter_counts(conflict: list[dict[str, Any]], kept: list[dict[str, Any]], ratios: Any, n_curve: int,
                   notes: list[str]) -> dict[str, Any]:
    """What the correct-in-both filter kept and dropped; appends the notes it gives rise to."""
    dropped = Counter(r["drop_reason"] for r in conflict if not r["kept"])
    h_v = np.array([_float(r["h_v"]) for r in conflict])
    h_t = np.array([_float(r["h_t"]) for r in conflict])
    n_zero = int(np.sum((h_v + h_t) == 0))
    if n_zero:
        notes.append(f"{n_zero} conflict case(s) with H_t + H_v = 0: dH_rel defined as 0 there")
    if ratios.note:
        notes.append(ratios.note)
    if ratios.n_other:
        notes.append(
            f"{ratios.n_other} kept case(s) answered neither modality ('other'): left out of TFR and the curve"
        )
    return {
        "n_conflict": len(conflict),
        "dropped": {**{reason: 0 for reason in DROP_REASONS}, **dict(dropped)},
        "n_kept": len(kept),
        "labels_kept": {"text": ratios.n_text, "vision": ratios.n_vision, "other": ratios.n_other},
        "n_other_excluded": ratios.n_other,
        "n_curve": n_curve,
        "n_zero_entropy": n_zero,
    }


def _oscillation(kept: list[dict[str, Any]], curve: Any, region_width: float, *, n_boot: int,
                 seed: int) -> dict[str, Any]:
    """Switches per kept case in the ambiguous and clear regions around the balance point."""
    regions = case_regions(kept, curve.balance_point, region_width)
    with_count = [(r, reg) for r, reg in zip(kept, regions) if r["oscillations"] is not None]
    n_missing = len(kept) - len(with_count)
    out = compare_regions([int(r["oscillations"]) for r, _ in with_count], [reg for _, reg in with_count],
                          n_boot=n_boot, seed=seed, ci_level=CI_LEVEL)
    osc_notes = [out["note"]] if out["note"] else []
    if curve.balance_point is None:
        osc_notes.insert(0, f"no balance point (curve status {curve.status!r}): the ambiguous and clear "
                            "regions are undefined, so no oscillation mean is reported")
    if n_missing:
        osc_notes.append(f"{n_missing} kept case(s) without a switch count left out")
    return {**{k: v for k, v in out.items() if k != "note"}, "n_missing": n_missing, "note": "; ".join(osc_notes) or None}


def _controls(rows: list[dict[str, Any]], control_names: list[str], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Per control kind: its cases, switches per case, and the labels its answers got."""
    controls: dict[str, Any] = {}
    for name in control_names:
        group = [r for r in rows if r["control"] == name]
        counted = [int(r["oscillations"]) for r in group if r["oscillations"] is not None]
        if counted:
            s = summarise_oscillations(counted, [name] * len(counted), n_boot=n_boot, seed=seed, ci_level=CI_LEVEL)
            entry = region_entry(s, name)
        else:
            entry = {"mean": None, "ci": None, "n": 0}
        labels = Counter(r["label"] for r in group)
        controls[name] = {
            "n_cases": len(group),
            **entry,
            "labels": {lab: labels.get(lab, 0) for lab in LABELS},
            "note": None if counted else f"no {name} control case with a switch count",
        }
    return controls


def _tiers(conflict: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and entropy per visual tier (vision-only pass) and per text tier (text-only pass)."""
    visual, nv = _tier_table(conflict, "visual_tier", "vision_correct", "h_v")
    text, nt = _tier_table(conflict, "text_tier", "text_correct", "h_t")
    return {
        "visual": visual, "text": text, "n_no_visual_tier": nv, "n_no_text_tier": nt,
        "note": "conflict cases before the filter; visual tiers: vision-only pass (vision_correct, H_v); "
                "text tiers: text-only pass (text_correct, H_t); entropy in nats; tfr over kept cases",
    }
