"""summary.json of a perturbation run, from its committed rows (`modality_lens.perturb`).

Per pass ("vision", and "conflict" when run), perturbation and level (`levels`):

- ``accuracy`` (share of answers that are the image answer), the mean of each confidence
  measure, and the confidence drop ``dC = C(original) - C(perturbed)`` (paired by unit), each
  with a percentile-bootstrap CI over units (`interp.calibration.mean_ci`);
- calibration of ``max_p`` (the probability of the model's own answer token, ``1 - (1 - max p)``):
  ECE over :data:`interp.calibration.ECE_BINS` equal-mass bins, Brier score, and the AUROC of
  every measure for correctness (``-entropy`` so that higher = more confident throughout);
- the conflict pass: TFR, the share of conflict answers that are the text answer (all conflict
  units, no correct-in-both filter **[ours]**: the filter needs the unperturbed text-only pass
  and would keep different cases at every level);
- the noise perturbation: the accuracy of the VCD answer (`vcd_class`).

Per pass and perturbation: ``tracking``, the slope of mean confidence against accuracy across
the levels with a CI from resampling units (`interp.calibration.confidence_accuracy_slope`);
``layers``, the AUROC of each lens layer's NMLP and max p for the final answer's correctness
over all levels with CIs, the first layer whose CI lies above 0.5 (confidence ranks right above
wrong) and the first whose CI lies below it (confidence ranks them the wrong way round), the
per-layer drop of NMLP and of ``p_answer`` from the original to the strongest level and the
first layer whose ``p_answer`` drop excludes 0 (does the perturbation move the early layers or
only the late ones?); for noise, the share of image answers per layer of the plain lens on the
clean image and of the contrastive lens (VCD, clean vs noised). ``voting``: accuracy against N of confidence-weighted and majority voting over
the sampled answers (noise levels; `interp.calibration.voting_curve`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from interp.calibration import (
    ECE_BINS, VOTING_NS, auroc, auroc_by_layer, auroc_ci, bootstrap_ci, brier_score, confidence_accuracy_slope,
    expected_calibration_error, first_separating_layer, mean_ci, reliability_bins, voting_curve,
)

__all__ = ["summarise_perturb", "finalize_perturb", "SCORES", "VOTING_DRAWS"]

SCORES = ("nmlp", "max_p", "margin", "neg_entropy", "p_answer")
"""Confidence scores summarised, each higher = more confident. ``p_answer`` is the probability of
the image answer (the right one), so it measures perception rather than self-knowledge; the
others do not know the right answer."""
VOTING_DRAWS = 5
"""Sample subsets per unit and N of the voting curves **[ours]**."""


def _scores(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"nmlp": cols["nmlp"], "max_p": 1.0 - cols["one_minus_max_p"], "margin": cols["margin"],
            "neg_entropy": -cols["entropy"], "p_answer": cols["p_answer"]}


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[list[dict[str, Any]]]]:
    """(pass, perturbation) -> rows by level index, each list sorted by unit id."""
    out: dict[tuple[str, str], dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[(r["pass"], r["perturbation"])][r["level_index"]].append(r)
    return {k: [sorted(v[i], key=lambda r: r["unit_id"]) for i in sorted(v)] for k, v in out.items()}


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = ("nmlp", "one_minus_max_p", "margin", "entropy", "p_answer")
    cols = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    cols["correct"] = np.array([r["correct"] for r in rows], dtype=bool)
    return cols


def _level(rows: list[dict], base: list[dict], boot: dict[str, Any]) -> dict[str, Any]:
    cols, ref = _columns(rows), _columns(base)
    scores, ref_scores = _scores(cols), _scores(ref)
    y = cols["correct"]
    entry: dict[str, Any] = {
        "level": rows[0]["level"], "level_index": rows[0]["level_index"], "n": len(rows),
        "accuracy": mean_ci(y, **boot),
        "confidence": {m: mean_ci(s, **boot) for m, s in scores.items()},
        "drop": {m: mean_ci(ref_scores[m] - s, **boot) for m, s in scores.items()},
        "ece": expected_calibration_error(scores["max_p"], y, ECE_BINS),
        "brier": brier_score(scores["max_p"], y),
        "auroc": {},
        "reliability": [b.to_dict() for b in reliability_bins(scores["max_p"], y, ECE_BINS)],
    }
    for m, s in scores.items():
        ci = auroc_ci(s, y, **boot)
        entry["auroc"][m] = {"auroc": auroc(s, y), "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}
    if rows[0]["pass"] == "conflict":
        entry["tfr"] = mean_ci([r["follows_text"] for r in rows], **boot)
    if rows[0]["vcd_class"] is not None:
        entry["vcd_accuracy"] = mean_ci([r["vcd_class"] == "vision" for r in rows], **boot)
    return entry


def _tracking(by_level: list[list[dict]], boot: dict[str, Any]) -> dict[str, Any]:
    correct = np.stack([_columns(rows)["correct"] for rows in by_level], axis=1).astype(np.float64)
    out = {}
    for m in SCORES:
        conf = np.stack([_scores(_columns(rows))[m] for rows in by_level], axis=1)
        fit = confidence_accuracy_slope(correct.mean(axis=0), conf.mean(axis=0))
        stat = lambda c, s: confidence_accuracy_slope(c.mean(axis=0), s.mean(axis=0))["slope"]  # noqa: E731
        ci = bootstrap_ci(stat, correct, conf, **boot) if fit["slope"] is not None else None
        out[m] = {**fit, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}
    return out


def _layer_matrix(layers: dict[str, list[dict]], rows: list[dict], key: str) -> np.ndarray:
    return np.array([[lay[key] for lay in sorted(layers[r["row_id"]], key=lambda x: x["layer"])] for r in rows])


def _separation(matrix: np.ndarray, y: np.ndarray, boot: dict[str, Any]) -> dict[str, Any]:
    by_layer = auroc_by_layer(matrix, y, **boot)
    inverse = [r["layer"] for r in by_layer if r["ci_high"] is not None and r["ci_high"] < 0.5]
    return {"auroc": by_layer, "first_separating_layer": first_separating_layer(by_layer),
            "first_inverse_layer": inverse[0] if inverse else None}


def _layers(by_level: list[list[dict]], layers: dict[str, list[dict]], boot: dict[str, Any]) -> dict[str, Any]:
    every = [r for rows in by_level for r in rows]
    y = np.array([r["correct"] for r in every])
    separation = {"nmlp": _separation(_layer_matrix(layers, every, "nmlp"), y, boot),
                  "max_p": _separation(1.0 - _layer_matrix(layers, every, "one_minus_max_p"), y, boot)}
    heat = {"nmlp": [[auroc(col, [r["correct"] for r in rows]) for col in _layer_matrix(layers, rows, "nmlp").T]
                     for rows in by_level],
            "max_p": [[auroc(1.0 - col, [r["correct"] for r in rows])
                       for col in _layer_matrix(layers, rows, "one_minus_max_p").T] for rows in by_level]}
    drops = {}
    for key in ("nmlp", "p_answer"):
        diff = _layer_matrix(layers, by_level[0], key) - _layer_matrix(layers, by_level[-1], key)
        drops[key] = [{"layer": i, **mean_ci(diff[:, i], **boot)} for i in range(diff.shape[1])]
    moved = [d["layer"] for d in drops["p_answer"] if d["ci_low"] is not None and (d["ci_low"] > 0 or d["ci_high"] < 0)]
    out = {"separation": separation, "auroc_by_level": heat, "drop_at_strongest": drops,
           "first_moved_layer": moved[0] if moved else None}
    if by_level[0][0]["vcd_class"] is not None:  # the contrastive lens: VCD's answer per layer vs the plain one
        out["vcd_by_layer"] = [{"level": rows[0]["level"],
                                "plain": np.mean(_layer_matrix(layers, by_level[0], "class") == "vision", 0).tolist(),
                                "vcd": np.mean(_layer_matrix(layers, rows, "vcd_class") == "vision", 0).tolist()}
                               for rows in by_level]
    return out


def _voting(by_level: list[list[dict]], seed: int) -> list[dict[str, Any]]:
    n = len(by_level[0][0]["samples"])
    ns = tuple(k for k in VOTING_NS if k <= n) or (n,)
    out = []
    for rows in by_level:
        curve = voting_curve([r["samples"] for r in rows], [r["sample_p"] for r in rows],
                             [r["image_answer"] for r in rows], ns=ns, n_draws=VOTING_DRAWS, seed=seed)
        out.append({"level": rows[0]["level"], **curve.to_dict()})
    return out


def summarise_perturb(rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]], *, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """The summary (module docstring) of a run's unit rows and layer rows (lists of dicts)."""
    boot = {"n_boot": n_boot, "seed": seed}
    layers: dict[str, list[dict]] = defaultdict(list)
    for lay in layer_rows:
        layers[lay["row_id"]].append(lay)
    summary: dict[str, Any] = {"job": "perturb", "n_rows": len(rows), "ece_bins": ECE_BINS, "n_boot": n_boot,
                               "ci_level": 0.95, "calibration_score": "max_p", "scores": list(SCORES),
                               "passes": {}, "notes": []}
    for (pass_name, name), by_level in sorted(_group(rows).items()):
        units = [{r["unit_id"] for r in rows} for rows in by_level]
        if any(u != units[0] for u in units):
            summary["notes"].append(f"{pass_name}/{name}: the levels hold different units; summarised as recorded")
            continue
        entry = {"n_units": len(units[0]),
                 "levels": [_level(rows, by_level[0], boot) for rows in by_level],
                 "tracking": _tracking(by_level, boot) if len(by_level) > 1 else None,
                 "layers": _layers(by_level, layers, boot) if len(by_level) > 1 else None,
                 "voting": _voting(by_level, seed) if name == "noise" else None}
        summary["passes"].setdefault(pass_name, {})[name] = entry
    return summary


def finalize_perturb(run_dir: Any, *, n_boot: int = 1000, seed: int = 0, figures: bool = True) -> dict[str, Any]:
    """units.parquet, unit_layers.parquet and summary.json (last) from the committed chunks; figures and report."""
    from modality_lens.atomic import atomic_write_bytes, atomic_write_table, json_text

    units, layers = run_dir.read_rows(), run_dir.read_layer_rows()
    summary = summarise_perturb(units.to_pylist(), layers.to_pylist(), n_boot=n_boot, seed=seed)
    atomic_write_table(run_dir.unit_layers_path, layers)
    atomic_write_table(run_dir.units_path, units)
    atomic_write_bytes(run_dir.summary_path, json_text(summary).encode())
    if figures:
        from modality_lens.perturb_report import draw_perturb_figures, write_perturb_report

        draw_perturb_figures(run_dir)
        write_perturb_report(run_dir)
    return summary

