"""Every figure of a run, drawn from the run directory alone (nothing is recomputed from a model).

Each ``plot_*`` function takes a run (a :class:`~modality_lens.rundir.RunDir`, its path, or a
:class:`RunData` already loaded) and an output path, writes one PNG and returns its path.
:func:`draw_all` writes them all to ``RUN/figures/``. Figures are drawn on
``matplotlib.figure.Figure`` objects with the Agg canvas: no pyplot, no global backend switch,
nothing left open.

Degenerate runs never raise here: a panel whose data is missing (no kept case, no balance
point, no tiers, no layer rows) is drawn empty with a note that says what is missing.

Colours: text = red, vision = blue, everywhere (the heat map's positive logit difference,
text ahead, is red too).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from jaxtyping import Float, Int
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from matplotlib.colors import TwoSlopeNorm
from scipy.special import expit

from interp.curves import isotonic_decreasing
from modality_lens import paper_figures
from modality_lens.figure_base import (CLASS_COLOURS, TEXT_COLOUR, VISION_COLOUR, RunData, figure_note, new_figure,
                                       save_figure)
from modality_lens.rows import LAYER_SCHEMA
from modality_lens.rundir import RunDir

if TYPE_CHECKING:
    from hooks.interventions import PatchingSweep

__all__ = [
    "FIGURES",
    "RunData",
    "draw_all",
    "logit_diff_grid",
    "plot_patching",
    "plot_entropy_tiers",
    "plot_following_curve",
    "plot_logit_diff_heatmap",
    "plot_oscillations",
    "plot_trajectories",
    "sample_cases",
]

def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _kept_conflict(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cases if c["control"] is None and c["kept"]]


# --------------------------------------------------------------------------- following curve
def plot_following_curve(run: "RunDir | str | Path | RunData", out: str | Path) -> Path:
    """P(follow text) against dH_rel: Wilson-binned points, logistic fit, balance point with its CI, isotonic fit."""
    data = RunData.load(run)
    s, curve = data.summary, data.summary["curve"]
    fig = new_figure(7.0, 5.0)
    ax = fig.add_subplot()
    rows = [c for c in _kept_conflict(data.cases) if c["label"] in ("text", "vision")
            and c["dh_rel"] is not None and math.isfinite(c["dh_rel"])]
    if not rows:
        figure_note(ax, "No kept conflict case follows either modality: there is no following curve. "
                  f"{s['n_kept']} kept of {s['n_conflict']} conflict cases.")
        ax.set_title("Following curve")
        return save_figure(fig, out)
    x = np.array([c["dh_rel"] for c in rows])
    y = np.array([c["label"] == "text" for c in rows], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.025, 0.025, x.size)
    ax.scatter(x, y + jitter, s=6, alpha=0.25, color=np.where(y > 0, TEXT_COLOUR, VISION_COLOUR), lw=0,
               label="cases (1 = text, 0 = image)")
    bins = curve["bins"]
    if bins:
        bx = np.array([b["dh_rel_mean"] for b in bins])
        by = np.array([b["p_text"] for b in bins])
        err = np.array([[b["p_text"] - b["ci_low"] for b in bins], [b["ci_high"] - b["p_text"] for b in bins]])
        err = np.clip(err, 0.0, None)  # a Wilson bound at p = 0 or 1 can sit 1e-17 past p (rounding)
        ax.errorbar(bx, by, yerr=err, fmt="o", color="black", ms=5, capsize=3,
                    label="equal-count bins, 95% Wilson")
    lo, hi = float(x.min()), float(x.max())
    grid = np.linspace(lo, hi, 200)
    if curve["a"] is not None and curve["b"] is not None:
        ax.plot(grid, expit(curve["a"] + curve["b"] * grid), color="black", lw=1.5, label="logistic fit")
    xu, iso = isotonic_decreasing(x, y)
    ax.step(xu, iso, where="mid", color="#2ca02c", lw=1.2, alpha=0.9, label="isotonic (decreasing)")
    bp, ci = s["balance_point"], s["balance_point_ci"]
    if ci is not None:
        ax.axvspan(ci[0], ci[1], color="#ff7f0e", alpha=0.18, lw=0, label="balance point 95% CI")
    if bp is not None:
        ax.axvline(bp, color="#ff7f0e", lw=1.8, label=f"balance point {bp:.2f}")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("ΔH_rel = 2 (H_t − H_v) / (H_t + H_v)")
    ax.set_ylabel("P(follow text)")
    ax.set_ylim(-0.06, 1.06)
    text = (f"n = {curve['n']}, status {curve['status']}\nbalance point {_fmt(bp)}"
            + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            + f"\nisotonic {_fmt(s['isotonic_balance_point'])}, Spearman ρ {_fmt(s['spearman_rho'])}")
    ax.text(0.99, 0.5, text, transform=ax.transAxes, ha="right", va="center", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"})
    if bp is None:
        ax.text(0.01, 0.02, textwrap.fill(f"No balance point: {curve['note'] or curve['status']}", 90),
                transform=ax.transAxes, fontsize=7, color="#a00000")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    ax.set_title("Following curve (kept conflict cases)")
    return save_figure(fig, out)


# --------------------------------------------------------------------------- entropy and tiers
def _tier_panel(ax: Axes, tiers: list[dict[str, Any]], label: str, entropy: str, colour: str) -> None:
    usable = [t for t in tiers if t["mean_entropy"] is not None or t["accuracy"] is not None]
    if not usable:
        figure_note(ax, f"No {label} tier in this run's cases.")
        ax.set_title(f"{entropy} by {label} tier")
        return
    t = np.array([r["tier"] for r in usable])
    h = np.array([np.nan if r["mean_entropy"] is None else r["mean_entropy"] for r in usable])
    se = np.array([1.96 * r["sd_entropy"] / math.sqrt(r["n_entropy"]) if r["sd_entropy"] is not None else 0.0
                   for r in usable])
    ax.errorbar(t, h, yerr=se, fmt="o-", color=colour, capsize=3, label=f"mean {entropy} (±95%)")
    ax.set_xlabel(f"{label} tier")
    ax.set_ylabel(f"{entropy} (nats)", color=colour)
    ax.set_xticks(t)
    acc_ax = ax.twinx()
    acc = np.array([np.nan if r["accuracy"] is None else r["accuracy"] for r in usable])
    acc_lo = np.array([r["accuracy_ci"][0] if r["accuracy_ci"] else np.nan for r in usable])
    acc_hi = np.array([r["accuracy_ci"][1] if r["accuracy_ci"] else np.nan for r in usable])
    acc_ax.fill_between(t, acc_lo, acc_hi, color="black", alpha=0.08, lw=0)
    acc_ax.plot(t, acc, "s--", color="black", ms=4, lw=1, label="accuracy (Wilson 95%)")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_ylabel("accuracy")
    handles = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [hd.get_label() for hd in handles], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_title(f"{entropy} and accuracy by {label} tier")


def plot_entropy_tiers(run: "RunDir | str | Path | RunData", out: str | Path) -> Path:
    """H_v against the visual tier (vision-only pass) and H_t against the text tier (text-only pass), with accuracy."""
    data = RunData.load(run)
    tiers = data.summary["tiers"]
    fig = new_figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    _tier_panel(left, tiers["visual"], "visual", "H_v", VISION_COLOUR)
    _tier_panel(right, tiers["text"], "text", "H_t", TEXT_COLOUR)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- heat map
def logit_diff_grid(
    cases: list[dict[str, Any]], layers: pa.Table, n_bins: int = 10, min_per_bin: int = 3
) -> tuple[
    Float[np.ndarray, " edge"], Int[np.ndarray, " layer"], Float[np.ndarray, "layer bin"], Int[np.ndarray, " bin"]
]:
    """Mean conflict-pass logit difference per layer and dH_rel bin (paper Fig. 6a).

    Uses the kept conflict cases with a finite dH_rel and their ``pass == "conflict"`` layer
    rows. **[ours]** Bins are equal-width over the observed dH_rel range, ``min(n_bins,
    n_cases // min_per_bin)`` of them (at least one); a case on an inner edge goes to the bin
    on its right, the maximum to the last bin.

    Returns:
        ``(edges, layer_ids, grid, counts)``: bin edges (``n_bin + 1``), the layer indices
        present, ``grid[i, j]`` = mean ``logit_diff`` (logit(text) - logit(image)) at layer
        ``layer_ids[i]`` over the cases of bin ``j`` (NaN for an empty bin), and the number of
        cases per bin. Empty arrays when no case qualifies.
    """
    dh = {c["case_id"]: c["dh_rel"] for c in _kept_conflict(cases)
          if c["dh_rel"] is not None and math.isfinite(c["dh_rel"])}
    conflict = layers.filter(pc.equal(layers.column("pass"), "conflict")) if layers.num_rows else layers
    ids = conflict.column("case_id").to_pylist() if conflict.num_rows else []
    with_rows = {i for i in ids if i in dh}
    if not with_rows:
        return np.zeros(0), np.zeros(0, dtype=int), np.zeros((0, 0)), np.zeros(0, dtype=int)
    values = np.array([dh[i] for i in sorted(with_rows)])
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.05, hi + 0.05
    k = max(1, min(n_bins, len(with_rows) // min_per_bin))
    edges = np.linspace(lo, hi, k + 1)

    def bin_of(v: float) -> int:
        return int(min(k - 1, np.searchsorted(edges, v, side="right") - 1))

    case_bin = {i: bin_of(dh[i]) for i in with_rows}
    counts = np.bincount([case_bin[i] for i in with_rows], minlength=k)
    keep = np.array([i in case_bin for i in ids])
    layer = conflict.column("layer").to_numpy()[keep]
    diff = conflict.column("logit_diff").to_numpy(zero_copy_only=False).astype(float)[keep]
    col = np.array([case_bin[i] for i, ok in zip(ids, keep) if ok])
    layer_ids = np.unique(layer)
    row = np.searchsorted(layer_ids, layer)
    finite = np.isfinite(diff)
    sums = np.zeros((layer_ids.size, k))
    n = np.zeros((layer_ids.size, k))
    np.add.at(sums, (row[finite], col[finite]), diff[finite])
    np.add.at(n, (row[finite], col[finite]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(n > 0, sums / n, np.nan)
    return edges, layer_ids, grid, counts


def plot_logit_diff_heatmap(run: "RunDir | str | Path | RunData", out: str | Path) -> Path:
    """Layer x dH_rel-bin heat map of the mean conflict-pass logit difference (paper Fig. 6a)."""
    data = RunData.load(run)
    edges, layer_ids, grid, counts = logit_diff_grid(data.cases, data.layers)
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.set_title("Logit difference logit(text) − logit(image), conflict pass")
    if grid.size == 0 or not np.isfinite(grid).any():
        figure_note(ax, "No kept conflict case with conflict-pass layer rows: nothing to draw.")
        return save_figure(fig, out)
    vmax = float(np.nanmax(np.abs(grid))) or 1.0
    layer_edges = np.concatenate([layer_ids - 0.5, [layer_ids[-1] + 0.5]])
    mesh = ax.pcolormesh(edges, layer_edges, np.ma.masked_invalid(grid), cmap="RdBu_r",
                         norm=TwoSlopeNorm(0.0, -vmax, vmax), shading="flat")
    fig.colorbar(mesh, ax=ax, label="mean logit difference (text ahead > 0)")
    bp = data.summary["balance_point"]
    if bp is not None:
        ax.axvline(bp, color="black", ls="--", lw=1.2, label=f"balance point {bp:.2f}")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("ΔH_rel bin")
    ax.set_ylabel("layer (0 = embedding output)")
    top = ax.secondary_xaxis("top")
    centres = (edges[:-1] + edges[1:]) / 2
    top.set_xticks(centres, [str(int(c)) for c in counts], fontsize=7)
    top.set_xlabel("cases per bin", fontsize=8)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- trajectories
def sample_cases(cases: list[dict[str, Any]], layers: pa.Table, per_region: int = 3) -> dict[str, list[dict[str, Any]]]:
    """A few kept conflict cases per region, spread evenly over their dH_rel (not chosen by outcome).

    Only cases with conflict-pass layer rows. Keys "ambiguous" and "clear"; when the run has
    no regions (no balance point) a single key "kept" holds the sample.
    """
    have = set(layers.filter(pc.equal(layers.column("pass"), "conflict")).column("case_id").to_pylist()) \
        if layers.num_rows else set()
    pool = [c for c in _kept_conflict(cases) if c["case_id"] in have
            and c["dh_rel"] is not None and math.isfinite(c["dh_rel"])]
    groups = {"ambiguous": [c for c in pool if c.get("region") == "ambiguous"],
              "clear": [c for c in pool if c.get("region") == "clear"]}
    if not any(groups.values()):
        groups = {"kept": pool}
    out = {}
    for name, group in groups.items():
        group = sorted(group, key=lambda c: (c["dh_rel"], c["case_id"]))
        if group:
            picks = np.unique(np.linspace(0, len(group) - 1, min(per_region, len(group))).round().astype(int))
            out[name] = [group[i] for i in picks]
        else:
            out[name] = []
    return out


def plot_trajectories(run: "RunDir | str | Path | RunData", out: str | Path, per_region: int = 3) -> Path:
    """Per-layer p_text and p_vision (conflict pass) of sample ambiguous and clear cases; dots: the top-1 class."""
    data = RunData.load(run)
    samples = sample_cases(data.cases, data.layers, per_region)
    names = list(samples)
    fig = new_figure(3.3 * per_region, 2.7 * len(names) + 0.4)
    axes = np.atleast_2d(fig.subplots(len(names), per_region, squeeze=False))
    wanted = {c["case_id"] for group in samples.values() for c in group}
    rows = data.layers.filter(pc.is_in(data.layers.column("case_id"), pa.array(sorted(wanted), pa.string()))) \
        if wanted else LAYER_SCHEMA.empty_table()
    rows = rows.filter(pc.equal(rows.column("pass"), "conflict")).to_pylist() if rows.num_rows else []
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r)
    for i, name in enumerate(names):
        for j in range(per_region):
            ax = axes[i, j]
            if j >= len(samples[name]):
                if j == 0:
                    figure_note(ax, f"No {name} case with layer rows.")
                else:
                    ax.set_axis_off()
                continue
            case = samples[name][j]
            traj = sorted(by_case[case["case_id"]], key=lambda r: r["layer"])
            layer = [r["layer"] for r in traj]
            ax.plot(layer, [r["p_text"] for r in traj], color=TEXT_COLOUR, lw=1.5, label="p_text")
            ax.plot(layer, [r["p_vision"] for r in traj], color=VISION_COLOUR, lw=1.5, label="p_vision")
            ax.scatter(layer, [-0.06] * len(layer), c=[CLASS_COLOURS.get(r["class"], "black") for r in traj],
                       s=10, marker="s", lw=0, clip_on=False)
            ax.set_ylim(-0.1, 1.02)
            osc = case["oscillations"]
            ax.set_title(f"{name}: {case['case_id']}\nΔH_rel {case['dh_rel']:.2f}, answer {case['label']}, "
                         f"{'?' if osc is None else osc} switch(es)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
            if i == len(names) - 1:
                ax.set_xlabel("layer", fontsize=8)
            if j == 0:
                ax.set_ylabel("probability", fontsize=8)
                if i == 0:
                    ax.legend(fontsize=7, loc="upper left")
    if names == ["kept"]:
        fig.suptitle("Sample trajectories: no balance point, so no ambiguous / clear regions", fontsize=9)
    else:
        fig.suptitle("Sample trajectories (conflict pass); squares: top-1 class per layer "
                     "(red text, blue image, grey other)", fontsize=9)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- oscillations
def plot_oscillations(run: "RunDir | str | Path | RunData", out: str | Path) -> Path:
    """Mean oscillations per region with bootstrap CIs, and the controls beside them."""
    data = RunData.load(run)
    s = data.summary
    bars = [("ambiguous", s["oscillation"]["ambiguous"], "#ff7f0e"),
            ("clear", s["oscillation"]["clear"], "#7f7f7f")]
    bars += [(name.replace("_", "\n"), entry, "#bcbd22") for name, entry in s["controls"].items()]
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    ax.set_title("Oscillations (vision ↔ text switches) per region and control")
    if all(entry["mean"] is None for _, entry, _ in bars):
        figure_note(ax, s["oscillation"]["note"] or "No case has a switch count.")
        return save_figure(fig, out)
    for x, (name, entry, colour) in enumerate(bars):
        mean = entry["mean"]
        if mean is None:
            ax.text(x, 0.03, "n/a", ha="center", va="bottom", fontsize=9, color="#a00000",
                    transform=ax.get_xaxis_transform())
            continue
        ci = entry["ci"]
        yerr = [[mean - ci[0]], [ci[1] - mean]] if ci else None
        ax.bar(x, mean, color=colour, width=0.6, yerr=yerr, capsize=4)
        ax.text(x, mean, f" {mean:.2f}", ha="left", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [f"{name}\nn = {entry['n']}" for name, entry, _ in bars], fontsize=8)
    ax.set_ylabel("mean switches per case (95% bootstrap CI)")
    top = max((e["ci"][1] if e["ci"] else e["mean"]) for _, e, _ in bars if e["mean"] is not None)
    note = s["oscillation"]["note"]
    ax.set_ylim(0, max(top, 0.1) * (1.6 if s["balance_point"] is None and note else 1.15))
    if s["balance_point"] is None and note:
        ax.text(0.01, 0.98, textwrap.fill(note, 80), transform=ax.transAxes, va="top", fontsize=7, color="#a00000")
    return save_figure(fig, out)


# --------------------------------------------------------------------------- all
FIGURES: tuple[tuple[str, Callable[..., Path], str], ...] = (
    ("following_curve", plot_following_curve,
     "Following curve: share of kept conflict cases that follow the text against ΔH_rel, equal-count bins "
     "with Wilson intervals, the logistic fit, the isotonic fit, and the balance point with its bootstrap CI."),
    ("entropy_tiers", plot_entropy_tiers,
     "Entropy against difficulty: H_v of the vision-only pass by visual tier, H_t of the text-only pass by "
     "text tier (mean with 95% interval), and the accuracy of each pass (dashed, right axis)."),
    ("logit_diff_heatmap", plot_logit_diff_heatmap,
     "Mean logit difference logit(text) − logit(image) of the conflict pass, per layer and ΔH_rel bin "
     "(paper Fig. 6a); red: the text answer is ahead, blue: the image answer."),
    ("trajectories", plot_trajectories,
     "Per-layer probabilities of the text and image answers for sample ambiguous and clear cases "
     "(spread evenly over ΔH_rel, not chosen by outcome)."),
    ("oscillations", plot_oscillations,
     "Mean number of vision ↔ text switches of the layer-wise top-1 answer, per region and for the controls."),
    ("uncertainty_tiers", paper_figures.plot_uncertainty_tiers,
     "Every uncertainty index (entropy, candidate entropy, 1 − max p, top-2 margin, NMLP) of the vision-only pass "
     "by visual tier and of the text-only pass by text tier: mean over conflict cases with a 95% interval."),
    ("index_curves", paper_figures.plot_index_curves,
     "The following curve of each index's relative form (oriented so that negative = more certain from the text): "
     "equal-count bins with Wilson intervals, the logistic fit, and the balance point with its bootstrap CI."),
    ("oscillation_outcomes", paper_figures.plot_oscillation_outcomes,
     "Mean switches in the ambiguous and the clear region over all kept cases and within text-followers, "
     "image-followers and other answers; right: the same without the constant layers."),
    ("oscillation_depth", paper_figures.plot_oscillation_depth,
     "Left: mean switches per case landing at each counted layer, per region and outcome. Right: per lens "
     "position, the share of all rows whose top-1 is the most common one there; red = the same for every row."),
    ("class_trajectories", paper_figures.plot_class_trajectories,
     "Top-1 class at every layer of the conflict pass for example cases of each region and outcome "
     "(spread evenly over ΔH_rel within each group)."),
    ("dh_rel_tiers", paper_figures.plot_dh_rel_tiers,
     "Distribution of ΔH_rel per visual tier and per text tier over all conflict cases, with the balance point."),
)
"""(name, function, caption) of every figure, in report order; files are ``figures/<name>.png``."""


def draw_all(run_dir: "RunDir | str | Path") -> list[Path]:
    """Draw every figure of :data:`FIGURES` into ``RUN/figures/`` and return their paths."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    data = RunData.load(run)
    return [fn(data, run.figures_dir / f"{name}.png") for name, fn, _ in FIGURES]


# --------------------------------------------------------------------------- activation patching
def plot_patching(sweep: "PatchingSweep", *, value: str = "effect", ax: Any = None, title: str | None = None,
                  annotate: bool = True) -> Any:
    """Heatmap of the mean over cases (group rows x layer columns); returns the figure.

    `value`: "effect" (change of logit(text) - logit(vision)), "recovered" (share of the
    source-target gap) or "logit_diff" (the patched value). Colours are centred on 0.
    Without `ax` it opens a pyplot figure (the run figures above use no pyplot); the caller
    closes it.
    """
    import matplotlib.pyplot as plt

    data = sweep.mean(value).detach().cpu().numpy()
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.1 + 0.55 * len(sweep.layers), 0.9 + 0.5 * len(sweep.groups)))
    else:
        fig = ax.figure
    finite = np.abs(data[np.isfinite(data)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(sweep.layers)), [str(l) for l in sweep.layers])
    ax.set_yticks(range(len(sweep.groups)), list(sweep.groups))
    ax.set_xlabel(f"decoder layer ({sweep.site})")
    ax.set_ylabel("patched positions")
    labels = {"effect": "Δ logit(text) − logit(vision)", "recovered": "share of source−target gap",
              "logit_diff": "patched logit(text) − logit(vision)"}
    fig.colorbar(im, ax=ax, label=labels[value])
    if annotate and data.size <= 400:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2g}", ha="center", va="center", fontsize=7,
                            color="white" if abs(data[i, j]) > 0.6 * lim else "black")
    ax.set_title(title or f"activation patching, n = {sweep.effect.shape[0]} cases")
    fig.tight_layout()
    return fig
