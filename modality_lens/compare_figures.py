"""The figures of ``modality-lens compare``: several runs overlaid, drawn from compare rows and summaries.

Each ``plot_*`` takes the rows of :func:`modality_lens.compare.compare_rows` (plus, for the
curves, each run's summary bins, carried in the row under ``curve``) and an output path, and
writes one PNG. One colour per run, in the order given; a run without the quantity gets a
note in the legend instead of a made-up value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from scipy.special import expit

from modality_lens.figure_base import figure_note, new_figure, save_figure

__all__ = ["COMPARE_FIGURES", "plot_compare_balance", "plot_compare_following", "plot_compare_oscillations"]

_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def run_colour(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _curve_of(row: dict[str, Any]) -> dict[str, Any]:
    return row.get("curve") or {}


def _one_curve(ax: Axes, i: int, row: dict[str, Any]) -> bool:
    curve, colour = _curve_of(row), run_colour(i)
    bins = [b for b in curve.get("bins") or [] if b.get("n")]
    if not bins:
        ax.plot([], [], color=colour, label=f"{row['label']}: no following curve ({row['curve_status']})")
        return False
    x = np.array([b["dh_rel_mean"] for b in bins])
    ax.fill_between(x, [b["ci_low"] for b in bins], [b["ci_high"] for b in bins], color=colour, alpha=0.15, lw=0)
    ax.plot(x, [b["p_text"] for b in bins], "o", color=colour, ms=4)
    label = f"{row['label']} (n = {curve.get('n')})"
    if curve.get("a") is not None and curve.get("b") is not None:
        grid = np.linspace(curve["dh_rel_min"], curve["dh_rel_max"], 200)
        ax.plot(grid, expit(curve["a"] + curve["b"] * grid), color=colour, lw=1.8, label=label)
    else:
        ax.plot(x, [b["p_text"] for b in bins], color=colour, lw=1, ls=":", label=label + ", no logistic fit")
    if row["balance_point"] is not None:
        ax.axvline(row["balance_point"], color=colour, ls="--", lw=1)
    return True


def plot_compare_following(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Every run's following curve: binned P(follow text) with Wilson 95% bands, the logistic fit,
    the balance point (dashed)."""
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    drawn = [_one_curve(ax, i, row) for i, row in enumerate(rows)]
    if not any(drawn):
        figure_note(ax, "No run has a following curve (no kept conflict case follows either modality).")
    else:
        ax.axhline(0.5, color="#888888", lw=0.8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("ΔH_rel = 2 (H_t − H_v) / (H_t + H_v)")
        ax.set_ylabel("P(follow text)")
        ax.legend(fontsize=8, loc="best")
    ax.set_title("Following curves (bands: Wilson 95% per bin; dashed: balance point)")
    return save_figure(fig, out)


def plot_compare_balance(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Each run's balance point with its bootstrap 95% CI (filled), and its isotonic estimate (hollow)."""
    fig = new_figure(7.5, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    ys = np.arange(len(rows))[::-1]
    for y, (i, row) in zip(ys, enumerate(rows)):
        colour, bp, ci = run_colour(i), row["balance_point"], row["balance_point_ci"]
        if bp is None:
            ax.text(0.5, y, f"no balance point ({row['curve_status'].replace('_', ' ')})", va="center",
                    ha="center", fontsize=8, color=colour, transform=ax.get_yaxis_transform())
        else:
            if ci:  # drawn as a segment: a percentile interval need not contain the point
                ax.plot(ci, [y, y], color=colour, lw=2, marker="|", ms=10)
            ax.plot([bp], [y], "o", color=colour)
        if row["isotonic_balance_point"] is not None:
            ax.plot([row["isotonic_balance_point"]], [y], "o", mfc="none", color=colour)
    ax.axvline(0.0, color="#888888", lw=0.8)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("balance point (ΔH_rel where P(follow text) = 0.5); < 0: vision preference")
    ax.set_title("Balance points (filled: logistic, bootstrap 95% CI; hollow: isotonic)")
    return save_figure(fig, out)


def plot_compare_oscillations(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Mean switches per case in each region (ambiguous, clear, the controls) of every run, bootstrap 95% CI."""
    regions = list(dict.fromkeys(name for r in rows for name in r["oscillation"]))
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    width, labelled = 0.8 / max(len(rows), 1), set()
    for i, row in enumerate(rows):
        for j, region in enumerate(regions):
            e = row["oscillation"].get(region) or {}
            x = j - 0.4 + width * (i + 0.5)
            if e.get("mean") is None:
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color=run_colour(i))
                continue
            ax.bar(x, e["mean"], width * 0.9, color=run_colour(i), label=None if i in labelled else row["label"])
            if e.get("ci"):
                ax.plot([x, x], e["ci"], color="#222222", lw=1.2, marker="_", ms=8)
            labelled.add(i)
    ax.set_xticks(range(len(regions)), [r.replace("_", "-") for r in regions])
    ax.set_ylabel("switches between text and image per case")
    if labelled:
        ax.legend(fontsize=8)
    ax.set_title("Oscillations per region (bootstrap 95% CI)")
    return save_figure(fig, out)


COMPARE_FIGURES: tuple[tuple[str, Callable[..., Path], str], ...] = (
    ("compare_following", plot_compare_following,
     "Following curves of every run overlaid: P(follow text) of the kept conflict cases per equal-count ΔH_rel bin "
     "(Wilson 95% band), the logistic fit, the balance point (dashed)."),
    ("compare_balance", plot_compare_balance,
     "Balance points side by side: logistic −a/b with its bootstrap 95% CI (filled), isotonic 0.5 crossing (hollow)."),
    ("compare_oscillations", plot_compare_oscillations,
     "Mean oscillations per case in the ambiguous and the clear region and in the controls, per run (bootstrap 95% CI)."),
)
