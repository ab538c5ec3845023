"""Oscillation by outcome and by depth, and the layers whose lens says the same for every input (METHOD §1.5).

The aggregate ambiguous-vs-clear comparison mixes text-followers and image-followers, whose
trajectories differ; when the mix differs between the regions the aggregate can point the other
way from both groups. So the comparison is also reported **within** each final label.

**Which lens positions count [ours]** (``counted``): by default every decoder layer (positions
1..L; the embedding output, position 0, never by default, see `interp.oscillation`). A position
whose top-1 is the same token for every row of the run (every case, every pass:
:func:`interp.oscillation.constant_layers`) carries no information about the input, but adds a
switch to each case whose answer is that token and whose later layers disagree; every number
here is reported with the counted positions and again with the constant ones left out.

**By depth**: a switch lands at the later of the two relevant positions it joins
(:func:`interp.oscillation.switch_layers`); per position, the mean number of switches landing
there per case, per region. Summed over positions, it is the mean switch count.

Inputs are the conflict-pass layer rows (columns ``case_id, pass, layer, class, top1``; other
passes are used only for the constant-layer diagnostic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from interp.oscillation import compare_regions, constant_layers, switch_layers
from interp.vocabulary import LABELS

__all__ = ["conflict_switches", "layer_columns", "oscillation_depth", "select_layers"]


def layer_columns(layers: pa.Table | Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The layer rows' ``case_id, pass, layer, class, top1`` as lists (a table or a list of dicts)."""
    names = ("case_id", "pass", "layer", "class", "top1")
    if isinstance(layers, pa.Table):
        return {n: layers.column(n).to_pylist() for n in names}
    rows = list(layers)
    return {n: [r[n] for r in rows] for n in names}


def select_layers(present: Sequence[int], counted: Sequence[int] | None) -> list[int]:
    """The counted positions: ``counted`` (checked against ``present``) or every decoder position (>= 1)."""
    have = sorted(set(int(p) for p in present))
    if counted is None:
        return [p for p in have if p >= 1]
    wanted = sorted(set(int(p) for p in counted))
    missing = [p for p in wanted if p not in have]
    if missing:
        raise ValueError(f"layers {missing} are not lens positions of this run (it has {have[0]}..{have[-1]}: "
                         "0 = embedding output, l = after decoder layer l)")
    return wanted


def conflict_switches(columns: Mapping[str, list[Any]], counted: Sequence[int]) -> dict[str, list[int]]:
    """Per case with conflict-pass rows, the positions where its switches land (among ``counted``)."""
    by_case: dict[str, tuple[list[int], list[str]]] = {}
    for cid, p, layer, cls in zip(columns["case_id"], columns["pass"], columns["layer"], columns["class"]):
        if p == "conflict":
            entry = by_case.setdefault(cid, ([], []))
            entry[0].append(int(layer))
            entry[1].append(cls)
    return {cid: switch_layers(classes, layers, counted) for cid, (layers, classes) in by_case.items()}


def _by_outcome(kept: Sequence[Mapping[str, Any]], regions: Sequence[str | None], counts: Mapping[str, int],
                n_boot: int, seed: int) -> dict[str, Any]:
    """Ambiguous vs clear over all kept cases and within each final label."""
    out = {}
    for label in ("all", *LABELS):
        pick = [(counts[r["case_id"]], reg) for r, reg in zip(kept, regions)
                if r["case_id"] in counts and (label == "all" or r["label"] == label)]
        out[label] = compare_regions([c for c, _ in pick], [g for _, g in pick], n_boot=n_boot, seed=seed)
    return out


def _by_layer(kept: Sequence[Mapping[str, Any]], regions: Sequence[str | None], landing: Mapping[str, list[int]],
              counted: Sequence[int]) -> dict[str, Any]:
    """Mean switches landing at each counted position per case, per region and label group."""
    index = {p: i for i, p in enumerate(counted)}
    groups: dict[str, list[str]] = {"all": [], "ambiguous": [], "clear": [], "text": [], "vision": []}
    for r, reg in zip(kept, regions):
        if r["case_id"] not in landing:
            continue
        groups["all"].append(r["case_id"])
        if reg in groups:
            groups[reg].append(r["case_id"])
        if r["label"] in groups:
            groups[r["label"]].append(r["case_id"])
    out: dict[str, Any] = {"layers": list(counted), "n": {g: len(ids) for g, ids in groups.items()}}
    for g, ids in groups.items():
        hist = np.zeros(len(counted))
        for cid in ids:
            for p in landing[cid]:
                hist[index[p]] += 1
        out[g] = (hist / len(ids)).tolist() if ids else None
    return out


def oscillation_depth(kept: Sequence[Mapping[str, Any]], regions: Sequence[str | None],
                      layers: pa.Table | Sequence[Mapping[str, Any]], *, counted: Sequence[int] | None = None,
                      n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """The by-outcome and by-depth oscillation of the kept conflict cases, with and without constant layers.

    Args:
        kept: the kept conflict case rows (``case_id``, ``label``).
        regions: their regions ("ambiguous" / "clear" / None).
        layers: layer rows of the run (all passes for the constant-layer diagnostic).
        counted: the lens positions that count (None: every decoder layer).
        n_boot, seed: the bootstrap of each comparison.

    Returns:
        ``(section, counts, counts_without_constant)``: the summary section (module docstring),
        and per case id with conflict-pass rows (kept or not) its switch count over the counted
        positions and over the counted positions less the constant ones.
    """
    cols = layer_columns(layers)
    present = sorted(set(cols["layer"]))
    if not present:
        return {"note": "no layer rows: no oscillation by depth"}, {}, {}
    counted = select_layers(present, counted)
    diagnostic = constant_layers(cols["layer"], cols["top1"])
    diagnostic["passes"] = sorted(set(cols["pass"]))
    without = [p for p in counted if p not in diagnostic["flagged"]]
    landing = conflict_switches(cols, counted)
    landing_nc = conflict_switches(cols, without)
    counts = {cid: len(v) for cid, v in landing.items()}
    counts_nc = {cid: len(v) for cid, v in landing_nc.items()}
    section = {
        "n_layers": max(present),
        "layers_counted": counted,
        "layers_without_constant": without,
        "constant_layers": diagnostic,
        "by_outcome": _by_outcome(kept, regions, counts, n_boot, seed),
        "by_outcome_without_constant": _by_outcome(kept, regions, counts_nc, n_boot, seed),
        "by_layer": _by_layer(kept, regions, landing, counted),
        "note": None if without else "every counted layer is constant: nothing is left without them",
    }
    return section, counts, counts_nc
