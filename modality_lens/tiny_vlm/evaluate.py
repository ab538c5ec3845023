"""Held-out metrics of a trained small VLM, and how well it follows the trained instructions.

`evaluate` runs the three passes of the lens (`modality_lens.pipeline.iter_rows`) on the
built-in colour set drawn with a seed that training never uses, and `instruction_following`
runs the conflict pass again with each modality instruction placed as in training.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

from hooks.interventions import DEFAULT_PLACEMENT, read_answer, with_instruction
from interp.curves import fit_following
from interp.datasets.colour import colour_cases
from interp.following import tfr_vfr
from modality_lens.cases import auto_image_size, case_item, case_pairs
from modality_lens.pipeline import iter_rows
from modality_lens.tiny_vlm.recipe import INSTRUCTIONS
from modality_lens.tiny_vlm.skills import reading_metrics, shape_metrics

__all__ = ["evaluate", "instruction_following"]


def evaluate(vlm: Any, *, n_per_cell: int = 4, seed: int = 1000, image_size: int | None = None,
             batch_size: int = 32, progress: bool = True, placement: str = DEFAULT_PLACEMENT,
             skills: bool = True) -> dict[str, Any]:
    """Held-out metrics on the built-in colour set (conflict cases, no controls).

    Returns per-tier accuracy and mean entropy for each modality, the Spearman correlation of
    the tier means with the tier, and the following statistics of the conflict cases kept by
    the correct-in-both filter (with the fitted following curve); with `skills`, also the
    reading and shape-task metrics of `modality_lens.tiny_vlm.skills`. `image_size`: default
    the model's input size.
    """
    image_size = image_size or auto_image_size(vlm.processor)
    cases = list(colour_cases(n_per_cell, seed, image_size=image_size, controls=False))
    rows: list[dict[str, Any]] = []
    for case_rows, _ in iter_rows(vlm, cases, batch_size=batch_size, progress=progress):
        rows.extend(case_rows)

    def per_tier(tier_key: str, correct_key: str, h_key: str) -> dict[str, Any]:
        tiers = sorted({r[tier_key] for r in rows})
        acc = [float(np.mean([r[correct_key] for r in rows if r[tier_key] == t])) for t in tiers]
        ent = [float(np.mean([r[h_key] for r in rows if r[tier_key] == t])) for t in tiers]
        rho = float(spearmanr(tiers, ent).statistic) if len(tiers) > 2 else None
        return {"tiers": tiers, "accuracy": acc, "mean_entropy": ent, "spearman_entropy_vs_tier": rho}

    kept = [r for r in rows if r["kept"]]
    correct = {r["case_id"]: bool(r["vision_correct"] and r["text_correct"]) for r in rows}
    conflict = [c for c in cases if c.control is None]
    instructed = instruction_following(vlm, conflict, kept=[correct[c.id] for c in conflict],
                                       batch_size=batch_size, placement=placement)
    ratios = tfr_vfr([r["label"] for r in kept])
    decided = [r for r in kept if r["label"] in ("text", "vision")]
    curve = fit_following(np.array([r["dh_rel"] for r in decided]), np.array([r["label"] == "text" for r in decided]),
                          seed=seed)
    more = {}
    if skills:
        more = {"reading": reading_metrics(vlm, seed=seed, image_size=image_size),
                "shapes": shape_metrics(vlm, n_per_cell=n_per_cell, seed=seed, image_size=image_size,
                                        batch_size=batch_size)}
    return {
        **more,
        "image_size": image_size,
        "n_cases": len(rows),
        "vision": per_tier("visual_tier", "vision_correct", "h_v"),
        "text": per_tier("text_tier", "text_correct", "h_t"),
        "n_kept": len(kept),
        "kept_share": len(kept) / max(1, len(rows)),
        "labels_kept": {k: sum(r["label"] == k for r in kept) for k in ("text", "vision", "other")},
        "tfr": ratios.tfr, "vfr": ratios.vfr,
        "following_curve": curve.to_dict(),
        "instruction_following": instructed,
    }


def instruction_following(vlm: Any, cases: Sequence[Any], *, kept: Sequence[bool] | None = None,
                          batch_size: int = 32, placement: str = DEFAULT_PLACEMENT) -> dict[str, Any]:
    """Conflict pass of each case under each modality instruction of `INSTRUCTIONS[0]` (the
    phrasing `hooks.interventions` steers with), placed as `hooks.interventions.with_instruction`
    does (`placement`: where the model was trained with it): the share of cases answered with the
    instructed modality's colour ("text": the context's, "image": the scene's), and with the other
    one; over every case and over the `kept` ones (e.g. right in both unimodal passes)."""
    out: dict[str, Any] = {"n": len(cases), "placement": placement}
    for modality, own in (("text", "text"), ("image", "vision")):
        labels: list[str] = []
        for start in range(0, len(cases), batch_size):
            chunk = cases[start:start + batch_size]
            items = [case_item(c) for c in chunk]
            pairs = case_pairs(vlm.tokenizer, chunk)
            instructed = with_instruction(items, INSTRUCTIONS[0].format(m=modality), placement=placement)
            batch = vlm.passes(instructed, ("conflict",))["conflict"]
            labels += read_answer(vlm, batch, pairs).labels(pairs)
        other = "vision" if own == "text" else "text"
        sub = [lab for lab, k in zip(labels, kept or ()) if k]
        out[modality] = {"instructed": labels.count(own) / max(1, len(labels)),
                         "other": labels.count(other) / max(1, len(labels)),
                         "kept_instructed": sub.count(own) / len(sub) if sub else None,
                         "kept_other": sub.count(other) / len(sub) if sub else None}
    out["n_kept"] = sum(kept) if kept is not None else None
    return out
