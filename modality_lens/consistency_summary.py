"""summary.json of a consistency run, from its committed rows alone (METHOD §2).

Per variant: RER, CFR, MMC and per-format accuracy with bootstrap CIs and the McNemar tests
(`interp.consistency.consistency_metrics`) on every item asked in all three formats and on the
OCR-gated subset (every rendered image of the item transcribed with CER 0), the invalid answers
per format, the tier-0 accuracy of the mixed format (colour items: the rendered context read
alone), the OCR error rates, and per lens layer: the cosine of rendered and text tokens and the
retrieval accuracy (both ways) per rendered format, the agreement of each format's lens top-1
with the text format's, and the lens log-probability of the answer's first token.

**[ours]**: the *parting layer* of a rendered format is the first layer from which its lens
top-1 agrees with the text format's for fewer than half of the items at every later layer
(None when it never parts); without OCR (``ocr=False``) the gated metrics are null with a note.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from interp.calibration import mean_ci
from interp.consistency import FORMATS, consistency_metrics

__all__ = ["summarise_consistency", "finalize_consistency", "parting_layer"]


def parting_layer(agreement: list[float]) -> int | None:
    """The first layer l such that agreement[m] < 1/2 for every m >= l (None if the last agrees)."""
    first = None
    for layer in range(len(agreement) - 1, -1, -1):
        if agreement[layer] < 0.5:
            first = layer
        else:
            break
    return first


def _metrics(units: dict[str, dict[str, dict]], ids: list[str], n_boot: int, seed: int) -> dict[str, Any] | None:
    if not ids:
        return None
    answers = [[units[u][f]["answer"] for f in FORMATS] for u in ids]
    correct = np.array([[units[u][f]["correct"] for f in FORMATS] for u in ids], dtype=bool)
    return consistency_metrics(answers, correct, n_boot=n_boot, seed=seed).to_dict()


def _per_layer(layers: list[dict], n_boot: int, seed: int) -> dict[str, Any]:
    by = defaultdict(lambda: defaultdict(list))
    for r in layers:
        by[r["format"]][r["layer"]].append(r)
    out: dict[str, Any] = {}
    for fmt, per in by.items():
        ls = sorted(per)
        agree = [float(np.mean([r["agrees_text"] for r in per[lay]])) for lay in ls]
        entry = {"agreement_with_text": agree,
                 "log_p_answer": [mean_ci([r["log_p_answer"] for r in per[lay]], n_boot=n_boot, seed=seed)
                                  for lay in ls]}
        if fmt != "text":
            entry["parting_layer"] = parting_layer(agree)
            if per[ls[0]][0]["cosine"] is not None:
                entry["cosine"] = [mean_ci([r["cosine"] for r in per[lay]], n_boot=n_boot, seed=seed) for lay in ls]
                entry["retrieval_i2t"] = [float(np.mean([r["retrieved_i2t"] for r in per[lay]])) for lay in ls]
                entry["retrieval_t2i"] = [float(np.mean([r["retrieved_t2i"] for r in per[lay]])) for lay in ls]
        out[fmt] = entry
    return out


def _variant(rows: list[dict], layers: list[dict], n_boot: int, seed: int, notes: list[str]) -> dict[str, Any]:
    units: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        units[r["unit_id"]][r["format"]] = r
    three = sorted(u for u, f in units.items() if all(k in f for k in FORMATS))
    ocr_done = all(r["cer"] is not None for r in rows if r["format"] != "text")
    gated = [u for u in three if all(units[u][f]["cer"] == 0 for f in ("image", "mixed"))] if ocr_done else []
    tier0 = [r["correct"] for r in rows if r["format"] == "mixed" and r["text_tier"] == 0]
    accuracy = {f: mean_ci([float(r["correct"]) for r in rows if r["format"] == f], n_boot=n_boot, seed=seed)
                for f in FORMATS}
    cer = {f: {"mean": float(np.mean(v)) if v else None, "share_zero": float(np.mean([c == 0 for c in v])) if v
               else None} for f in ("image", "mixed")
           for v in [[r["cer"] for r in rows if r["format"] == f and r["cer"] is not None]]}
    if not ocr_done:
        notes.append("OCR was off: the CER = 0 subset is not computed")
    return {
        "n_items": len(units), "n_three_formats": len(three), "n_ocr_gated": len(gated) if ocr_done else None,
        "all": _metrics(units, three, n_boot, seed),
        "ocr_gated": _metrics(units, gated, n_boot, seed) if ocr_done else None,
        "accuracy_all_items": accuracy,
        "invalid": {f: int(sum(1 for r in rows if r["format"] == f and not r["valid"])) for f in FORMATS},
        "tier0_mixed_accuracy": mean_ci([float(c) for c in tier0], n_boot=n_boot, seed=seed) if tier0 else None,
        "cer": cer,
        "layers": _per_layer(layers, n_boot, seed),
    }


def summarise_consistency(rows: list[dict], layers: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The summary of a run's rows and layer rows, per variant (see the module docstring)."""
    notes: list[str] = []
    variants = sorted({r["variant"] for r in rows})
    out = {"n_rows": len(rows), "n_boot": n_boot, "seed": seed, "variants": {}}
    for var in variants:
        out["variants"][var] = _variant([r for r in rows if r["variant"] == var],
                                        [r for r in layers if r["variant"] == var], n_boot, seed, notes)
    out["notes"] = sorted(set(notes))
    return out


def finalize_consistency(run_dir: Any, *, n_boot: int = 1000, seed: int = 0, figures: bool = True) -> dict[str, Any]:
    """rows.parquet, row_layers.parquet and summary.json (last) from the committed chunks; figures and report."""
    from modality_lens.atomic import atomic_write_bytes, atomic_write_table, json_text

    rows, layers = run_dir.read_rows(), run_dir.read_layer_rows()
    summary = summarise_consistency(rows.to_pylist(), layers.to_pylist(), n_boot=n_boot, seed=seed)
    atomic_write_table(run_dir.row_layers_path, layers)
    atomic_write_table(run_dir.rows_path, rows)
    atomic_write_bytes(run_dir.summary_path, json_text(summary).encode())
    if figures:
        from modality_lens.consistency_report import draw_consistency_figures, write_consistency_report

        draw_consistency_figures(run_dir)
        write_consistency_report(run_dir)
    return summary
