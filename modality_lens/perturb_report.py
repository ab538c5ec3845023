"""Figures and report.html of a perturbation run, drawn from its summary.json and run.json alone.

Figures (``figures/``): accuracy and confidence against level per perturbation (CIs shaded),
reliability diagrams (original vs strongest level), the per-layer AUROC heatmap (level x
layer), the per-layer confidence drop at the strongest level, the voting curves (noise), and,
with a conflict pass, TFR against level. `modality-lens report` is the main job's; this page is
written by `modality-lens perturb` (and `write_perturb_report`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from modality_lens.atomic import atomic_write_bytes
from modality_lens.plots import new_figure, figure_note, save_figure
from modality_lens.report import REPORT_CSS, figures_html, html_table, notes_html, provenance_rows

__all__ = ["PERTURB_FIGURES", "draw_perturb_figures", "write_perturb_report"]

PERTURB_FIGURES = (
    ("perturb_accuracy_confidence", "Accuracy and confidence (max p, NMLP) against the perturbation level, vision-only "
     "pass; shaded: 95% bootstrap CIs over units. Confidence that tracks perception falls with accuracy."),
    ("perturb_reliability", "Reliability diagrams of max p (equal-mass bins): the original images and the "
     "strongest level. On the diagonal: calibrated."),
    ("perturb_layer_auroc", "AUROC of each lens layer's NMLP (top) and max p (bottom) for the final answer's "
     "correctness, per level (0.5: no separation; below 0.5: confidence ranks wrong answers higher)."),
    ("perturb_layer_drop", "Per-layer drop of the image answer's probability, p(original) - p(strongest level), "
     "95% CIs: does the perturbation move the early layers or only the late ones?"),
    ("perturb_voting", "Accuracy against the number of sampled answers N: confidence-weighted vs majority "
     "voting, noise levels."),
    ("perturb_tfr", "Conflict pass: text-following rate against the level (95% CIs)."),
)


def _read(run_dir: Any) -> tuple[dict[str, Any], dict[str, Any], Path]:
    path = Path(getattr(run_dir, "path", run_dir))
    return json.loads((path / "summary.json").read_text()), json.loads((path / "run.json").read_text()), path


def _band(ax: Axes, x: list[float], entries: list[dict], colour: str, label: str) -> None:
    mean = [e["mean"] if e["mean"] is not None else np.nan for e in entries]
    lo = [e["ci_low"] if e["ci_low"] is not None else np.nan for e in entries]
    hi = [e["ci_high"] if e["ci_high"] is not None else np.nan for e in entries]
    ax.plot(x, mean, "o-", color=colour, label=label, ms=3)
    ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)


def _accuracy_confidence(s: dict, out: Path) -> Path:
    perts = s["passes"].get("vision", {})
    fig = new_figure(3.2 * max(1, len(perts)), 5.2)
    axes = fig.subplots(2, max(1, len(perts)), squeeze=False)
    for j, (name, entry) in enumerate(perts.items()):
        x = [lv["level"] for lv in entry["levels"]]
        top, bottom = axes[0, j], axes[1, j]
        _band(top, x, [lv["accuracy"] for lv in entry["levels"]], "#1f77b4", "accuracy")
        _band(top, x, [lv["confidence"]["max_p"] for lv in entry["levels"]], "#d62728", "max p")
        top.set_ylim(-0.02, 1.02)
        top.set_title(name)
        _band(bottom, x, [lv["confidence"]["nmlp"] for lv in entry["levels"]], "#2ca02c", "NMLP")
        bottom.set_xlabel("level")
    axes[0, 0].set_ylabel("share / probability")
    axes[1, 0].set_ylabel("NMLP (nats, higher = surer)")
    axes[0, 0].legend(fontsize=8)
    return save_figure(fig, out)


def _reliability(s: dict, out: Path) -> Path:
    perts = s["passes"].get("vision", {})
    fig = new_figure(3.0 * max(1, len(perts)), 3.0)
    axes = fig.subplots(1, max(1, len(perts)), squeeze=False)[0]
    for ax, (name, entry) in zip(axes, perts.items()):
        ax.plot([0, 1], [0, 1], ":", color="#888888")
        for lv, colour in ((entry["levels"][0], "#1f77b4"), (entry["levels"][-1], "#d62728")):
            bins = lv["reliability"]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=colour, ms=3,
                    label=f"level {lv['level']:.2f} (ECE {lv['ece']:.3f})" if lv["ece"] is not None else "")
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean max p", title=name)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy")
    return save_figure(fig, out)


def _layer_auroc(s: dict, out: Path) -> Path:
    perts = {k: v for k, v in s["passes"].get("vision", {}).items() if v["layers"]}
    fig = new_figure(3.0 * max(1, len(perts)), 5.4)
    axes = fig.subplots(2, max(1, len(perts)), squeeze=False)
    if not perts:
        figure_note(axes[0, 0], "one level only: no per-layer view")
        return save_figure(fig, out)
    image = None
    for j, (name, entry) in enumerate(perts.items()):
        for i, score in enumerate(("nmlp", "max_p")):
            ax = axes[i, j]
            heat = np.array([[np.nan if v is None else v for v in row]
                             for row in entry["layers"]["auroc_by_level"][score]])
            image = ax.imshow(heat, vmin=0, vmax=1, cmap="RdBu_r", aspect="auto", origin="lower")
            ax.set(xlabel="lens layer (0 = embedding)", title=f"{name}: {score}")
            ax.set_yticks(range(len(entry["levels"])), [f"{lv['level']:.2f}" for lv in entry["levels"]], fontsize=6)
        axes[0, j].set_xlabel("")
    for i in range(2):
        axes[i, 0].set_ylabel("level")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="AUROC for correctness")
    return save_figure(fig, out)


def _layer_drop(s: dict, out: Path) -> Path:
    fig = new_figure(5.0, 3.2)
    ax = fig.subplots()
    for name, entry in s["passes"].get("vision", {}).items():
        if entry["layers"]:
            drops = entry["layers"]["drop_at_strongest"]["p_answer"]
            ax.errorbar([d["layer"] for d in drops], [d["mean"] for d in drops],
                        yerr=[[d["mean"] - (d["ci_low"] if d["ci_low"] is not None else d["mean"]) for d in drops],
                              [(d["ci_high"] if d["ci_high"] is not None else d["mean"]) - d["mean"] for d in drops]],
                        fmt="o-", ms=3, capsize=2, label=name)
    ax.axhline(0, color="#888888", lw=0.8)
    ax.set(xlabel="lens layer (0 = embedding)", ylabel="drop of p(image answer)")
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def _voting(s: dict, out: Path) -> Path:
    fig = new_figure(5.0, 3.2)
    ax = fig.subplots()
    entry = s["passes"].get("vision", {}).get("noise")
    if not entry or not entry["voting"]:
        figure_note(ax, "no noise perturbation in this run: no voting curves")
        return save_figure(fig, out)
    picks = entry["voting"][:: max(1, len(entry["voting"]) // 4)]
    for k, curve in enumerate(picks):
        colour = f"C{k}"
        ax.plot(curve["ns"], curve["weighted"], "o-", color=colour, ms=3, label=f"level {curve['level']:.2f} weighted")
        ax.plot(curve["ns"], curve["majority"], "x--", color=colour, ms=3, label="majority")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="sampled answers N", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, out)


def _tfr(s: dict, out: Path) -> Path:
    fig = new_figure(5.0, 3.2)
    ax = fig.subplots()
    perts = s["passes"].get("conflict")
    if not perts:
        figure_note(ax, "no conflict pass in this run (modality-lens perturb --conflict)")
        return save_figure(fig, out)
    for k, (name, entry) in enumerate(perts.items()):
        _band(ax, [lv["level"] for lv in entry["levels"]], [lv["tfr"] for lv in entry["levels"]], f"C{k}", name)
    ax.set(xlabel="level", ylabel="TFR", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def draw_perturb_figures(run_dir: Any) -> list[Path]:
    """Every figure of :data:`PERTURB_FIGURES` into ``RUN/figures/``."""
    s, _, path = _read(run_dir)
    draw = (_accuracy_confidence, _reliability, _layer_auroc, _layer_drop, _voting, _tfr)
    return [fn(s, path / "figures" / f"{name}.png") for fn, (name, _) in zip(draw, PERTURB_FIGURES)]


def _fmt(entry: dict | None, digits: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    ci = f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]" if entry.get("ci_low") is not None else ""
    return f"{entry['mean']:.{digits}f}{ci}"


def level_rows(entry: dict[str, Any]) -> list[list[str]]:
    """Table rows of one perturbation: a row per level."""
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return [[f"{lv['level']:.3f}", str(lv["n"]), _fmt(lv["accuracy"]), _fmt(lv["confidence"]["max_p"]),
             _fmt(lv["confidence"]["nmlp"]), _fmt(lv["drop"]["nmlp"]), num(lv["ece"]), num(lv["brier"]),
             num(lv["auroc"]["nmlp"]["auroc"]), _fmt(lv.get("tfr")) if "tfr" in lv else _fmt(lv.get("vcd_accuracy"))]
            for lv in entry["levels"]]


def _sections(s: dict[str, Any]) -> list[str]:
    header = ["level", "n", "accuracy", "max p", "NMLP", "dC (NMLP)", f"ECE ({s['ece_bins']} bins)", "Brier",
              "AUROC (NMLP)", "TFR / VCD accuracy"]
    parts = []
    for pass_name, perts in s["passes"].items():
        for name, entry in perts.items():
            parts += [f"<h3>{html.escape(pass_name)} pass, {html.escape(name)} ({entry['n_units']} units)</h3>",
                      html_table(header, level_rows(entry))]
            if entry["tracking"]:
                t = entry["tracking"]
                parts.append(html_table(["score", "slope of mean confidence vs accuracy", "95% CI", "r"], [
                    [m, "n/a" if v["slope"] is None else f"{v['slope']:.3f}",
                     "n/a" if v["ci_low"] is None else f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}]",
                     "n/a" if v["r"] is None else f"{v['r']:.3f}"] for m, v in t.items()]))
            if entry["layers"]:
                lay = entry["layers"]
                sep = "; ".join(f"{k}: first layer with AUROC CI above 0.5 {v['first_separating_layer']}, below 0.5 "
                                f"{v['first_inverse_layer']}" for k, v in lay["separation"].items())
                parts.append(f"<p>Per lens layer (0 = embedding) - {html.escape(sep)}; first layer whose p(image "
                             f"answer) the strongest level moves (CI excludes 0): {lay['first_moved_layer']}.</p>")
    return parts


def write_perturb_report(run_dir: Any) -> Path:
    """``RUN/report.html``: key tables, every figure as base64 PNG, provenance; nothing loaded from outside."""
    s, info, path = _read(run_dir)
    figures = path / "figures"
    if not all((figures / f"{n}.png").exists() for n, _ in PERTURB_FIGURES):
        draw_perturb_figures(run_dir)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>modality-lens perturb: {html.escape(path.name)}</title>", f"<style>{REPORT_CSS}</style></head><body>",
             f"<h1>Confidence under visual perturbation <code>{html.escape(path.name)}</code></h1>",
             '<p class="muted">Does the model know when it cannot see? Confidence at the answer position; NMLP '
             "in nats, higher = more confident; max p = probability of the model's own answer token; intervals "
             "are 95% percentile bootstraps over units.</p>", "<h2>Per perturbation and level</h2>",
             *_sections(s)]
    parts += notes_html(list(s.get("notes") or [])) + figures_html([(figures / f"{name}.png", caption)
                                                                     for name, caption in PERTURB_FIGURES])
    parts += ["<h2>Provenance</h2>", html_table(["", ""], provenance_rows(info), numeric_from=2), "</body></html>"]
    atomic_write_bytes(path / "report.html", ("\n".join(parts) + "\n").encode("utf-8"))
    return path / "report.html"
