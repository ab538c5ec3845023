"""The figures of METHOD §1 beyond the main curve: every index, every tier, outcome and depth.

Each ``plot_*`` takes a run (a `RunDir`, its path or a loaded `RunData`) and an output path,
writes one PNG and returns the path; `modality_lens.plots.FIGURES` lists them with their
captions (docs/figures.md says which quantity each shows). They read summary.json and the case
and conflict-pass layer rows only; a run directory from before a quantity was recorded gets a
panel that says so, never an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from scipy.special import expit

from interp.indices import INDICES
from modality_lens.figure_base import (CLASS_COLOURS, TEXT_COLOUR, VISION_COLOUR, RunData, figure_note, new_figure,
                                       save_figure)

__all__ = ["class_trajectory_cases", "plot_class_trajectories", "plot_dh_rel_tiers", "plot_index_curves",
           "plot_oscillation_depth", "plot_oscillation_outcomes", "plot_uncertainty_tiers"]

REGION_COLOURS = {"ambiguous": "#ff7f0e", "clear": "#7f7f7f"}
_OLD_RUN = "not in this run's summary (written before it was computed): run `modality-lens report RUN_DIR` to recompute"


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def _conflict(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cases if c["control"] is None]


# --------------------------------------------------------------------------- uncertainty per tier
def _tier_means(rows: list[dict[str, Any]], tier: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tier, the mean of ``column`` and its normal 95% half-width (over rows with a value)."""
    groups: dict[int, list[float]] = {}
    for r in rows:
        if r.get(tier) is not None and _finite(r.get(column)):
            groups.setdefault(int(r[tier]), []).append(float(r[column]))
    t = np.array(sorted(groups), dtype=float)
    mean = np.array([np.mean(groups[int(k)]) for k in t])
    half = np.array([1.96 * np.std(groups[int(k)], ddof=1) / math.sqrt(len(groups[int(k)]))
                     if len(groups[int(k)]) > 1 else 0.0 for k in t])
    return t, mean, half


def plot_uncertainty_tiers(run: Any, out: str | Path) -> Path:
    """Every uncertainty index of the vision-only pass by visual tier and of the text-only pass by text tier."""
    data = RunData.load(run)
    rows = _conflict(data.cases)
    fig = new_figure(3.0 * len(INDICES), 5.6)
    axes = fig.subplots(2, len(INDICES), squeeze=False)
    for j, index in enumerate(INDICES):
        for i, (tier, column, colour, what) in enumerate((("visual_tier", index.vision_column, VISION_COLOUR, "vision"),
                                                          ("text_tier", index.text_column, TEXT_COLOUR, "text"))):
            ax = axes[i, j]
            t, mean, half = _tier_means(rows, tier, column)
            if t.size == 0:
                figure_note(ax, f"No {column} in this run (an older run directory, or no {what} tier).")
            else:
                ax.errorbar(t, mean, yerr=half, fmt="o-", color=colour, capsize=2, ms=3)
                ax.set_xticks(t)
                ax.tick_params(labelsize=7)
            ax.set_title(f"{index.name} ({what}-only pass)", fontsize=8)
            ax.set_xlabel(f"{what} tier", fontsize=8)
    fig.suptitle("Uncertainty of each modality by its tier (conflict cases, mean with 95% interval); "
                 "top2_margin and nmlp are confidences: higher = surer", fontsize=9)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- following curve per index
def _curve_panel(ax: Axes, name: str, entry: dict[str, Any]) -> None:
    bins = entry.get("bins") or []
    if not bins:
        figure_note(ax, f"{name}: {entry.get('note') or entry.get('status')}")
        ax.set_title(name, fontsize=9)
        return
    bx = np.array([b["dh_rel_mean"] for b in bins])
    by = np.array([b["p_text"] for b in bins])
    err = np.array([[b["p_text"] - b["ci_low"] for b in bins], [b["ci_high"] - b["p_text"] for b in bins]])
    err = np.clip(err, 0.0, None)  # a Wilson bound at p = 0 or 1 can sit 1e-17 past p (rounding)
    ax.errorbar(bx, by, yerr=err, fmt="o", color="black", ms=4, capsize=2)
    lo, hi = min(b["dh_rel_lo"] for b in bins), max(b["dh_rel_hi"] for b in bins)
    if entry["a"] is not None and entry["b"] is not None:
        grid = np.linspace(lo, hi, 200)
        ax.plot(grid, expit(entry["a"] + entry["b"] * grid), color="black", lw=1.2)
    bp, ci = entry["balance_point"], entry["balance_point_ci"]
    if ci:
        ax.axvspan(ci[0], ci[1], color="#ff7f0e", alpha=0.18, lw=0)
    if bp is not None:
        ax.axvline(bp, color="#ff7f0e", lw=1.5)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylim(-0.04, 1.04)
    rho = entry["spearman_rho"]
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    ax.set_title(f"{name}\nbalance {'none' if bp is None else f'{bp:.2f}'}{ci_text}, "
                 f"ρ {'n/a' if rho is None else f'{rho:.2f}'}, n {entry['n']}", fontsize=8)
    ax.set_xlabel(f"relative {name}", fontsize=8)
    ax.tick_params(labelsize=7)


def plot_index_curves(run: Any, out: str | Path) -> Path:
    """The following curve and balance point (with its CI) of every uncertainty index's relative form."""
    data = RunData.load(run)
    indices = data.summary.get("indices")
    fig = new_figure(3.0 * len(INDICES), 3.4)
    axes = fig.subplots(1, len(INDICES), squeeze=False)[0]
    for ax, index in zip(axes, INDICES):
        entry = (indices or {}).get(index.name)
        if entry is None:
            figure_note(ax, f"{index.name}: {_OLD_RUN}")
            ax.set_title(index.name, fontsize=9)
        else:
            _curve_panel(ax, index.name, entry)
    axes[0].set_ylabel("P(follow text)", fontsize=8)
    fig.suptitle("Following curve per uncertainty index (negative = more certain from the text); bins with "
                 "Wilson 95%, logistic fit, balance point and its bootstrap 95% CI", fontsize=9)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- oscillation by outcome
def _outcome_panel(ax: Axes, by_outcome: dict[str, Any], title: str) -> None:
    groups = [g for g in ("all", "text", "vision", "other") if g in by_outcome]
    for k, region in enumerate(("ambiguous", "clear")):
        for x, g in enumerate(groups):
            e = by_outcome[g][region]
            if e["mean"] is None:
                continue
            yerr = [[e["mean"] - e["ci"][0]], [e["ci"][1] - e["mean"]]] if e["ci"] else None
            ax.bar(x + (k - 0.5) * 0.38, e["mean"], width=0.38, color=REGION_COLOURS[region], yerr=yerr, capsize=3,
                   label=region if x == 0 else None)
            ax.text(x + (k - 0.5) * 0.38, e["mean"], f"{e['mean']:.2f}\nn={e['n']}", ha="center", va="bottom",
                    fontsize=6)
    names = {"all": "all kept", "text": "text-followers", "vision": "image-followers", "other": "other answers"}
    ax.set_xticks(range(len(groups)), [names[g] for g in groups], fontsize=8)
    ax.set_ylabel("mean switches per case (95% CI)", fontsize=8)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_oscillation_outcomes(run: Any, out: str | Path) -> Path:
    """Ambiguous vs clear oscillation, overall and within each final answer, with and without constant layers."""
    fig, (left, right), depth = _depth_panels(run, "by_outcome", "Oscillation by outcome")
    if depth is None:
        return save_figure(fig, out)
    flagged = depth["constant_layers"]["flagged"]
    _outcome_panel(left, depth["by_outcome"], f"counted layers {_span(depth['layers_counted'])}")
    _outcome_panel(right, depth["by_outcome_without_constant"],
                   f"without constant layers {flagged or 'none'}: {_span(depth['layers_without_constant'])}")
    fig.suptitle("Oscillation in the ambiguous vs the clear region, within each outcome (the case mix can flip "
                 "the aggregate)", fontsize=9)
    return save_figure(fig, out)


def _depth_panels(run: Any, key: str, what: str):
    """(figure, its two axes, summary's `oscillation_depth`), or a note on both axes and None
    for the summary when the run has no `key` there (a run from before it was recorded)."""
    depth = RunData.load(run).summary.get("oscillation_depth") or {}
    fig = new_figure(11.0, 4.2)
    axes = fig.subplots(1, 2)
    if key not in depth:
        for ax in axes:
            figure_note(ax, f"{what}: {depth.get('note') or _OLD_RUN}")
        return fig, axes, None
    return fig, axes, depth


def _span(layers: list[int]) -> str:
    return "none" if not layers else ", ".join(str(p) for p in layers)


# --------------------------------------------------------------------------- oscillation by depth
def plot_oscillation_depth(run: Any, out: str | Path) -> Path:
    """Where in depth the switches land, per region and outcome; the constant-layer diagnostic beside it."""
    fig, (left, right), depth = _depth_panels(run, "by_layer", "Oscillation by depth")
    if depth is None:
        return save_figure(fig, out)
    by_layer, diag = depth["by_layer"], depth["constant_layers"]
    x = np.array(by_layer["layers"])
    styles = {"ambiguous": (REGION_COLOURS["ambiguous"], "-"), "clear": (REGION_COLOURS["clear"], "-"),
              "text": (TEXT_COLOUR, "--"), "vision": (VISION_COLOUR, "--")}
    for group, (colour, ls) in styles.items():
        if by_layer.get(group) is not None:
            left.plot(x, by_layer[group], ls, marker="o", color=colour, ms=4,
                      label=f"{group} (n = {by_layer['n'][group]})")
    for p in diag["flagged"]:
        if p in by_layer["layers"]:
            left.axvspan(p - 0.5, p + 0.5, color="#bbbbbb", alpha=0.35, lw=0)
    left.set_xticks(x)
    left.set_xlabel("lens position (layer; a switch lands at the later layer)", fontsize=8)
    left.set_ylabel("switches landing here per case", fontsize=8)
    left.set_title("Where in depth the switches happen (grey: constant layers)", fontsize=9)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7)
    rows = diag["layers"]
    pos = np.array([r["layer"] for r in rows])
    share = np.array([r["top1_share"] for r in rows])
    right.bar(pos, share, color=["#a00000" if p in diag["flagged"] else "#7f7f7f" for p in pos])
    for r in rows:
        token = r.get("token")
        right.text(r["layer"], r["top1_share"], f"{token!r}" if token is not None else f"id {r['top1']}",
                   ha="center", va="bottom", fontsize=7)
    right.set_xticks(pos)
    right.set_ylim(0, 1.15)
    right.set_xlabel("lens position (0 = embedding output)", fontsize=8)
    right.set_ylabel("share of rows with the modal top-1", fontsize=8)
    right.set_title("Constant layers (red: the same top-1 in every row of\n"
                    f"the {', '.join(diag['passes'])} passes)", fontsize=9)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- class trajectories
def class_trajectory_cases(cases: list[dict[str, Any]], have: set[str], per_group: int = 2) -> list[dict[str, Any]]:
    """Example kept conflict cases: per (region, label) group, ``per_group`` spread evenly over dH_rel."""
    pool = [c for c in cases if c["control"] is None and c["kept"] and c["case_id"] in have and _finite(c["dh_rel"])]
    out = []
    for region in ("ambiguous", "clear", None):
        for label in ("text", "vision", "other"):
            group = sorted((c for c in pool if c.get("region") == region and c["label"] == label),
                           key=lambda c: (c["dh_rel"], c["case_id"]))
            if group:
                picks = np.unique(np.linspace(0, len(group) - 1, min(per_group, len(group))).round().astype(int))
                out += [group[i] for i in picks]
    return out


def plot_class_trajectories(run: Any, out: str | Path, per_group: int = 2) -> Path:
    """The top-1 class at every layer of the conflict pass for example cases of each region and outcome."""
    data = RunData.load(run)
    ids = data.layers.column("case_id").to_pylist() if data.layers.num_rows else []
    picks = class_trajectory_cases(data.cases, set(ids), per_group)
    fig = new_figure(8.0, 1.2 + 0.32 * max(len(picks), 4))
    ax = fig.add_subplot()
    ax.set_title("Top-1 class per layer, conflict pass (red text, blue image, grey other)", fontsize=9)
    if not picks:
        figure_note(ax, "No kept conflict case with conflict-pass layer rows.")
        return save_figure(fig, out)
    classes: dict[tuple[str, int], str] = {}
    for cid, layer, cls in zip(ids, data.layers.column("layer").to_pylist(), data.layers.column("class").to_pylist()):
        classes[(cid, layer)] = cls
    layers = sorted({layer for (_, layer) in classes})
    for i, case in enumerate(picks):
        for layer in layers:
            cls = classes.get((case["case_id"], layer))
            if cls is not None:
                ax.add_patch(_cell(layer, i, CLASS_COLOURS.get(cls, "black")))
    flagged = ((data.summary.get("oscillation_depth") or {}).get("constant_layers") or {}).get("flagged", [])
    for p in flagged:
        ax.text(p, -0.9, "constant", ha="center", fontsize=7, color="#a00000")
    ax.set_xlim(layers[0] - 0.5, layers[-1] + 0.5)
    ax.set_ylim(len(picks) - 0.5, -1.2)
    ax.set_xticks(layers)
    ax.set_xlabel("layer (0 = embedding output)", fontsize=8)
    ax.set_yticks(range(len(picks)), [f"{c.get('region') or '-'} / {c['label']}: ΔH_rel {c['dh_rel']:.2f}, "
                                      f"{c['oscillations']} sw." for c in picks], fontsize=7)
    return save_figure(fig, out)


def _cell(x: float, y: float, colour: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.45, y - 0.4), 0.9, 0.8, color=colour, lw=0)


# --------------------------------------------------------------------------- dH_rel per tier
def plot_dh_rel_tiers(run: Any, out: str | Path) -> Path:
    """The distribution of dH_rel per visual tier and per text tier (box plots), the balance point across."""
    data = RunData.load(run)
    rows = [c for c in _conflict(data.cases) if _finite(c["dh_rel"])]
    fig = new_figure(11.0, 4.0)
    axes = fig.subplots(1, 2)
    bp = data.summary.get("balance_point")
    for ax, tier, colour in ((axes[0], "visual_tier", VISION_COLOUR), (axes[1], "text_tier", TEXT_COLOUR)):
        groups: dict[int, list[float]] = {}
        for r in rows:
            if r[tier] is not None:
                groups.setdefault(int(r[tier]), []).append(r["dh_rel"])
        if not groups:
            figure_note(ax, f"No {tier.replace('_', ' ')} with a finite ΔH_rel.")
            continue
        keys = sorted(groups)
        ax.boxplot([groups[k] for k in keys], positions=keys, widths=0.6, showfliers=False,
                   medianprops={"color": colour})
        if bp is not None:
            ax.axhline(bp, color="#ff7f0e", lw=1.2, label=f"balance point {bp:.2f}")
            ax.legend(fontsize=7)
        ax.set_xlabel(tier.replace("_", " "), fontsize=8)
        ax.set_ylabel("ΔH_rel", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"ΔH_rel by {tier.replace('_', ' ')} (all conflict cases; box: quartiles, whiskers 1.5 IQR)",
                     fontsize=9)
    return save_figure(fig, out)
